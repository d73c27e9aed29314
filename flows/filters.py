"""Filters: stateless drops and rate limits in the first table, before port security and conntrack, so that a
flood costs the switch one lookup per packet (cloudweave.config.filters reads them)."""

from __future__ import annotations

from ipaddress import IPv4Address
from itertools import product

from cloudweave.config.filters import MAX_FILTERS
from cloudweave.config.model import Endpoint, Filter, FlowLogs, Model

from . import cookies
from .acl import PORT_FIELD, net_match
from .routing import SRC_PORT_FIELD
from .tables import CLASSIFY, REG_FILTERED
from .topology import tunnel_port_name
from .values import ETH_IPV4, Action, Flow, MatchValue, Meter, Resubmit, SetField, flow

FILTER_TOP = 39_000  # the first filter's priority; each next one is one lower (config.filters.MAX_FILTERS)
QUARANTINE_PRIORITY = 40_000  # above every filter (flows.quarantine)
LIMIT_PRIORITY = FILTER_TOP - MAX_FILTERS  # below every filter: what a filter drops or limits, it decides


def filter_priority(f: Filter) -> int:
    return FILTER_TOP - f.index


def filter_actions(f: Filter, logs: FlowLogs | None = None, domain: int = 0) -> tuple[Action, ...]:
    """Drop (with a flow-log sample of what it drops); or meter, then classify again with the register bit
    set, so that no filter sees it twice."""
    if f.action == "drop":
        if logs is not None and logs.drops > 0:
            from .flowlog import KIND_FILTER, sample

            return (sample(logs.drops, domain, KIND_FILTER, f.index),)
        return ()
    r = f.rate
    return (Meter(cookies.meter_id(f"filter/{f.name}"), r.unit, r.value, r.burst), SetField(REG_FILTERED, 1),
            Resubmit(CLASSIFY))


def in_ports(f: Filter, site: str, model: Model, neighbours: tuple[str, ...]) -> list[str | None]:
    """The ports a filter's packets come in on at `site`; [None] for anywhere, [] for nowhere here."""
    if not f.sources:
        return [None]
    me = model.site(site)
    out: set[str] = set()
    for src in f.sources:
        kind, _, name = src.partition(":")
        if src == "local":
            out.update(e.port for e in model.endpoints_at(site))
        elif src == "tunnel":
            out.update(tunnel_port_name(p) for p in neighbours)
        elif src == "uplink" and me.uplink:
            out.add(me.uplink)
        elif kind == "port" and model.endpoint(name).site == site:
            out.add(model.endpoint(name).port)
        elif kind == "tunnel" and name in neighbours:
            out.add(tunnel_port_name(name))
    return sorted(out)


def filter_flows(filters: tuple[Filter, ...], site: str, model: Model, neighbours: tuple[str, ...],
                 domain: int | None = None) -> list[Flow]:
    """The filter flows of one site: each filter's match, crossed with where it comes in. `domain`: the site's
    flow-log observation domain (flows.flowlog.site_domain; default without a key)."""
    if domain is None:
        domain = model.site(site).dpid & 0xFFFFFFFF
    out: list[Flow] = []
    for f in filters:
        m = f.match
        base: dict[str, MatchValue] = {"eth_type": ETH_IPV4, REG_FILTERED: 0}
        if m.proto is not None:
            base["ip_proto"] = m.proto
        srcs = [net_match(n) for n in m.src_nets] if m.src is not None else [None]
        dsts = [net_match(n) for n in m.dst_nets] if m.dst is not None else [None]
        sports = [p for r in m.src_ports for p in r.pieces()] or [None]
        dports = [p for r in m.dst_ports for p in r.pieces()] or [None]
        ck, actions = cookies.cookie("filter", f.name), filter_actions(f, model.flow_logs, domain)
        for port, src, dst, sp, dp in product(in_ports(f, site, model, neighbours), srcs, dsts, sports, dports):
            match = dict(base)
            for field, value in (("in_port", port), ("ipv4_src", src), ("ipv4_dst", dst)):
                if value is not None:
                    match[field] = value
            if sp is not None:
                match[SRC_PORT_FIELD[m.proto]] = sp
            if dp is not None:
                match[PORT_FIELD[m.proto]] = dp
            out.append(flow(CLASSIFY, filter_priority(f), ck, actions, **match))
    return out


def filter_matches(f: Filter, site: str, came_in: str, src_ip: IPv4Address, dst_ip: IPv4Address, proto: int,
                   dst_port: int | None, src_port: int | None = None) -> bool:
    """Does `f` match this packet at `site`? `came_in`: 'port:ENDPOINT', 'tunnel:SITE' or 'uplink'. A port
    the caller does not know (None) matches only a filter that does not ask for it."""
    if f.sites and site not in f.sites:
        return False
    if f.sources:
        kind = came_in.partition(":")[0]
        general = {"port": "local", "tunnel": "tunnel"}.get(kind, came_in)
        if came_in not in f.sources and general not in f.sources:
            return False
    m = f.match
    if m.proto is not None and m.proto != proto:
        return False
    for nets, ip, given in ((m.src_nets, src_ip, m.src), (m.dst_nets, dst_ip, m.dst)):
        if given is not None and not any(ip in n for n in nets):
            return False
    for ranges, port in ((m.src_ports, src_port), (m.dst_ports, dst_port)):
        if ranges and (port is None or not any(r.lo <= port <= r.hi for r in ranges)):
            return False
    return True


def deciding_filter(model: Model, src: Endpoint | IPv4Address, dst: Endpoint | IPv4Address, proto: int,
                    dst_port: int | None, src_port: int | None = None) -> tuple[Filter, str] | None:
    """The filter that drops (or rate-limits) a packet from `src` to `dst`, and the site where it does: at the
    source's site as it comes in from the source's port, then at the destination's site as it comes in (by
    the tunnel from the site before it on the shortest path, or the uplink); sites that relay it between them
    see it come in by a tunnel too."""
    if not model.filters:
        return None
    from .topology import SiteGraph

    src_ip = src.ip if isinstance(src, Endpoint) else src
    dst_ip = dst.ip if isinstance(dst, Endpoint) else dst
    hops: list[tuple[str, str]] = []
    if isinstance(src, Endpoint):
        hops.append((src.site, f"port:{src.name}"))
    if isinstance(dst, Endpoint):
        if not isinstance(src, Endpoint):
            hops.append((dst.site, "uplink"))
        elif dst.site != src.site:
            graph, at = SiteGraph(model), src.site
            while at != dst.site and len(hops) <= len(model.sites):
                step = graph.next_hop(at, dst.site)
                if step is None:
                    break
                hops.append((step, f"tunnel:{at}"))
                at = step
    for site, came_in in hops:
        for f in model.filters:
            if filter_matches(f, site, came_in, src_ip, dst_ip, proto, dst_port, src_port):
                return f, site
    return None
