"""The diff between a switch's desired and actual flows: pure, so that it is tested without a switch."""

from __future__ import annotations

from dataclasses import dataclass, field

from cloudweave.flows.state import SwitchState, Unit
from cloudweave.flows.values import Flow, Group, ToGroup
from controller.codec import (
    CanonContent,
    CanonGroup,
    CanonKey,
    CanonMeter,
    MissingPort,
    canonical_desired,
    canonical_group_desired,
)


@dataclass
class Plan:
    """What to send: flows to add or replace, and keys to delete. Empty when the switch is right."""

    add: dict[CanonKey, CanonContent] = field(default_factory=dict)
    replace: dict[CanonKey, CanonContent] = field(default_factory=dict)
    delete: list[CanonKey] = field(default_factory=list)
    missing_ports: set[str] = field(default_factory=set)
    group_add: dict[int, CanonGroup] = field(default_factory=dict)
    group_modify: dict[int, CanonGroup] = field(default_factory=dict)
    group_delete: list[int] = field(default_factory=list)
    meter_add: dict[int, CanonMeter] = field(default_factory=dict)
    meter_modify: dict[int, CanonMeter] = field(default_factory=dict)
    meter_delete: list[int] = field(default_factory=list)

    @property
    def size(self) -> int:
        return len(self.add) + len(self.replace) + len(self.delete) + self.group_size + self.meter_size

    @property
    def meter_size(self) -> int:
        return len(self.meter_add) + len(self.meter_modify) + len(self.meter_delete)

    @property
    def group_size(self) -> int:
        return len(self.group_add) + len(self.group_modify) + len(self.group_delete)

    def summary(self) -> str:
        groups = (f"; groups {len(self.group_add)} added, {len(self.group_modify)} modified, "
                  f"{len(self.group_delete)} deleted" if self.group_size else "")
        meters = (f"; meters {len(self.meter_add)} added, {len(self.meter_modify)} modified, "
                  f"{len(self.meter_delete)} deleted" if self.meter_size else "")
        return f"{len(self.add)} added, {len(self.replace)} replaced, {len(self.delete)} deleted{groups}{meters}"


def desired_groups(groups: tuple[Group, ...], ports: dict[str, int]) -> tuple[dict[int, CanonGroup], set[str]]:
    """Resolve port names; a group naming a port the switch lacks is left out until the port appears."""
    out: dict[int, CanonGroup] = {}
    missing: set[str] = set()
    for g in groups:
        try:
            gid, content = canonical_group_desired(g, ports)
        except MissingPort as exc:
            missing.add(exc.args[0])
            continue
        out[gid] = content
    return out, missing


def desired_canonical(flows: tuple[Flow, ...], ports: dict[str, int],
                      groups: dict[int, CanonGroup] | None = None) -> tuple[dict[CanonKey, CanonContent], set[str]]:
    """Resolve port names; flows naming a port the switch lacks, or a group left out, wait until it appears."""
    out: dict[CanonKey, CanonContent] = {}
    missing: set[str] = set()
    for f in flows:
        absent = [a.group_id for a in f.actions if isinstance(a, ToGroup) and a.group_id not in (groups or {})]
        if absent:
            missing.add(f"group {absent[0]:#x}")
            continue
        try:
            key, content = canonical_desired(f, ports)
        except MissingPort as exc:
            missing.add(exc.args[0])
            continue
        out[key] = content
    return out, missing


def plan(desired: dict[CanonKey, CanonContent], actual: dict[CanonKey, CanonContent]) -> Plan:
    p = Plan()
    for key, content in desired.items():
        have = actual.get(key)
        if have is None:
            p.add[key] = content
        elif have != content:
            p.replace[key] = content
    p.delete = [key for key in actual if key not in desired]
    return p


def plan_keys(desired: dict[CanonKey, CanonContent], actual: dict[CanonKey, CanonContent],
              keys: set[CanonKey]) -> Plan:
    """`plan`, looking only at `keys`: where the caller knows nothing else can differ."""
    p = Plan()
    for key in keys:
        want, have = desired.get(key), actual.get(key)
        if want is None:
            if have is not None:
                p.delete.append(key)
        elif have is None:
            p.add[key] = want
        elif have != want:
            p.replace[key] = want
    return p


class CanonicalDesired:
    """A switch's desired flows and groups in canonical form, kept unit by unit (flows.incremental): a new
    desired state costs only the units whose flows changed. `update` says which keys may now differ from
    before, or None when everything may (other ports, or another set of groups that can be installed)."""

    def __init__(self) -> None:
        self.ports: dict[str, int] | None = None
        self.flows: dict[CanonKey, CanonContent] = {}
        self.groups: dict[int, CanonGroup] = {}
        self.missing: set[str] = set()
        self._units: dict[Unit, tuple[tuple[Flow, ...], dict[CanonKey, CanonContent], set[str]]] = {}
        self._missing_groups: set[str] = set()

    def update(self, desired: SwitchState, ports: dict[str, int]) -> set[CanonKey] | None:
        groups, self._missing_groups = desired_groups(desired.groups, ports)
        everything = ports is not self.ports or groups.keys() != self.groups.keys()
        self.groups, self.ports = groups, ports
        if everything:
            self._units, self.flows = {}, {}
        new = dict(desired.units)
        gone = [u for u, (flows, _, _) in self._units.items() if new.get(u) is not flows]
        touched: set[CanonKey] = set()
        for unit in gone:  # first every old key out, then the new ones in: a key may move between units
            for key in self._units.pop(unit)[1]:
                self.flows.pop(key, None)
                touched.add(key)
        for unit, flows in desired.units:
            if unit not in self._units:
                canon, missing = desired_canonical(flows, ports, groups)
                self._units[unit] = (flows, canon, missing)
                self.flows.update(canon)
                touched.update(canon)
        self.missing = self._missing_groups.union(*(m for _, _, m in self._units.values()))
        return None if everything else touched


def _by_id(desired: dict, actual: dict, add: dict, modify: dict) -> list:
    """Fill `add` and `modify` with what differs by id; return the ids to delete."""
    for oid, content in desired.items():
        have = actual.get(oid)
        if have is None:
            add[oid] = content
        elif have != content:
            modify[oid] = content
    return [oid for oid in actual if oid not in desired]


def plan_meters(p: Plan, desired: dict[int, CanonMeter], actual: dict[int, CanonMeter]) -> Plan:
    """Add the meter changes to a plan: only meters with our ids are in `actual`."""
    p.meter_delete = _by_id(desired, actual, p.meter_add, p.meter_modify)
    return p


def plan_groups(p: Plan, desired: dict[int, CanonGroup], actual: dict[int, CanonGroup]) -> Plan:
    """Add the group changes to a plan: only groups with our ids are in `actual`."""
    p.group_delete = _by_id(desired, actual, p.group_add, p.group_modify)
    return p
