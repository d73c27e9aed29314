"""The controller's state, and the desired flows of its sites compiled from it.

`DesiredCompiler.compile(state, sites)` returns those sites' SwitchState (the core asks for the sites whose
switches are connected: another is compiled when its switch connects), through flows.incremental: units
whose inputs did not change are reused, and a site none of whose units changed keeps its very object (the
core hands a session only what is not `is` the old one). `tunnels` has every site's tunnel ports. If a
compile raises (a compiler bug), it is tried once more from scratch with an empty memo (OVN's fallback:
recompute); if that raises too, the caller keeps the state in force. Both are counted, and a slow compile
is logged with what it recomputed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from cloudweave.config.model import Model
from cloudweave.flows.compile import SwitchState, gc_paused
from cloudweave.flows.incremental import IncrementalCompiler
from cloudweave.flows.state import TunnelPort

LOG = logging.getLogger("cloudweave")
SLOW_COMPILE_S = 0.5


@dataclass(frozen=True)
class State:
    model: Model
    down: frozenset[tuple[str, str]] = frozenset()  # links seen dead (sorted site pairs)
    next_hops: tuple[tuple[str, str], ...] = ()  # (site, uplink gateway MAC), sorted
    auto: tuple = ()  # the traffic engineer's (key, (paths, shares)), sorted
    quarantined: frozenset[str] = frozenset()  # endpoints cut off (cloudweave.secops.quarantine)
    flowlog_key: bytes | None = None  # the secret of the sites' flow-log domains (cloudweave.flowlog.key)


class DesiredCompiler:
    def __init__(self, metrics: Any = None):
        self.metrics = metrics
        self.compiler = IncrementalCompiler()

    @property
    def tunnels(self) -> Mapping[str, tuple[TunnelPort, ...]]:
        return self.compiler.tunnels

    def compile(self, state: State, sites: Iterable[str] | None = None) -> dict[str, SwitchState]:
        """`sites`: only these (None: every site)."""
        started = time.monotonic()
        names = None if sites is None else sorted(set(sites))
        try:
            out = self._run(state, names)
        except Exception:  # noqa: BLE001 - a memo gone wrong must not stop the controller: recompute
            LOG.exception("incremental compile failed; compiling everything from scratch")
            self.compiler = IncrementalCompiler()
            out = self._run(state, names)  # raises on to the caller, which keeps the state in force
        stats = self.compiler.stats
        kind = "incremental" if stats.handled else "full"  # full: every site visited (units still reused)
        elapsed = time.monotonic() - started
        if self.metrics is not None:
            self.metrics.compiles.labels(kind).inc()
            self.metrics.compile_seconds.labels(kind).observe(elapsed)
            self.metrics.compile_units.labels("recomputed").inc(stats.recomputed)
            self.metrics.compile_units.labels("reused").inc(stats.reused)
        level = logging.INFO if elapsed > SLOW_COMPILE_S else logging.DEBUG
        LOG.log(level, "compiled %d sites in %.0f ms (%s): %d units recomputed, %d reused, %d sites changed",
                len(out), elapsed * 1000, kind, stats.recomputed, stats.reused, stats.sites_changed)
        return out

    def _run(self, state: State, sites: list[str] | None) -> dict[str, SwitchState]:
        with gc_paused():
            return self.compiler.compile(state.model, state.down, dict(state.next_hops), dict(state.auto),
                                         sites=sites, quarantined=state.quarantined,
                                         flowlog_key=state.flowlog_key)
