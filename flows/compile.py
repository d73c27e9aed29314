"""compile(model) -> the desired state of every site's switch."""

from __future__ import annotations

import gc
from collections import Counter
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, replace
from ipaddress import IPv4Address

from cloudweave.config.model import Model
from flows import cookies, ids
from flows.acl import AclCompiler
from flows.direct import direct_flows
from flows.nat import connection_limit_flows, nat_flows
from flows.overlay import OverlayCompiler
from flows.routing import AutoShares, RoutingCompiler
from flows.services import service_flows
from flows.tables import TableViolation, check_flow, check_group
from flows.topology import tunnel_port_name
from flows.values import Flow, Group, ToGroup


@dataclass(frozen=True)
class TunnelPort:
    name: str
    peer: str
    remote_ip: IPv4Address
    local_ip: IPv4Address


@dataclass(frozen=True)
class SwitchState:
    """What one site's bridge must hold: its tunnel ports (OVSDB), its groups and flows (OpenFlow)."""

    site: str
    dpid: int
    tunnels: tuple[TunnelPort, ...]
    flows: tuple[Flow, ...]
    groups: tuple[Group, ...] = ()


def sort_key(f: Flow) -> tuple:
    # Keys are unique per switch; values as text, since one field can hold a value or a value/mask pair.
    return (f.table, -f.priority, tuple((k, str(v)) for k, v in f.match))


def compile_site(model: Model, site: str, overlay: OverlayCompiler | None = None,
                 acl: AclCompiler | None = None, next_hops: Mapping[str, str] | None = None,
                 routing: RoutingCompiler | None = None) -> SwitchState:
    """`next_hops`: the uplink gateway's MAC per site, as the controller learned it (NAT mode needs it)."""
    overlay = overlay or OverlayCompiler(model)
    acl = acl or AclCompiler(model)
    routing = routing or RoutingCompiler(model, overlay.graph)
    me = model.site(site)
    tunnels = tuple(
        TunnelPort(tunnel_port_name(peer), peer, model.site(peer).vtep, me.vtep)
        for peer in overlay.graph.neighbours(site)
    )
    local = [e for e in model.endpoints if e.site == site]
    tracked = {e.segment for e in local} & acl.with_policy
    route_flows, route_groups = routing.site(site)
    svc_flows, svc_groups = service_flows(model, site, overlay.graph)
    flows = (overlay.site_flows(site) + acl.site_flows(site, local) + direct_flows(model, site)
             + nat_flows(model, site, (next_hops or {}).get(site)) + connection_limit_flows(model, tracked)
             + route_flows + svc_flows)
    flows, groups = settle_group_ids(flows, route_groups + svc_groups)
    for f in flows:
        check_flow(f)
    for g in groups:
        check_group(g)
    if len({f.key for f in flows}) != len(flows):
        dup = next(k for k, n in Counter(f.key for f in flows).items() if n > 1)
        raise TableViolation(f"two flows with the same table, priority and match: {dup}")
    return SwitchState(site, me.dpid, tunnels, tuple(sorted(flows, key=sort_key)), tuple(groups))


def settle_group_ids(flows: list[Flow], groups: list[Group]) -> tuple[list[Flow], list[Group]]:
    """Give groups whose preferred ids collide at this site distinct ids (flows.ids) and re-point the flows
    that send to them (by the group's purpose, which ToGroup carries). Without a collision (nearly always)
    nothing changes."""
    if len({g.group_id for g in groups}) == len(groups):
        return flows, sorted(groups, key=lambda g: g.group_id)
    if len({g.purpose for g in groups}) != len(groups):
        raise TableViolation(f"two groups with one purpose at a site: {sorted(g.purpose for g in groups)}")
    low = (1 << cookies.GROUP_ID_BITS) - 1
    got = ids.allocate({g.purpose: g.group_id & low for g in groups}, 1 << cookies.GROUP_ID_BITS)
    new_id = {g.purpose: cookies.GROUP_OWNER | got[g.purpose] for g in groups}

    def repoint(f: Flow) -> Flow:
        if not any(isinstance(a, ToGroup) and new_id.get(a.purpose, a.group_id) != a.group_id for a in f.actions):
            return f
        return replace(f, actions=tuple(ToGroup(new_id[a.purpose], a.purpose)
                                        if isinstance(a, ToGroup) and a.purpose in new_id else a for a in f.actions))

    return ([repoint(f) for f in flows],
            sorted((replace(g, group_id=new_id[g.purpose]) for g in groups), key=lambda g: g.group_id))


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


class ModelCompiler:
    """One model's compilers, kept to recompile single sites (e.g. when a next hop is learned)."""

    def __init__(self, model: Model, down: frozenset[tuple[str, str]] = frozenset(), auto: AutoShares | None = None):
        """`down`: links seen dead (sorted site pairs); forwarding and path splits avoid them. `auto`: the
        traffic engineer's shares for `split: auto` routes."""
        self.model = model
        with gc_paused():
            self.overlay, self.acl = OverlayCompiler(model, down), AclCompiler(model)
            self.routing = RoutingCompiler(model, self.overlay.graph, auto)

    def site(self, site: str, next_hops: Mapping[str, str] | None = None) -> SwitchState:
        with gc_paused():
            return compile_site(self.model, site, self.overlay, self.acl, next_hops, self.routing)

    def all(self, next_hops: Mapping[str, str] | None = None) -> dict[str, SwitchState]:
        with gc_paused():
            return {s.name: compile_site(self.model, s.name, self.overlay, self.acl, next_hops, self.routing)
                    for s in self.model.sites}


def compile_model(model: Model, next_hops: Mapping[str, str] | None = None,
                  down: frozenset[tuple[str, str]] = frozenset()) -> dict[str, SwitchState]:
    return ModelCompiler(model, down).all(next_hops)
