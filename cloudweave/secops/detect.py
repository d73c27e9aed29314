"""Anomaly detection on flow-log lines, per source: pure, fed lines in time order, tested on recorded streams.

Three signals that can be measured honestly (on recorded benign traffic, raw per-source rates and EWMA
baselines flagged 3-33 % of windows; these flagged none: docs/secops.md):
- scan: distinct (destination, port) pairs of new connections within `scan_window_s`;
- flood: packets nobody has answered (unreplied records times their sampling factor) per second, and ICMP
  requests (an echo flood is answered: its requests are counted in their own direction);
- connections: distinct new connections (5-tuples) per second: a SYN flood, or a flood that changes its
  source port; a denied flow that keeps sending is one connection, however many packets it repeats.
Keyed by source only: a flood's victim is never the one flagged. An alarm fires once per source and is
armed again once the source has been quiet for a whole window.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cloudweave.config.model import Detection

EXAMPLES = 5
MAX_SOURCES = 20_000  # sources with state at once: past it the least recently seen is forgotten


@dataclass(frozen=True)
class Alarm:
    signal: str  # scan | flood | connections
    source: str
    value: float
    threshold: float
    window_s: float
    at: float  # the time of the line that raised it
    first: float  # the time of the first line of the source in the window
    examples: tuple[dict, ...]

    def evidence(self) -> dict[str, Any]:
        return {"signal": self.signal, "value": round(self.value, 1), "threshold": self.threshold,
                "window_s": self.window_s, "first_record": self.first, "alarm": self.at,
                "examples": [{k: e[k] for k in ("time", "src", "dst", "proto", "dport", "kind")} for e in
                             self.examples]}

    def describe(self) -> str:
        unit = {"scan": "distinct destinations", "flood": "unanswered or ICMP packets/s",
                "connections": "new connections/s"}
        return (f"{self.signal}: {self.value:.0f} {unit[self.signal]} in {self.window_s:g} s (threshold "
                f"{self.threshold:g}) from {self.source}")


class _Window:
    """Entries of the last `span` seconds and the sum of their weights, evicted as time goes on (O(1) each)."""

    __slots__ = ("span", "entries", "total")

    def __init__(self, span: float):
        self.span = span
        self.entries: deque = deque()  # (time, weight, key, line)
        self.total = 0.0

    def add(self, t: float, w: float, key: Any, line: dict) -> list[tuple] | tuple:
        """Add one entry; return those that left the window."""
        entries = self.entries
        entries.append((t, w, key, line))
        self.total += w
        horizon = t - self.span
        if entries[0][0] > horizon:
            return ()
        gone = []
        while entries[0][0] <= horizon:
            e = entries.popleft()
            self.total -= e[1]
            gone.append(e)
        return gone


def _count(counts: dict, key: Any, gone: list[tuple] | tuple) -> None:
    """One more of `key`, one fewer of each key of the entries that left the window."""
    counts[key] = counts.get(key, 0) + 1
    for _, _, old, _ in gone:
        left = counts[old] - 1
        if left:
            counts[old] = left
        else:
            del counts[old]


class _Source:
    __slots__ = ("d", "scan", "pairs", "conns", "tuples", "flood", "armed", "last")

    def __init__(self, d: Detection) -> None:
        self.d = d  # this source's thresholds
        self.scan = _Window(d.scan_window_s)
        self.pairs: dict[tuple, int] = {}  # (dst, dport) -> entries of it in the scan window
        self.conns = _Window(d.connections_window_s)
        self.tuples: dict[tuple, int] = {}  # 5-tuple -> entries of it in the connections window
        self.flood = _Window(d.flood_window_s)
        self.armed = {"scan": True, "flood": True, "connections": True}
        self.last = float("-inf")


class Detector:
    def __init__(self, d: Detection, kinds: tuple[str, ...] = ("new", "unreplied", "icmp"),
                 thresholds: Callable[[str], Detection] | None = None, max_sources: int = MAX_SOURCES):
        """`kinds`: which lines count as new connections (the first), then those that count as flood packets.
        `thresholds`: a source's own thresholds (its group's or segment's); default `d` for every source.
        Memory is bounded: a source quiet for a whole window is forgotten (it would be armed afresh anyway,
        its windows empty), and past `max_sources` the least recently seen one is."""
        self.d = d
        self.thresholds = thresholds or (lambda _src: d)
        self.kinds = kinds
        self.sources: OrderedDict[str, _Source] = OrderedDict()  # least recently seen first
        self.max_sources = max_sources
        self.alarms = 0
        self.forgotten = 0  # sources evicted at the cap (not those quiet for a window)

    def feed(self, line: dict[str, Any]) -> list[Alarm]:
        kind = line["kind"]
        if kind not in self.kinds:
            return []
        t, src, w = line["time"], line["src"], line.get("sampling", 1.0)
        self._forget_quiet(t)
        s = self.sources.get(src)
        if s is None:
            if len(self.sources) >= self.max_sources:
                self.sources.popitem(last=False)
                self.forgotten += 1
            s = self.sources[src] = _Source(self.thresholds(src))
        else:
            self.sources.move_to_end(src)
        d = s.d
        if t - s.last > max(d.scan_window_s, d.flood_window_s, d.connections_window_s):
            s.armed = dict.fromkeys(s.armed, True)  # quiet for a whole window: armed again
        s.last = t
        out = []
        if kind == self.kinds[0]:
            pair = (line["dst"], line.get("dport", 0))
            _count(s.pairs, pair, s.scan.add(t, 1.0, pair, line))
            conn = (line["dst"], line.get("dport", 0), line.get("sport", 0), line.get("proto"))
            _count(s.tuples, conn, s.conns.add(t, 1.0, conn, line))
            if s.armed["scan"] and len(s.pairs) >= d.scan_distinct:
                out.append(self._alarm(s, "scan", src, len(s.pairs), d.scan_distinct, s.scan, t))
            # Distinct connections, each standing for `w` (new connections are sampled at one probability).
            rate = len(s.tuples) * w / d.connections_window_s
            if s.armed["connections"] and rate >= d.connections_pps:
                out.append(self._alarm(s, "connections", src, rate, d.connections_pps, s.conns, t))
        else:
            s.flood.add(t, w, None, line)
            rate = s.flood.total / d.flood_window_s
            if s.armed["flood"] and rate >= d.flood_pps:
                out.append(self._alarm(s, "flood", src, rate, d.flood_pps, s.flood, t))
        return out

    def _forget_quiet(self, t: float) -> None:
        """Sources quiet for longer than every window: nothing of them counts any more."""
        sources = self.sources
        while sources:
            src, s = next(iter(sources.items()))
            if t - s.last <= max(s.d.scan_window_s, s.d.flood_window_s, s.d.connections_window_s):
                return
            del sources[src]

    def _alarm(self, s: _Source, signal: str, src: str, value: float, threshold: float, window: _Window,
               t: float) -> Alarm:
        s.armed[signal] = False
        self.alarms += 1
        first = window.entries[0][0] if window.entries else t
        examples = tuple(e[3] for e in list(window.entries)[:EXAMPLES])
        return Alarm(signal, src, value, threshold, window.span, t, first, examples)
