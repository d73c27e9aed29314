"""Direct mode, the SR-IOV analogue: the endpoint's port talks straight to its site's uplink. Only
anti-spoofing applies: no overlay, no conntrack, no security groups. This trades isolation for speed."""

from __future__ import annotations

from cloudweave.config.model import Model
from flows import cookies
from flows.tables import CLASSIFY, PORT_SECURITY, REG_SEGMENT
from flows.values import Flow, Goto, Output, SetField, flow

ETH_IPV4 = 0x0800
ETH_ARP = 0x0806


def direct_flows(model: Model, site: str) -> list[Flow]:
    uplink = model.site(site).uplink
    segments = {s.name: s for s in model.segments if s.mode == "direct"}
    out: list[Flow] = []
    for ep in sorted((e for e in model.endpoints if e.site == site and e.segment in segments),
                     key=lambda e: e.name):
        ck = cookies.cookie("direct", ep.name)
        vni = segments[ep.segment].vni
        out += [
            flow(CLASSIFY, 100, ck, (SetField(REG_SEGMENT, vni), Goto(PORT_SECURITY)), in_port=ep.port),
            flow(PORT_SECURITY, 100, ck, (Output(uplink),), in_port=ep.port, eth_src=ep.mac, eth_type=ETH_IPV4,
                 ipv4_src=str(ep.ip)),
            flow(PORT_SECURITY, 100, ck, (Output(uplink),), in_port=ep.port, eth_src=ep.mac, eth_type=ETH_ARP,
                 arp_spa=str(ep.ip), arp_sha=ep.mac),
            # From the uplink: what is addressed to the endpoint, and ARP requests for its address.
            flow(CLASSIFY, 100, ck, (Output(ep.port),), in_port=uplink, eth_dst=ep.mac),
            flow(CLASSIFY, 90, ck, (Output(ep.port),), in_port=uplink, eth_type=ETH_ARP, arp_tpa=str(ep.ip)),
        ]
    return out
