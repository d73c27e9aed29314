"""Mutations of configuration files and the promise every input must keep (issue #13).

The promise: `cloudweave check` exits 0 or 1 and prints every problem on one line as FILE:LINE:COL: message,
never a traceback; `compile` never fails on what `check` accepts, and prints one line per flow or group (no
line that a user's text split or added). Used by tests/unit/test_fuzz_config.py (Hypothesis, in CI) and by
bench/fuzz_config.py (a longer run that also bounds time and memory per case).
"""

from __future__ import annotations

import contextlib
import copy
import glob
import io
import os
import random
import re
import traceback
from typing import Any

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEEDS = sorted(glob.glob(os.path.join(ROOT, "topologies", "*.yaml"))) + sorted(
    glob.glob(os.path.join(ROOT, "..", "shared", "examples", "*.yaml")))
PROBLEM_LINE = re.compile(r"^.+:\d+:\d+: \S")
SUMMARY_LINE = re.compile(r"^.+: \d+ problem\(s\)$")
NASTY: tuple[Any, ...] = (
    "", " ", "\n", "x\n", "a\u2028b", "a\x85b", '"', "'", "a:b", "a b", "a/b", ".", "..", "-", "any", "auto",
    "direct", "via", "../x.yaml", "/dev/zero", "/proc/self/status", "²-3", "١٢", "٣", "1" * 401, "9" * 5000, 1e999,
    float("nan"), float("-inf"), -1, 0, 0.0, 1, 2**64, 2**200, "010", "1:30", "0x10", "0o17", "1_000", True, None,
    [], {}, [[]], [1, [2, [3]]], {"a": {"b": {}}}, "10.0.0.0/0", "0.0.0.0", "255.255.255.255", "224.0.0.1",
    "240.0.0.1", "127.0.0.1", "10.1.2.3", "10.0.0.1", "::1", "ff:ff:ff:ff:ff:ff", "03:00:00:00:00:01",
    "02:00:00:00:00:01\n", "02:00:00:00:00:01", "p" * 16, "é" * 8, "eth0:1", "br-int", "br-phy", "tcp", "udp",
    "icmp", 17, 256, "100ns", "0.0000001s", "1e-9", "99999", 65535, 65536, "1-0", "0-0", "80-90", [80, 443], [],
    "70%", "100%", "50%", {"direct": 0}, {"direct": 1e308, "via x": 1e308}, {"k_shortest": 0},
    "unix:/tmp/x.sock", "tcp:127.0.0.1:6640", "ptcp:6640", "ssl:x", "unix:", "x" * 64, "1.5", "1e3", "0x",
)
# A small valid file: two sites, one link, one segment, two endpoints (the seed of hand-made mistakes).
GOOD = """\
version: 1
sites:
  a: {dpid: 1, vtep: 172.31.0.1, ovsdb: "unix:/tmp/a.sock"}
  b: {dpid: 2, vtep: 172.31.0.2, ovsdb: "unix:/tmp/b.sock"}
links:
  - {between: [a, b], capacity: 1Gbit}
segments:
  s: {vni: 10, subnet: 10.0.0.0/24}
endpoints:
  e1: {site: a, port: p1, segment: s, mac: "02:00:00:00:00:01", ip: 10.0.0.1}
  e2: {site: b, port: p2, segment: s, mac: "02:00:00:00:00:02", ip: 10.0.0.2}
"""

MAX_NASTY_LINES = ("a: &a [1,1,1,1,1,1,1,1,1]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\nc: [*b,*b,*b,*b,*b,*b,*b,*b,*b]\n",
                   "x: " + "[" * 600 + "]" * 600 + "\n", "x: &x\n  y: *x\n", "include: /dev/zero\n",
                   "include: ../../etc/passwd\n", "<<: {version: 1}\n", "--- \n", "%YAML 1.1\n---\n")


def _paths(doc: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix]
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += _paths(v, prefix + (k,))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out += _paths(v, prefix + (i,))
    return out


def _get(doc: Any, path: tuple) -> Any:
    for p in path:
        doc = doc[p]
    return doc


def _scalars(doc: Any) -> list[Any]:
    """Values of the document itself: names and addresses that make mutations collide with real entries."""
    out = []
    for p in _paths(doc):
        v = _get(doc, p)
        if isinstance(v, (str, int, float)) and not isinstance(v, bool):
            out.append(v)
        if p and isinstance(p[-1], str):
            out.append(p[-1])
    return out


def mutate_doc(doc: Any, rng: random.Random, rounds: int = 3) -> Any:
    """A structural mutation: values replaced (by nasty ones or the document's own), keys dropped or copied."""
    doc = copy.deepcopy(doc)
    own = _scalars(doc)
    for _ in range(rounds):
        paths = [p for p in _paths(doc) if p]
        if not paths:
            break
        path = rng.choice(paths)
        parent, key = _get(doc, path[:-1]), path[-1]
        op = rng.random()
        value = rng.choice(NASTY) if rng.random() < 0.5 or not own else rng.choice(own)
        if op < 0.55:
            parent[key] = copy.deepcopy(value)
        elif op < 0.7:
            del parent[key]
        elif op < 0.85 and isinstance(parent, dict):
            new = rng.choice([f"{key}x", str(value)[:20] or "k", "copy"])
            parent[new] = copy.deepcopy(parent[key])
        elif isinstance(parent, list):
            parent.insert(rng.randrange(len(parent) + 1), copy.deepcopy(parent[key]))
        else:
            parent[key] = copy.deepcopy(rng.choice(own)) if own else value
    return doc


def mutate_text(text: str, rng: random.Random) -> str:
    """A textual mutation: lines deleted, duplicated, swapped, re-indented, cut, or a nasty line added."""
    lines = text.split("\n")
    op = rng.random()
    i = rng.randrange(len(lines))
    if op < 0.2:
        del lines[i]
    elif op < 0.35:
        lines.insert(i, lines[rng.randrange(len(lines))])
    elif op < 0.5:
        j = rng.randrange(len(lines))
        lines[i], lines[j] = lines[j], lines[i]
    elif op < 0.6:
        lines[i] = " " * rng.choice((1, 2, 3, 4, 8)) + lines[i]
    elif op < 0.7:
        return text[: rng.randrange(len(text) + 1)]
    elif op < 0.85:
        lines.insert(i, rng.choice(MAX_NASTY_LINES).rstrip("\n"))
    else:
        chars = list(lines[i]) or [" "]
        chars[rng.randrange(len(chars))] = rng.choice(":-[]{}&*!|>'\"%@`#,?\t\x00\u2028 é1")
        lines[i] = "".join(chars)
    return "\n".join(lines)


def seed_docs() -> list[tuple[str, str, Any]]:
    out = []
    for path in SEEDS:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
        out.append((path, text, yaml.safe_load(text)))
    return out


def dump(doc: Any) -> str:
    try:
        return yaml.safe_dump(doc, sort_keys=False, allow_unicode=True, width=1000)
    except (yaml.YAMLError, OverflowError, RecursionError):
        return "version: 1\n"


def _run(argv: list[str]) -> tuple[int | None, str, str, str | None]:
    from cloudweave.cli import main

    out, err = io.StringIO(), io.StringIO()
    crash = None
    rc: int | None = None
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main(argv)
        except SystemExit as exc:
            rc = exc.code if isinstance(exc.code, int) else 1
        except BaseException:  # noqa: BLE001 - any exception at all breaks the promise
            crash = traceback.format_exc()
    return rc, out.getvalue(), err.getvalue(), crash


def broken_promises(path: str) -> list[str]:
    """What `check` and `compile` of the file at `path` did that the promise forbids; empty when kept."""
    rc, out, err, crash = _run(["check", path])
    if crash:
        return [f"check raised:\n{crash}"]
    broken = []
    if rc not in (0, 1):
        broken.append(f"check exited {rc}")
    for line in err.splitlines():
        if not (PROBLEM_LINE.match(line) or SUMMARY_LINE.match(line)):
            broken.append(f"check printed a line that is not FILE:LINE:COL: message: {line!r}")
    if rc != 0:
        return broken
    from cloudweave.config import load_model
    from cloudweave.flows.compile import compile_site
    from cloudweave.flows.ofctl import render_flows, render_groups

    model, _ = load_model(path)
    for site in model.sites:
        try:
            state = compile_site(model, site.name)
            flows, groups = render_flows(state.flows, site.name), render_groups(state.groups, site.name)
        except Exception:  # noqa: BLE001
            return broken + [f"compile of site {site.name} raised:\n{traceback.format_exc()}"]
        printed = [ln for ln in flows.splitlines() if not ln.startswith("#")]
        if len(printed) != len(state.flows):
            broken.append(f"site {site.name}: {len(state.flows)} flows printed as {len(printed)} lines")
        printed = [ln for ln in groups.splitlines() if not ln.startswith("#")]
        if len(printed) != len(state.groups):
            broken.append(f"site {site.name}: {len(state.groups)} groups printed as {len(printed)} lines")
        if any(c in flows + groups for c in "\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"):
            broken.append(f"site {site.name}: compile printed a line-breaking character")
    return broken
