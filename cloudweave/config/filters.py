"""The `filters` section: stateless drops and rate limits in the switch's first table, read and checked.

    filters:
      - name: no-udp-from-bad-host
        match: {proto: udp, src: 192.168.1.100}      # proto, src, dst (CIDR or group), src_port, dst_port
        from: [local, tunnel, uplink]                # default: anywhere; also port:ENDPOINT, tunnel:SITE
        sites: [onprem]                              # default: every site
        action: drop                                 # drop | rate_limit
      - name: cap-dns
        match: "udp.dst == 53"                       # the same, as an expression
        action: rate_limit
        rate: 2000pps                                # pps, or a bit rate (kbit, Mbit, Gbit)
      - "drop ip protocol == 17 and ip.src == 192.168.1.100"   # a whole filter in one line

The first filter in the file that matches a packet decides it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from ipaddress import IPv4Network
from typing import Any

from cloudweave.config import values as v
from cloudweave.config.errors import Invalid, Loc
from cloudweave.config.model import FILTER_FROM, Endpoint, Filter, FilterMatch, PortRange, Rate, Site
from cloudweave.config.security import WITH_PORTS, peer, port_ranges, proto
from cloudweave.config.yamlpos import LDict, known_keys, show

Report = Callable[[Loc, str], None]
FILTER_KEYS = ("name", "match", "from", "sites", "action", "rate", "burst")
MATCH_KEYS = ("proto", "src", "dst", "src_port", "dst_port")
ACTIONS = ("drop", "rate_limit")
MAX_FILTERS = 5000  # they take priorities FILTER_TOP down (flows.filters)
MAX_FLOWS_PER_FILTER = 10_000  # at one site: sources x addresses x port pieces
MAX_PPS = 100_000_000
MAX_KBPS = 1_000_000_000  # 1 Tbit/s
PPS_RE = re.compile(r"\s*([0-9]{1,9})\s*(?:pps|pkt/s|packets/s)\s*")
# Expression fields: name -> (match key, protocol it implies)
EXPR_FIELDS: dict[str, tuple[str, int | None]] = {
    "ip protocol": ("proto", None), "ip.proto": ("proto", None), "ip.protocol": ("proto", None),
    "proto": ("proto", None), "ip.src": ("src", None), "ip.dst": ("dst", None), "src": ("src", None),
    "dst": ("dst", None), "src_port": ("src_port", None), "dst_port": ("dst_port", None),
    **{f"{p}.{end}": (f"{end}_port", n) for p, n in (("tcp", 6), ("udp", 17), ("sctp", 132)) for end in ("src", "dst")},
}
_TERM_RE = re.compile(r"\s*(ip protocol|[a-z_]+(?:\.[a-z]+)?)\s*==\s*(\S+)\s*")


@dataclass(frozen=True)
class Names:
    """What filters may refer to."""

    sites: dict[str, Site]
    endpoints: dict[str, Endpoint]
    groups: set[str]


def rate(value: Any) -> Rate:
    """`2000pps`, or a bit rate such as `10Mbit` (a meter counts kilobits)."""
    if isinstance(value, str) and PPS_RE.fullmatch(value):
        pps = int(PPS_RE.fullmatch(value).group(1))
        if not 1 <= pps <= MAX_PPS:
            raise Invalid(f"rate {show(value)} is out of range 1..{MAX_PPS} pps")
        return Rate(pps, "pktps")
    try:
        kbps = round(v.rate_mbps(value) * 1000)
    except Invalid:
        raise Invalid(f"'{show(value)}' is not a rate (examples: 2000pps, 500kbit, 10Mbit)") from None
    if not 1 <= kbps <= MAX_KBPS:
        raise Invalid(f"rate {show(value)} is out of range 1kbit..1Tbit")
    return Rate(kbps, "kbps")


def parse_expression(text: str) -> dict[str, Any]:
    """`ip protocol == 17 and ip.src == 192.168.1.100` -> the match mapping it stands for."""
    out: dict[str, Any] = {}
    implied: int | None = None
    at = 0
    for term in re.split(r"\band\b", text):
        where = at + len(term) - len(term.lstrip()) + 1  # 1-based, where the term's text starts
        m = _TERM_RE.fullmatch(term)
        if not m or m.group(1) not in EXPR_FIELDS:
            fields = ", ".join(sorted({k for k in EXPR_FIELDS if "." in k or k == "ip protocol"}))
            raise Invalid(f"'{show(term.strip())}' (at character {where}) is not FIELD == VALUE with a FIELD of: "
                          f"{fields}; terms are joined by 'and'")
        key, implies = EXPR_FIELDS[m.group(1)]
        if key in out:
            raise Invalid(f"'{m.group(1)}' is given twice (at character {where})")
        value: Any = m.group(2)
        if key == "proto" and value.isascii() and value.isdigit():
            value = int(value)
        elif key.endswith("_port") and value.isascii() and value.isdigit():
            value = int(value)
        out[key] = value
        if implies is not None:
            if implied not in (None, implies):
                raise Invalid("ports of two protocols in one filter")
            implied = implies
        at += len(term) + 3
    if implied is not None:
        given = out.get("proto")
        if given is not None and proto(given) != implied:
            raise Invalid(f"'{given}' contradicts the protocol its ports name")
        out["proto"] = implied
    return out


def read_filters(items: list[tuple[Any, Loc]], names: Names, error: Report, warn: Report) -> list[Filter]:
    """Parse the merged `filters` list; every problem goes to `error` or `warn`."""
    out: list[Filter] = []
    seen: dict[str, Filter] = {}
    if len(items) > MAX_FILTERS:
        error(items[MAX_FILTERS][1], f"more than {MAX_FILTERS} filters")
        items = items[:MAX_FILTERS]
    for index, (raw, loc) in enumerate(items):
        f = _filter(index, raw, loc, names, error, warn)
        if f is None:
            continue
        if f.name in seen:
            error(loc, f"filter '{f.name}' is defined twice (first at {seen[f.name].loc})")
            continue
        seen[f.name] = f
        out.append(f)
    _check_shadowed(out, warn)
    return out


def _filter(index: int, raw: Any, loc: Loc, names: Names, error: Report, warn: Report) -> Filter | None:
    if isinstance(raw, str):
        words = raw.split(None, 1)
        if len(words) != 2 or words[0] not in ("drop",):
            error(loc, f"filter '{show(raw)}': a one-line filter is 'drop EXPRESSION' (example: drop ip protocol "
                       "== 17 and ip.src == 192.168.1.100); write a mapping for a rate limit")
            return None
        line = LDict({"name": raw, "match": words[1], "action": "drop"})
        line.loc, line.key_locs, line.val_locs = loc, dict.fromkeys(line, loc), dict.fromkeys(line, loc)
        raw = line
    if not isinstance(raw, LDict):
        error(loc, "a filter must be a mapping with keys name, match, action (or a line 'drop EXPRESSION')")
        return None
    name = raw.get("name")
    what = f"filter '{show(name)}'" if isinstance(name, str) else "filter"
    if not known_keys(raw, FILTER_KEYS, what, error):
        return None
    for key in ("name", "match"):
        if key not in raw:
            error(loc, f"{what}: missing required key '{key}'")
            return None
    if not isinstance(name, str) or not name.strip() or len(name) > 200:
        error(raw.val_locs["name"], f"{what}: name must be a text of 1 to 200 characters")
        return None
    try:
        action = raw.get("action", "drop")
        if action not in ACTIONS:
            raise Invalid(f"action: '{show(action)}' is not one of: {', '.join(ACTIONS)}")
        limit = None
        if action == "rate_limit":
            if "rate" not in raw:
                raise Invalid("a rate_limit needs 'rate' (examples: 2000pps, 10Mbit)")
            limit = rate(raw["rate"])
            if "burst" in raw:
                limit = Rate(limit.value, limit.unit, v.integer(1, MAX_KBPS)(raw["burst"]))
        elif "rate" in raw or "burst" in raw:
            raise Invalid("'rate' and 'burst' belong to action rate_limit")
    except Invalid as exc:
        error(raw.loc, f"{what}: {exc}")
        return None
    match = _match(raw["match"], raw.val_locs["match"], what, names, error, warn)
    sites = _sites(raw, what, names, error)
    sources = _sources(raw, what, names, error)
    if match is None or sites is None or sources is None:
        return None
    f = Filter(name, index, match, sources, sites, action, limit, loc)
    _check_reach(f, what, names, error, warn)
    return f


def _match(raw: Any, loc: Loc, what: str, names: Names, error: Report, warn: Report) -> FilterMatch | None:
    if isinstance(raw, str):
        try:
            raw = parse_expression(raw)
        except Invalid as exc:
            error(loc, f"{what}: match: {exc}")
            return None
    elif not isinstance(raw, LDict):
        error(loc, f"{what}: match must be a mapping with keys {', '.join(MATCH_KEYS)}, or an expression")
        return None
    elif not known_keys(raw, MATCH_KEYS, f"{what}: match", error):
        return None
    out: dict[str, Any] = {}
    key = ""
    try:
        for key, value in raw.items():
            if key == "proto":
                out["proto"] = proto(value)
            elif key in ("src", "dst"):
                out[key], out[f"{key}_nets"] = _addresses(value, names)
            else:
                out[f"{key}s"] = port_ranges(value)
    except Invalid as exc:
        where = raw.val_locs[key] if isinstance(raw, LDict) else loc
        error(where, f"{what}: match: {key}: {exc}")
        return None
    if (out.get("src_ports") or out.get("dst_ports")) and out.get("proto") not in WITH_PORTS:
        error(loc, f"{what}: match: ports need proto tcp, udp or sctp")
        return None
    m = FilterMatch(**out)
    for end in ("src", "dst"):
        group = getattr(m, end)
        if group is None or group not in names.groups:
            continue
        if not getattr(m, f"{end}_nets"):
            warn(loc, f"{what}: group '{group}' has no endpoints: the filter matches nothing until it has")
            continue
        ips = {n.network_address for n in getattr(m, f"{end}_nets")}
        also = sorted(e.name for e in names.endpoints.values() if e.ip in ips and group not in e.groups)
        if also:
            warn(loc, f"{what}: {end}: group '{group}' stands for its members' addresses, and {len(also)} "
                      f"endpoint(s) outside it share one ({', '.join(also[:3])}): the filter matches them too")
    return m


def _addresses(value: Any, names: Names) -> tuple[str, tuple[IPv4Network, ...]]:
    """A CIDR or a group name -> (as written, the addresses it stands for); a group stands for its members'
    addresses, in every segment (a filter comes before the packet's segment is known)."""
    text, net = peer(value)
    if text == "any":
        raise Invalid("'any' is every address: leave the key out")
    if net is not None:
        return text, (net,)
    if text not in names.groups:
        raise Invalid(f"unknown group '{text}' (a group name or a CIDR)")
    members = sorted({e.ip for e in names.endpoints.values() if text in e.groups})
    return text, tuple(IPv4Network(ip) for ip in members)


def _sites(raw: LDict, what: str, names: Names, error: Report) -> tuple[str, ...] | None:
    if "sites" not in raw:
        return ()
    try:
        sites = v.name_list(raw["sites"])
    except Invalid as exc:
        error(raw.val_locs["sites"], f"{what}: sites: {exc}")
        return None
    unknown = [s for s in sites if s not in names.sites]
    if unknown or not sites:
        error(raw.val_locs["sites"], f"{what}: sites: " + (f"unknown site '{unknown[0]}'" if unknown else
                                                            "an empty list would filter nowhere"))
        return None
    return tuple(sorted(set(sites)))


def _sources(raw: LDict, what: str, names: Names, error: Report) -> tuple[str, ...] | None:
    if "from" not in raw:
        return ()
    items = raw["from"] if isinstance(raw["from"], list) else [raw["from"]]
    out = []
    for item in items:
        kind, _, name = item.partition(":") if isinstance(item, str) else ("", "", "")
        if item in FILTER_FROM:
            out.append(item)
        elif kind == "port" and name in names.endpoints:
            out.append(item)
        elif kind == "tunnel" and name in names.sites:
            out.append(item)
        else:
            hint = (f"unknown endpoint '{name}'" if kind == "port" else f"unknown site '{name}'" if kind == "tunnel"
                    else f"'{show(item)}' is not a place a packet comes in")
            error(raw.val_locs["from"], f"{what}: from: {hint} (expected local, tunnel, uplink, port:ENDPOINT or "
                                        "tunnel:SITE)")
            return None
    if not out:
        error(raw.val_locs["from"], f"{what}: from: an empty list would filter nothing; leave it out for anywhere")
        return None
    return tuple(sorted(set(out)))


def filter_sites(f: Filter, sites: tuple[Site, ...] | list[Site], endpoints: dict[str, Endpoint]) -> list[str]:
    """The sites a filter has flows at: its `sites` (or every one), and of those, for a filter only from
    named ports, the sites of those ports."""
    names = list(f.sites) if f.sites else [s.name for s in sites]
    if f.sources and all(s.startswith("port:") for s in f.sources):
        homes = {endpoints[s[5:]].site for s in f.sources}
        names = [n for n in names if n in homes]
    return names


def _check_reach(f: Filter, what: str, names: Names, error: Report, warn: Report) -> None:
    """A filter must be able to match somewhere, and must not expand into more flows than a switch should take."""
    sites = filter_sites(f, list(names.sites.values()), names.endpoints)
    if not sites:
        error(f.loc, f"{what}: none of its ports is at one of its sites: it would filter nothing")
        return
    if "uplink" in f.sources and not any(names.sites[s].uplink for s in sites):
        warn(f.loc, f"{what}: from uplink, but none of its sites has an uplink")
    m = f.match
    pieces = max(1, len(m.src_nets)) * max(1, len(m.dst_nets)) * max(1, _pieces(m.src_ports)) * max(
        1, _pieces(m.dst_ports))
    if pieces * max(1, len(f.sources)) > MAX_FLOWS_PER_FILTER:
        error(f.loc, f"{what}: it would take {pieces * max(1, len(f.sources)):,} flows at a site (at most "
                     f"{MAX_FLOWS_PER_FILTER:,}); use CIDRs or port ranges that align, or split it")


def _pieces(ranges: tuple[PortRange, ...]) -> int:
    return sum(len(r.pieces()) for r in ranges)


def _covers(a: Filter, b: Filter) -> bool:
    """Does filter `a` match every packet that `b` matches?"""
    ma, mb = a.match, b.match
    if ma.proto is not None and ma.proto != mb.proto:
        return False
    for end in ("src", "dst"):
        nets_a, nets_b = getattr(ma, f"{end}_nets"), getattr(mb, f"{end}_nets")
        if getattr(ma, end) is not None and (getattr(mb, end) is None or not nets_b or not all(
                any(nb.subnet_of(na) for na in nets_a) for nb in nets_b)):
            return False
        ports_a, ports_b = getattr(ma, f"{end}_ports"), getattr(mb, f"{end}_ports")
        if ports_a and (not ports_b or not all(any(pa.lo <= pb.lo and pb.hi <= pa.hi for pa in ports_a)
                                               for pb in ports_b)):
            return False
    if a.sites and (not b.sites or not set(b.sites) <= set(a.sites)):
        return False
    return not a.sources or (bool(b.sources) and set(b.sources) <= set(a.sources))


def _check_shadowed(filters: list[Filter], warn: Report) -> None:
    for i, b in enumerate(filters):
        for a in filters[:i]:
            if _covers(a, b):
                warn(b.loc, f"filter '{b.name}' never decides a packet: filter '{a.name}' above it ({a.loc}) "
                            "matches all of its traffic first")
                break
