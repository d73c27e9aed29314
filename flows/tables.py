"""The OpenFlow pipeline, declared as data. Table ids are fixed: a table that is empty today keeps its id."""

from __future__ import annotations

from dataclasses import dataclass

from flows.values import Flow, Goto, Output, SetField


@dataclass(frozen=True)
class Table:
    id: int
    name: str
    job: str
    match_fields: frozenset[str]
    miss: str  # "drop" or "next": what a packet that matches no flow of the table does


TABLES: tuple[Table, ...] = (
    Table(0, "classify", "in_port -> segment; tunnel in_port + tun_id -> segment; drop the unknown",
          frozenset({"in_port", "tunnel_id"}), "drop"),
    Table(1, "port_security", "source MAC/IP (and ARP SHA/SPA) must be the port's endpoint's",
          frozenset({"in_port", "eth_src", "eth_type", "ipv4_src", "arp_spa", "arp_sha"}), "drop"),
    Table(2, "conntrack", "reserved: ct(zone=segment) and the established short-cut", frozenset(), "next"),
    Table(3, "acl", "reserved: security groups with conjunction", frozenset(), "next"),
    Table(4, "nat", "reserved: source NAT for nat-mode segments", frozenset(), "next"),
    Table(5, "route", "reserved: routing classes -> weighted select groups", frozenset(), "next"),
    Table(6, "l2_forward", "segment + destination MAC -> local port or tunnel toward its site",
          frozenset({"reg6", "eth_dst"}), "next"),
    Table(7, "flood", "broadcast and unknown unicast: local ports + replication along the site tree",
          frozenset({"reg6", "reg7", "in_port"}), "drop"),
)
BY_NAME = {t.name: t for t in TABLES}
CLASSIFY, PORT_SECURITY, CONNTRACK, ACL, NAT, ROUTE, L2_FORWARD, FLOOD = (t.id for t in TABLES)

# Registers the pipeline carries between tables.
REG_SEGMENT = "reg6"   # the segment's VNI
REG_FROM_TUNNEL = "reg7"  # 1 when the packet came in on a tunnel port
WRITABLE = frozenset({REG_SEGMENT, REG_FROM_TUNNEL, "tunnel_id"})


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
        elif not isinstance(action, Output):
            raise TableViolation(f"unknown action {action!r}")
