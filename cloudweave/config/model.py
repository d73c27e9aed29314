"""The typed, immutable model that the compiler reads. Positions never take part in equality."""

from __future__ import annotations

from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network
from typing import Any

from cloudweave.config.errors import Loc

NOWHERE = Loc("<none>", 0, 0)


def _loc() -> Any:
    return field(default=NOWHERE, compare=False, repr=False)


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
    loc: Loc = _loc()


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
class Model:
    sites: tuple[Site, ...]
    links: tuple[Link, ...]
    segments: tuple[Segment, ...]
    endpoints: tuple[Endpoint, ...]
    poll_interval_s: float = 5.0
    # Sections accepted by the format whose enforcement is not implemented yet (see docs/config.md).
    security_groups: Any = field(default=None, compare=False)
    routes: Any = field(default=None, compare=False)
    files: tuple[str, ...] = field(default=(), compare=False)

    def site(self, name: str) -> Site:
        return next(s for s in self.sites if s.name == name)

    def segment(self, name: str) -> Segment:
        return next(s for s in self.segments if s.name == name)

    def site_by_dpid(self, dpid: int) -> Site | None:
        return next((s for s in self.sites if s.dpid == dpid), None)
