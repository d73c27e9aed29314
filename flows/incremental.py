"""Incremental compilation: every site's desired state assembled from units, each a pure function of explicit
inputs, recomputed only when those inputs change (OVN's engine, at the grain of (site, object)).

A unit is (site, kind, object): the overlay flows of one segment at one site, one segment's ACL state at a
site, a site's rule flows, its NAT flows, and so on (`_units` below; docs/controller.md has the table). Its
inputs are values (frozen model objects, tuples): the compiler keeps the inputs and the flows of every unit
and reuses the flows when the next compile's inputs are equal, so what a unit reads is what it is keyed by.
In front of that, change handlers (`_affected`) skip what cannot have changed: the sites outside the scope
of the segments whose endpoints changed, and there the other segments' units; anything they do not handle
falls back to building every unit's inputs. A compile with memoised units equals a compile from scratch
(tests/unit/test_incremental.py checks it on random edit sequences). A site none of whose units changed
keeps its SwitchState object, which is how the controller knows it has nothing to send there.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from functools import cached_property
from ipaddress import IPv4Address
from typing import Any

from cloudweave.config.model import Model, Segment, Site

from . import acl, cookies, ids
from .direct import direct_flows
from .filters import filter_flows
from .flowlog import sampler_flows, site_domain
from .nat import connection_limit_flows, nat_flows
from .overlay import segment_flows, segment_scope, table_misses
from .quarantine import limit_flows, limit_rate, limited_addresses, quarantine_flows
from .routing import AutoShares, RoutingCompiler
from .services import service_flows
from .state import SwitchState, TunnelPort, Unit
from .tables import TableViolation, check_flow, check_group
from .topology import SiteGraph, tunnel_port_name
from .values import Flow, Group, ToGroup

UnitOut = tuple[tuple[Flow, ...], tuple[Group, ...]]
SAME = object()  # a unit's inputs, known by the change handler to be what they were: reuse it as it is


class _All:
    def __contains__(self, _: object) -> bool:
        return True


def changed_or_all(changed: frozenset[str] | None) -> Any:
    """The segments that may have changed: `changed`, or every one."""
    return _All() if changed is None else changed


@dataclass
class CompileStats:
    recomputed: int = 0
    reused: int = 0
    sites_changed: int = 0
    handled: bool = False  # a change handler narrowed the compile (else every site was visited: the fallback)


class _Inputs:
    """What units of one model read, derived lazily, once per compile."""

    def __init__(self, model: Model, graph: SiteGraph, graph_key: Any, next_hops: Mapping[str, str],
                 auto: AutoShares, scope_of: Callable[[frozenset[str]], tuple[frozenset[str], dict]],
                 quarantined: frozenset[str] = frozenset(), flowlog_key: bytes | None = None):
        self.model, self.graph, self.graph_key = model, graph, graph_key
        self.next_hops, self.auto, self.scope_of = next_hops, auto, scope_of
        self.quarantined = quarantined
        self.flowlog_key = flowlog_key

    def domain(self, site: Site) -> int:
        """The site's flow-log observation domain."""
        return site_domain(self.flowlog_key, site.name, site.dpid)

    @cached_property
    def filters_at(self) -> dict[str, tuple]:
        """Each site's filters, in file order."""
        from cloudweave.config.filters import filter_sites

        out: dict[str, list] = {}
        endpoints = {e.name: e for e in self.model.endpoints} if any(
            s.startswith("port:") for f in self.model.filters for s in f.sources) else {}
        for f in self.model.filters:
            for site in filter_sites(f, self.model.sites, endpoints):
                out.setdefault(site, []).append(f)
        return {site: tuple(fs) for site, fs in out.items()}

    @cached_property
    def quarantined_at(self) -> dict[str, tuple]:
        """Each site's quarantined endpoints (known to the model), with their segments, by name."""
        out: dict[str, list] = {}
        for name in sorted(self.quarantined):
            try:
                ep = self.model.endpoint(name)
            except KeyError:
                continue  # an entry for an endpoint the file no longer has: nothing to cut off
            out.setdefault(ep.site, []).append((ep, self.model.segment(ep.segment)))
        return {site: tuple(eps) for site, eps in out.items()}

    @cached_property
    def limited(self) -> tuple[IPv4Address, ...]:
        """The outside addresses held to the limit at every uplink: entries that name no endpoint."""
        return limited_addresses(self.model, self.quarantined)

    @cached_property
    def acl(self) -> acl.AclScope:
        return acl.acl_scope(self.model)

    @cached_property
    def overlay_segments(self) -> list[Segment]:
        return sorted(self.acl.segments.values(), key=lambda s: s.name)

    @cached_property
    def scopes(self) -> dict[str, tuple[frozenset[str], dict]]:
        return {s.name: self.scope_of(frozenset(e.site for e in self.model.endpoints_of_segment(s.name)))
                for s in self.overlay_segments}

    @cached_property
    def member_sites(self) -> dict[str, tuple[str, ...]]:
        """Each overlay segment's sites with endpoints, sorted."""
        return {s.name: tuple(sorted({e.site for e in self.model.endpoints_of_segment(s.name)}))
                for s in self.overlay_segments}

    @cached_property
    def members(self) -> dict[str, tuple[acl.Member, ...]]:
        return acl.group_members(self.model, self.acl)

    @cached_property
    def rules(self) -> tuple:
        return tuple(r for g in self.model.security_groups for r in g.rules)

    @cached_property
    def vnis(self) -> dict[str, int]:
        return {s.name: s.vni for s in self.acl.segments.values()}

    @cached_property
    def routes_key(self) -> tuple:
        """Everything the routing compiler reads; () when there is nothing to route."""
        routes = tuple(r for r in self.model.routes if r.match is not None)
        if not routes:
            return ()
        return (routes, self.graph_key, tuple(sorted(self.auto.items())), self.model.segments, self.model.endpoints)

    @cached_property
    def routing(self) -> RoutingCompiler:
        return RoutingCompiler(self.model, self.graph, self.auto)

    @cached_property
    def services(self) -> tuple:
        return tuple(r for r in self.model.routes if r.service is not None)


class IncrementalCompiler:
    def __init__(self) -> None:
        self._memo: dict[str, dict[Unit, tuple[Any, UnitOut]]] = {}
        self._states: dict[str, SwitchState] = {}
        self._graph: tuple[Any, SiteGraph] | None = None
        self._scopes: dict[frozenset[str], tuple[frozenset[str], dict]] = {}
        self._scopes_graph: SiteGraph | None = None
        self._prev: tuple[Model, Any, dict, dict, frozenset[str]] | None = None
        self._keys: dict[str, dict[tuple, Unit]] = {}  # site -> every flow key -> its unit
        self._key: bytes | None = None  # the flow-log key of the last compile (a new one: every site)
        self._current: set[str] = set()  # the sites the last compile included: their memo is of `_prev`
        self._tunnels: tuple[Any, dict[str, tuple[TunnelPort, ...]]] = (None, {})
        self.stats = CompileStats()

    @property
    def tunnels(self) -> Mapping[str, tuple[TunnelPort, ...]]:
        """Every site's tunnel ports as of the last compile, also of the sites it left out (the OVSDB side
        makes them before a switch connects)."""
        return self._tunnels[1]

    def compile(self, model: Model, down: frozenset[tuple[str, str]] = frozenset(),
                next_hops: Mapping[str, str] | None = None, auto: AutoShares | None = None,
                sites: list[str] | None = None, quarantined: frozenset[str] = frozenset(),
                flowlog_key: bytes | None = None) -> dict[str, SwitchState]:
        """Every site's state (or only `sites`', and of no other site any more), reusing every unit whose inputs
        did not change. `quarantined`: the endpoints cut off (controller.quarantine); `flowlog_key`: the key
        of the flow-log observation domains (flows.flowlog.site_domain)."""
        self.stats = CompileStats()
        graph_key = (model.sites, model.links, down)
        if self._graph is None or self._graph[0] != graph_key:
            self._graph = (graph_key, SiteGraph(model, down))
        graph = self._graph[1]
        if self._scopes_graph is not graph:
            self._scopes, self._scopes_graph = {}, graph
        if self._tunnels[0] is not graph:
            self._tunnels = (graph, {s.name: tunnel_ports(model, graph, s.name) for s in model.sites})
        hops, auto = dict(next_hops or {}), dict(auto or {})
        inputs = _Inputs(model, graph, graph_key, hops, auto, self._scope, quarantined, flowlog_key)
        names = [s.name for s in model.sites] if sites is None else sites
        self._changed_segments = None  # which segments' units may differ (None: any), set by _affected
        visit = self._affected(model, graph_key, hops, auto, quarantined) if flowlog_key == self._key else None
        self._key = flowlog_key
        self.stats.handled = visit is not None
        out = {name: self._site(inputs, name) if visit is None or name in visit or name not in self._states
               else self._states[name] for name in names}
        self._prev = (model, graph_key, hops, auto, quarantined)
        self._current = set(out)
        if sites is None:
            for gone in set(self._memo) - set(out):
                del self._memo[gone]
                self._states.pop(gone, None)
                self._keys.pop(gone, None)
        else:
            # A site left out is not kept up to date: its state would be of older inputs than `_prev`, which
            # the change handlers compare against. Its units stay memoised (by value): compiling it later costs
            # only the units whose inputs changed meanwhile.
            for other in set(self._states) - set(out):
                del self._states[other]
                self._keys.pop(other, None)
        return out

    def _affected(self, model: Model, graph_key: Any, hops: dict, auto: dict, quarantined: frozenset[str]
                  ) -> set[str] | None:
        """The sites whose units may differ from the last compile's (the change handlers), or None for every
        site (the fallback; units are still reused where their inputs are equal). Handled: endpoints of some
        segments changed (their old and new scopes), next hops learned (their sites), endpoints quarantined
        or released (their sites)."""
        if self._prev is None:
            return None
        old, old_graph, old_hops, old_auto, old_quarantined = self._prev
        if old_graph != graph_key or old_auto != auto or (
                model.segments, model.security_groups, model.routes, model.filters, model.flow_logs) != (
                old.segments, old.security_groups, old.routes, old.filters, old.flow_logs):
            return None
        visit = {s for s in set(hops) | set(old_hops) if hops.get(s) != old_hops.get(s)}
        for name in quarantined ^ old_quarantined:
            for m in (model, old):
                try:
                    visit.add(m.endpoint(name).site)
                except KeyError:
                    pass
        if limited_addresses(model, quarantined) != limited_addresses(old, old_quarantined) or (
                limit_rate(model) != limit_rate(old) and limited_addresses(model, quarantined)):
            visit |= {s.name for m in (model, old) for s in m.sites if s.uplink}
        if model.endpoints == old.endpoints:
            self._changed_segments = frozenset()
            return visit
        if model.routes:  # path splits and services read endpoints at every site they reach
            return None
        names = {e.segment for e in model.endpoints} | {e.segment for e in old.endpoints}
        changed = set()
        for seg in names:
            before, after = old.endpoints_of_segment(seg), model.endpoints_of_segment(seg)
            if before != after:
                changed.add(seg)
                for members in (before, after):
                    homes = frozenset(e.site for e in members)
                    visit |= homes | self._scope(homes)[0]
        self._changed_segments = frozenset(changed)
        return visit

    def _scope(self, homes: frozenset[str]) -> tuple[frozenset[str], dict]:
        if homes not in self._scopes:
            self._scopes[homes] = segment_scope(self._graph[1], homes)
        return self._scopes[homes]

    def _site(self, x: _Inputs, site: str) -> SwitchState:
        model = x.model
        me = model.site(site)
        memo = self._memo.get(site, {})
        fresh: dict[Unit, tuple[Any, UnitOut]] = {}
        parts: list[tuple[Unit, UnitOut]] = []
        # The change handler's "these segments did not change" is since the last compile: true of a site's memo
        # only if that compile included the site.
        changed = self._changed_segments if site in self._current else None
        for unit, key, make in _units(x, site, changed, memo):
            have = memo.get(unit)
            if key is SAME and have is not None:  # a segment the change handler knows did not change
                fresh[unit] = have
                parts.append((unit, have[1]))
                self.stats.reused += 1
                continue
            if key is SAME:
                raise AssertionError(f"unit {unit} at {site}: no memo to reuse")  # cannot be: see _units
            if have is not None and have[0] == key:
                out = have[1]
                self.stats.reused += 1
            else:
                out = _checked(make())
                self.stats.recomputed += 1
                if have is not None and have[1] == out:
                    out = have[1]  # the same flows again: keep the object, so nothing downstream sees a change
            fresh[unit] = (key, out)
            parts.append((unit, out))
        self._memo[site] = fresh
        tunnels = self.tunnels[site]
        prev = self._states.get(site)
        if (prev is not None and prev.dpid == me.dpid and prev.tunnels == tunnels and len(prev.units) == len(parts)
                and all(a[0] == b[0] and a[1] is b[1][0] for a, b in zip(prev.units, parts, strict=True))
                and prev.groups == _groups(parts)):
            return prev
        state = self._assemble(site, me.dpid, tunnels, parts, prev)
        self._states[site] = state
        self.stats.sites_changed += 1
        return state

    def _assemble(self, site: str, dpid: int, tunnels: tuple[TunnelPort, ...], parts: list[tuple[Unit, UnitOut]],
                  prev: SwitchState | None) -> SwitchState:
        """The site's state from its units; no two flows may share a key (checked for the units that changed,
        against an index of every key of the site)."""
        groups = [g for _, (_, gs) in parts for g in gs]
        units = [(unit, flows) for unit, (flows, _) in parts]
        index = self._keys.pop(site, None)
        if len({g.group_id for g in groups}) != len(groups):
            units, groups = settle_group_ids(units, groups)
            index = None  # re-pointed flows: index everything again
        old = dict(prev.units) if prev is not None and index is not None else {}
        if not old:
            index = {}
        new = dict(units)
        for unit, flows in old.items():
            if new.get(unit) is not flows:
                for f in flows:
                    if index.get(f.key) == unit:
                        del index[f.key]
        for unit, flows in units:
            if old.get(unit) is not flows:
                for f in flows:
                    if f.key in index:
                        raise TableViolation(f"two flows with the same table, priority and match: {f.key}")
                    index[f.key] = unit
        self._keys[site] = index  # only once it is whole: a failed assembly indexes everything next time
        return SwitchState(site, dpid, tunnels, tuple(units), tuple(sorted(groups, key=lambda g: g.group_id)))


def tunnel_ports(model: Model, graph: SiteGraph, site: str) -> tuple[TunnelPort, ...]:
    me = model.site(site)
    return tuple(TunnelPort(tunnel_port_name(peer), peer, model.site(peer).vtep, me.vtep)
                 for peer in graph.neighbours(site))


def _checked(out: tuple[list[Flow], list[Group]]) -> UnitOut:
    flows, groups = out
    for f in flows:
        check_flow(f)
    for g in groups:
        check_group(g)
    return tuple(flows), tuple(groups)


def _groups(parts: list[tuple[Unit, UnitOut]]) -> tuple[Group, ...]:
    return tuple(sorted((g for _, (_, gs) in parts for g in gs), key=lambda g: g.group_id))


def settle_group_ids(units: list[tuple[Unit, tuple[Flow, ...]]], groups: list[Group]
                     ) -> tuple[list[tuple[Unit, tuple[Flow, ...]]], list[Group]]:
    """Give groups whose preferred ids collide at this site distinct ids (flows.ids) and re-point the flows
    that send to them (by the group's purpose, which ToGroup carries)."""
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

    return ([(unit, tuple(repoint(f) for f in flows)) for unit, flows in units],
            [replace(g, group_id=new_id[g.purpose]) for g in groups])


def _units(x: _Inputs, site: str, changed: frozenset[str] | None = None, memo: Mapping[Unit, Any] | None = None
           ) -> list[tuple[Unit, Any, Callable[[], tuple[list[Flow], list[Group]]]]]:
    """The units of one site: (unit, its inputs, how to compute it from them). With `changed` (the segments
    whose endpoints changed, when nothing else did), a unit of another segment is (unit, SAME, ...): its
    inputs are what they were, and the caller reuses it without building them."""
    model, graph = x.model, x.graph
    me = model.site(site)
    out: list[tuple[Unit, Any, Callable]] = [(("misses",), (), lambda: (table_misses(), []))]
    neighbours = tuple(graph.neighbours(site))
    known = memo if changed is not None and memo is not None else {}
    for seg in x.overlay_segments:
        sites, tree = x.scopes[seg.name]
        if site not in sites:
            continue
        if seg.name not in changed_or_all(changed) and ("overlay", seg.name) in known:
            out.append((("overlay", seg.name), SAME, None))
            continue
        members = model.endpoints_of_segment(seg.name)
        hops = tuple((s, graph.next_hop(site, s)) for s in x.member_sites[seg.name] if s != site)
        key = (seg, members, hops, neighbours, tuple(tree.get(site, ())))
        out.append((("overlay", seg.name), key, lambda k=key: (segment_flows(site, *k), [])))

    scope = x.acl
    local = tuple(e for e in model.endpoints_at(site) if e.segment in scope.segments)
    by_segment: dict[str, list] = {}
    for e in local:
        by_segment.setdefault(e.segment, []).append(e)
    local_segs = sorted(by_segment, key=lambda n: scope.segments[n].vni)
    tracked = frozenset(s for s in local_segs if s in scope.with_policy)
    any_nat = any(scope.segments[s].mode == "nat" for s in local_segs)
    out.append((("acl_state",), (bool(tracked), any_nat),
                lambda: (acl.state_flows(bool(tracked), any_nat), [])))
    for name in local_segs:
        if name not in changed_or_all(changed) and ("acl_segment", name) in known:
            out.append((("acl_segment", name), SAME, None))
            continue
        seg = scope.segments[name]
        key = (seg, name in tracked, name in scope.with_services, tuple(by_segment[name]),
               model.endpoints_of_segment(name) if name in tracked else ())
        out.append((("acl_segment", name), key, lambda k=key: (acl.segment_acl_flows(*k), [])))
    if x.rules and tracked:
        names = frozenset(e.name for e in local)
        key = (x.rules, names, tracked, x.members, x.vnis)
        out.append((("acl_rules",), key, lambda: (acl.rule_flows(x.rules, names, tracked, x.members, x.vnis), [])))

    direct = tuple(s for s in model.segments if s.mode == "direct")
    if direct:
        eps = tuple(e for e in model.endpoints_at(site) if e.segment in {s.name for s in direct})
        key = (me.uplink, direct, eps)
        out.append((("direct",), key, lambda: (direct_flows(model, site), [])))
    nat = tuple(s for s in model.segments if s.mode == "nat")
    if nat:
        eps = tuple(e for e in model.endpoints_at(site) if e.segment in {s.name for s in nat})
        hop = x.next_hops.get(site)
        key = (me, nat, eps, hop)
        out.append((("nat",), key, lambda: (nat_flows(model, site, hop), [])))
    limited = tuple((s.name, s.vni) for s in model.segments if s.max_connections is not None and s.name in tracked)
    if limited:
        out.append((("conn_limit",), limited, lambda: (connection_limit_flows(model, set(tracked)), [])))
    if x.routes_key:
        out.append((("routes",), x.routes_key, lambda: x.routing.site(site)))
    if x.services:
        backends = tuple(model.endpoint(n) for r in x.services for n, _ in r.backends)
        here = frozenset(e.segment for e in model.endpoints_at(site))  # as service_flows reads it
        key = (x.services, x.graph_key, here, backends, model.segments)
        out.append((("services",), key, lambda: service_flows(model, site, graph)))
    filters = x.filters_at.get(site, ())
    if filters:
        ports = tuple((e.name, e.port) for e in model.endpoints_at(site)) if any(
            s == "local" or s.startswith("port:") for f in filters for s in f.sources) else ()
        key = (filters, neighbours, me.uplink, ports, model.flow_logs, x.domain(me))
        out.append((("filters",), key, lambda: (filter_flows(filters, site, model, neighbours, x.domain(me)), [])))
    cut_off = x.quarantined_at.get(site, ())
    if cut_off:
        key = (cut_off, me.uplink, model.flow_logs, x.domain(me))
        out.append((("quarantine",), key, lambda: (quarantine_flows(cut_off, me.uplink, model.flow_logs,
                                                                    x.domain(me)), [])))
    if x.limited and me.uplink:
        rate = limit_rate(model)
        key = (x.limited, me.uplink, rate, model.flow_logs, x.domain(me))
        out.append((("limit",), key, lambda: (limit_flows(x.limited, me.uplink, rate, model.flow_logs,
                                                          x.domain(me)), [])))
    if model.flow_logs is not None and tracked:
        key = (model.flow_logs, x.domain(me))
        out.append((("flowlog",), key, lambda: (sampler_flows(model.flow_logs, x.domain(me)), [])))
    return out
