"""compile(model) -> the desired state of every site's switch (flows.incremental does the work)."""

from __future__ import annotations

import gc
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

from cloudweave.config.model import Model

from .incremental import IncrementalCompiler
from .routing import AutoShares
from .state import SwitchState, TunnelPort, sort_key

__all__ = ["SwitchState", "TunnelPort", "sort_key", "compile_site", "compile_model", "gc_paused"]


def compile_site(model: Model, site: str, next_hops: Mapping[str, str] | None = None,
                 down: frozenset[tuple[str, str]] = frozenset(), quarantined: frozenset[str] = frozenset()
                 ) -> SwitchState:
    """`next_hops`: the uplink gateway's MAC per site, as the controller learned it (NAT mode needs it);
    `quarantined`: the endpoints cut off (cloudweave.secops.quarantine)."""
    with gc_paused():
        return IncrementalCompiler().compile(model, down, next_hops, sites=[site], quarantined=quarantined)[site]


def compile_model(model: Model, next_hops: Mapping[str, str] | None = None,
                  down: frozenset[tuple[str, str]] = frozenset(), auto: AutoShares | None = None
                  ) -> dict[str, SwitchState]:
    with gc_paused():
        return IncrementalCompiler().compile(model, down, next_hops, auto)


@contextmanager
def gc_paused() -> Iterator[None]:
    """Compiling makes millions of small acyclic objects; the cyclic collector scanning them again and again
    took two thirds of the time at 1,000 sites (bench/compile_scale.py). Nothing here makes cycles."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
