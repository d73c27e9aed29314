"""compile(model) -> the desired state of every site's switch."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from ipaddress import IPv4Address

from cloudweave.config.model import Model
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
    return (f.table, -f.priority, repr(f.match), repr(f.actions))


def compile_site(model: Model, site: str, overlay: OverlayCompiler | None = None) -> SwitchState:
    overlay = overlay or OverlayCompiler(model)
    me = model.site(site)
    tunnels = tuple(
        TunnelPort(tunnel_port_name(peer), peer, model.site(peer).vtep, me.vtep)
        for peer in overlay.graph.neighbours(site)
    )
    flows = overlay.site_flows(site)
    for f in flows:
        check_flow(f)
    dups = [k for k, n in Counter(f.key for f in flows).items() if n > 1]
    if dups:
        raise TableViolation(f"two flows with the same table, priority and match: {dups[0]}")
    return SwitchState(site, me.dpid, tunnels, tuple(sorted(flows, key=sort_key)))


def compile_model(model: Model) -> dict[str, SwitchState]:
    overlay = OverlayCompiler(model)
    return {s.name: compile_site(model, s.name, overlay) for s in model.sites}
