"""Path splits: a route's traffic between two sites spread over several paths by weight.

At the source site a routed class (matched on the inner packet, from a local port, toward the destination
site's endpoints) goes to a select group whose buckets are the paths' first tunnels, weighted so that OVS's
hashing realises the split (flows/weights.py). A bucket writes its path into the connection's ct_mark
(bits 8..15) and sends the packet back to this table (OVS skips a ct action in a bucket unless it
recirculates), where it and the connection's later packets follow the mark, not the hash: when the weights change,
new connections take the new split and existing ones keep their path. Each bucket watches its tunnel port:
when BFD or the carrier says the tunnel is down, OVS stops using it at once, and the controller recompiles
without the dead link (pinned connections then go through the group again and are pinned anew). Relays
forward what comes in on the tunnel from the previous hop of a path to the next hop, without splitting.
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import networkx as nx

from cloudweave.config.model import Endpoint, Model, Route, RouteMatch, Segment
from cloudweave.config.routes import AUTO_PATHS
from cloudweave.te.paths import candidate_paths

from . import cookies
from .acl import PORT_FIELD, net_match
from .tables import FROM_LOCAL, FROM_TUNNEL, ROUTE
from .topology import SiteGraph, tunnel_port_name
from .values import CT, ETH_IPV4, Bucket, Flow, Group, MatchValue, Output, SetField, ToGroup, flow
from .weights import weights_for

AutoShares = Mapping[tuple[str, str, str], tuple[Sequence[tuple[str, ...]], Sequence[float]]]  # key -> (paths, shares)

ROUTE_PRIORITY_BASE = 1000
SRC_PORT_FIELD = {6: "tcp_src", 17: "udp_src", 132: "sctp_src"}
PATH_MARK_SHIFT, PATH_MARK_MASK = 8, 0xFF00  # ct_mark bits that hold a connection's path (bucket id + 1)


def route_group_purpose(route: str, src: str, dst: str) -> str:
    return f"route/{route}/{src}/{dst}"


def route_group_id(route: str, src: str, dst: str) -> int:
    """The select group of a route's traffic from src to dst, at src."""
    return cookies.group_id(route_group_purpose(route, src, dst))


def route_cookie(route: str, src: str, dst: str) -> int:
    """The cookie of that traffic's first-hop flows at src: its counters are the traffic matrix's."""
    return cookies.cookie("route", f"{route}/{src}/{dst}")


def path_mark(bucket_id: int) -> int:
    return (bucket_id + 1) << PATH_MARK_SHIFT



def route_of(model: Model, src: Endpoint, dst: Endpoint, proto: int, port: int | None) -> Route | None:
    """The path split that carries a packet from `src` to `dst` (another site), or None: the shortest path.
    The same reading of a match as the flows compiled below: the highest priority wins (check refuses two
    routes of one priority that can match one packet)."""
    if src.site == dst.site:
        return None
    best: Route | None = None
    for r in model.routes:
        m = r.match
        if m is None or (best is not None and r.priority <= best.priority):
            continue
        if (src.site, dst.site) not in model.route_pairs(r):
            continue
        if m.proto is not None and m.proto != proto or m.segment is not None and m.segment != src.segment:
            continue
        if not _peer_has(m.src, m.src_net, src) or not _peer_has(m.dst, m.dst_net, dst):
            continue
        if m.dst_ports and (port is None or not any(p.lo <= port <= p.hi for p in m.dst_ports)):
            continue
        if m.src_ports:
            continue  # explain has no source port: a route on source ports is not said to carry it
        best = r
    return best


def _peer_has(peer: str | None, net: object, ep: Endpoint) -> bool:
    if peer is None:
        return True
    if net is not None:
        return ep.ip in net
    return peer in ep.groups


@dataclass(frozen=True)
class PairPlan:
    """The paths one route uses from `src` to `dst`, with the share each should take."""

    route: Route
    src: str
    dst: str
    paths: tuple[tuple[str, ...], ...]
    shares: tuple[float, ...]
    bucket_ids: tuple[int, ...]


class RoutingCompiler:
    """`auto`: the traffic engineer's paths and shares for `split: auto` routes, per (route, source,
    destination); without them such a route takes its shortest path (its other candidates have no bucket)."""

    def __init__(self, model: Model, graph: SiteGraph, auto: AutoShares | None = None):
        self.model = model
        self.graph = graph
        self.auto = auto or {}
        self.plans: list[PairPlan] = []
        for r in model.routes:
            if r.match is not None:
                self._plan(r)
        self.by_site: dict[str, list[PairPlan]] = defaultdict(list)
        self.relays: dict[str, list[tuple[PairPlan, str, str]]] = defaultdict(list)  # site -> (plan, prev, next)
        for p in self.plans:
            self.by_site[p.src].append(p)
            for path in p.paths:
                for prev, here, nxt in zip(path, path[1:], path[2:], strict=False):
                    self.relays[here].append((p, prev, nxt))

    def _plan(self, r: Route) -> None:
        """Keep the paths that are up and that no relay would confuse with another path of the route."""
        relay_next: dict[tuple[str, str, str], str] = {}  # (prev, relay, destination) -> next hop
        for src, dst in self.model.route_pairs(r):
            candidates = self._candidates(r, src, dst)
            kept: list[tuple[int, tuple[str, ...], float]] = []
            for bucket_id, path, w in candidates:
                if w <= 0:
                    continue  # a path the split does not use now (its bucket id stays reserved)
                if any(not self.graph.graph.has_edge(a, b) for a, b in zip(path, path[1:], strict=False)):
                    continue  # over a link that is down
                steps = {(prev, here, dst): nxt for prev, here, nxt in zip(path, path[1:], path[2:], strict=False)}
                if any(relay_next.get(k, v) != v for k, v in steps.items()):
                    continue  # a relay would have to send it elsewhere than an earlier path of the route
                relay_next.update(steps)
                kept.append((bucket_id, path, w))
            if kept and sum(w for _, _, w in kept) > 0:
                self.plans.append(PairPlan(r, src, dst, tuple(p for _, p, _ in kept), tuple(w for _, _, w in kept),
                                           tuple(b for b, _, _ in kept)))

    def _candidates(self, r: Route, src: str, dst: str) -> list[tuple[int, tuple[str, ...], float]]:
        if r.paths:
            return [(i, p.sites, p.weight) for i, p in enumerate(r.paths)]
        if r.auto:
            paths, shares = self.auto.get((r.name, src, dst), (None, None))
            if paths is None:  # nothing learned yet: the shortest path, until demand says otherwise
                paths = candidate_paths(self.graph.declared, src, dst, AUTO_PATHS)
                shares = [1.0] + [0.0] * (len(paths) - 1)
            # Bucket ids are the paths' places in the traffic engineer's list: kept as paths are added.
            return [(i, tuple(p), w) for i, (p, w) in enumerate(zip(paths, shares, strict=True))]
        k = r.k_shortest
        try:
            paths = list(itertools.islice(nx.shortest_simple_paths(self.graph.declared, src, dst), k))
        except nx.NetworkXNoPath:
            return []
        # Bucket ids by rank among the declared paths: they stay put when a link goes down and comes back.
        return [(i, tuple(p), 1.0) for i, p in enumerate(paths)]

    def site(self, site: str) -> tuple[list[Flow], list[Group]]:
        flows: list[Flow] = []
        groups: list[Group] = []
        for p in self.by_site.get(site, []):
            gid = route_group_id(p.route.name, p.src, p.dst)
            purpose = route_group_purpose(p.route.name, p.src, p.dst)
            weights = weights_for(p.shares)
            groups.append(Group(gid, tuple(
                Bucket(bid, w, (CT(commit=True, table=ROUTE, mark=path_mark(bid), mark_mask=PATH_MARK_MASK),),
                       tunnel_port_name(path[1]))
                for bid, path, w in zip(p.bucket_ids, p.paths, weights, strict=True)),
                name=f"route {p.route.name} {p.src}->{p.dst}: " + ", ".join(
                    f"{' -> '.join(path)} {share / sum(p.shares):.0%}" for path, share in zip(p.paths, p.shares,
                                                                                              strict=True)),
                purpose=purpose))
            ck = route_cookie(p.route.name, p.src, p.dst)
            prio = ROUTE_PRIORITY_BASE + 2 * p.route.priority
            for seg, ep, match in self._classes(p.route, site, p.dst):
                flows.append(flow(ROUTE, prio, ck, (SetField("tunnel_id", seg.vni), ToGroup(gid, purpose)),
                                  reg7=FROM_LOCAL, eth_dst=ep.mac, **match))
                for bid, path in zip(p.bucket_ids, p.paths, strict=True):
                    flows.append(flow(ROUTE, prio + 1, ck, (SetField("tunnel_id", seg.vni),
                                                            Output(tunnel_port_name(path[1]))),
                                      reg7=FROM_LOCAL, eth_dst=ep.mac, ct_mark=(path_mark(bid), PATH_MARK_MASK),
                                      **match))
        seen = set()
        for p, prev, nxt in self.relays.get(site, []):
            ck = cookies.cookie("route_relay", f"{p.route.name}/{p.src}/{p.dst}")
            for seg, ep, match in self._classes(p.route, None, p.dst):
                f = flow(ROUTE, ROUTE_PRIORITY_BASE + 2 * p.route.priority, ck,
                         (SetField("tunnel_id", seg.vni), Output(tunnel_port_name(nxt))),
                         in_port=tunnel_port_name(prev), reg7=FROM_TUNNEL, eth_dst=ep.mac, **match)
                if f.key not in seen:
                    seen.add(f.key)
                    flows.append(f)
        return flows, groups

    def _classes(self, r: Route, src_site: str | None, dst_site: str) -> list[tuple[Segment, Endpoint, dict]]:
        """(segment, destination endpoint, match) for every flow that classifies the route toward dst_site."""
        m: RouteMatch = r.match
        out = []
        for seg in self.model.route_segments(r):
            dsts = [e for e in self.model.endpoints_of_segment(seg.name) if e.site == dst_site
                    and (m.dst is None or m.dst_net is not None or m.dst in e.groups)]
            if not dsts:
                continue
            if m.src is not None and m.src_net is None:
                srcs = [str(e.ip) for e in self.model.endpoints_of_segment(seg.name) if m.src in e.groups
                        and (src_site is None or e.site == src_site)]
                if not srcs:
                    continue
                src_values: list[MatchValue | None] = list(srcs)
            else:
                src_values = [net_match(m.src_net) if m.src_net is not None else None]
            dst_pieces = [p for rng in m.dst_ports for p in rng.pieces()] or [None]
            src_pieces = [p for rng in m.src_ports for p in rng.pieces()] or [None]
            for ep, sv, dp, sp in itertools.product(sorted(dsts, key=lambda e: e.name), src_values, dst_pieces,
                                                   src_pieces):
                match: dict[str, MatchValue] = {"reg6": seg.vni, "eth_type": ETH_IPV4}
                if m.proto is not None:
                    match["ip_proto"] = m.proto
                if sv is not None:
                    match["ipv4_src"] = sv
                if m.dst_net is not None:
                    match["ipv4_dst"] = net_match(m.dst_net)
                if dp is not None:
                    match[PORT_FIELD[m.proto]] = dp
                if sp is not None:
                    match[SRC_PORT_FIELD[m.proto]] = sp
                out.append((seg, ep, match))
        return out
