"""Flow-log samplers: IPFIX `sample` actions where a record means something (cloudweave.flowlog decodes them).

At the top of acl_egress, at the site a connection starts from (a local port, or the uplink for a port
forward): one record per new connection, before the rules decide it (the collector names the deciding rule
with flows.policy, as `explain` does), and one per packet of a connection nobody has answered yet (ct_mark
is set once committed, and a one-way flow stays +new in OVS's conntrack). Each sampler sets a register bit
and looks the packet up in acl_egress again, where the rules then decide as without it. Drops of filters and
quarantines carry a sample of their own (flows.filters, flows.quarantine).
"""

from __future__ import annotations

import hashlib
import hmac

from cloudweave.config.model import FlowLogs

from . import cookies
from .acl import CT_EST, CT_NEW
from .tables import ACL_EGRESS, FROM_LOCAL, FROM_UPLINK, REG_FROM_TUNNEL, REG_SAMPLED
from .values import ETH_IPV4, Flow, Resubmit, Sample, SetField, flow

COLLECTOR_SET_ID = 0xC10D  # the bridge's Flow_Sample_Collector_Set row the controller owns
KIND_SHIFT = 24
KIND_NEW, KIND_UNREPLIED, KIND_FILTER, KIND_QUARANTINE, KIND_ICMP, KIND_LIMITED = 1, 2, 3, 4, 5, 6
KIND_NAMES = {KIND_NEW: "new", KIND_UNREPLIED: "unreplied", KIND_FILTER: "filter", KIND_QUARANTINE: "quarantine",
              KIND_ICMP: "icmp", KIND_LIMITED: "limited"}
RPL = 0x08  # ct_state: the packet goes in the reply direction
PRIO_SAMPLER = 65000  # above every other acl_egress flow (invalid: 60000)


def obs_point(kind: int, detail: int = 0) -> int:
    """What a record saw: its kind in the top 8 bits, a detail (a filter's index) below."""
    return kind << KIND_SHIFT | detail


def obs_domain(dpid: int) -> int:
    """The site, as its records say without a key: the low 32 bits of its datapath id."""
    return dpid & 0xFFFFFFFF


def site_domain(key: bytes | None, site: str, dpid: int) -> int:
    """The observation domain a site's samplers write. Without a key (`cloudweave compile`), obs_domain(dpid).
    With the controller's key (cloudweave.flowlog.key), 32 bits of an HMAC of the site's name: known only to
    whoever holds the key or can read the switch's flows (root), and the collector drops every record and
    template of any other domain, so a local process cannot forge flow records by sending datagrams."""
    if key is None:
        return obs_domain(dpid)
    return int.from_bytes(hmac.new(key, site.encode(), hashlib.sha256).digest()[:4], "big") or 1


def sampled_probability(p: float) -> int:
    """A probability as the switch takes it: n/65535, at least 1 (0 turns a sampler off)."""
    return max(1, round(p * 0xFFFF))


def sample(p: float, domain: int, kind: int, detail: int = 0) -> Sample:
    """`domain`: the site's observation domain (site_domain)."""
    return Sample(sampled_probability(p), COLLECTOR_SET_ID, domain, obs_point(kind, detail))


def sampler_flows(logs: FlowLogs, domain: int) -> list[Flow]:
    out = []
    ck = cookies.cookie("flowlog", "samplers")
    again = (SetField(REG_SAMPLED, 1), Resubmit(ACL_EGRESS))
    for kind, p, mark in ((KIND_NEW, logs.new, 0), (KIND_UNREPLIED, logs.unreplied, 1)):
        if p <= 0:
            continue
        for origin in (FROM_LOCAL, FROM_UPLINK):
            out.append(flow(ACL_EGRESS, PRIO_SAMPLER, ck, (sample(p, domain, kind),) + again, ct_state=CT_NEW,
                            ct_mark=mark, eth_type=ETH_IPV4, **{REG_FROM_TUNNEL: origin, REG_SAMPLED: 0}))
    if logs.unreplied > 0:
        # An ICMP flood is answered (echo replies): its requests, in their own direction only (the replies
        # are the victim's, who must not look like the sender), at the unreplied rate.
        for origin in (FROM_LOCAL, FROM_UPLINK):
            out.append(flow(ACL_EGRESS, PRIO_SAMPLER, ck, (sample(logs.unreplied, domain, KIND_ICMP),) + again,
                            ct_state=(CT_EST[0], CT_EST[0] | RPL), eth_type=ETH_IPV4, ip_proto=1,
                            **{REG_FROM_TUNNEL: origin, REG_SAMPLED: 0}))
    return out
