"""Security groups: rules read from the file, checked for mistakes that make them wrong or useless."""

from __future__ import annotations

import re
from collections.abc import Callable
from ipaddress import IPv4Network, ip_network
from typing import Any

from cloudweave.config.errors import Invalid, Loc
from cloudweave.config.model import Endpoint, PortRange, Rule, SecurityGroup
from cloudweave.config.values import NAME_RE
from cloudweave.config.yamlpos import LDict, LList, show

PORT_RANGE_RE = re.compile(r"\s*[0-9]{1,5}\s*-\s*[0-9]{1,5}\s*")  # ASCII digits: '²' is a digit to str.isdigit
PROTOCOLS = {"tcp": 6, "udp": 17, "icmp": 1, "sctp": 132}
WITH_PORTS = {6, 17, 132}
# Ports where a rule open to any peer deserves a second look.
SENSITIVE_PORTS = {22: "ssh", 23: "telnet", 3389: "rdp", 5432: "postgres", 3306: "mysql", 6379: "redis",
                   27017: "mongodb", 9200: "elasticsearch", 11211: "memcached", 2379: "etcd"}


def proto(value: Any) -> int | None:
    if value in (None, "any"):
        return None
    if isinstance(value, str) and value.lower() in PROTOCOLS:
        return PROTOCOLS[value.lower()]
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 255:
        return value
    raise Invalid(f"'{show(value)}' is not a protocol (tcp, udp, icmp, sctp, any, or a number 0..255)")


def port_ranges(value: Any) -> tuple[PortRange, ...]:
    items = value if isinstance(value, list) else [value]
    if not items:
        raise Invalid("an empty list of ports would match no port; leave the key out to match every port")
    out = []
    for item in items:
        if isinstance(item, int) and not isinstance(item, bool):
            lo = hi = item
        elif isinstance(item, str) and PORT_RANGE_RE.fullmatch(item):
            lo, hi = (int(p) for p in item.split("-"))
            if lo > hi:
                raise Invalid(f"port range {item} is reversed (write {hi}-{lo})")
        else:
            raise Invalid(f"'{show(item)}' is not a port or a port range (examples: 80, [80, 443], 5000-6000)")
        if not (1 <= lo and hi <= 65535):
            raise Invalid(f"port {show(item)} is out of range 1..65535")
        out.append(PortRange(lo, hi))
    return tuple(sorted(set(out), key=lambda r: (r.lo, r.hi)))


def action(value: Any) -> str:
    if value not in ("allow", "deny"):
        raise Invalid(f"'{show(value)}' is not an action (allow or deny)")
    return value


def priority(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 1000:
        raise Invalid(f"priority must be an integer 0..1000, got {show(value)}")
    return value


def peer(value: Any) -> tuple[str, IPv4Network | None]:
    if value == "any":
        return "any", None
    if not isinstance(value, str):
        raise Invalid(f"expected a group name, a CIDR or 'any', got {show(value)}")
    text = value
    if "/" in text or text.replace(".", "").isascii() and text.replace(".", "").isdigit():
        try:
            net = ip_network(text, strict=True)
        except ValueError as exc:
            raise Invalid(f"'{show(text)}' is not a valid CIDR ({exc})") from None
        if not isinstance(net, IPv4Network):
            raise Invalid(f"'{text}' is not an IPv4 CIDR")
        return str(net), net
    if not NAME_RE.fullmatch(value):
        raise Invalid(f"expected a group name, a CIDR or 'any', got '{show(value)}'")
    return value, None


def read_groups(body: dict[str, tuple[Any, Loc]], error: Callable[[Loc, str], None]) -> list[SecurityGroup]:
    """Parse the merged `security_groups` section; every problem goes to `error`."""
    groups = []
    for name, (raw, loc) in body.items():
        if name == "any":
            error(loc, "security group 'any': 'any' means every peer in a rule; name the group otherwise")
            continue
        if not isinstance(raw, LDict):
            error(loc, f"security group '{name}' must be a mapping with 'ingress' and/or 'egress'")
            continue
        rules: list[Rule] = []
        for key in raw:
            if key not in ("ingress", "egress"):
                error(raw.key_locs[key], f"unknown key '{key}' in security group '{name}' "
                                         "(expected one of: ingress, egress)")
        for direction in ("ingress", "egress"):
            items = raw.get(direction)
            if items is None:
                continue
            if not isinstance(items, LList):
                error(raw.val_locs[direction], f"security group '{name}': {direction} must be a list of rules")
                continue
            for index, (item, item_loc) in enumerate(zip(items, items.item_locs, strict=True)):
                rule = _rule(name, direction, index, item, item_loc, error)
                if rule is not None:
                    rules.append(rule)
        groups.append(SecurityGroup(name=name, rules=tuple(rules), loc=loc))
    return groups


def _rule(group: str, direction: str, index: int, raw: Any, loc: Loc,
          error: Callable[[Loc, str], None]) -> Rule | None:
    what = f"security group '{group}' {direction} rule {index + 1}"
    if not isinstance(raw, LDict):
        error(loc, f"{what} must be a mapping")
        return None
    peer_key = "from" if direction == "ingress" else "to"
    allowed = {peer_key, "proto", "ports", "action", "priority"}
    ok = True
    for key in raw:
        if key not in allowed:
            hint = f" ({direction} rules name their peer with '{peer_key}')" if key in ("from", "to") else ""
            error(raw.key_locs[key], f"unknown key '{key}' in {what}{hint}")
            ok = False
    values: dict[str, Any] = {}
    for key, convert in ((peer_key, peer), ("proto", proto), ("ports", port_ranges), ("action", action),
                         ("priority", priority)):
        if key in raw:
            try:
                values[key] = convert(raw[key])
            except Invalid as exc:
                error(raw.val_locs[key], f"{what}: {key}: {exc}")
                ok = False
    if peer_key not in raw:
        error(loc, f"{what}: missing required key '{peer_key}'")
        ok = False
    if not ok:
        return None
    pr = values.get("proto")
    ports = values.get("ports", ())
    if ports and pr not in WITH_PORTS:
        name = "any protocol" if pr is None else f"protocol {raw['proto']}"
        error(raw.val_locs["ports"], f"{what}: {name} has no ports; remove 'ports' or use tcp, udp or sctp")
        return None
    name, net = values[peer_key]
    return Rule(group=group, direction=direction, index=index, peer=name, peer_net=net, proto=pr, ports=ports,
                action=values.get("action", "allow"), priority=values.get("priority", 0), loc=loc)


def check_groups(groups: list[SecurityGroup], endpoints: list[Endpoint], error: Callable[[Loc, str], None],
                 warn: Callable[[Loc, str], None]) -> None:
    """Cross-checks: unknown groups, rules that can never match, rules wider than they look."""
    defined = {g.name for g in groups}
    members: dict[str, set[str]] = {g: set() for g in defined}
    for ep in endpoints:
        for g in ep.groups:
            if g not in defined:
                error(ep.loc, f"endpoint '{ep.name}': unknown security group '{g}'")
            else:
                members[g].add(ep.name)
    ips = {ep.name: ep.ip for ep in endpoints}
    for g in groups:
        for r in g.rules:
            if r.peer_kind == "group" and r.peer not in defined:
                error(r.loc, f"{r.describe()}: unknown group '{r.peer}'")
        denies = _DenyIndex([d for d in g.rules if d.action == "deny"], members, ips)
        for r in g.rules:
            if r.action != "allow":
                continue
            d = denies.covering(r)
            if d is not None:
                # A warning, not an error: whether a deny covers an allow can depend on group membership, and
                # the meaning is defined (deny wins); a running policy must not turn invalid as a group shrinks.
                warn(r.loc, f"{r.describe()}: can never match: the deny rule at {d.loc} covers it")
            else:
                _warn_wide(r, warn)


class _DenyIndex:
    """A group's deny rules, found by what they could cover: by direction and protocol, then by peer (any; a
    CIDR containing the allow's peer, found by its supernets; a group, found by name), so that a group of
    thousands of rules is checked in about linear time."""

    def __init__(self, denies: list[Rule], members: dict[str, set[str]], ips: dict[str, Any]):
        self.members, self.ips = members, ips
        self.by: dict[tuple, list[Rule]] = {}
        self.group_peers: dict[tuple[str, int | None], set[str]] = {}
        for d in denies:
            peer_key = {"any": "any", "cidr": d.peer_net}.get(d.peer_kind, ("group", d.peer))
            self.by.setdefault((d.direction, d.proto, peer_key), []).append(d)
            if d.peer_kind == "group":
                self.group_peers.setdefault((d.direction, d.proto), set()).add(d.peer)
        self.spans: dict[str, IPv4Network | None] = {}

    def _span(self, group: str) -> IPv4Network | None:
        """The smallest network holding every member of `group` (None when it has none)."""
        if group not in self.spans:
            addrs = [self.ips[m] for m in self.members.get(group, ())]
            net = None
            if addrs:
                lo, hi = int(min(addrs)), int(max(addrs))
                prefix = 32 - (lo ^ hi).bit_length()
                net = IPv4Network((lo >> (32 - prefix) << (32 - prefix), prefix))
            self.spans[group] = net
        return self.spans[group]

    def covering(self, r: Rule) -> Rule | None:
        """The first deny (in the file's order) that covers `r`, as a scan of every rule would find it."""
        found = [d for pr in dict.fromkeys((None, r.proto)) for d in self._candidates(r, pr)
                 if d.priority >= r.priority and _covers(d, r, self.members, self.ips)]
        return min(found, key=lambda d: d.index) if found else None

    def _candidates(self, r: Rule, pr: int | None) -> Any:
        yield from self.by.get((r.direction, pr, "any"), ())
        net = r.peer_net if r.peer_kind == "cidr" else self._span(r.peer) if r.peer_kind == "group" else None
        if net is not None:
            for prefix in range(net.prefixlen, -1, -1):
                yield from self.by.get((r.direction, pr, net.supernet(new_prefix=prefix)), ())
        if r.peer_kind == "group":
            inner = self.members.get(r.peer, set())
            for peer in self.group_peers.get((r.direction, pr), ()):
                if peer == r.peer or inner and inner <= self.members.get(peer, set()):
                    yield from self.by[(r.direction, pr, ("group", peer))]


def _peer_covers(outer: Rule, inner: Rule, members: dict[str, set[str]], ips: dict[str, Any]) -> bool:
    if outer.peer_kind == "any":
        return True
    if inner.peer_kind == "any":
        return False
    if outer.peer_kind == "cidr":
        if inner.peer_kind == "cidr":
            return inner.peer_net.subnet_of(outer.peer_net)
        group = members.get(inner.peer, set())
        return bool(group) and all(ips[m] in outer.peer_net for m in group)
    if inner.peer_kind == "group":
        return inner.peer == outer.peer or members.get(inner.peer, set()) <= members.get(outer.peer, set()) \
            and bool(members.get(inner.peer))
    return False


def _ports_cover(outer: tuple[PortRange, ...], inner: tuple[PortRange, ...]) -> bool:
    if not outer:
        return True
    if not inner:
        return False
    return all(any(o.lo <= i.lo and i.hi <= o.hi for o in outer) for i in inner)


def _covers(outer: Rule, inner: Rule, members: dict[str, set[str]], ips: dict[str, Any]) -> bool:
    proto_ok = outer.proto is None or outer.proto == inner.proto
    return proto_ok and _ports_cover(outer.ports, inner.ports) and _peer_covers(outer, inner, members, ips)


def _warn_wide(r: Rule, warn: Callable[[Loc, str], None]) -> None:
    wide = r.peer_kind == "any" or (r.peer_net is not None and r.peer_net.prefixlen < 8)
    if not wide or r.direction != "ingress":
        return
    if r.proto in WITH_PORTS or r.proto is None:
        if not r.ports:
            warn(r.loc, f"{r.describe()}: opens every port to {r.peer}; name a group, a CIDR or ports")
            return
        hits = sorted({f"{p}/{SENSITIVE_PORTS[p]}" for rng in r.ports for p in SENSITIVE_PORTS
                       if rng.lo <= p <= rng.hi})
        if hits:
            warn(r.loc, f"{r.describe()}: opens {', '.join(hits)} to {r.peer}; name a group or a CIDR")
