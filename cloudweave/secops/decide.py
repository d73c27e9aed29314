"""The act-or-not rule: what to do about a detector's alarm, and how the log names an entry of the list."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cloudweave.flows.quarantine import outside_address
from cloudweave.secops.detect import Alarm


@dataclass(frozen=True)
class Decision:
    act: bool
    said: str  # what the log adds to the alarm's description


def decide(alarm: Alarm, model: Any, held: frozenset[str]) -> Decision:
    """Act on an alarm or only log it: an endpoint is quarantined, an outside address (a flood through an
    uplink) rate-limited at every uplink (a flood's victim is never the one cut off); not an exempt endpoint,
    not one already held, not a name that is neither."""
    d = model.detection
    ep = model.endpoint(alarm.source) if model.has_endpoint(alarm.source) else None
    outside = ep is None and outside_address(alarm.source) is not None
    exempt = ep is not None and (ep.name in d.exempt or any(g in d.exempt for g in ep.groups))
    already = alarm.source in held
    if d.action == "quarantine" and (ep is not None or outside) and not exempt and not already:
        return Decision(True, f"; limiting it to {d.limit} at every uplink" if outside else "; quarantining it")
    if already:
        return Decision(False, " (already held)")
    if ep is None and not outside:
        return Decision(False, " (not an endpoint nor an address: logged only)")
    return Decision(False, " (exempt: logged only)" if exempt else "")


def held_name(name: str, model: Any) -> str:
    """A quarantine entry as the log names it."""
    return f"outside address {name}" if not model.has_endpoint(name) and outside_address(name) else f"endpoint {name}"
