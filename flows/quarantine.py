"""Quarantine: an endpoint cut off at its own site, whatever the policy says. What it sends is dropped in the
first table, before conntrack (so its open connections stop too); what is delivered to it is dropped in
l2_forward, where every packet for a local port passes (bridge and NAT mode), and for a direct-mode endpoint
where the uplink hands it over. Nothing else changes: release removes exactly these flows.

An address outside (a flood's source that is no endpoint, coming in through an uplink) is not cut off but
held to the detection's `limit` at every uplink, by a meter in the first table: its victim keeps its
traffic, and so does the address, below the limit."""

from __future__ import annotations

from ipaddress import IPv4Address

from cloudweave.config.model import Detection, Endpoint, FlowLogs, Model, Rate, Segment

from . import cookies
from .filters import LIMIT_PRIORITY, QUARANTINE_PRIORITY
from .flowlog import KIND_LIMITED, KIND_QUARANTINE, sample
from .tables import CLASSIFY, L2_FORWARD, REG_FILTERED
from .values import ETH_ARP, ETH_IPV4, Flow, Meter, Resubmit, SetField, flow


def quarantine_flows(endpoints: tuple[tuple[Endpoint, Segment], ...], uplink: str | None,
                     logs: FlowLogs | None = None, domain: int = 0) -> list[Flow]:
    """With flow logs, what the endpoint sends is sampled as it is dropped (what it still tries, for the log)."""
    out: list[Flow] = []
    for ep, seg in endpoints:
        ck = cookies.cookie("quarantine", ep.name)
        sent = (sample(logs.drops, domain, KIND_QUARANTINE),) if logs is not None and logs.drops > 0 else ()
        out.append(flow(CLASSIFY, QUARANTINE_PRIORITY, ck, sent, in_port=ep.port))
        if seg.mode == "direct":
            if uplink:
                out.append(flow(CLASSIFY, QUARANTINE_PRIORITY, ck, (), in_port=uplink, eth_dst=ep.mac))
                out.append(flow(CLASSIFY, QUARANTINE_PRIORITY, ck, (), in_port=uplink, eth_type=ETH_ARP,
                                arp_tpa=str(ep.ip)))
        else:
            out.append(flow(L2_FORWARD, QUARANTINE_PRIORITY, ck, (), reg6=seg.vni, eth_dst=ep.mac))
    return out


def outside_address(name: str) -> IPv4Address | None:
    """A quarantine entry's name read as an outside address (an IPv4 address); None when it is not one."""
    try:
        return IPv4Address(name)
    except ValueError:
        return None


def limited_addresses(model: Model, quarantined: frozenset[str]) -> tuple[IPv4Address, ...]:
    """The entries that are outside addresses (no endpoint of the model has the name), sorted."""
    out = []
    for name in quarantined:
        ip = outside_address(name)
        if ip is not None and not model.has_endpoint(name):
            out.append(ip)
    return tuple(sorted(out))


def limit_rate(model: Model) -> Rate:
    """What an outside address is held to: the detection's `limit`, else its default."""
    return (model.detection or Detection()).limit


def limit_flows(addresses: tuple[IPv4Address, ...], uplink: str | None, rate: Rate, logs: FlowLogs | None = None,
                domain: int = 0) -> list[Flow]:
    """Each address metered as it comes in by the uplink, then classified again as if not: the filters (above)
    have seen it already, the rest of the pipeline sees what the meter lets through. With flow logs, that is
    sampled (what the address still sends, which keeps an automatic limit in force)."""
    if not uplink:
        return []
    out = []
    for ip in addresses:
        ck = cookies.cookie("limit", str(ip))
        seen = (sample(logs.drops, domain, KIND_LIMITED),) if logs is not None and logs.drops > 0 else ()
        actions = (Meter(cookies.meter_id(f"limit/{ip}"), rate.unit, rate.value, rate.burst), *seen,
                   SetField(REG_FILTERED, 1), Resubmit(CLASSIFY))
        out.append(flow(CLASSIFY, LIMIT_PRIORITY, ck, actions, in_port=uplink, eth_type=ETH_IPV4,
                        ipv4_src=str(ip), **{REG_FILTERED: 0}))
    return out
