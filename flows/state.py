"""What one site's switch must hold, as the compiler hands it over: tunnel ports, groups, and flows in units."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property
from ipaddress import IPv4Address

from .values import Flow, Group, Meter

Unit = tuple[str, ...]  # what a part of a site's flows is of: ("overlay", "prod"), ("acl_rules",), ...
METERED_UNITS = (("filters",), ("limit",))  # the units whose flows may name a meter (flows.incremental)


@dataclass(frozen=True)
class TunnelPort:
    name: str
    peer: str
    remote_ip: IPv4Address
    local_ip: IPv4Address


def sort_key(f: Flow) -> tuple:
    # Keys are unique per switch; values as text, since one field can hold a value or a value/mask pair.
    return (f.table, -f.priority, tuple((k, str(v)) for k, v in f.match))


@dataclass(frozen=True)
class SwitchState:
    """What one site's bridge must hold: its tunnel ports (OVSDB), its groups and flows (OpenFlow). The flows
    come in units (flows.incremental): a unit whose inputs did not change is the very tuple it was before."""

    site: str
    dpid: int
    tunnels: tuple[TunnelPort, ...]
    units: tuple[tuple[Unit, tuple[Flow, ...]], ...]
    groups: tuple[Group, ...] = ()

    @property
    def flow_count(self) -> int:
        """len(flows), without sorting them."""
        return sum(len(flows) for _, flows in self.units)

    @cached_property
    def flows(self) -> tuple[Flow, ...]:
        """Every flow, in the order `compile` prints them."""
        return tuple(sorted((f for _, flows in self.units for f in flows), key=sort_key))

    @cached_property
    def meters(self) -> tuple[Meter, ...]:
        """The meters its flows send through, by id (a flow's Meter action carries the meter's settings)."""
        return meters_of(f for unit, flows in self.units if unit in METERED_UNITS for f in flows)


def meters_of(flows: Iterable[Flow]) -> tuple[Meter, ...]:
    """Every distinct meter the flows name, by id; two settings under one id is a compiler bug."""
    out: dict[int, Meter] = {}
    for f in flows:
        for a in f.actions:
            if isinstance(a, Meter) and out.setdefault(a.meter_id, a) != a:
                raise ValueError(f"meter {a.meter_id:#x} has two settings: {out[a.meter_id]} and {a}")
    return tuple(out[k] for k in sorted(out))
