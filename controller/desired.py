"""The controller's state, and the desired flows of every site compiled from it.

`DesiredCompiler.compile(new, old, old_desired)` returns every site's SwitchState for `new`. A site whose
inputs did not change keeps the very object it had (the core hands a session only what is not `is` the
old one). What it recomputes is counted: `incremental` when it could localise the change, `full` when it
fell back to compiling everything (OVN's rule: a change no handler understands means recompute).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from cloudweave.config.model import Model
from flows.compile import ModelCompiler, SwitchState

LOG = logging.getLogger("cloudweave")
SLOW_COMPILE_S = 0.5  # a compile slower than this is logged with its reason


@dataclass(frozen=True)
class State:
    model: Model
    down: frozenset[tuple[str, str]] = frozenset()  # links seen dead (sorted site pairs)
    next_hops: tuple[tuple[str, str], ...] = ()  # (site, uplink gateway MAC), sorted
    auto: tuple = ()  # the traffic engineer's (key, (paths, shares)), sorted


class DesiredCompiler:
    def __init__(self, metrics: Any = None):
        self.metrics = metrics
        self._compiler: ModelCompiler | None = None
        self._for: State | None = None  # the state self._compiler was made for (its model, down, auto)

    def compile(self, new: State, old: State | None = None,
                old_desired: dict[str, SwitchState] | None = None) -> dict[str, SwitchState]:
        started = time.monotonic()
        hops = dict(new.next_hops)
        same_base = (self._for is not None and old is not None and old_desired is not None
                     and self._for.model is new.model and self._for.down == new.down and self._for.auto == new.auto)
        if same_base:
            before = dict(old.next_hops)
            sites = {s for s in set(hops) | set(before) if hops.get(s) != before.get(s)}
            out = dict(old_desired)
            for site in sites:
                out[site] = self._compiler.site(site, hops)
            kind = "incremental"
        else:
            self._compiler = ModelCompiler(new.model, new.down, dict(new.auto))
            out = self._compiler.all(hops)
            if old_desired:  # unchanged sites keep their object: their sessions hear nothing
                out = {s: old_desired[s] if old_desired.get(s) == st else st for s, st in out.items()}
            kind = "full"
        self._for = new
        elapsed = time.monotonic() - started
        if self.metrics is not None:
            self.metrics.compiles.labels(kind).inc()
            self.metrics.compile_seconds.labels(kind).observe(elapsed)
        if elapsed > SLOW_COMPILE_S:
            LOG.info("compiled %d sites (%s) in %.0f ms", len(out), kind, elapsed * 1000)
        return out
