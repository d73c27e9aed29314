"""Flows as plain values. Ports are named, never numbered: the controller resolves names on each switch."""

from __future__ import annotations

from dataclasses import dataclass, field

ETH_IPV4 = 0x0800
ETH_ARP = 0x0806

MatchValue = int | str | tuple[int, int] | tuple[str, str]  # plain value or (value, mask)


# Reserved OpenFlow ports, by name: the packet's own ingress port, and the controller (as a packet-in).
IN_PORT, CONTROLLER = "IN_PORT", "CONTROLLER"
RESERVED_PORTS = frozenset({IN_PORT, CONTROLLER})


@dataclass(frozen=True, order=True)
class Output:
    port: str


@dataclass(frozen=True, order=True)
class SetField:
    field: str
    value: int | str


@dataclass(frozen=True, order=True)
class Goto:
    table: int


@dataclass(frozen=True, order=True)
class Move:
    """Copy one whole field into another of the same width (NXAST_REG_MOVE)."""

    src: str
    dst: str


@dataclass(frozen=True, order=True)
class Nat:
    """Address translation inside a ct action: `kind` src or dst, to `ip` and a port range (0, 0: keep the
    port); kind "" applies the translation a committed connection already has."""

    kind: str = ""
    ip: str = ""
    port_lo: int = 0
    port_hi: int = 0


@dataclass(frozen=True, order=True)
class CT:
    """Send through conntrack: in the zone held in reg6[0..15], or in the fixed `zone`; commit, and/or
    recirculate to `table`. `nat` translates; `mark` is written to ct_mark on commit (only the bits of
    `mark_mask` when it is set)."""

    commit: bool = False
    table: int | None = None
    zone: int | None = None
    nat: Nat | None = None
    mark: int | None = None
    mark_mask: int | None = None


@dataclass(frozen=True, order=True)
class Conjunction:
    """Clause `clause` (1-based) of `n_clauses` of conjunctive match `id`."""

    id: int
    clause: int
    n_clauses: int


@dataclass(frozen=True, order=True)
class ToGroup:
    """Send the packet to a group (the group action)."""

    group_id: int
    purpose: str = field(default="", compare=False)  # the group's purpose, to re-point it (flows.compile)


@dataclass(frozen=True, order=True)
class Meter:
    """Send the packet through a meter (an OpenFlow 1.5 action), whose configuration it carries: the
    controller installs the meters its flows name. `unit` pktps or kbps; `burst` 0: the switch's default."""

    meter_id: int
    unit: str
    rate: int
    burst: int = 0


@dataclass(frozen=True, order=True)
class Resubmit:
    """Look the packet up again in `table` (NXAST_RESUBMIT_TABLE), as it is now."""

    table: int


@dataclass(frozen=True, order=True)
class Sample:
    """Send a copy's headers to the bridge's IPFIX collector set `collector_set_id` with probability
    `probability`/65535, tagged with an observation domain (the site) and point (what was seen)."""

    probability: int
    collector_set_id: int
    obs_domain_id: int
    obs_point_id: int


Action = Output | SetField | Goto | CT | Conjunction | Move | ToGroup | Meter | Resubmit | Sample

# What a select group hashes: the inner packet's 5-tuple (fields that do not apply to a packet are skipped).
# eth_type (always IPv4 here) and icmp_type (one per ICMP exchange) change no connection's bucket; they make
# the property's field list (each a 4-byte header and its mask) 56 bytes, a multiple of 8 as os-ken needs.
HASH_FIELDS = ("eth_type", "ip_src", "ip_dst", "ip_proto", "tcp_src", "tcp_dst", "udp_src", "udp_dst", "icmp_type")


@dataclass(frozen=True, order=True)
class Bucket:
    """One choice of a select group. `bucket_id` is part of OVS's hash: it must stay the same for a choice."""

    bucket_id: int
    weight: int
    actions: tuple[Action, ...]
    watch_port: str | None = None  # the bucket is used only while this port is live (BFD, carrier)


@dataclass(frozen=True)
class Group:
    """A select group with `selection_method=hash` over `fields` (flows/weights.py: what weights mean)."""

    group_id: int
    buckets: tuple[Bucket, ...]
    fields: tuple[str, ...] = HASH_FIELDS
    name: str = ""  # what it is for, for people (not sent to the switch)
    purpose: str = ""  # its identity at the site, which its preferred id is a hash of (flows.ids)

    def ports(self) -> set[str]:
        named = {b.watch_port for b in self.buckets if b.watch_port}
        named.update(a.port for b in self.buckets for a in b.actions
                     if isinstance(a, Output) and a.port not in RESERVED_PORTS)
        return named


@dataclass(frozen=True)
class Flow:
    """One flow entry. Identity on a switch is (table, priority, match); cookie and actions are its content."""

    table: int
    priority: int
    match: tuple[tuple[str, MatchValue], ...]
    actions: tuple[Action, ...]
    cookie: int

    @property
    def key(self) -> tuple[int, int, tuple[tuple[str, MatchValue], ...]]:
        return (self.table, self.priority, self.match)

    def ports(self) -> set[str]:
        """Every port name the flow refers to; it can be installed only where all of them exist."""
        named = {a.port for a in self.actions if isinstance(a, Output) and a.port not in RESERVED_PORTS}
        named.update(str(v) for f, v in self.match if f == "in_port")
        return named


def flow(table: int, priority: int, cookie: int, actions: tuple[Action, ...] = (), **match: MatchValue) -> Flow:
    """Build a Flow with its match fields in a canonical order."""
    return Flow(table, priority, tuple(sorted(match.items())), tuple(actions), cookie)
