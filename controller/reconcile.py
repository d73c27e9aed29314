"""The diff between a switch's desired and actual flows: pure, so that it is tested without a switch."""

from __future__ import annotations

from dataclasses import dataclass, field

from controller.codec import CanonContent, CanonKey, MissingPort, canonical_desired
from flows.values import Flow


@dataclass
class Plan:
    """What to send: flows to add or replace, and keys to delete. Empty when the switch is right."""

    add: dict[CanonKey, CanonContent] = field(default_factory=dict)
    replace: dict[CanonKey, CanonContent] = field(default_factory=dict)
    delete: list[CanonKey] = field(default_factory=list)
    missing_ports: set[str] = field(default_factory=set)

    @property
    def size(self) -> int:
        return len(self.add) + len(self.replace) + len(self.delete)

    def summary(self) -> str:
        return f"{len(self.add)} added, {len(self.replace)} replaced, {len(self.delete)} deleted"


def desired_canonical(flows: tuple[Flow, ...], ports: dict[str, int]) -> tuple[dict[CanonKey, CanonContent], set[str]]:
    """Resolve port names; flows naming a port the switch lacks are left out until the port appears."""
    out: dict[CanonKey, CanonContent] = {}
    missing: set[str] = set()
    for f in flows:
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
