"""What a keeper hands the core: the one shape every feature's answer takes.

A keeper owns one feature's state and lifecycle (`quarantine_keeper`, `next_hop_keeper`, `link_keeper`,
`reload_keeper`). It reads the published snapshot and the message it was given, and returns a `Reply`: new
values for fields of the state, why, what to do once the core has (or has not) committed them, and messages
for switches. It never touches the state or a session; the core commits the state together with its flows
(controller.core), as Faucet's managers return messages and OVN's engine nodes return their data.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any


@dataclass(frozen=True)
class Send:
    """A message for one switch, built with its datapath (`build(dp)`), sent by its session's worker."""

    dpid: int
    build: Callable[[Any], Any]


@dataclass(frozen=True)
class Reply:
    state: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))  # State field -> new value
    why: str = ""
    then: Callable[[bool], None] | None = None  # told whether the new state was committed (or kept: none asked)
    sends: tuple[Send, ...] = ()
    resync: bool = False  # read every switch back (SIGHUP)
    refused: bool = False  # the keeper turned its input down (a reload of a bad file): nothing committed


NOTHING = Reply()


def change(why: str, then: Callable[[bool], None] | None = None, **state: Any) -> Reply:
    """A reply that asks for new values of the state's fields."""
    return Reply(MappingProxyType(state), why, then)
