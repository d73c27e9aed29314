"""compile(model) -> the desired state of every site's switch."""

from __future__ import annotations

import gc
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from ipaddress import IPv4Address

from cloudweave.config.model import Model
from flows.acl import AclCompiler
from flows.direct import direct_flows
from flows.overlay import OverlayCompiler
from flows.tables import TableViolation, check_flow
from flows.topology import tunnel_port_name
from flows.values import Flow


@dataclass(frozen=True)
class TunnelPort:
    name: str
    peer: str
    remote_ip: IPv4Address
    local_ip: IPv4Address


@dataclass(frozen=True)
class SwitchState:
    """What one site's bridge must hold: its tunnel ports (OVSDB) and its flows (OpenFlow)."""

    site: str
    dpid: int
    tunnels: tuple[TunnelPort, ...]
    flows: tuple[Flow, ...]


def sort_key(f: Flow) -> tuple:
    # Keys are unique per switch; values as text, since one field can hold a value or a value/mask pair.
    return (f.table, -f.priority, tuple((k, str(v)) for k, v in f.match))


def compile_site(model: Model, site: str, overlay: OverlayCompiler | None = None,
                 acl: AclCompiler | None = None) -> SwitchState:
    overlay = overlay or OverlayCompiler(model)
    acl = acl or AclCompiler(model)
    me = model.site(site)
    tunnels = tuple(
        TunnelPort(tunnel_port_name(peer), peer, model.site(peer).vtep, me.vtep)
        for peer in overlay.graph.neighbours(site)
    )
    flows = (overlay.site_flows(site) + acl.site_flows(site, (e for e in model.endpoints if e.site == site))
             + direct_flows(model, site))
    for f in flows:
        check_flow(f)
    if len({f.key for f in flows}) != len(flows):
        dup = next(k for k, n in Counter(f.key for f in flows).items() if n > 1)
        raise TableViolation(f"two flows with the same table, priority and match: {dup}")
    return SwitchState(site, me.dpid, tunnels, tuple(sorted(flows, key=sort_key)))


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


def compile_model(model: Model) -> dict[str, SwitchState]:
    with gc_paused():
        overlay, acl = OverlayCompiler(model), AclCompiler(model)
        return {s.name: compile_site(model, s.name, overlay, acl) for s in model.sites}
