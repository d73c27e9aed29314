"""The OpenFlow pipeline, declared as data. Table ids are fixed: a table that is empty today keeps its id."""

from __future__ import annotations

from dataclasses import dataclass

from .values import CT, Conjunction, Flow, Goto, Group, Meter, Move, Output, Resubmit, Sample, SetField, ToGroup


@dataclass(frozen=True)
class Table:
    id: int
    name: str
    job: str
    match_fields: frozenset[str]
    miss: int | None  # the table a packet that matches no flow goes to; None: dropped


ACL_FIELDS = frozenset({"ct_state", "reg6", "reg7", "eth_type", "ipv4_src", "ipv4_dst", "ip_proto", "tcp_dst",
                        "udp_dst", "sctp_dst", "conj_id"})
SAMPLER_FIELDS = frozenset({"ct_state", "ct_mark", "reg4", "reg7", "eth_type", "ip_proto"})  # flow-log samplers
GROUP_TABLES = frozenset({3, 6})  # acl_egress (service splits), route (path splits)
TABLES: tuple[Table, ...] = (
    Table(0, "classify", "quarantined endpoints and filters dropped first; in_port -> segment; tunnel in_port + "
          "tun_id -> segment; uplink -> direct-mode endpoints, ARP for the NAT address, NAT replies through "
          "conntrack; drop the unknown",
          frozenset({"in_port", "tunnel_id", "eth_dst", "eth_type", "arp_tpa", "arp_op", "ipv4_dst", "ipv4_src",
                     "ip_proto", "tcp_src", "tcp_dst", "udp_src", "udp_dst", "sctp_src", "sctp_dst", "reg5"}), None),
    Table(1, "port_security", "source MAC/IP (and ARP SHA/SPA) must be the port's endpoint's; from the uplink, "
          "only NAT replies and port forwards, mapped to their endpoint",
          frozenset({"in_port", "eth_src", "eth_type", "ipv4_src", "arp_spa", "arp_sha", "ct_state", "ipv4_dst",
                     "ip_proto", "tcp_dst", "udp_dst"}), None),
    Table(2, "conntrack", "IPv4 of segments with a policy -> ct(zone=segment, nat); the rest, and what only "
          "passes through this site, skips the ACL", frozenset({"reg6", "reg7", "eth_type", "eth_dst"}), 5),
    Table(3, "acl_egress", "invalid dropped, established passes, tunnel-borne new committed; new connections "
          "from local ports checked against the source's egress rules", ACL_FIELDS | SAMPLER_FIELDS, None),
    Table(4, "acl_ingress", "then against the destination's ingress rules; allowed ones committed",
          ACL_FIELDS, None),
    Table(5, "nat", "connection limits; the gateway of nat-mode segments: ARP, and source NAT of what is sent "
          "to it; service VIPs: ARP, and the backend's MAC", frozenset({"reg6", "eth_type", "eth_dst", "ipv4_src",
                                                                        "ipv4_dst", "arp_op", "arp_tpa", "ct_state",
                                                                        "ct_mark"}), 6),
    Table(6, "route", "routed classes from local ports: a connection pinned to a path (ct_mark) keeps it, a new "
          "one -> weighted select group over paths; relays forward by the tunnel they came in on",
          frozenset({"in_port", "reg6", "reg7", "eth_type", "eth_dst", "ipv4_src", "ct_mark",
                                                       "ipv4_dst", "ip_proto", "tcp_src", "tcp_dst", "udp_src",
                                                       "udp_dst", "sctp_src", "sctp_dst"}), 7),
    Table(7, "l2_forward", "segment + destination MAC -> local port or tunnel toward its site; the gateway "
          "MAC -> the uplink, once NATed", frozenset({"reg6", "eth_dst", "eth_type", "ct_state"}), 8),
    Table(8, "flood", "broadcast and unknown unicast: local ports + replication along the site tree",
          frozenset({"reg6", "reg7", "in_port"}), None),
)
BY_NAME = {t.name: t for t in TABLES}
(CLASSIFY, PORT_SECURITY, CONNTRACK, ACL_EGRESS, ACL_INGRESS, NAT, ROUTE, L2_FORWARD,
 FLOOD) = (t.id for t in TABLES)
AFTER_ACL = NAT

# Registers the pipeline carries between tables.
REG_SEGMENT = "reg6"   # the segment's VNI; its low 16 bits are the conntrack zone
REG_FROM_TUNNEL = "reg7"  # where the packet came in: FROM_LOCAL, FROM_TUNNEL or FROM_UPLINK
FROM_LOCAL, FROM_TUNNEL, FROM_UPLINK = 0, 1, 2
REG_FILTERED = "reg5"  # 1 once a rate-limit filter metered the packet and looked it up in classify again
REG_SAMPLED = "reg4"  # 1 once a flow-log sampler in acl_egress recorded the packet and looked it up again
# The tables a packet may be looked up in again, and the register bit that lets it happen once.
RESUBMIT_GUARDS = {CLASSIFY: REG_FILTERED, ACL_EGRESS: REG_SAMPLED}
NAT_ZONE = 0xFFFF  # the conntrack zone of every site's source NAT; no segment may use it
WRITABLE = frozenset({REG_SEGMENT, REG_FROM_TUNNEL, REG_FILTERED, REG_SAMPLED, "tunnel_id", "eth_src", "eth_dst",
                      "ipv4_src", "ipv4_dst", "arp_op", "arp_sha", "arp_spa", "arp_tha", "arp_tpa", "ct_mark"})
MOVABLE = frozenset({("eth_src", "eth_dst"), ("arp_sha", "arp_tha"), ("arp_spa", "arp_tpa")})
CT_TABLES = frozenset({CLASSIFY, PORT_SECURITY, CONNTRACK, ACL_EGRESS, ACL_INGRESS, NAT})


class TableViolation(ValueError):
    """A generated flow that breaks its table's declaration: a bug in the compiler, never user input."""


def check_flow(f: Flow) -> None:
    """Check a flow against its table's declaration."""
    if not 0 <= f.table < len(TABLES):
        raise TableViolation(f"flow in undeclared table {f.table}: {f}")
    table = TABLES[f.table]
    extra = {name for name, _ in f.match} - table.match_fields
    if extra:
        raise TableViolation(f"table {table.name} does not match on {sorted(extra)}: {f}")
    for i, action in enumerate(f.actions):
        if isinstance(action, Goto):
            if action.table <= f.table or action.table >= len(TABLES) or i != len(f.actions) - 1:
                raise TableViolation(f"table {table.name}: goto must go forward and come last: {f}")
        elif isinstance(action, SetField):
            if action.field not in WRITABLE:
                raise TableViolation(f"table {table.name}: set_field on undeclared field {action.field}: {f}")
        elif isinstance(action, Move):
            if (action.src, action.dst) not in MOVABLE:
                raise TableViolation(f"table {table.name}: undeclared move {action.src} -> {action.dst}: {f}")
        elif isinstance(action, CT):
            if f.table not in CT_TABLES or (action.table is not None and action.table <= f.table):
                raise TableViolation(f"table {table.name}: ct only in the conntrack/ACL/NAT tables, forward: {f}")
            if dict(f.match).get("eth_type") != 0x0800:
                raise TableViolation(f"table {table.name}: ct needs eth_type=0x0800 in the match: {f}")
        elif isinstance(action, ToGroup):
            if f.table not in GROUP_TABLES or i != len(f.actions) - 1:
                raise TableViolation(f"table {table.name}: a group action only in {sorted(GROUP_TABLES)}, last: {f}")
        elif isinstance(action, Conjunction):
            if f.table not in (ACL_EGRESS, ACL_INGRESS) or not 1 <= action.clause <= action.n_clauses:
                raise TableViolation(f"table {table.name}: bad conjunction: {f}")
        elif isinstance(action, Meter):
            if f.table != CLASSIFY or i != 0:
                raise TableViolation(f"table {table.name}: a meter only in classify, as the first action: {f}")
        elif isinstance(action, Resubmit):
            # The one way back: the same table again, once (a rate limit, a flow-log sampler), which a register
            # bit set before it and matched clear guards against a loop.
            reg = RESUBMIT_GUARDS.get(f.table)
            guarded = reg is not None and dict(f.match).get(reg) == 0 and SetField(reg, 1) in f.actions[:i]
            if action.table != f.table or i != len(f.actions) - 1 or not guarded:
                raise TableViolation(f"table {table.name}: resubmit only to the same table, last, guarded by its "
                                     f"register: {f}")
        elif isinstance(action, Sample):
            if not 0 < action.probability <= 0xFFFF:
                raise TableViolation(f"table {table.name}: sample probability out of 1..65535: {f}")
        elif not isinstance(action, Output):
            raise TableViolation(f"unknown action {action!r}")


def check_group(g: Group) -> None:
    """Buckets output to ports, set fields, or commit a connection and recirculate to the ACL (services)."""
    if not g.buckets:
        raise TableViolation(f"group {g.group_id:#x} has no buckets")
    if len({b.bucket_id for b in g.buckets}) != len(g.buckets):
        raise TableViolation(f"group {g.group_id:#x}: two buckets with one id")
    for b in g.buckets:
        if not 0 < b.weight <= 0xFFFF:
            raise TableViolation(f"group {g.group_id:#x}: bucket weight {b.weight} out of 1..65535")
        for a in b.actions:
            # Services commit with NAT and go back through the ACL; path splits commit their path's mark and
            # come back to the route table.
            ok = isinstance(a, Output | SetField) or (isinstance(a, CT) and a.commit and a.table in (ACL_EGRESS, ROUTE))
            if not ok or (isinstance(a, SetField) and a.field not in WRITABLE):
                raise TableViolation(f"group {g.group_id:#x}: bucket action {a!r} not allowed")
