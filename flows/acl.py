"""Stateful security-group flows: conntrack, then the source's egress rules, then the destination's ingress
rules, all decided at the source's site; the same reading as flows/policy.py.

Rules that cross many sources with many destinations compile with OVS `conjunction`: one flow per source,
per destination and per port piece, not their product. Priorities: a rule of priority p sits at
RULE_BASE + 4p (+2 for deny), so a higher priority wins and a deny wins a tie, as in the policy.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from ipaddress import IPv4Network

from cloudweave.config.model import Endpoint, Model, Rule, Segment

from . import cookies, ids
from .tables import ACL_EGRESS, ACL_INGRESS, AFTER_ACL, CONNTRACK, FROM_TUNNEL, FROM_UPLINK, REG_SEGMENT
from .values import CT, ETH_IPV4, Conjunction, Flow, Goto, MatchValue, Nat, flow

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


def net_match(net: IPv4Network) -> MatchValue:
    """A CIDR as a match on an IPv4 field: a plain address for a /32, else address and netmask."""
    return str(net.network_address) if net.prefixlen == 32 else (str(net.network_address), str(net.netmask))


def conj_hash(rule: Rule) -> int:
    """A rule's preferred conjunction id: a hash of what it says (probed past a clash at its site)."""
    digest = hashlib.blake2b(rule.identity.encode(), digest_size=4).digest()
    return int.from_bytes(digest, "big") & 0x7FFFFFFF


def rule_priority(rule: Rule) -> int:
    return RULE_BASE + 4 * rule.priority + (2 if rule.action == "deny" else 0)


Member = tuple[str, str, str]  # an endpoint as the rules see it: name, segment, IPv4 address


@dataclass(frozen=True)
class AclScope:
    """What the ACL needs to know of a whole model, derived once per model."""

    segments: Mapping[str, Segment]  # the overlay's (direct mode has no ACL)
    with_policy: frozenset[str]  # segments whose connections are tracked
    with_services: frozenset[str]  # segments with a service VIP


def acl_scope(model: Model) -> AclScope:
    segments = {s.name: s for s in model.segments if s.mode != "direct"}
    grouped = {e.segment for e in model.endpoints if e.groups}
    with_services = {r.service.segment for r in model.routes if r.service is not None}
    routed = {s.name for r in model.routes if r.match is not None for s in model.route_segments(r)}
    # A segment is tracked when any of its endpoints is in a group, it denies by default, it has a
    # connection limit, it is NATed (port forwards pass its ingress rules), it has a service VIP, or a path
    # split pins its connections; with flow logs, every one (a record per connection needs conntrack).
    logged = model.flow_logs is not None
    with_policy = {s.name for s in segments.values() if s.default == "deny" or s.name in grouped
                   or s.mode == "nat" or s.max_connections is not None or s.name in with_services
                   or s.name in routed or logged}
    return AclScope(segments, frozenset(with_policy), frozenset(with_services))


def group_members(model: Model, scope: AclScope) -> dict[str, tuple[Member, ...]]:
    """Every security group's members (overlay endpoints only), by name, as the rules see them."""
    names = {g.name for g in model.security_groups} | {g for e in model.endpoints for g in e.groups}
    return {g: tuple((e.name, e.segment, str(e.ip)) for e in model.members(g) if e.segment in scope.segments)
            for g in sorted(names)}


def state_flows(any_tracked: bool, any_nat: bool) -> list[Flow]:
    """A site's connection-state flows: where it tracks any segment, and the uplink's port forwards."""
    ck = cookies.cookie
    out = []
    if any_tracked:
        out += [
            flow(ACL_EGRESS, PRIO_INVALID, ck("acl_state", "invalid"), (), ct_state=CT_INV),
            flow(ACL_EGRESS, PRIO_ESTABLISHED, ck("acl_state", "established"), (Goto(AFTER_ACL),), ct_state=CT_EST),
            flow(ACL_EGRESS, PRIO_ESTABLISHED, ck("acl_state", "related"), (Goto(AFTER_ACL),), ct_state=CT_REL),
            # Checked at the source's site already: the destination's site only records the connection.
            flow(ACL_EGRESS, PRIO_FROM_TUNNEL, ck("acl_state", "from_tunnel"), COMMIT, ct_state=CT_NEW,
                 reg7=FROM_TUNNEL, eth_type=ETH_IPV4),
        ]
    if any_nat:
        # Port forwards from the uplink: no egress rules (no local source), the destination's ingress.
        out.append(flow(ACL_EGRESS, PRIO_FROM_TUNNEL, ck("acl_state", "from_uplink"), (Goto(ACL_INGRESS),),
                        ct_state=CT_NEW, reg7=FROM_UPLINK, eth_type=ETH_IPV4))
    return out


def segment_acl_flows(seg: Segment, tracked: bool, with_service: bool, local: tuple[Endpoint, ...],
                      members: tuple[Endpoint, ...]) -> list[Flow]:
    """One segment's conntrack and default flows at a site that has `local` endpoints of it. Only sites with
    endpoints of a segment track its connections: a pure transit site misses table 2 and skips the ACL, since
    the source's site decided. `members`: all of the segment's endpoints (the defaults name each)."""
    if not tracked:
        return [flow(CONNTRACK, 100, cookies.cookie("conntrack", seg.name), (Goto(AFTER_ACL),), reg6=seg.vni)]
    # Services: ct(nat) applies a connection's VIP translation to every later packet, both ways.
    track = CT(table=ACL_EGRESS, nat=Nat() if with_service else None)
    out = [flow(CONNTRACK, 100, cookies.cookie("conntrack", seg.name), (track,), reg6=seg.vni, eth_type=ETH_IPV4)]
    # From a tunnel, only what is for a local endpoint is tracked here: a relayed packet (a path split
    # through this site) would leave half a connection in this site's table.
    transit = cookies.cookie("transit", seg.name)
    out.append(flow(CONNTRACK, 110, transit, (Goto(AFTER_ACL),), reg6=seg.vni, reg7=FROM_TUNNEL, eth_type=ETH_IPV4))
    for ep in local:
        out.append(flow(CONNTRACK, 120, transit, (track,), reg6=seg.vni, reg7=FROM_TUNNEL, eth_type=ETH_IPV4,
                        eth_dst=ep.mac))
    ck = cookies.cookie("acl_default", seg.name)
    allow = seg.default == "allow"
    out += [
        flow(ACL_EGRESS, PRIO_DEFAULT, ck, (Goto(ACL_INGRESS),) if allow else (), ct_state=CT_NEW,
             reg6=seg.vni, eth_type=ETH_IPV4),
        # A destination that is no endpoint of the segment has no ingress rules.
        flow(ACL_INGRESS, PRIO_NOT_AN_ENDPOINT, ck, COMMIT, ct_state=CT_NEW, reg6=seg.vni, eth_type=ETH_IPV4),
    ]
    for ep in members:
        out.append(flow(ACL_INGRESS, PRIO_DEFAULT, ck, COMMIT if allow else (), ct_state=CT_NEW,
                        reg6=seg.vni, eth_type=ETH_IPV4, ipv4_dst=str(ep.ip)))
    return out


def rule_flows(rules: tuple[Rule, ...], local: frozenset[str], local_segs: frozenset[str],
               members: Mapping[str, tuple[Member, ...]], vnis: Mapping[str, int]) -> list[Flow]:
    """Every rule's flows at a site, merged where two rules share a flow. `local`: the names of the site's
    endpoints; `local_segs`: its tracked segments; `members`: each group's members; `vnis`: segment -> VNI."""
    conj = ids.allocate({r.identity: conj_hash(r) for r in rules}, 1 << 31, valid=lambda v: v != 0)
    raw: list[Flow] = []
    for r in rules:
        raw += _rule_flows(r, local, local_segs, members, vnis, conj[r.identity])
    return merge_conjunctions(raw)


def _rule_flows(r: Rule, local: frozenset[str], local_segs: frozenset[str], members: Mapping[str, tuple[Member, ...]],
                vnis: Mapping[str, int], cid: int) -> list[Flow]:
    """Egress rules: their group's local members as sources. Ingress rules: their group's members
    (anywhere) as destinations, for traffic of the segments that have a source here."""
    own_field, peer_field = ("ipv4_src", "ipv4_dst") if r.direction == "egress" else ("ipv4_dst", "ipv4_src")
    own = [m for m in members.get(r.group, ()) if m[1] in local_segs and (r.direction == "ingress" or m[0] in local)]
    if not own:
        return []
    segs = {m[1] for m in own}
    # The protocol goes into every clause: OVS drops a packet whose clauses complete a conjunction that
    # its result flow then does not match, instead of trying lower priorities.
    proto_match: dict[str, MatchValue] = {"eth_type": ETH_IPV4}
    if r.proto is not None:
        proto_match["ip_proto"] = r.proto
    dims: list[list[dict[str, MatchValue]]] = [
        [dict(proto_match, **{REG_SEGMENT: vnis[m[1]], own_field: m[2]}) for m in own]]
    if r.peer_kind == "group":
        peers = [m for m in members.get(r.peer, ()) if m[1] in segs]
        if not peers:
            return []
        dims.append([dict(proto_match, **{REG_SEGMENT: vnis[m[1]], peer_field: m[2]}) for m in peers])
    elif r.peer_kind == "cidr":
        dims.append([dict(proto_match, **{peer_field: net_match(r.peer_net)})])
    if r.ports:
        field = PORT_FIELD[r.proto]
        dims.append([dict(proto_match, **{field: piece}) for rng in r.ports for piece in rng.pieces()])
    table = ACL_EGRESS if r.direction == "egress" else ACL_INGRESS
    prio = rule_priority(r)
    ck = cookies.cookie("acl_rule", r.identity)
    if r.action == "deny":
        verdict: tuple = ()
    elif r.direction == "egress":
        verdict = (Goto(ACL_INGRESS),)
    else:
        verdict = COMMIT
    if len(dims) == 1:
        return [flow(table, prio, ck, verdict, ct_state=CT_NEW, **m) for m in dims[0]]
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
    clauses: dict[tuple, set] = {}  # key -> every rule's conjunction clause, sorted once at the end (not per merge)
    for f in flows:
        have = merged.get(f.key)
        if have is None:
            merged[f.key] = f
        elif all(isinstance(a, Conjunction) for a in f.actions) and (
                f.key in clauses or all(isinstance(a, Conjunction) for a in have.actions)):
            clauses.setdefault(f.key, set(have.actions)).update(f.actions)
            if f.cookie < have.cookie:
                merged[f.key] = Flow(have.table, have.priority, have.match, have.actions, f.cookie)
        elif have.actions != f.actions:
            raise ValueError(f"two rules compile to one flow with different actions: {have} / {f}")
    for key, actions in clauses.items():
        have = merged[key]
        merged[key] = Flow(have.table, have.priority, have.match, tuple(sorted(actions)), have.cookie)
    return list(merged.values())
