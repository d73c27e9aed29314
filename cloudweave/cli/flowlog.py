"""`cloudweave flowlog`: the flow log, filtered, as lines or JSON; --follow streams it as it grows (as
Hubble's `observe`)."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterator
from typing import Any, TextIO

FIELDS = ("time", "site", "kind", "src", "dst", "src_ip", "dst_ip", "proto", "sport", "dport", "ifname", "sampling",
          "verdict", "rules")


def matches(line: dict[str, Any], endpoint: str | None, verdict: str | None, rule: str | None, kind: str | None,
            site: str | None, since: float | None) -> bool:
    if endpoint is not None and endpoint not in (line.get("src"), line.get("dst"), line.get("src_ip"),
                                                 line.get("dst_ip")):
        return False
    if verdict is not None and line.get("verdict") != verdict:
        return False
    if rule is not None and not any(rule in what or rule in where for what, where in line.get("rules", ())):
        return False
    if kind is not None and line.get("kind") != kind:
        return False
    if site is not None and line.get("site") != site:
        return False
    return since is None or line.get("time", 0) >= since


def text(line: dict[str, Any]) -> str:
    when = time.strftime("%H:%M:%S", time.localtime(line["time"])) + f".{int(line['time'] * 1000) % 1000:03d}"
    port = f"/{line['dport']}" if line.get("dport") else ""
    rules = "; ".join(f"{what} ({where})" if where else what for what, where in line.get("rules", ()))
    sampled = f" [1 in {line['sampling']:g}]" if line.get("sampling", 1) != 1 else ""
    return (f"{when} {line['site']:<8} {line['kind']:<10} {line['src']} -> {line['dst']} {line['proto']}{port} "
            f"{line['verdict'].upper()}: {rules}{sampled}")


def read(path: str, follow: bool, out: TextIO = sys.stdout) -> Iterator[dict[str, Any]]:
    """Every line of the log (and of its rotated part first); with follow, then each new one as it comes."""
    for p in (path + ".1", path):
        if os.path.exists(p) and not (follow and p == path):
            with open(p, errors="replace") as fh:
                yield from _lines(fh)
    if not follow:
        return
    fh = _open_when_there(path)
    inode = os.fstat(fh.fileno()).st_ino
    while True:
        got = False
        for line in _lines(fh):
            got = True
            yield line
        if not got:
            out.flush()
            time.sleep(0.1)
            try:
                if os.stat(path).st_ino != inode:  # rotated: go on in the new file
                    fh.close()
                    fh = _open_when_there(path)
                    inode = os.fstat(fh.fileno()).st_ino
            except FileNotFoundError:
                pass


def _open_when_there(path: str) -> TextIO:
    while True:
        try:
            return open(path, errors="replace")
        except FileNotFoundError:
            time.sleep(0.2)


def _lines(fh: TextIO) -> Iterator[dict[str, Any]]:
    while True:
        pos = fh.tell()
        raw = fh.readline()
        if not raw:
            return
        if not raw.endswith("\n"):  # half a line, still being written
            fh.seek(pos)
            return
        try:
            yield json.loads(raw)
        except json.JSONDecodeError:
            continue


def main(path: str, follow: bool, as_json: bool, fields: list[str] | None, **filters: Any) -> int:
    if not follow and not os.path.exists(path) and not os.path.exists(path + ".1"):
        print(f"cloudweave: no flow log at {path} (is flow_logs on, and the controller running?)", file=sys.stderr)
        return 1
    try:
        for line in read(path, follow):
            if not matches(line, **filters):
                continue
            if as_json:
                print(json.dumps({k: line.get(k) for k in (fields or FIELDS)}))
            else:
                print(text(line))
    except (KeyboardInterrupt, BrokenPipeError):
        pass
    return 0
