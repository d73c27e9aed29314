"""Stateful security-group flows: conntrack, then the source's egress rules, then the destination's ingress
rules, all decided at the source's site; the same reading as flows/policy.py.

Rules that cross many sources with many destinations compile with OVS `conjunction`: one flow per source,
per destination and per port piece, not their product. Priorities: a rule of priority p sits at
RULE_BASE + 4p (+2 for deny), so a higher priority wins and a deny wins a tie, as in the policy.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Iterable
from ipaddress import IPv4Network

from cloudweave.config.model import Endpoint, Model, PortRange, Rule, Segment
from flows import cookies
from flows.tables import ACL_EGRESS, ACL_INGRESS, AFTER_ACL, CONNTRACK, FROM_TUNNEL, FROM_UPLINK, REG_SEGMENT
from flows.values import CT, ETH_IPV4, Conjunction, Flow, Goto, MatchValue, Nat, flow

PORT_FIELD = {6: "tcp_dst", 17: "udp_dst", 132: "sctp_dst"}
# ct_state bits (OVS): new, est, rel, rpl, inv, trk
NEW, EST, REL, INV, TRK = 0x01, 0x02, 0x04, 0x10, 0x20
CT_NEW = (NEW | TRK, NEW | TRK)
CT_EST = (EST | TRK, EST | TRK)
CT_REL = (REL | TRK, REL | TRK)
CT_INV = (INV | TRK, INV | TRK)
PRIO_INVALID, PRIO_ESTABLISHED, PRIO_FROM_TUNNEL = 60000, 59000, 58000
RULE_BASE = 10000
PRIO_DEFAULT, PRIO_NOT_AN_ENDPOINT = 8, 5
# Every allowed new connection is committed with ct_mark=1 and comes back through table `nat`, where a
# connection that its zone's limit refused (no mark) is dropped: flows/nat.py connection_limit_flows.
COMMITTED = 1
COMMIT = (CT(commit=True, table=AFTER_ACL, mark=COMMITTED),)


def port_pieces(r: PortRange) -> list[MatchValue]:
    """A port range as few value/mask matches (full masks as plain values, as OVS reports them)."""
    out: list[MatchValue] = []
    lo, hi = r.lo, r.hi
    while lo <= hi:
        size = lo & -lo if lo else 1 << 16
        while size > hi - lo + 1:
            size >>= 1
        mask = 0xFFFF & ~(size - 1)
        out.append(lo if mask == 0xFFFF else (lo, mask))
        lo += size
    return out


def net_match(net: IPv4Network) -> MatchValue:
    """A CIDR as a match on an IPv4 field: a plain address for a /32, else address and netmask."""
    return str(net.network_address) if net.prefixlen == 32 else (str(net.network_address), str(net.netmask))


def conj_id(rule: Rule) -> int:
    digest = hashlib.blake2b(f"{rule.group}/{rule.direction}/{rule.index}".encode(), digest_size=4).digest()
    return int.from_bytes(digest, "big") & 0x7FFFFFFF


def rule_priority(rule: Rule) -> int:
    return RULE_BASE + 4 * rule.priority + (2 if rule.action == "deny" else 0)


class AclCompiler:
    def __init__(self, model: Model):
        self.model = model
        self.segments = {s.name: s for s in model.segments if s.mode != "direct"}
        self.members: dict[str, list[Endpoint]] = defaultdict(list)
        for ep in sorted(model.endpoints, key=lambda e: e.name):
            if ep.segment not in self.segments:
                continue  # direct mode: anti-spoofing only
            for g in ep.groups:
                self.members[g].append(ep)
        grouped = {e.segment for e in model.endpoints if e.groups}
        self.with_services = {r.service.segment for r in model.routes if r.service is not None}
        routed = {s.name for r in model.routes if r.match is not None for s in model.route_segments(r)}
        # A segment is tracked when any of its endpoints is in a group, it denies by default, it has a
        # connection limit, it is NATed (port forwards pass its ingress rules), it has a service VIP, or a path
        # split pins its connections.
        self.with_policy = {s.name for s in self.segments.values() if s.default == "deny" or s.name in grouped
                            or s.mode == "nat" or s.max_connections is not None or s.name in self.with_services
                            or s.name in routed}

    def site_flows(self, site: str, local: Iterable[Endpoint]) -> list[Flow]:
        """The ACL flows of one site. Only sites with endpoints of a segment track its connections: a pure
        transit site misses table 2 and skips the ACL, since the source's site decided."""
        local = [e for e in local if e.segment in self.segments]
        segs = sorted({e.segment for e in local}, key=lambda n: self.segments[n].vni)
        out = self._state_flows() if any(s in self.with_policy for s in segs) else []
        if any(self.segments[s].mode == "nat" for s in segs):
            # Port forwards from the uplink: no egress rules (no local source), the destination's ingress.
            out.append(flow(ACL_EGRESS, PRIO_FROM_TUNNEL, cookies.cookie("acl_state", "from_uplink"),
                            (Goto(ACL_INGRESS),), ct_state=CT_NEW, reg7=FROM_UPLINK, eth_type=ETH_IPV4))
        for name in segs:
            seg = self.segments[name]
            if name not in self.with_policy:
                out.append(flow(CONNTRACK, 100, cookies.cookie("conntrack", name), (Goto(AFTER_ACL),),
                                reg6=seg.vni))
                continue
            # Services: ct(nat) applies a connection's VIP translation to every later packet, both ways.
            track = CT(table=ACL_EGRESS, nat=Nat() if name in self.with_services else None)
            out.append(flow(CONNTRACK, 100, cookies.cookie("conntrack", name), (track,), reg6=seg.vni,
                            eth_type=ETH_IPV4))
            # From a tunnel, only what is for a local endpoint is tracked here: a relayed packet (a path split
            # through this site) would leave half a connection in this site's table.
            transit = cookies.cookie("transit", name)
            out.append(flow(CONNTRACK, 110, transit, (Goto(AFTER_ACL),), reg6=seg.vni, reg7=FROM_TUNNEL,
                            eth_type=ETH_IPV4))
            for ep in local:
                if ep.segment == name:
                    out.append(flow(CONNTRACK, 120, transit, (track,), reg6=seg.vni, reg7=FROM_TUNNEL,
                                    eth_type=ETH_IPV4, eth_dst=ep.mac))
            out += self._defaults(seg)
        local_segs = {e.segment for e in local if e.segment in self.with_policy}
        raw: list[Flow] = []
        for g in self.model.security_groups:
            for r in g.rules:
                raw += self._rule_flows(r, local, local_segs)
        return out + merge_conjunctions(raw)

    def _state_flows(self) -> list[Flow]:
        ck = cookies.cookie
        return [
            flow(ACL_EGRESS, PRIO_INVALID, ck("acl_state", "invalid"), (), ct_state=CT_INV),
            flow(ACL_EGRESS, PRIO_ESTABLISHED, ck("acl_state", "established"), (Goto(AFTER_ACL),), ct_state=CT_EST),
            flow(ACL_EGRESS, PRIO_ESTABLISHED, ck("acl_state", "related"), (Goto(AFTER_ACL),), ct_state=CT_REL),
            # Checked at the source's site already: the destination's site only records the connection.
            flow(ACL_EGRESS, PRIO_FROM_TUNNEL, ck("acl_state", "from_tunnel"), COMMIT, ct_state=CT_NEW,
                 reg7=FROM_TUNNEL, eth_type=ETH_IPV4),
        ]

    def _defaults(self, seg: Segment) -> list[Flow]:
        ck = cookies.cookie("acl_default", seg.name)
        allow = seg.default == "allow"
        out = [
            flow(ACL_EGRESS, PRIO_DEFAULT, ck, (Goto(ACL_INGRESS),) if allow else (), ct_state=CT_NEW,
                 reg6=seg.vni, eth_type=ETH_IPV4),
            # A destination that is no endpoint of the segment has no ingress rules.
            flow(ACL_INGRESS, PRIO_NOT_AN_ENDPOINT, ck, COMMIT, ct_state=CT_NEW, reg6=seg.vni, eth_type=ETH_IPV4),
        ]
        for ep in self.model.endpoints:
            if ep.segment == seg.name:
                out.append(flow(ACL_INGRESS, PRIO_DEFAULT, ck, COMMIT if allow else (), ct_state=CT_NEW,
                                reg6=seg.vni, eth_type=ETH_IPV4, ipv4_dst=str(ep.ip)))
        return out

    def _rule_flows(self, r: Rule, local: list[Endpoint], local_segs: set[str]) -> list[Flow]:
        """Egress rules: their group's local members as sources. Ingress rules: their group's members
        (anywhere) as destinations, for traffic of the segments that have a source here."""
        own_field, peer_field = ("ipv4_src", "ipv4_dst") if r.direction == "egress" else ("ipv4_dst", "ipv4_src")
        own = [e for e in self.members[r.group] if e.segment in local_segs and
               (r.direction == "ingress" or e in local)]
        if not own:
            return []
        segs = {e.segment for e in own}
        # The protocol goes into every clause: OVS drops a packet whose clauses complete a conjunction that
        # its result flow then does not match, instead of trying lower priorities.
        proto_match: dict[str, MatchValue] = {"eth_type": ETH_IPV4}
        if r.proto is not None:
            proto_match["ip_proto"] = r.proto
        dims: list[list[dict[str, MatchValue]]] = [
            [dict(proto_match, **{REG_SEGMENT: self.segments[e.segment].vni, own_field: str(e.ip)}) for e in own]]
        if r.peer_kind == "group":
            peers = [e for e in self.members.get(r.peer, []) if e.segment in segs]
            if not peers:
                return []
            dims.append([dict(proto_match, **{REG_SEGMENT: self.segments[e.segment].vni, peer_field: str(e.ip)})
                         for e in peers])
        elif r.peer_kind == "cidr":
            dims.append([dict(proto_match, **{peer_field: net_match(r.peer_net)})])
        if r.ports:
            field = PORT_FIELD[r.proto]
            dims.append([dict(proto_match, **{field: piece}) for rng in r.ports for piece in port_pieces(rng)])
        table = ACL_EGRESS if r.direction == "egress" else ACL_INGRESS
        prio = rule_priority(r)
        ck = cookies.cookie("acl_rule", f"{r.group}/{r.direction}/{r.index}")
        if r.action == "deny":
            verdict: tuple = ()
        elif r.direction == "egress":
            verdict = (Goto(ACL_INGRESS),)
        else:
            verdict = COMMIT
        if len(dims) == 1:
            return [flow(table, prio, ck, verdict, ct_state=CT_NEW, **m) for m in dims[0]]
        cid = conj_id(r)
        # eth_type: OVS refuses a ct action on a flow whose match does not imply IP.
        out = [flow(table, prio, ck, verdict, ct_state=CT_NEW, conj_id=cid, eth_type=ETH_IPV4)]
        for k, dim in enumerate(dims, start=1):
            for m in dim:
                out.append(flow(table, prio, ck, (Conjunction(cid, k, len(dims)),), **m))
        return out


def merge_conjunctions(flows: list[Flow]) -> list[Flow]:
    """Flows with the same table, priority and match from different rules become one flow that carries every
    rule's conjunction clause (OVS keys flows by match and priority)."""
    merged: dict[tuple, Flow] = {}
    for f in flows:
        have = merged.get(f.key)
        if have is None:
            merged[f.key] = f
        elif all(isinstance(a, Conjunction) for a in have.actions + f.actions):
            actions = tuple(sorted(set(have.actions) | set(f.actions)))
            merged[f.key] = Flow(f.table, f.priority, f.match, actions, min(have.cookie, f.cookie))
        elif have.actions != f.actions:
            raise ValueError(f"two rules compile to one flow with different actions: {have} / {f}")
    return list(merged.values())
