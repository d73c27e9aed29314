"""Direct mode, the SR-IOV analogue: the endpoint's port talks straight to its site's uplink. Only
anti-spoofing applies: no overlay, no conntrack, no security groups. This trades isolation for speed."""

from __future__ import annotations

from cloudweave.config.model import Model

from . import cookies
from .overlay import port_entry_flows
from .tables import CLASSIFY
from .values import ETH_ARP, Flow, Output, flow


def direct_flows(model: Model, site: str) -> list[Flow]:
    uplink = model.site(site).uplink
    segments = {s.name: s for s in model.segments if s.mode == "direct"}
    out: list[Flow] = []
    for ep in (e for e in model.endpoints_at(site) if e.segment in segments):
        ck = cookies.cookie("direct", ep.name)
        out += port_entry_flows(ep, segments[ep.segment].vni, (Output(uplink),), ck, ck)
        out += [
            # From the uplink: what is addressed to the endpoint, and ARP requests for its address.
            flow(CLASSIFY, 100, ck, (Output(ep.port),), in_port=uplink, eth_dst=ep.mac),
            flow(CLASSIFY, 90, ck, (Output(ep.port),), in_port=uplink, eth_type=ETH_ARP, arp_tpa=str(ep.ip)),
        ]
    return out
