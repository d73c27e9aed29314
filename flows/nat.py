"""NAT mode: each site is the gateway of its local endpoints of nat-mode segments (distributed, as a DVR).

Out: the endpoint sends to the segment's gateway MAC; its source becomes its alias (Segment.nat_alias), then
conntrack in NAT_CT_ZONE rewrites the alias to the site's NAT address and a port; only a packet conntrack did
translate leaves on the uplink, to the uplink gateway's MAC (learned by the controller). Back: the uplink's
packets to the NAT address go through the same zone; a reply (or a port-forwarded connection) comes out with
the alias as destination, which names exactly one endpoint: two segments may use the same private addresses.
"""

from __future__ import annotations

from ipaddress import IPv4Address

from cloudweave.config.model import NAT_CT_ZONE, Endpoint, Model, Segment, Site

from . import cookies
from .acl import CT_EST, CT_NEW, CT_REL, TRK
from .tables import CLASSIFY, CONNTRACK, FROM_UPLINK, L2_FORWARD, NAT, PORT_SECURITY, REG_FROM_TUNNEL, REG_SEGMENT
from .values import (
    CONTROLLER,
    CT,
    ETH_ARP,
    ETH_IPV4,
    IN_PORT,
    Action,
    Flow,
    Goto,
    Move,
    Nat,
    Output,
    SetField,
    flow,
)

SNAT, DNAT = 0x40, 0x80  # ct_state bits: the packet was source / destination translated
ARP_REQUEST, ARP_REPLY = 1, 2
PORT_FIELD = {6: "tcp_dst", 17: "udp_dst"}


def arp_responder(mac: str, ip: IPv4Address) -> tuple[Action, ...]:
    """Turn an ARP request for `ip` into the reply from `mac`, back out of the port it came in on."""
    return (Move("eth_src", "eth_dst"), SetField("eth_src", mac), SetField("arp_op", ARP_REPLY),
            Move("arp_sha", "arp_tha"), Move("arp_spa", "arp_tpa"), SetField("arp_sha", mac),
            SetField("arp_spa", str(ip)), Output(IN_PORT))


def to_endpoint(seg: Segment, ep: Endpoint) -> tuple[Action, ...]:
    """A packet from the uplink, translated to `ep`: into its segment as if its gateway had routed it."""
    return (SetField("ipv4_dst", str(ep.ip)), SetField("eth_src", seg.gateway_mac), SetField("eth_dst", ep.mac),
            SetField(REG_SEGMENT, seg.vni), SetField(REG_FROM_TUNNEL, FROM_UPLINK), Goto(CONNTRACK))


def nat_flows(model: Model, site: str, next_hop_mac: str | None) -> list[Flow]:
    """The NAT flows of one site; `next_hop_mac` is the uplink gateway's MAC, None while it is unknown (then
    what would leave is dropped)."""
    me = model.site(site)
    segments = {s.name: s for s in model.segments if s.mode == "nat"}
    local = [e for e in model.endpoints_at(site) if e.segment in segments]
    if not local or me.uplink is None or me.nat_ip is None:
        return []
    out = _uplink_flows(me)
    for seg in sorted({segments[e.segment] for e in local}, key=lambda s: s.vni):
        out += _gateway_flows(me, seg, next_hop_mac)
    for ep in local:
        seg = segments[ep.segment]
        alias = str(seg.nat_alias(ep.ip))
        ck = cookies.cookie("nat_endpoint", ep.name)
        out.append(flow(NAT, 100, ck, (SetField("ipv4_src", alias), CT(
            commit=True, table=L2_FORWARD, zone=NAT_CT_ZONE,
            nat=Nat("src", str(me.nat_ip), me.nat_ports.lo, me.nat_ports.hi))),
            reg6=seg.vni, eth_type=ETH_IPV4, eth_dst=seg.gateway_mac, ipv4_src=str(ep.ip)))
        for state in (CT_EST, CT_REL):
            out.append(flow(PORT_SECURITY, 100, ck, to_endpoint(seg, ep), in_port=me.uplink, ct_state=state,
                            eth_type=ETH_IPV4, ipv4_dst=alias))
    eps = {e.name: e for e in local}
    for seg in sorted(segments.values(), key=lambda s: s.vni):
        for fw in seg.forwards:
            ep = eps.get(fw.endpoint)
            if ep is None:
                continue
            dnat = CT(commit=True, zone=NAT_CT_ZONE, nat=Nat("dst", str(seg.nat_alias(ep.ip)), fw.to_port,
                                                             fw.to_port))
            out.append(flow(PORT_SECURITY, 100, cookies.cookie("nat_forward", f"{seg.name}/{fw.proto}/{fw.port}"),
                            (dnat,) + to_endpoint(seg, ep), in_port=me.uplink, ct_state=CT_NEW, eth_type=ETH_IPV4,
                            ipv4_dst=str(me.nat_ip), ip_proto=fw.proto, **{PORT_FIELD[fw.proto]: fw.port}))
    return out


def _uplink_flows(me: Site) -> list[Flow]:
    ck = cookies.cookie("nat_uplink", me.name)
    return [
        flow(CLASSIFY, 110, ck, arp_responder(me.nat_mac, me.nat_ip), in_port=me.uplink, eth_type=ETH_ARP,
             arp_op=ARP_REQUEST, arp_tpa=str(me.nat_ip)),
        # Replies to the controller's requests for the uplink gateway: it learns the next hop's MAC.
        flow(CLASSIFY, 110, ck, (Output(CONTROLLER),), in_port=me.uplink, eth_type=ETH_ARP, arp_op=ARP_REPLY,
             arp_tpa=str(me.nat_ip)),
        flow(CLASSIFY, 105, ck, (CT(table=PORT_SECURITY, zone=NAT_CT_ZONE, nat=Nat()),), in_port=me.uplink,
             eth_type=ETH_IPV4, ipv4_dst=str(me.nat_ip)),
    ]


def _gateway_flows(me: Site, seg: Segment, next_hop_mac: str | None) -> list[Flow]:
    ck = cookies.cookie("nat_gateway", f"{seg.name}@{me.name}")
    leave: tuple[Action, ...] = () if next_hop_mac is None else (
        SetField("eth_src", me.nat_mac), SetField("eth_dst", next_hop_mac), Output(me.uplink))
    return [
        flow(NAT, 100, ck, arp_responder(seg.gateway_mac, seg.gateway), reg6=seg.vni, eth_type=ETH_ARP,
             arp_op=ARP_REQUEST, arp_tpa=str(seg.gateway)),
        # What reaches the gateway MAC from no local endpoint of the segment is not flooded: dropped.
        flow(NAT, 90, ck, (), reg6=seg.vni, eth_dst=seg.gateway_mac),
        # Only what conntrack translated leaves: an untranslated alias never reaches the wire.
        flow(L2_FORWARD, 100, ck, leave, reg6=seg.vni, eth_dst=seg.gateway_mac, eth_type=ETH_IPV4,
             ct_state=(SNAT | TRK, SNAT | TRK)),
        flow(L2_FORWARD, 100, ck, leave, reg6=seg.vni, eth_dst=seg.gateway_mac, eth_type=ETH_IPV4,
             ct_state=(DNAT | TRK, DNAT | TRK)),
        flow(L2_FORWARD, 90, ck, (), reg6=seg.vni, eth_dst=seg.gateway_mac),
    ]


def connection_limit_flows(model: Model, tracked: set[str]) -> list[Flow]:
    """A new connection whose commit the segment's zone refused (its limit reached) carries no mark: drop
    it, and count it in this flow. Every commit sets ct_mark=1 and comes back through table `nat`."""
    out = []
    for seg in sorted(model.segments, key=lambda s: s.vni):
        if seg.max_connections is not None and seg.name in tracked:
            out.append(flow(NAT, 200, cookies.cookie("conn_limit", seg.name), (), reg6=seg.vni,
                            eth_type=ETH_IPV4, ct_state=CT_NEW, ct_mark=0))
    return out
