"""The security policy as a decision function: may SRC send this packet to DST? The oracle for `explain`,
for the compiled ACL flows, and for the reachability tests.

A packet passes when the source's egress and the destination's ingress both allow it. In each direction the
matching rules of the endpoint's groups decide: the highest priority wins, and at equal priority a deny wins
over an allow. No matching rule: the segment's default (deny unless `default: allow`). Endpoints in
different segments never reach each other. ARP is always allowed.
"""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Address

from cloudweave.config.model import Endpoint, Model, Rule, Segment

Peer = Endpoint | IPv4Address  # an endpoint, or an address outside every segment


@dataclass(frozen=True)
class Verdict:
    direction: str
    endpoint: Endpoint
    allowed: bool
    rules: tuple[Rule, ...]  # the rules that decided; empty when the segment default did
    segment: Segment


@dataclass(frozen=True)
class Decision:
    allowed: bool
    verdicts: tuple[Verdict, ...]
    reason: str = ""


class Policy:
    def __init__(self, model: Model):
        self.model = model
        self.segments = {s.name: s for s in model.segments}
        self.rules: dict[tuple[str, str], list[Rule]] = {}
        for g in model.security_groups:
            for r in g.rules:
                self.rules.setdefault((g.name, r.direction), []).append(r)
        self.members = {g.name: {e.name for e in model.endpoints if g.name in e.groups}
                        for g in model.security_groups}

    def _peer_matches(self, rule: Rule, other: Peer) -> bool:
        if rule.peer_kind == "any":
            return True
        ip = other.ip if isinstance(other, Endpoint) else other
        if rule.peer_kind == "cidr":
            return ip in rule.peer_net
        return isinstance(other, Endpoint) and other.name in self.members.get(rule.peer, ())

    def matching(self, ep: Endpoint, direction: str, other: Peer, proto: int, port: int | None) -> list[Rule]:
        out = []
        for g in ep.groups:
            for r in self.rules.get((g, direction), []):
                if r.proto is not None and r.proto != proto:
                    continue
                if r.ports and (port is None or not any(p.lo <= port <= p.hi for p in r.ports)):
                    continue
                if self._peer_matches(r, other):
                    out.append(r)
        return out

    def verdict(self, ep: Endpoint, direction: str, other: Peer, proto: int, port: int | None) -> Verdict:
        seg = self.segments[ep.segment]
        rules = self.matching(ep, direction, other, proto, port)
        if not rules:
            return Verdict(direction, ep, seg.default == "allow", (), seg)
        top = max(r.priority for r in rules)
        winners = [r for r in rules if r.priority == top]
        denies = [r for r in winners if r.action == "deny"]
        return Verdict(direction, ep, not denies, tuple(denies or winners), seg)

    def decide(self, src: Peer, dst: Peer, proto: int, port: int | None = None) -> Decision:
        for ep in (src, dst):
            if isinstance(ep, Endpoint) and self.segments[ep.segment].mode == "direct":
                return Decision(True, (), f"{ep.name} is in direct mode: its traffic goes by the uplink, with "
                                          "anti-spoofing only; security groups do not apply")
        if isinstance(src, Endpoint) and isinstance(dst, Endpoint) and src.segment != dst.segment:
            return Decision(False, (), f"{src.name} is in segment '{src.segment}' and {dst.name} in "
                                       f"'{dst.segment}': segments are isolated")
        verdicts = []
        if isinstance(src, Endpoint):
            verdicts.append(self.verdict(src, "egress", dst, proto, port))
        if isinstance(dst, Endpoint):
            verdicts.append(self.verdict(dst, "ingress", src, proto, port))
        if not verdicts:
            return Decision(False, (), "neither side is an endpoint")
        return Decision(all(v.allowed for v in verdicts), tuple(verdicts))
