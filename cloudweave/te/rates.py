"""Byte counters sampled at intervals -> rates, without the lies counters tell.

A counter that goes down was reset (switch restart, flow replaced): that interval has no rate, and the new
value is the new baseline, never a negative or a spiked rate. A sample that is missing (the site did not
answer) gives no rate either, and the site is reported stale rather than counted as zero demand.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum


class Outcome(Enum):
    RATE = "rate"
    FIRST = "first sample"
    RESET = "counter reset"
    STALE = "no answer"


@dataclass
class RateMeter:
    """Turns (time, cumulative bytes) samples of one counter into bits per second."""

    last_time: float | None = None
    last_bytes: int | None = None
    missed: int = 0

    def sample(self, now: float, total_bytes: int | None) -> tuple[Outcome, float | None]:
        if total_bytes is None:
            self.missed += 1
            return Outcome.STALE, None
        self.missed = 0
        prev_t, prev_b = self.last_time, self.last_bytes
        self.last_time, self.last_bytes = now, total_bytes
        if prev_t is None or prev_b is None:
            return Outcome.FIRST, None
        if total_bytes < prev_b:
            return Outcome.RESET, None
        dt = now - prev_t
        if dt <= 0:
            return Outcome.FIRST, None
        return Outcome.RATE, (total_bytes - prev_b) * 8 / dt


@dataclass
class Meters:
    """One meter per key (e.g. route, source site, destination site)."""

    meters: dict = field(default_factory=dict)

    def sample(self, key: object, now: float, total_bytes: int | None) -> tuple[Outcome, float | None]:
        return self.meters.setdefault(key, RateMeter()).sample(now, total_bytes)
