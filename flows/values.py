"""Flows as plain values. Ports are named, never numbered: the controller resolves names on each switch."""

from __future__ import annotations

from dataclasses import dataclass

ETH_IPV4 = 0x0800
ETH_ARP = 0x0806

MatchValue = int | str | tuple[int, int] | tuple[str, str]  # plain value or (value, mask)


@dataclass(frozen=True, order=True)
class Output:
    port: str


@dataclass(frozen=True, order=True)
class SetField:
    field: str
    value: int


@dataclass(frozen=True, order=True)
class Goto:
    table: int


@dataclass(frozen=True, order=True)
class CT:
    """Send through conntrack in the zone held in reg6[0..15]; recirculate to `table`, or commit."""

    commit: bool = False
    table: int | None = None


@dataclass(frozen=True, order=True)
class Conjunction:
    """Clause `clause` (1-based) of `n_clauses` of conjunctive match `id`."""

    id: int
    clause: int
    n_clauses: int


Action = Output | SetField | Goto | CT | Conjunction


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
        named = {a.port for a in self.actions if isinstance(a, Output)}
        named.update(str(v) for f, v in self.match if f == "in_port")
        return named


def flow(table: int, priority: int, cookie: int, actions: tuple[Action, ...] = (), **match: MatchValue) -> Flow:
    """Build a Flow with its match fields in a canonical order."""
    return Flow(table, priority, tuple(sorted(match.items())), tuple(actions), cookie)
