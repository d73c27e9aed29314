"""Quarantine: an endpoint cut off at its own site, whatever the policy says. What it sends is dropped in the
first table, before conntrack (so its open connections stop too); what is delivered to it is dropped in
l2_forward, where every packet for a local port passes (bridge and NAT mode), and for a direct-mode endpoint
where the uplink hands it over. Nothing else changes: release removes exactly these flows."""

from __future__ import annotations

from cloudweave.config.model import Endpoint, FlowLogs, Segment
from flows import cookies
from flows.filters import QUARANTINE_PRIORITY
from flows.flowlog import KIND_QUARANTINE, sample
from flows.tables import CLASSIFY, L2_FORWARD
from flows.values import ETH_ARP, Flow, flow


def quarantine_flows(endpoints: tuple[tuple[Endpoint, Segment], ...], uplink: str | None,
                     logs: FlowLogs | None = None, dpid: int = 0) -> list[Flow]:
    """With flow logs, what the endpoint sends is sampled as it is dropped (what it still tries, for the log)."""
    out: list[Flow] = []
    for ep, seg in endpoints:
        ck = cookies.cookie("quarantine", ep.name)
        sent = (sample(logs.drops, dpid, KIND_QUARANTINE),) if logs is not None and logs.drops > 0 else ()
        out.append(flow(CLASSIFY, QUARANTINE_PRIORITY, ck, sent, in_port=ep.port))
        if seg.mode == "direct":
            if uplink:
                out.append(flow(CLASSIFY, QUARANTINE_PRIORITY, ck, (), in_port=uplink, eth_dst=ep.mac))
                out.append(flow(CLASSIFY, QUARANTINE_PRIORITY, ck, (), in_port=uplink, eth_type=ETH_ARP,
                                arp_tpa=str(ep.ip)))
        else:
            out.append(flow(L2_FORWARD, QUARANTINE_PRIORITY, ck, (), reg6=seg.vni, eth_dst=ep.mac))
    return out
