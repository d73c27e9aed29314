"""Loading chunk by chunk (cloudweave.config.chunks) gives exactly what parsing the whole file gives: the same
values, the same positions, the same problems, on every shipped file and on random mutations of them, with
one cache kept across the loads (as the controller keeps it across reloads)."""

import glob
import os

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cloudweave.config import ConfigError, LoadCache, chunks, load_model
from cloudweave.config.chunks import ChunkCache, load_chunked
from cloudweave.config.yamlpos import LDict, LList, load_located

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FILES = sorted(glob.glob(os.path.join(ROOT, "topologies", "*.yaml"))) + [
    os.path.join(ROOT, "..", "shared", "examples", "three-clouds.yaml")]


def generated(n: int = 60) -> str:
    """A file as `yaml.safe_dump` writes one (block style everywhere), like bench/program_switch.py's."""
    doc = {"version": 1, "sites": {f"s{i}": {"dpid": i + 1, "vtep": f"172.31.0.{i + 1}", "ovsdb": f"unix:/x/{i}"}
                                   for i in range(3)},
           "links": [{"between": ["s0", "s1"], "capacity": "1Gbit"}, {"between": ["s1", "s2"], "capacity": "1Gbit"}],
           "segments": {"g": {"vni": 10, "subnet": "10.0.0.0/16"}},
           "endpoints": {f"e{n}": {"site": f"s{n % 3}", "port": f"p{n}", "segment": "g",
                                   "mac": f"02:00:00:00:00:{n:02x}", "ip": f"10.0.0.{n + 1}"} for n in range(n)}}
    return yaml.safe_dump(doc, sort_keys=False)


def same(a, b, where="") -> None:
    assert type(a) is type(b), (where, a, b)
    if isinstance(a, LDict):
        assert list(a) == list(b), where
        assert (a.loc, a.key_locs, a.val_locs) == (b.loc, b.key_locs, b.val_locs), where
        for k in a:
            same(a[k], b[k], f"{where}/{k}")
    elif isinstance(a, LList):
        assert (a.loc, a.item_locs) == (b.loc, b.item_locs), where
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            same(x, y, f"{where}[{i}]")
    else:
        assert a == b, (where, a, b)


def check(path: str, text: str, cache: ChunkCache) -> None:
    want, want_problems = load_located(path, text)
    got, got_problems = load_chunked(path, text, cache)
    assert [str(p) for p in got_problems] == [str(p) for p in want_problems]
    same(got, want)


TEXTS = [(os.path.basename(p), p, open(p).read()) for p in FILES] + [("generated", "gen.yaml", generated())]


@pytest.mark.parametrize("name,path,text", TEXTS, ids=[t[0] for t in TEXTS])
def test_every_shipped_file_loads_the_same_in_chunks(name, path, text):
    cache = ChunkCache()
    check(path, text, cache)
    check(path, text, cache)  # again, all from the cache
    assert cache.parsed == 0 or name == "three-clouds.yaml"  # the reference file uses anchors: read whole


def test_an_edit_parses_only_the_chunk_it_touched():
    text = generated(200)
    cache = ChunkCache()
    check("gen.yaml", text, cache)
    # The first load reads every entry (200 endpoints, 3 sites, 1 segment) without the parser; the parser
    # reads the two sections that are not mappings of entries (version, links).
    assert (cache.parsed, cache.parsed_by_yaml) == (206, 2)
    edited = text.replace("02:00:00:00:00:2a", "02:00:00:00:ff:2a")
    check("gen.yaml", edited, cache)
    assert (cache.parsed, cache.parsed_by_yaml) == (1, 0)
    moved = edited.replace("endpoints:\n", "endpoints:\n  # a comment\n")  # every entry moves down a line
    check("gen.yaml", moved, cache)
    assert cache.parsed == 0  # moved, not parsed


PLAIN = [  # (entry chunk, read without the parser?)
    ("  e1:\n    site: a\n    port: p1\n    mac: 02:00:00:00:00:01\n    ip: 10.0.0.1\n", True),
    ("  e1:\n    site: a\n    groups: [web, db]\n    vni: 5001\n\n\n", True),
    ("  e1: {site: a, port: p1, mac: 02:00:00:00:00:01, ip: 10.0.0.1, groups: [web]}\n", True),
    ("  e1: {vni: 0x1F, n: 007, f: 1.5e3, t: true, x: null, neg: 12}\n", True),
    ("  e1: {}\n", True),
    ("  e1:\n    groups: []\n    dpid: 0o17\n", True),
    ("  e1:\n    site: a\n    site: b\n", False),  # a duplicate key: the parser's problem
    ("  e1:\n    site: a  # home\n", False),  # a comment
    ("  e1:\n    site: 'a'\n", False),  # quoted
    ("  e1:\n    site: a\n     port: b\n", False),  # deeper
    ("  e1:\n    site: a:\n", False),  # a value ending in ':' is a mapping
    ("  e1:\n    site: -1\n", False),
    ("  e1: {site: a,port: b}\n", False),
    ("  e1: {site: a, }\n", False),
    ("  e1:\n  site: a\n", False),  # not inside the entry
    ("  1e1:\n    site: a\n", False),
    ("  e1:\n    site: a\n  # next\n", False),
]


@pytest.mark.parametrize("chunk,plain", PLAIN)
def test_plain_entries_read_exactly_what_the_parser_reads(chunk, plain):
    from cloudweave.config.plain_entries import read_plain_entry

    got = read_plain_entry("f.yaml", chunk, 7)
    assert (got is not None) == plain, got
    if got is not None:
        tree, problems = load_located("f.yaml", "\n" * 6 + chunk)  # the chunk at line 7
        assert problems == []
        want = (next(iter(tree)), tree[next(iter(tree))], tree.key_locs[next(iter(tree))],
                tree.val_locs[next(iter(tree))])
        assert got[0] == want[0] and got[2:] == want[2:]
        same(got[1], want[1])


MUTATIONS = ("delete", "duplicate", "insert_comment", "indent", "dedent", "char", "swap")


@pytest.mark.parametrize("name,path,text", TEXTS, ids=[t[0] for t in TEXTS])
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_mutated_files_load_the_same_in_chunks(name, path, text, data):
    cache = ChunkCache()
    lines = text.split("\n")
    block, chunks.BLOCK = chunks.BLOCK, data.draw(st.sampled_from([4, 64, 1 << 16]))  # every path of _common_ends
    try:
        for edited in mutations(lines, data):
            check(path, "\n".join(edited), cache)
    finally:
        chunks.BLOCK = block


def mutations(lines: list[str], data):
    """Successive random line edits of a file, each yielded as the file's new lines."""
    for kind in data.draw(st.lists(st.sampled_from(MUTATIONS), min_size=1, max_size=5)):
        i = data.draw(st.integers(0, len(lines) - 1))
        if kind == "delete" and len(lines) > 1:
            del lines[i]
        elif kind == "duplicate":
            lines.insert(i, lines[i])
        elif kind == "insert_comment":
            lines.insert(i, " " * data.draw(st.integers(0, 6)) + "# note")
        elif kind == "indent":
            lines[i] = "  " + lines[i]
        elif kind == "dedent":
            lines[i] = lines[i][2:] if lines[i].startswith("  ") else lines[i]
        elif kind == "char" and lines[i]:
            j = data.draw(st.integers(0, len(lines[i]) - 1))
            lines[i] = lines[i][:j] + data.draw(st.sampled_from([":", " ", "x", "-", "{", "'", "7"])) + lines[i][j + 1:]
        elif kind == "swap" and len(lines) > 1:
            j = data.draw(st.integers(0, len(lines) - 1))
            lines[i], lines[j] = lines[j], lines[i]
        yield lines


def outcome(path: str, cache: LoadCache | None):
    try:
        model, warnings = load_model(path, cache)
    except ConfigError as exc:
        return "error", [str(p) for p in exc.problems]
    return model, [str(w) for w in warnings]


ALONE = [t for t in TEXTS[:-1] if "include" not in t[2]]  # a copy elsewhere would lose its includes


@pytest.mark.parametrize("name,path,text", ALONE, ids=[t[0] for t in ALONE])
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_a_kept_load_cache_gives_what_a_fresh_load_gives(name, path, text, data, tmp_path_factory):
    """load_model with the controller's LoadCache across edits: the same model, warnings and errors."""
    work = tmp_path_factory.mktemp("edits") / "t.yaml"
    cache = LoadCache()
    work.write_text(text)
    assert outcome(str(work), cache) == outcome(str(work), None)
    for lines in mutations(text.split("\n"), data):
        work.write_text("\n".join(lines))
        assert outcome(str(work), cache) == outcome(str(work), None)


def test_a_reload_of_unchanged_files_is_the_same_model_and_an_edit_a_new_one(tmp_path):
    from cloudweave.config import load_model_cached

    work = tmp_path / "t.yaml"
    work.write_text(generated(50))
    cache = LoadCache()
    first, _ = load_model_cached(str(work), cache)
    again, _ = load_model_cached(str(work), cache)
    assert again is first  # nothing read changed: the same model, nothing recompiled downstream
    work.write_text(generated(50).replace("02:00:00:00:00:07", "02:00:00:00:aa:07"))
    edited, _ = load_model_cached(str(work), cache)
    assert edited == load_model(str(work))[0] and edited != first
    assert sum(a is b for a, b in zip(first.endpoints, edited.endpoints, strict=True)) == 49  # the others: reused
    work.write_text(generated(50).replace("ip: 10.0.0.9\n", "ip: 10.0.0.8\n"))  # an IP used twice
    with pytest.raises(ConfigError) as bad:
        load_model_cached(str(work), cache)
    with pytest.raises(ConfigError) as fresh:
        load_model(str(work))
    assert [str(p) for p in bad.value.problems] == [str(p) for p in fresh.value.problems]
