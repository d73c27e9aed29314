"""The quarantine list file: entries in and out, hold times, a damaged file named as such, and writers in
several processes at once that lose no entry."""

import json
import multiprocessing
import os
import time

import pytest

from cloudweave.secops import quarantine as q


def test_add_release_and_hold_time(tmp_path):
    path = str(tmp_path / "q.json")
    assert q.load(path) == () and q.active(()) == frozenset()
    t = time.time()
    e = q.add(path, "web1", "scan", "auto", hold_s=60, evidence={"distinct": 140}, now=t)
    assert (e.until, q.load(path)[0].evidence) == (t + 60, {"distinct": 140})
    q.add(path, "db1", "by hand", "cli", now=t)
    entries = q.load(path)
    assert q.active(entries, t + 59) == {"web1", "db1"}
    assert q.active(entries, t + 60) == {"db1"}  # the hold time is over
    assert q.next_expiry(entries, t) == t + 60 and q.next_expiry(entries, t + 70) is None
    assert q.release(path, "db1") and not q.release(path, "db1")
    q.add(path, "web1", "again", "cli")  # replaces the old entry
    assert [(x.endpoint, x.reason) for x in q.load(path)] == [("web1", "again")]


def test_a_damaged_file_is_named_not_ignored(tmp_path):
    path = tmp_path / "q.json"
    path.write_text("{not json")
    with pytest.raises(q.QuarantineFileError, match=rf"^{path}: not JSON: "):
        q.load(str(path))
    path.write_text(json.dumps({"version": 2, "entries": []}))
    with pytest.raises(q.QuarantineFileError, match=r'expected \{"version": 1'):
        q.load(str(path))
    path.write_text(json.dumps({"version": 1, "entries": [{"reason": "no endpoint"}]}))
    with pytest.raises(q.QuarantineFileError, match="entry 1: KeyError"):
        q.load(str(path))
    with pytest.raises(q.QuarantineFileError):  # and no writer overwrites it on top
        q.add(str(path), "web1", "", "cli")
    assert "no endpoint" in path.read_text()


def _add_many(path: str, who: int) -> None:
    for i in range(25):
        q.add(path, f"ep{who}-{i}", "", "cli")


def test_writers_in_several_processes_lose_nothing(tmp_path):
    path = str(tmp_path / "q.json")
    procs = [multiprocessing.get_context("fork").Process(target=_add_many, args=(path, n)) for n in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert len(q.active(q.load(path))) == 100
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".q.json.") and not f.endswith(".lock")]
