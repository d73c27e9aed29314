"""What the os-ken shim, the switch sessions and the services tell the core: plain, immutable values posted
on the core's one queue (controller.core). Nothing else reaches the state the core owns."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class SwitchUp:
    dp: Any  # os-ken Datapath: only the session made for it sends on it


@dataclass(frozen=True)
class SwitchDown:
    dp: Any


@dataclass(frozen=True)
class PortsSeen:
    """Ports a switch reported (a port-desc reply, or one port-status): name, number and liveness."""

    dpid: int
    ports: tuple[tuple[str, int, bool], ...]
    complete: bool  # the switch's whole port list (a reply), not one port's change
    removed: tuple[str, ...] = ()


@dataclass(frozen=True)
class PacketIn:
    dpid: int
    data: bytes
    in_port: int | None = None  # the port it came in on, as the switch said (None: it did not say)


@dataclass(frozen=True)
class WeightsAdopted:
    """The traffic engineer's new paths and shares, as an immutable snapshot (flows.routing.AutoShares)."""

    auto: tuple[tuple[tuple[str, str, str], tuple[tuple[tuple[str, ...], ...], tuple[float, ...]]], ...]


@dataclass(frozen=True)
class Tick:
    """Time passes: reloads that settled, next-hop asks that are due."""


@dataclass(frozen=True)
class QuarantineSeen:
    """A quarantined endpoint still sends: the quarantine dropped (and sampled) a packet of it at `at`."""

    endpoint: str
    at: float


@dataclass(frozen=True)
class QuarantineAlarm:
    """The detector found `endpoint` anomalous: cut it off for `hold_s`, with why and the evidence."""

    endpoint: str
    reason: str
    evidence: Any  # a JSON-able mapping, not changed after posting
    hold_s: float
    raised_at: float  # wall clock, when the alarm was raised


@dataclass(frozen=True)
class PolicyStored:
    """The store holds policy `version`, written out to the replica's policy directory (`path`: its main
    file, whose name is the applied file's): load it."""

    version: int
    digest: str
    path: str


@dataclass(frozen=True)
class Mastership:
    """What this replica masters (shard -> the generation it committed) and every shard's committed
    generation, as the store has them; `shards` is the cluster's shard count (cloudweave.store.shards)."""

    shards: int
    mine: tuple[tuple[str, int], ...]
    committed: tuple[tuple[str, int], ...]


@dataclass(frozen=True)
class NextHopsStored:
    """The NAT uplink gateways' MACs as the store has them (learned by each site's master): site -> MAC."""

    hops: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class QuarantineStored:
    """The quarantine list as the store has it (cloudweave.secops.stored): replicas follow it instead of a
    file."""

    entries: tuple[Any, ...]  # cloudweave.secops.quarantine.Entry
