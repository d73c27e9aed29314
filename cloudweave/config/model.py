"""The typed, immutable model that the compiler reads. Positions never take part in equality."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import cached_property
from ipaddress import IPv4Address, IPv4Network
from typing import Any

from cloudweave.config.errors import Loc

NOWHERE = Loc("<none>", 0, 0)
NAT_CT_ZONE = 0xFFFF  # the conntrack zone of source NAT at every site; no segment may use it
TUNNEL_PREFIX = "vx-"  # the controller's VXLAN ports toward peer sites: vx-PEER (flows.topology)
ALIAS_BASE = int(IPv4Address("240.0.0.0"))  # class E: never on a wire, see Segment.nat_alias


def derived_mac(prefix: int, ip: IPv4Address) -> str:
    """A locally administered MAC made of a one-byte prefix, a zero byte and an IPv4 address."""
    return ":".join(f"{b:02x}" for b in bytes([prefix, 0]) + ip.packed)


def _loc() -> Any:
    return field(default=NOWHERE, compare=False, repr=False)


@dataclass(frozen=True)
class PortRange:
    lo: int
    hi: int

    def __str__(self) -> str:
        return str(self.lo) if self.lo == self.hi else f"{self.lo}-{self.hi}"

    def pieces(self) -> tuple[int | tuple[int, int], ...]:
        """The range as few value/mask matches, a full mask as a plain value (as OVS reports it)."""
        out: list[int | tuple[int, int]] = []
        lo, hi = self.lo, self.hi
        while lo <= hi:
            size = lo & -lo if lo else 1 << 16
            while size > hi - lo + 1:
                size >>= 1
            mask = 0xFFFF & ~(size - 1)
            out.append(lo if mask == 0xFFFF else (lo, mask))
            lo += size
        return tuple(out)


@dataclass(frozen=True)
class Site:
    name: str
    dpid: int
    vtep: IPv4Address
    ovsdb: str
    bridge: str = "br-int"
    datapath: str = "system"
    uplink: str | None = None
    nat_ip: IPv4Address | None = None
    uplink_gateway: IPv4Address | None = None  # next hop on the uplink for NATed traffic
    nat_ports: PortRange = field(default_factory=lambda: PortRange(1024, 65535))
    loc: Loc = _loc()

    @property
    def nat_mac(self) -> str | None:
        """The MAC that answers for the NAT address on the uplink."""
        return derived_mac(0x0E, self.nat_ip) if self.nat_ip is not None else None

    @property
    def ovsdb_dir(self) -> str | None:
        """The directory of a unix OVSDB socket (OVS's run directory); None for other remotes."""
        return os.path.dirname(self.ovsdb[len("unix:"):]) if self.ovsdb.startswith("unix:") else None


@dataclass(frozen=True)
class Link:
    """An underlay link between two sites; a VXLAN tunnel runs over it."""

    sites: tuple[str, str]
    capacity_mbps: float
    loc: Loc = _loc()


@dataclass(frozen=True)
class Segment:
    """An L2 network with its own VNI; it spans the sites that host its endpoints."""

    name: str
    vni: int
    subnet: IPv4Network
    mode: str = "bridge"
    default: str = "deny"
    gateway: IPv4Address | None = None  # nat mode: the endpoints' default gateway (every site answers for it)
    max_connections: int | None = None  # conntrack entries of the segment at each site
    forwards: tuple[Forward, ...] = ()
    loc: Loc = _loc()

    @property
    def ct_zone(self) -> int:
        """Its conntrack zone: the VNI's low 16 bits (the pipeline loads it from reg6[0..15])."""
        return self.vni & 0xFFFF

    @property
    def gateway_mac(self) -> str | None:
        return derived_mac(0x0A, self.gateway) if self.gateway is not None else None

    @property
    def alias_slot(self) -> int:
        return self.vni & 0xFFF

    def nat_alias(self, ip: IPv4Address) -> IPv4Address:
        """The address an endpoint has inside the switch's NAT zone: 240.0.0.0 + 12 bits of the VNI + 16 bits
        of the host. Unique per segment, so that two segments with the same private addresses never share a
        NAT mapping; it never leaves the switch (translated to the NAT address before the uplink)."""
        return IPv4Address(ALIAS_BASE | self.alias_slot << 16 | (int(ip) - int(self.subnet.network_address)))


@dataclass(frozen=True)
class Forward:
    """A port forward (DNAT): the site's NAT address, `proto`/`port` -> `endpoint`:`to_port`."""

    proto: int
    port: int
    endpoint: str
    to_port: int
    loc: Loc = _loc()


@dataclass(frozen=True)
class Endpoint:
    name: str
    site: str
    port: str
    segment: str
    mac: str
    ip: IPv4Address
    groups: tuple[str, ...] = ()
    loc: Loc = _loc()


@dataclass(frozen=True)
class Rule:
    """One security-group rule. The peer is 'any', a group name, or a CIDR (then `peer_net` is set)."""

    group: str
    direction: str  # ingress | egress
    index: int  # position in its group's list for that direction
    peer: str
    peer_net: IPv4Network | None
    proto: int | None  # None: every protocol
    ports: tuple[PortRange, ...]  # empty: every port
    action: str = "allow"
    priority: int = 0  # higher wins; at equal priority deny wins
    loc: Loc = _loc()

    @property
    def peer_kind(self) -> str:
        return "any" if self.peer == "any" else "cidr" if self.peer_net is not None else "group"

    @property
    def identity(self) -> str:
        """What the rule says, not where it stands: its flows keep their cookies and conjunction ids when
        rules are inserted above it or reordered."""
        ports = ",".join(str(p) for p in self.ports)
        return f"{self.group}/{self.direction}/{self.action}/{self.priority}/{self.peer}/{self.proto}/{ports}"

    def describe(self) -> str:
        proto = {None: "any", 1: "icmp", 6: "tcp", 17: "udp"}.get(self.proto, str(self.proto))
        ports = ",".join(str(p) for p in self.ports)
        word = "from" if self.direction == "ingress" else "to"
        prio = f" priority {self.priority}" if self.priority else ""
        return (f"{self.group} {self.direction} rule {self.index + 1}: {self.action} {word} {self.peer} "
                f"{proto}{'/' + ports if ports else ''}{prio}")


@dataclass(frozen=True)
class RouteMatch:
    """Which traffic a route takes: every field that is set must match. `src`/`dst`: a group name or a
    CIDR (then `src_net`/`dst_net` is set)."""

    proto: int | None = None
    src: str | None = None
    src_net: IPv4Network | None = None
    dst: str | None = None
    dst_net: IPv4Network | None = None
    src_ports: tuple[PortRange, ...] = ()
    dst_ports: tuple[PortRange, ...] = ()
    segment: str | None = None
    from_site: str | None = None
    to_site: str | None = None


@dataclass(frozen=True)
class PathChoice:
    """One candidate path of a path split: the sites from source to destination, and its weight."""

    label: str  # as written: "direct", "via cloud2"
    sites: tuple[str, ...]
    weight: float


@dataclass(frozen=True)
class Service:
    """A virtual IP and port in a segment, served by backends by weight."""

    vip: IPv4Address
    proto: int
    port: int
    segment: str

    @property
    def mac(self) -> str:
        return derived_mac(0x06, self.vip)


@dataclass(frozen=True)
class Route:
    """A path split (`match` + `paths`, `k_shortest` or `auto`) or a service split (`service` + `backends`)."""

    name: str
    priority: int = 0
    match: RouteMatch | None = None
    paths: tuple[PathChoice, ...] = ()
    k_shortest: int | None = None
    auto: bool = False
    service: Service | None = None
    backends: tuple[tuple[str, float], ...] = ()  # endpoint name, weight
    loc: Loc = _loc()


@dataclass(frozen=True)
class FilterMatch:
    """What a filter matches, statelessly, on the packet as it enters the switch: every field set must match.
    `src`/`dst`: a group name or a CIDR as written; `src_nets`/`dst_nets` the addresses it stands for."""

    proto: int | None = None
    src: str | None = None
    src_nets: tuple[IPv4Network, ...] = ()
    dst: str | None = None
    dst_nets: tuple[IPv4Network, ...] = ()
    src_ports: tuple[PortRange, ...] = ()
    dst_ports: tuple[PortRange, ...] = ()


FILTER_FROM = ("local", "tunnel", "uplink")  # where a packet can come in, besides a named port or peer site


@dataclass(frozen=True)
class Rate:
    """A meter's rate: packets per second (`pktps`) or kilobits per second (`kbps`), and its burst."""

    value: int
    unit: str  # pktps | kbps
    burst: int = 0

    def __str__(self) -> str:
        return f"{self.value}{'pps' if self.unit == 'pktps' else 'kbit/s'}"


@dataclass(frozen=True)
class Filter:
    """A stateless drop or rate limit in the first table, before port security and conntrack. The first
    filter (in file order) that matches a packet decides it. `sources`: where the packet came in ('local',
    'tunnel', 'uplink', 'port:ENDPOINT', 'tunnel:SITE'); empty: anywhere. `sites`: empty: every site."""

    name: str
    index: int
    match: FilterMatch
    sources: tuple[str, ...] = ()
    sites: tuple[str, ...] = ()
    action: str = "drop"  # drop | rate_limit
    rate: Rate | None = None
    loc: Loc = _loc()


@dataclass(frozen=True)
class FlowLogs:
    """Flow records through IPFIX sample actions: the probability of a record per new connection, per packet
    that nobody has answered yet, and per packet a filter or a quarantine drops (0: none)."""

    new: float = 1.0
    unreplied: float = 1 / 64
    drops: float = 1 / 16
    loc: Loc = _loc()


@dataclass(frozen=True)
class Detection:
    """Anomaly detection on the flow records, per source endpoint: a scan (distinct destination and port
    pairs of new connections in a window), a flood (packets nobody answered, per second, over a window) and a
    connection flood (new connections per second, over a window: a SYN flood, a flood from changing ports).
    `action`: quarantine or log. `exempt`: groups or endpoints never quarantined. `limit`: the rate an
    address outside (no endpoint: a flood through an uplink) is held to at every uplink, where quarantine would
    cut off an endpoint (its victim is never the one cut off)."""

    scan_distinct: int = 100
    scan_window_s: float = 5.0
    flood_pps: float = 8000.0
    flood_window_s: float = 0.5
    connections_pps: float = 2000.0
    connections_window_s: float = 1.0
    action: str = "quarantine"
    hold_s: float = 600.0
    exempt: tuple[str, ...] = ()
    limit: Rate = Rate(1000, "pktps")
    per: tuple[tuple[str, Detection], ...] = ()  # a group's or a segment's own thresholds, in file order
    loc: Loc = _loc()

    def for_endpoint(self, name: str, groups: tuple[str, ...], segment: str) -> Detection:
        """The thresholds of an endpoint: its own, else those of the first of its groups that has its own,
        else its segment's, else these."""
        own = dict(self.per)
        for key in (name, *groups, segment):
            if key in own:
                return own[key]
        return self


@dataclass(frozen=True)
class SecurityGroup:
    name: str
    rules: tuple[Rule, ...]
    loc: Loc = _loc()


@dataclass(frozen=True)
class Model:
    sites: tuple[Site, ...]
    links: tuple[Link, ...]
    segments: tuple[Segment, ...]
    endpoints: tuple[Endpoint, ...]
    poll_interval_s: float = 5.0
    security_groups: tuple[SecurityGroup, ...] = ()
    routes: tuple[Route, ...] = ()
    filters: tuple[Filter, ...] = ()
    flow_logs: FlowLogs | None = None
    detection: Detection | None = None
    files: tuple[str, ...] = field(default=(), compare=False)
    replicas: tuple[tuple[str, str], ...] | None = None  # (name, controller target) allowed; None: any

    def site(self, name: str) -> Site:
        return self._sites[name]

    def segment(self, name: str) -> Segment:
        return self._segments[name]

    def site_by_dpid(self, dpid: int) -> Site | None:
        return self._dpids.get(dpid)

    # The index, built once per model on first use (the model is immutable, so it never goes stale).
    @cached_property
    def _sites(self) -> dict[str, Site]:
        return {s.name: s for s in self.sites}

    @cached_property
    def _segments(self) -> dict[str, Segment]:
        return {s.name: s for s in self.segments}

    @cached_property
    def _dpids(self) -> dict[int, Site]:
        return {s.dpid: s for s in self.sites}

    @cached_property
    def _by(self) -> tuple[dict[str, tuple[Endpoint, ...]], dict[str, tuple[Endpoint, ...]],
                           dict[str, tuple[Endpoint, ...]]]:
        seg: dict[str, list[Endpoint]] = {}
        site: dict[str, list[Endpoint]] = {}
        group: dict[str, list[Endpoint]] = {}
        for e in sorted(self.endpoints, key=lambda e: e.name):
            seg.setdefault(e.segment, []).append(e)
            site.setdefault(e.site, []).append(e)
            for g in e.groups:
                group.setdefault(g, []).append(e)
        return tuple({k: tuple(v) for k, v in d.items()} for d in (seg, site, group))  # type: ignore[return-value]

    @cached_property
    def _endpoints(self) -> dict[str, Endpoint]:
        return {e.name: e for e in self.endpoints}

    def endpoint(self, name: str) -> Endpoint:
        return self._endpoints[name]

    def has_endpoint(self, name: str) -> bool:
        return name in self._endpoints

    def endpoints_of_segment(self, segment: str) -> tuple[Endpoint, ...]:
        """The segment's endpoints, by name."""
        return self._by[0].get(segment, ())

    def endpoints_at(self, site: str) -> tuple[Endpoint, ...]:
        """The site's endpoints, by name."""
        return self._by[1].get(site, ())

    def members(self, group: str) -> tuple[Endpoint, ...]:
        """The security group's members, by name."""
        return self._by[2].get(group, ())

    def route_segments(self, route: Route) -> list[Segment]:
        """The segments a path split applies to (direct mode has no overlay to route), by name."""
        return sorted((s for s in self.segments if s.mode != "direct" and route.match.segment in (None, s.name)),
                      key=lambda s: s.name)

    def route_pairs(self, route: Route) -> list[tuple[str, str]]:
        """The (source, destination) site pairs a path split applies to: its from/to sites, or every ordered
        pair of sites with endpoints in its segments that they allow."""
        m = route.match
        if m.from_site and m.to_site:
            return [(m.from_site, m.to_site)]
        names = {s.name for s in self.route_segments(route)}
        homes = sorted({e.site for e in self.endpoints if e.segment in names})
        return [(a, b) for a in homes for b in homes
                if a != b and m.from_site in (None, a) and m.to_site in (None, b)]
