"""Overlay flows: classify, port security, L2 forwarding and flooding of segments across sites (per segment and
site: flows.incremental calls these with their explicit inputs)."""

from __future__ import annotations

from functools import lru_cache

from cloudweave.config.model import Endpoint, Segment

from . import cookies
from .tables import CLASSIFY, CONNTRACK, FLOOD, L2_FORWARD, PORT_SECURITY, REG_FROM_TUNNEL, REG_SEGMENT, TABLES
from .topology import SiteGraph, tunnel_port_name
from .values import ETH_ARP, ETH_IPV4, Action, Flow, Goto, Output, SetField, flow

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


def segment_scope(graph: SiteGraph, homes: frozenset[str]) -> tuple[frozenset[str], dict[str, list[str]]]:
    """The sites a segment's flows go to (where its endpoints are, its flood tree, and the sites unicast
    between them crosses) and its flood tree, from the sites its endpoints are at."""
    tree = graph.flood_tree(set(homes))
    sites = set(homes) | set(tree)
    for a in homes:
        for b in homes:
            if a < b:
                sites.update(graph.path(a, b))
    return frozenset(sites), tree


def segment_flows(site: str, seg: Segment, members: tuple[Endpoint, ...], hops: tuple[tuple[str, str | None], ...],
                  neighbours: tuple[str, ...], tree_peers: tuple[str, ...]) -> list[Flow]:
    """One segment's overlay flows at one site. `members`: the segment's endpoints by name; `hops`: the next
    hop from this site toward each other site with members (None: unreachable); `neighbours`: the sites this
    one has tunnels to; `tree_peers`: its neighbours on the segment's flood tree."""
    ck = cookies.cookie
    out: list[Flow] = []
    next_hop = dict(hops)
    local = [ep for ep in members if ep.site == site]
    for ep in local:
        out += local_endpoint_flows(ep, seg)
    for ep in members:
        if ep.site == site:
            continue
        hop = next_hop.get(ep.site)
        if hop is not None:
            out.append(flow(L2_FORWARD, 100, ck("l2_remote", ep.name), to_tunnel(seg.vni, hop),
                            reg6=seg.vni, eth_dst=ep.mac))
    for peer in neighbours:
        out.append(flow(CLASSIFY, 100, ck("classify_tunnel", f"{seg.name}/{peer}"),
                        (SetField(REG_SEGMENT, seg.vni), SetField(REG_FROM_TUNNEL, 1), Goto(CONNTRACK)),
                        in_port=tunnel_port_name(peer), tunnel_id=seg.vni))
    out += _flood_flows(seg, local, list(tree_peers))
    return out


def _flood_flows(seg: Segment, local: list[Endpoint], tree_peers: list[str]) -> list[Flow]:
    ck = cookies.cookie("flood", seg.name)
    to_locals = tuple(Output(ep.port) for ep in local)

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
