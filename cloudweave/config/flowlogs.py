"""The `flow_logs` and `detection` sections, read and checked.

    flow_logs:                 # IPFIX records through sample actions (cloudweave flowlog reads them)
      new: 1                   # of each new connection: every one
      unreplied: 1/64          # of packets nobody has answered yet (one-way floods)
      drops: 1/16              # of packets a filter or a quarantine drops
    detection:                 # needs flow_logs; per source endpoint
      scan: {distinct: 100, window: 5s}        # distinct (destination, port) of new connections
      flood: {unreplied_pps: 8000, window: 500ms}
      connections: {per_second: 2000, window: 1s}   # new connections from one source
      action: quarantine       # quarantine | log
      hold: 10m                # a quarantine's hold time (it ends once the signal stayed quiet that long)
      exempt: [monitoring]     # groups or endpoints never quarantined (scanners, monitoring)
      limit: 1000pps           # an outside address that floods (through an uplink) is held to this, not cut off
      per:                     # thresholds of a group's or a segment's endpoints (the rest: as above)
        backup: {connections: {per_second: 20000}}
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from cloudweave.config import values as v
from cloudweave.config.errors import Invalid, Loc
from cloudweave.config.filters import rate
from cloudweave.config.model import Detection, FlowLogs
from cloudweave.config.yamlpos import LDict, known_keys, show

Report = Callable[[Loc, str], None]
FLOW_LOG_KEYS = ("new", "unreplied", "drops")
DETECTION_KEYS = ("scan", "flood", "connections", "per", "action", "hold", "exempt", "limit")
MIN_PROBABILITY = 1 / 65535  # a sample action's probability is n/65535
_FRACTION = re.compile(r"\s*([0-9]{1,9})\s*[/:]\s*([0-9]{1,9})\s*")


def probability(value: Any) -> float:
    """0..1 as a number, or '1/64' (also '1:64')."""
    if isinstance(value, str) and _FRACTION.fullmatch(value):
        num, den = (int(x) for x in _FRACTION.fullmatch(value).groups())
        if den == 0:
            raise Invalid(f"'{show(value)}' divides by zero")
        p = num / den
    elif isinstance(value, int | float) and not isinstance(value, bool):
        p = v.finite(value, "a probability")
    else:
        raise Invalid(f"'{show(value)}' is not a probability (examples: 1, 0.5, 1/64; 0 turns it off)")
    if not 0 <= p <= 1:
        raise Invalid(f"probability {show(value)} is not between 0 and 1")
    if 0 < p < MIN_PROBABILITY:
        raise Invalid(f"probability {show(value)} is below 1/65535, the smallest a switch samples at")
    return p


def read_flow_logs(raw: Any, loc: Loc, error: Report) -> FlowLogs | None:
    if raw is None:
        return FlowLogs(loc=loc)
    if not isinstance(raw, LDict):
        error(loc, f"flow_logs must be a mapping with keys {', '.join(FLOW_LOG_KEYS)}")
        return None
    if not known_keys(raw, FLOW_LOG_KEYS, "flow_logs", error):
        return None
    out: dict[str, float] = {}
    for key, value in raw.items():
        try:
            out[key] = probability(value)
        except Invalid as exc:
            error(raw.val_locs[key], f"flow_logs: {key}: {exc}")
            return None
    return FlowLogs(loc=loc, **out)


def _signal(raw: Any, loc: Loc, what: str, keys: dict[str, Callable[[Any], Any]], error: Report,
            where: str = "detection") -> dict[str, Any] | None:
    if not isinstance(raw, LDict):
        error(loc, f"{where}: {what} must be a mapping with keys {', '.join(keys)}")
        return None
    if not known_keys(raw, keys, f"{where}: {what}", error):
        return None
    out = {}
    for key, value in raw.items():
        try:
            out[key] = keys[key](value)
        except Invalid as exc:
            error(raw.val_locs[key], f"{where}: {what}: {key}: {exc}")
            return None
    return out


def _thresholds(raw: LDict, what: str, base: dict[str, Any], error: Report) -> dict[str, Any] | None:
    """The signals' thresholds a mapping gives (scan, flood, connections), over `base`."""
    out = dict(base)
    window = v.between_s(0.05, 60.0)
    specs = (("scan", {"distinct": v.integer(2, 1_000_000), "window": window},
              (("distinct", "scan_distinct", int), ("window", "scan_window_s", float))),
             ("flood", {"unreplied_pps": v.integer(1, 100_000_000), "window": window},
              (("unreplied_pps", "flood_pps", float), ("window", "flood_window_s", float))),
             ("connections", {"per_second": v.integer(1, 100_000_000), "window": window},
              (("per_second", "connections_pps", float), ("window", "connections_window_s", float))))
    for key, keys, fields in specs:
        if key not in raw:
            continue
        got = _signal(raw[key], raw.val_locs[key], key, keys, error, what)
        if got is None:
            return None
        for name, field, kind in fields:
            if name in got:
                out[field] = kind(got[name])
    return out


def read_detection(raw: Any, loc: Loc, flow_logs: FlowLogs | None, names: set[str], segments: set[str],
                   error: Report, warn: Report) -> Detection | None:
    """`names`: the groups and endpoints that `exempt` may list; `per` may name groups and `segments`."""
    if raw is None:
        raw = LDict()
        raw.loc, raw.key_locs, raw.val_locs = loc, {}, {}
    if not isinstance(raw, LDict):
        error(loc, f"detection must be a mapping with keys {', '.join(DETECTION_KEYS)}")
        return None
    if not known_keys(raw, DETECTION_KEYS, "detection", error):
        return None
    if flow_logs is None:
        error(loc, "detection reads the flow records: add a flow_logs section")
        return None
    out = _thresholds(raw, "detection", {}, error)
    if out is None:
        return None
    per: list[tuple[str, Detection]] = []
    if "per" in raw:
        body = raw["per"]
        if not isinstance(body, LDict):
            error(raw.val_locs["per"], "detection: per must map groups or segments to their own thresholds")
            return None
        for name, sub in body.items():
            if name not in names and name not in segments:
                error(body.key_locs[name], f"detection: per: '{show(name)}' is not a group, a segment or an endpoint")
                return None
            if not isinstance(sub, LDict) or not known_keys(sub, ("scan", "flood", "connections"),
                                                            f"detection: per: {name}", error):
                if not isinstance(sub, LDict):
                    error(body.val_locs[name], f"detection: per: {name} must be a mapping of scan, flood, connections")
                return None
            got = _thresholds(sub, f"detection: per: {name}", out, error)
            if got is None:
                return None
            per.append((name, Detection(loc=body.key_locs[name], **got)))
    try:
        if "action" in raw:
            out["action"] = v.choice("quarantine", "log")(raw["action"])
        if "hold" in raw:
            out["hold_s"] = v.between_s(1.0, 30 * 86400.0)(raw["hold"])
        if "exempt" in raw:
            out["exempt"] = v.name_list(raw["exempt"])
    except Invalid as exc:
        error(raw.loc, f"detection: {exc}")
        return None
    if "limit" in raw:
        try:
            out["limit"] = rate(raw["limit"])
        except Invalid as exc:
            error(raw.val_locs["limit"], f"detection: limit: {exc}")
            return None
    for name in out.get("exempt", ()):
        if name not in names:
            error(raw.val_locs["exempt"], f"detection: exempt: '{name}' is neither a group nor an endpoint")
            return None
    d = Detection(loc=loc, per=tuple(per), **out)
    if flow_logs.new == 0 and "scan" in raw:
        warn(loc, "detection: scan counts new-connection records, and flow_logs has new: 0")
    if flow_logs.unreplied == 0 and "flood" in raw:
        warn(loc, "detection: flood counts unreplied records, and flow_logs has unreplied: 0")
    return d
