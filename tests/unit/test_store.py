"""The pure parts of the replicas' store: the policy packed into rows and back, site-to-shard dealing, the
balance assignment, and the traffic engineer's state as rows."""

from __future__ import annotations

import os
from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cloudweave.store.policy import CHUNK, PolicyFiles, from_chunks, read_files, write_out
from cloudweave.store.shards import assignment, site_shards
from cloudweave.te.engine import TrafficEngineer
from cloudweave.te.predict import Predictor
from controller.replica import _next_hops_of, _shares_of, _te_doc, _write_te

texts = st.text(st.characters(blacklist_categories=("Cs",)), max_size=3 * CHUNK)


@settings(deadline=None)
@given(st.dictionaries(st.from_regex(r"[a-z]{1,8}(/[a-z]{1,8})?\.yaml", fullmatch=True), texts, min_size=1,
                       max_size=4))
def test_a_policy_survives_its_chunks(files):
    main = sorted(files)[0]
    p = PolicyFiles(main, tuple(sorted(files.items())))
    chunks = p.chunks()
    assert all(len(c) <= CHUNK for c in chunks.values())
    back = from_chunks(dict(reversed(list(chunks.items()))))  # a map column has no order
    assert back == p and back.digest == p.digest


def test_the_digest_changes_with_any_byte():
    a = PolicyFiles("a.yaml", (("a.yaml", "sites: {}\n"),))
    b = PolicyFiles("a.yaml", (("a.yaml", "sites: {} \n"),))
    assert a.digest != b.digest


def test_files_with_includes_are_read_and_written_out_under_one_root(tmp_path):
    (tmp_path / "conf" / "parts").mkdir(parents=True)
    (tmp_path / "conf" / "main.yaml").write_text("include: [parts/eps.yaml]\n")
    (tmp_path / "conf" / "parts" / "eps.yaml").write_text("endpoints: {}\n")
    p = read_files(str(tmp_path / "conf" / "main.yaml"),
                   (str(tmp_path / "conf" / "main.yaml"), str(tmp_path / "conf" / "parts" / "eps.yaml")))
    assert p.main == "main.yaml" and dict(p.files) == {"main.yaml": "include: [parts/eps.yaml]\n",
                                                       "parts/eps.yaml": "endpoints: {}\n"}
    out = tmp_path / "replica"
    main = write_out(p, str(out))
    assert main == str(out / "main.yaml") and (out / "parts" / "eps.yaml").read_text() == "endpoints: {}\n"
    before = os.stat(out / "main.yaml").st_ino
    write_out(p, str(out))  # unchanged files are left alone
    assert os.stat(out / "main.yaml").st_ino == before


def test_a_stored_path_may_not_leave_the_policy_directory(tmp_path):
    p = PolicyFiles("../evil.yaml", (("../evil.yaml", "x"),))
    with pytest.raises(ValueError, match="outside"):
        write_out(p, str(tmp_path / "replica"))
    assert not (tmp_path / "evil.yaml").exists()


def test_sites_are_dealt_round_the_shards_in_name_order():
    assert site_shards(["c", "a", "b", "d"], 3) == {"a": "s0", "b": "s1", "c": "s2", "d": "s0"}
    assert set(site_shards([f"x{i}" for i in range(100)], 16).values()) == {f"s{i}" for i in range(16)}


names = st.lists(st.sampled_from([f"r{i}" for i in range(6)]), min_size=1, max_size=6, unique=True)


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 20), names, st.data())
def test_the_assignment_is_even_stable_and_keeps_what_it_can(k, live, data):
    shards = [f"s{i}" for i in range(k)]
    owners = data.draw(st.dictionaries(st.sampled_from(shards), st.sampled_from([f"r{i}" for i in range(6)])))
    owners = {s: o for s, o in owners.items() if o in live}
    want = assignment(shards, owners, live)
    assert set(want) == set(shards) and set(want.values()) <= set(live)
    counts = [list(want.values()).count(r) for r in live]
    assert max(counts) - min(counts) <= 1  # even
    assert want == assignment(list(reversed(shards)), dict(reversed(list(owners.items()))), list(reversed(live)))
    floor = k // len(live)
    for r in live:  # an owner keeps at least its floor share of what it holds: only the excess moves
        held = [s for s, o in owners.items() if o == r]
        kept = [s for s in held if want[s] == r]
        assert len(kept) >= min(len(held), floor)


def test_a_join_moves_only_the_new_replicas_share():
    shards = [f"s{i}" for i in range(6)]
    before = assignment(shards, {}, ["a", "b"])
    after = assignment(shards, before, ["a", "b", "c"])
    moved = [s for s in shards if before[s] != after[s]]
    assert len(moved) == 2 and all(after[s] == "c" for s in moved)


class FakeTxn:
    def __init__(self, tables):
        self.tables = tables

    def insert(self, table):
        row = SimpleNamespace()
        row.delete = lambda: table.rows.pop(id(row))
        table.rows[id(row)] = row
        return row


def test_the_traffic_engineers_state_goes_into_rows_and_comes_back():
    eng = TrafficEngineer()
    key = ("realtime", "onprem", "cloud2")
    eng.paths[key] = [("onprem", "cloud2"), ("onprem", "cloud1", "cloud2")]
    eng.shares[key] = [0.75, 0.25]
    eng.predictors[key] = Predictor(1.5e6, 2.0e5, 42)
    eng.rates[key] = 1.4e6
    other = ("realtime", "cloud1", "onprem")
    eng.predictors[other] = Predictor(None, 0.0, 0)
    tables = {"Demand": SimpleNamespace(rows={}), "Shares": SimpleNamespace(rows={})}
    txn = FakeTxn(tables)
    _write_te(txn, tables, eng.to_json())
    doc = _te_doc(list(tables["Demand"].rows.values()), list(tables["Shares"].rows.values()))
    back = TrafficEngineer.from_json(doc)
    assert back.in_force() == eng.in_force()
    assert back.predictors[key].to_json() == eng.predictors[key].to_json()
    assert back.predictors[other].mean is None and back.rates[key] == 1.4e6
    assert _shares_of(list(tables["Shares"].rows.values())) == tuple(sorted(eng.in_force().items()))
    version = next(iter(tables["Shares"].rows.values())).te_version
    _write_te(txn, tables, eng.to_json())  # nothing changed: no new version
    assert next(iter(tables["Shares"].rows.values())).te_version == version
    eng.shares[key] = [0.5, 0.5]
    _write_te(txn, tables, eng.to_json())
    assert next(iter(tables["Shares"].rows.values())).te_version == version + 1
    del eng.predictors[other]
    _write_te(txn, tables, eng.to_json())  # a key that went is removed
    assert len(tables["Demand"].rows) == 1


def test_a_sites_next_hop_is_its_masters_row_else_the_newest_by_a_listed_replica():
    def row(site, mac, by, at):
        return SimpleNamespace(site=site, mac=mac, learned_by=by, learned_at=at)

    rows = [row("a", "02:00:00:00:00:01", "r1", 10.0), row("a", "02:00:00:00:00:02", "r2", 20.0),
            row("b", "02:00:00:00:00:03", "r1", 5.0), row("b", "02:00:00:00:00:04", "r2", 6.0),
            row("c", "02:66:66:66:66:66", "east", 99.0)]  # a name no replica has: a site certificate, say
    got = dict(_next_hops_of(rows, {"a": "r1", "b": "", "c": "r1"}, {"r1", "r2"}))
    assert got == {"a": "02:00:00:00:00:01", "b": "02:00:00:00:00:04"}
    # the site's master is believed even before its Replica row is seen
    assert dict(_next_hops_of(rows, {"c": "east"}, set())) == {"c": "02:66:66:66:66:66"}


def test_only_the_policys_listed_replicas_targets_reach_the_bridges():
    from controller.replica import allowed_targets

    rows = (("r1", "ssl:10.0.0.11:6653"), ("r2", "ssl:10.0.0.12:6653"), ("east", "ssl:10.6.6.6:6653"),
            ("r2", "ssl:10.6.6.7:6653"))
    own = ("r1", "ssl:10.0.0.11:6653")
    assert allowed_targets(rows, None, own)[0] == ("ssl:10.0.0.11:6653", "ssl:10.0.0.12:6653", "ssl:10.6.6.6:6653",
                                                  "ssl:10.6.6.7:6653")
    listed = (("r1", "ssl:10.0.0.11:6653"), ("r2", "ssl:10.0.0.12:6653"), ("r3", "ssl:10.0.0.13:6653"))
    targets, refused = allowed_targets(rows, listed, own)
    assert targets == ("ssl:10.0.0.11:6653", "ssl:10.0.0.12:6653")  # r3 has no row: not running
    assert refused == (("east", "ssl:10.6.6.6:6653"), ("r2", "ssl:10.6.6.7:6653"))
