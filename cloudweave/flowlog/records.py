"""A decoded IPFIX record -> a flow-log line: which endpoints, what the switch saw, and which rule of the
policy decides it and where it is written (the same flows.policy code as `explain`)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache
from ipaddress import IPv4Address
from typing import Any

from cloudweave.config.model import Endpoint, Model
from cloudweave.flows.filters import deciding_filter
from cloudweave.flows.flowlog import (
    KIND_FILTER,
    KIND_ICMP,
    KIND_LIMITED,
    KIND_NAMES,
    KIND_NEW,
    KIND_QUARANTINE,
    KIND_SHIFT,
    KIND_UNREPLIED,
    sampled_probability,
)
from cloudweave.flows.policy import Policy

PROTO_NAMES = {1: "icmp", 6: "tcp", 17: "udp", 132: "sctp"}


@dataclass(frozen=True)
class Verdict:
    verdict: str  # allow | deny | drop (a filter or a quarantine) | rate_limit
    rules: tuple[tuple[str, str], ...]  # (what, file:line) of every rule or filter that decided


class Annotator:
    """Maps records of one model; built again when the model changes."""

    def __init__(self, model: Model, quarantined: frozenset[str] = frozenset()):
        self.model = model
        self.quarantined = quarantined
        self.policy = Policy(model)
        self.by_mac = {(e.site, e.mac.lower()): e for e in model.endpoints}
        self.by_ip: dict[tuple[str, IPv4Address], Endpoint] = {(e.segment, e.ip): e for e in model.endpoints}
        logs = model.flow_logs
        # How many packets one record stands for: the switch samples with probability n/65535.
        self.factor = {kind: 0xFFFF / sampled_probability(p) for kind, p in (
            (KIND_NEW, logs.new), (KIND_UNREPLIED, logs.unreplied), (KIND_FILTER, logs.drops),
            (KIND_QUARANTINE, logs.drops), (KIND_ICMP, logs.unreplied), (KIND_LIMITED, logs.drops))
        } if logs is not None else {}
        self._decide = lru_cache(maxsize=1 << 16)(self._decide_uncached)
        # A new connection to a service VIP is recorded before the split picks its backend.
        self.services = {(r.service.segment, str(r.service.vip), r.service.proto, r.service.port): r
                         for r in model.routes if r.service is not None}

    def annotate(self, rec: dict[str, Any], site: str, now: float) -> dict[str, Any]:
        point = rec.get("obs_point", 0)
        kind_id = point >> KIND_SHIFT
        src_ep = self.by_mac.get((site, str(rec.get("src_mac", "")).lower()))
        proto = rec.get("proto", 0)
        src_ip, dst_ip = rec.get("src", ""), rec.get("dst", "")
        dst_ep = self.by_ip.get((src_ep.segment, IPv4Address(dst_ip))) if src_ep is not None and dst_ip else None
        if dst_ep is None and dst_ip and src_ep is None:  # from the uplink (a port forward): to a local endpoint
            dst_ep = self.by_mac.get((site, str(rec.get("dst_mac", "")).lower()))
        line: dict[str, Any] = {
            "time": round(now, 6), "site": site, "kind": KIND_NAMES.get(kind_id, f"kind{kind_id}"),
            "src": src_ep.name if src_ep else src_ip, "dst": dst_ep.name if dst_ep else dst_ip,
            "src_ip": src_ip, "dst_ip": dst_ip, "proto": PROTO_NAMES.get(proto, str(proto)),
            "sport": rec.get("sport", 0), "dport": rec.get("dport", 0), "ifname": rec.get("ifname", ""),
            "sampling": round(self.factor.get(kind_id, 1.0), 3),
        }
        if kind_id == KIND_FILTER:
            index = point & ((1 << KIND_SHIFT) - 1)
            f = next((f for f in self.model.filters if f.index == index), None)
            line["verdict"], line["rules"] = "drop", ((f"filter '{f.name}'", str(f.loc)),) if f else ()
        elif kind_id == KIND_QUARANTINE:
            line["verdict"], line["rules"] = "drop", (("quarantine", line["src"]),)
        elif kind_id == KIND_LIMITED:  # what an outside address's limit let through
            line["verdict"], line["rules"] = "rate_limit", (("quarantine (limit)", line["src"]),)
        elif src_ep is not None and (src_ep.segment, dst_ip, proto, line["dport"]) in self.services:
            r = self.services[(src_ep.segment, dst_ip, proto, line["dport"])]
            line["dst"] = f"service {r.name}"
            line["verdict"], line["rules"] = "service", ((
                f"service '{r.name}' {dst_ip}:{line['dport']}: to a backend by weight, whose rules decide",
                str(r.loc)),)
        else:
            port = line["dport"] if proto in (6, 17, 132) else None
            v = self._decide(line["src"], line["dst"], src_ip, dst_ip, proto, port)
            line["verdict"], line["rules"] = v.verdict, v.rules
        return line

    def _decide_uncached(self, src: str, dst: str, src_ip: str, dst_ip: str, proto: int, port: int | None
                         ) -> Verdict:
        names = {e.name: e for e in (self.model.endpoint(n) for n in (src, dst) if self.model.has_endpoint(n))}
        a = names.get(src) or IPv4Address(src_ip)
        b = names.get(dst) or IPv4Address(dst_ip)
        by_filter = deciding_filter(self.model, a, b, proto, port)
        if by_filter is not None:
            f = by_filter[0]
            return Verdict("drop" if f.action == "drop" else "rate_limit", ((f"filter '{f.name}'", str(f.loc)),))
        d = self.policy.decide(a, b, proto, port)
        # The rules of each direction that decided, or its segment's default; a deny names only the denying side.
        sides = [v for v in d.verdicts if not v.allowed] if not d.allowed else list(d.verdicts)
        rules = tuple((r.describe(), str(r.loc)) if r is not None else
                      (f"{v.direction} of {v.endpoint.name}: default {v.segment.default} of segment "
                       f"'{v.segment.name}'", str(v.segment.loc))
                      for v in sides for r in (v.rules or (None,))) or ((d.reason, ""),)
        return Verdict("allow" if d.allowed else "deny", rules)


def is_new(line: dict[str, Any]) -> bool:
    return line["kind"] == KIND_NAMES[KIND_NEW]


_PLAIN = re.compile(r"[A-Za-z0-9_.:/@+-]*")  # needs no JSON escaping (names, addresses)


def _text(value: str) -> str:
    return f'"{value}"' if _PLAIN.fullmatch(value) else json.dumps(value)


@lru_cache(maxsize=4096)
def _rules_json(rules: tuple[tuple[str, str], ...]) -> str:
    return json.dumps(rules, separators=(",", ":"))


def to_json(line: dict[str, Any]) -> str:
    """One flow-log line as JSON, as json.dumps writes it, three times as fast (a busy site writes tens of
    thousands a second; the rules of a line are the same for every connection of a pair: written once)."""
    return (f'{{"time":{line["time"]:.6f},"site":{_text(line["site"])},"kind":"{line["kind"]}",'
            f'"src":{_text(line["src"])},"dst":{_text(line["dst"])},"src_ip":{_text(line["src_ip"])},'
            f'"dst_ip":{_text(line["dst_ip"])},"proto":{_text(line["proto"])},"sport":{int(line["sport"])},'
            f'"dport":{int(line["dport"])},"ifname":{_text(line["ifname"])},"sampling":{float(line["sampling"])},'
            f'"verdict":"{line["verdict"]}","rules":{_rules_json(line["rules"])}}}')
