"""Overlay flows: classify, port security, L2 forwarding and flooding of segments across sites."""

from __future__ import annotations

from collections import defaultdict
from functools import lru_cache

from cloudweave.config.model import Endpoint, Model, Segment
from flows import cookies
from flows.tables import CLASSIFY, CONNTRACK, FLOOD, L2_FORWARD, PORT_SECURITY, REG_FROM_TUNNEL, REG_SEGMENT, TABLES
from flows.topology import SiteGraph, tunnel_port_name
from flows.values import ETH_ARP, ETH_IPV4, Action, Flow, Goto, Output, SetField, flow

AFTER_PORT_SECURITY = CONNTRACK


def table_misses() -> list[Flow]:
    """The lowest-priority flow of every table: drop, or go on to the next table."""
    out = []
    for t in TABLES:
        actions = (Goto(t.miss),) if t.miss is not None else ()
        out.append(flow(t.id, 0, cookies.cookie("table_miss", t.name), actions))
    return out


def port_entry_flows(ep: Endpoint, vni: int, admitted: tuple[Action, ...], classify_cookie: int,
                     security_cookie: int) -> list[Flow]:
    """Classify the endpoint's port into its segment and let only its own addresses in (IPv4, and ARP with
    its own SHA+SPA); what passes takes `admitted`."""
    return [
        flow(CLASSIFY, 100, classify_cookie, (SetField(REG_SEGMENT, vni), Goto(PORT_SECURITY)), in_port=ep.port),
        flow(PORT_SECURITY, 100, security_cookie, admitted,
             in_port=ep.port, eth_src=ep.mac, eth_type=ETH_IPV4, ipv4_src=str(ep.ip)),
        flow(PORT_SECURITY, 100, security_cookie, admitted,
             in_port=ep.port, eth_src=ep.mac, eth_type=ETH_ARP, arp_spa=str(ep.ip), arp_sha=ep.mac),
    ]


def local_endpoint_flows(ep: Endpoint, seg: Segment) -> list[Flow]:
    """A bridge-mode endpoint's port: classify, anti-spoofing, and delivery to it."""
    ck = cookies.cookie
    return port_entry_flows(ep, seg.vni, (Goto(AFTER_PORT_SECURITY),), ck("classify_port", ep.name),
                            ck("port_security", ep.name)) + [
        flow(L2_FORWARD, 100, ck("l2_local", ep.name), (Output(ep.port),), reg6=seg.vni, eth_dst=ep.mac),
    ]


@lru_cache(maxsize=1 << 16)
def to_tunnel(vni: int, peer: str) -> tuple[SetField, Output]:
    return SetField("tunnel_id", vni), Output(tunnel_port_name(peer))


class OverlayCompiler:
    """Computes the overlay flows of every site from one model; the site graph is shared by all sites."""

    def __init__(self, model: Model, down: frozenset[tuple[str, str]] = frozenset()):
        self.model = model
        self.graph = SiteGraph(model, down)
        # Direct-mode segments bypass the overlay (flows/direct.py).
        self.segments = {s.name: s for s in model.segments if s.mode != "direct"}
        self.members: dict[str, list[Endpoint]] = defaultdict(list)
        for ep in sorted(model.endpoints, key=lambda e: e.name):
            if ep.segment in self.segments:
                self.members[ep.segment].append(ep)
        self.scope = {name: self._scope(name) for name in self.segments}

    def _scope(self, segment: str) -> tuple[set[str], dict[str, list[str]]]:
        """The sites a segment's flows go to (its own, its flood tree's, and unicast transit) and its tree."""
        homes = {ep.site for ep in self.members[segment]}
        tree = self.graph.flood_tree(homes)
        sites = set(homes) | set(tree)
        for a in homes:
            for b in homes:
                if a < b:
                    sites.update(self.graph.path(a, b))
        return sites, tree

    def site_flows(self, site: str) -> list[Flow]:
        out = table_misses()
        for seg_name, seg in sorted(self.segments.items()):
            sites, tree = self.scope[seg_name]
            if site not in sites:
                continue
            out += self._segment_flows(site, seg, tree)
        return out

    def _segment_flows(self, site: str, seg: Segment, tree: dict[str, list[str]]) -> list[Flow]:
        ck = cookies.cookie
        out: list[Flow] = []
        local = [ep for ep in self.members[seg.name] if ep.site == site]
        for ep in local:
            out += local_endpoint_flows(ep, seg)
        for ep in self.members[seg.name]:
            if ep.site == site:
                continue
            hop = self.graph.next_hop(site, ep.site)
            if hop is not None:
                out.append(flow(L2_FORWARD, 100, ck("l2_remote", ep.name), to_tunnel(seg.vni, hop),
                                reg6=seg.vni, eth_dst=ep.mac))
        for peer in self.graph.neighbours(site):
            out.append(flow(CLASSIFY, 100, ck("classify_tunnel", f"{seg.name}/{peer}"),
                            (SetField(REG_SEGMENT, seg.vni), SetField(REG_FROM_TUNNEL, 1), Goto(CONNTRACK)),
                            in_port=tunnel_port_name(peer), tunnel_id=seg.vni))
        out += self._flood_flows(site, seg, local, tree)
        return out

    def _flood_flows(self, site: str, seg: Segment, local: list[Endpoint], tree: dict[str, list[str]]) -> list[Flow]:
        ck = cookies.cookie("flood", seg.name)
        to_locals = tuple(Output(ep.port) for ep in local)
        tree_peers = tree.get(site, [])

        def to_peers(peers: list[str]) -> tuple:
            if not peers:
                return ()
            return (SetField("tunnel_id", seg.vni),) + tuple(Output(tunnel_port_name(p)) for p in peers)

        out = [
            # From a local port: every other local port and every tree neighbour.
            flow(FLOOD, 100, ck, to_locals + to_peers(tree_peers), reg6=seg.vni, reg7=0),
            # From a tunnel that is not on the tree (never expected): local ports only, so nothing can loop.
            flow(FLOOD, 90, ck, to_locals, reg6=seg.vni, reg7=1),
        ]
        for peer in tree_peers:
            # From a tree neighbour: local ports and the rest of the tree (split horizon).
            out.append(flow(FLOOD, 100, ck, to_locals + to_peers([p for p in tree_peers if p != peer]),
                            reg6=seg.vni, reg7=1, in_port=tunnel_port_name(peer)))
        return out
