"""The `routes` section: path splits and service splits, read with positions and checked.

    - name: http-from-onprem
      priority: 10                      # optional, 0..1000; higher wins
      match: {proto: tcp, dst_port: 80, from_site: onprem, to_site: cloud1}
      split: {direct: 70, via cloud2: 30}          # or {k_shortest: 3}, or auto
    - name: shop
      service: {vip: 10.10.0.100, proto: tcp, port: 80, segment: prod}
      split: {web1: 70, web2: 30}                  # backends (endpoints, or sites) by weight
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Callable, Iterator
from ipaddress import IPv4Network
from typing import Any

import networkx as nx

from cloudweave.config import values as v
from cloudweave.config.errors import Invalid, Loc
from cloudweave.config.model import Endpoint, Link, PathChoice, PortRange, Route, RouteMatch, Segment, Service, Site
from cloudweave.config.security import port_ranges, proto
from cloudweave.config.yamlpos import LDict, known_keys, show

Report = Callable[[Loc, str], None]
ROUTE_KEYS = ("name", "priority", "match", "service", "split")
MATCH_KEYS = ("proto", "src", "dst", "src_port", "dst_port", "segment", "from_site", "to_site")
SERVICE_KEYS = ("vip", "proto", "port", "segment")
MAX_WEIGHT = 1e6
AUTO_PATHS = 4  # candidate paths of `split: auto` to begin with (te/ may add more where they help)


def route_peer(value: Any) -> tuple[str, IPv4Network | None]:
    """A group name or a CIDR."""
    text = str(value)
    if "/" in text or text[:1].isdigit():
        return text, v.ipv4_net(text)
    return v.name(text), None


def weight(value: Any) -> tuple[float, bool]:
    """A weight: a non-negative number, or a percentage such as '70%' (then True)."""
    if isinstance(value, str) and value.strip().endswith("%"):
        number = value.strip()[:-1].strip()
        if not re.fullmatch(r"[0-9]{1,15}(\.[0-9]{1,15})?", number):
            raise Invalid(f"'{show(value)}' is not a weight (examples: 70, 70%)")
        w = float(number)
        percent = True
    elif isinstance(value, int | float) and not isinstance(value, bool):
        w, percent = v.finite(value, "a weight"), False
    else:
        raise Invalid(f"'{show(value)}' is not a weight (examples: 70, 70%)")
    if w < 0:
        raise Invalid(f"weight {show(value)} is negative")
    if w > MAX_WEIGHT:
        raise Invalid(f"weight {show(value)} is more than {MAX_WEIGHT:g}; weights are relative, use smaller ones")
    return w, percent


def _weights(raw: LDict, what: str, error: Report) -> list[tuple[str, float, Loc]] | None:
    out, kinds = [], set()
    for key, value in raw.items():
        try:
            w, percent = weight(value)
        except Invalid as exc:
            error(raw.val_locs[key], f"{what}: {exc}")
            return None
        kinds.add(percent)
        out.append((str(key), w, raw.key_locs[key]))
    total = sum(w for _, w, _ in out)
    if kinds == {True} and abs(total - 100) > 1e-9:
        error(raw.loc, f"{what}: percentages sum to {total:g}, not 100")
        return None
    if len(kinds) > 1:
        error(raw.loc, f"{what}: mix of percentages and plain weights; use one kind")
        return None
    if total <= 0:
        error(raw.loc, f"{what}: the weights sum to zero")
        return None
    return out


def _match(raw: Any, loc: Loc, what: str, error: Report) -> RouteMatch | None:
    if not isinstance(raw, LDict):
        error(loc, f"{what}: match must be a mapping with keys {', '.join(MATCH_KEYS)}")
        return None
    if not known_keys(raw, MATCH_KEYS, f"{what}: match", error):
        return None
    out: dict[str, Any] = {}
    try:
        for key, value in raw.items():
            where = raw.val_locs[key]
            if key == "proto":
                out["proto"] = proto(value)
            elif key in ("src", "dst"):
                out[key], out[f"{key}_net"] = route_peer(value)
            elif key in ("src_port", "dst_port"):
                out[f"{key}s"] = port_ranges(value)
            else:
                out[key] = v.name(value)
    except Invalid as exc:
        error(where, f"{what}: match: {key}: {exc}")
        return None
    if (out.get("src_ports") or out.get("dst_ports")) and out.get("proto") not in (6, 17, 132):
        error(loc, f"{what}: match: ports need proto tcp, udp or sctp")
        return None
    return RouteMatch(**out)


def _service(raw: Any, loc: Loc, what: str, error: Report) -> Service | None:
    if not isinstance(raw, LDict):
        error(loc, f"{what}: service must be a mapping with keys {', '.join(SERVICE_KEYS)}")
        return None
    if not known_keys(raw, SERVICE_KEYS, f"{what}: service", error):
        return None
    missing = [k for k in ("vip", "port", "segment") if k not in raw]
    if missing:
        error(raw.loc, f"{what}: service: missing required key '{missing[0]}'")
        return None
    try:
        p = proto(raw.get("proto", "tcp"))
        if p not in (6, 17):
            raise Invalid(f"proto must be tcp or udp, got {raw.get('proto')!r}")
        return Service(v.ipv4(raw["vip"]), p, v.integer(1, 65535)(raw["port"]), v.name(raw["segment"]))
    except Invalid as exc:
        error(raw.loc, f"{what}: service: {exc}")
        return None


def read_routes(items: list[tuple[Any, Loc]], error: Report) -> list[Route]:
    routes = []
    for raw, loc in items:
        if not isinstance(raw, LDict):
            error(loc, "a route must be a mapping with keys name, match or service, and split")
            continue
        name = raw.get("name")
        what = f"route '{show(name)}'" if isinstance(name, str) else "route"
        if not known_keys(raw, ROUTE_KEYS, what, error):
            continue
        if name is None:
            error(loc, "route: missing required key 'name'")
            continue
        try:
            v.name(name)
        except Invalid as exc:
            error(raw.val_locs["name"], f"route: name: {exc}")
            continue
        if ("match" in raw) == ("service" in raw):
            error(loc, f"{what}: give either 'match' (a path split) or 'service' (a service split)")
            continue
        if "split" not in raw:
            error(loc, f"{what}: missing required key 'split'")
            continue
        try:
            prio = v.integer(0, 1000)(raw.get("priority", 0))
        except Invalid as exc:
            error(raw.val_locs["priority"], f"{what}: priority: {exc}")
            continue
        split, split_loc = raw["split"], raw.val_locs["split"]
        if "service" in raw:
            service = _service(raw["service"], raw.val_locs["service"], what, error)
            if not isinstance(split, LDict):
                error(split_loc, f"{what}: a service split maps backends (endpoints or sites) to weights")
                continue
            weights = _weights(split, f"{what}: split", error)
            if service is None or weights is None:
                continue
            routes.append(Route(name, prio, service=service, backends=tuple((k, w) for k, w, _ in weights),
                                loc=loc))
            continue
        match = _match(raw["match"], raw.val_locs["match"], what, error)
        if match is None:
            continue
        if split == "auto":
            routes.append(Route(name, prio, match=match, auto=True, loc=loc))
        elif isinstance(split, LDict) and list(split) == ["k_shortest"]:
            try:
                k = v.integer(1, 16)(split["k_shortest"])
            except Invalid as exc:
                error(split.val_locs["k_shortest"], f"{what}: split: k_shortest: {exc}")
                continue
            routes.append(Route(name, prio, match=match, k_shortest=k, loc=loc))
        elif isinstance(split, LDict):
            weights = _weights(split, f"{what}: split", error)
            if weights is None:
                continue
            paths = []
            for label, w, key_loc in weights:
                words = label.split()
                if words == ["direct"]:
                    via: list[str] = []
                elif len(words) >= 2 and words[0] == "via":
                    via = words[1:]
                else:
                    error(key_loc, f"{what}: split: '{label}' is not a path (direct, via SITE, via SITE SITE ...)")
                    break
                paths.append(PathChoice(label, (match.from_site or "", *via, match.to_site or ""), w))
            else:
                routes.append(Route(name, prio, match=match, paths=tuple(paths), loc=loc))
        else:
            error(split_loc, f"{what}: split must be auto, {{k_shortest: N}}, or a mapping of paths to weights")
    return routes


def check_routes(routes: list[Route], sites: list[Site], links: list[Link], segments: list[Segment],
                 endpoints: list[Endpoint], groups: set[str], error: Report, warn: Report) -> list[Route]:
    """Check references, paths and overlaps; return the routes with service backends resolved to endpoints."""
    site_names = {s.name for s in sites}
    segs = {s.name: s for s in segments}
    eps = {e.name: e for e in endpoints}
    graph = nx.Graph()
    graph.add_nodes_from(site_names)
    graph.add_edges_from(link.sites for link in links)
    names: dict[str, Route] = {}
    out = []
    # Indexes for service routes only: a reload of a file without them pays nothing per endpoint.
    services = any(r.service is not None for r in routes)
    by_address = {(e.segment, e.ip): e for e in endpoints} if services else {}
    at_site: dict[tuple[str, str], list[Endpoint]] = {}
    for e in endpoints if services else ():
        at_site.setdefault((e.site, e.segment), []).append(e)
    served: dict[tuple, Route] = {}
    for r in routes:
        what = f"route '{r.name}'"
        if r.name in names:
            error(r.loc, f"{what} is defined twice (first at {names[r.name].loc})")
            continue
        names[r.name] = r
        if r.service is not None:
            svc = r.service
            key = (svc.segment, svc.vip, svc.proto, svc.port)
            if key in served:
                error(r.loc, f"{what}: service {svc.vip} port {svc.port} is also route '{served[key].name}' "
                             f"({served[key].loc}); one service per VIP, protocol and port")
                continue
            served[key] = r
            resolved = _check_service(r, what, segs, eps, by_address, at_site, site_names, error)
            if resolved is not None:
                out.append(resolved)
            continue
        m = r.match
        ok = True
        for key in ("from_site", "to_site"):
            site = getattr(m, key)
            if site is not None and site not in site_names:
                error(r.loc, f"{what}: {key}: unknown site '{site}'")
                ok = False
        if m.segment is not None and m.segment not in segs:
            error(r.loc, f"{what}: match: unknown segment '{m.segment}'")
            ok = False
        for key in ("src", "dst"):
            if getattr(m, key) is not None and getattr(m, f"{key}_net") is None and getattr(m, key) not in groups:
                error(r.loc, f"{what}: match: {key}: unknown group '{getattr(m, key)}'")
                ok = False
        if m.from_site is not None and m.from_site == m.to_site:
            error(r.loc, f"{what}: from_site and to_site are both '{m.from_site}'")
            ok = False
        if r.paths and (m.from_site is None or m.to_site is None):
            error(r.loc, f"{what}: a split over explicit paths needs match.from_site and match.to_site")
            ok = False
        if ok and r.paths:
            ok = _check_paths(r, what, site_names, graph, error)
        if ok and (r.auto or r.k_shortest) and m.from_site is not None and m.to_site is not None \
                and not nx.has_path(graph, m.from_site, m.to_site):
            error(r.loc, f"{what}: no chain of links joins {m.from_site} and {m.to_site}")
            ok = False
        if ok:
            out.append(r)
    _check_overlaps([r for r in out if r.match is not None], error)
    return out


def _check_paths(r: Route, what: str, site_names: set[str], graph: nx.Graph, error: Report) -> bool:
    ok = True
    for p in r.paths:
        for s in p.sites[1:-1]:
            if s not in site_names:
                error(r.loc, f"{what}: path '{p.label}': unknown site '{s}'")
                ok = False
        if not ok:
            continue
        if len(set(p.sites)) != len(p.sites):
            error(r.loc, f"{what}: path '{p.label}' visits a site twice: {' -> '.join(p.sites)}")
            ok = False
            continue
        for a, b in zip(p.sites, p.sites[1:], strict=False):
            if not graph.has_edge(a, b):
                error(r.loc, f"{what}: path '{p.label}' ({' -> '.join(p.sites)}) needs a link between {a} and {b}, "
                             "which the file does not declare")
                ok = False
    if ok:
        ok = relay_conflicts(r.paths, what, r.loc, error)
    return ok


def relay_conflicts(paths: tuple[PathChoice, ...], what: str, loc: Loc, error: Report) -> bool:
    """A relay forwards by where a packet came from; two paths that reach one relay from the same site must
    leave it toward the same site, or the relay could not tell them apart."""
    seen: dict[tuple[str, str], tuple[str, str]] = {}
    for p in paths:
        for prev, here, nxt in zip(p.sites, p.sites[1:], p.sites[2:], strict=False):
            other = seen.setdefault((prev, here), (nxt, p.label))
            if other[0] != nxt:
                error(loc, f"{what}: paths '{other[1]}' and '{p.label}' both reach {here} from {prev} but leave "
                           f"toward {other[0]} and {nxt}; {here} could not tell them apart")
                return False
    return True


def _check_service(r: Route, what: str, segs: dict[str, Segment], eps: dict[str, Endpoint],
                   by_address: dict[tuple[str, Any], Endpoint], at_site: dict[tuple[str, str], list[Endpoint]],
                   site_names: set[str], error: Report) -> Route | None:
    svc = r.service
    seg = segs.get(svc.segment)
    if seg is None:
        error(r.loc, f"{what}: service: unknown segment '{svc.segment}'")
        return None
    if svc.vip not in seg.subnet or svc.vip in (seg.subnet.network_address, seg.subnet.broadcast_address):
        error(r.loc, f"{what}: service: VIP {svc.vip} is not a host address of segment '{seg.name}' ({seg.subnet})")
        return None
    taken = by_address.get((seg.name, svc.vip))
    if taken is not None:
        error(r.loc, f"{what}: service: VIP {svc.vip} is endpoint '{taken.name}'s address")
        return None
    if seg.gateway is not None and svc.vip == seg.gateway:
        error(r.loc, f"{what}: service: VIP {svc.vip} is the gateway of segment '{seg.name}'")
        return None
    if seg.mode == "direct":
        error(r.loc, f"{what}: service: segment '{seg.name}' is in direct mode, which has no service splits")
        return None
    backends: list[tuple[str, float]] = []
    for name, w in r.backends:
        ep = eps.get(name)
        if ep is not None:
            if ep.segment != seg.name:
                error(r.loc, f"{what}: backend '{name}' is not in segment '{seg.name}'")
                return None
            backends.append((name, w))
        elif name in site_names:
            here = at_site.get((name, seg.name), [])
            if not here:
                error(r.loc, f"{what}: site '{name}' has no endpoint in segment '{seg.name}' to serve it")
                return None
            backends += [(e.name, w / len(here)) for e in here]
        else:
            error(r.loc, f"{what}: backend '{name}' is neither an endpoint nor a site")
            return None
    return Route(r.name, r.priority, service=svc, backends=tuple(backends), loc=r.loc)


def _ranges_meet(a: tuple[PortRange, ...], b: tuple[PortRange, ...]) -> bool:
    return not a or not b or any(x.lo <= y.hi and y.lo <= x.hi for x in a for y in b)


def _peers_meet(a: str | None, a_net: IPv4Network | None, b: str | None, b_net: IPv4Network | None) -> bool:
    if a is None or b is None:
        return True
    if a_net is not None and b_net is not None:
        return a_net.overlaps(b_net)
    return a_net is not None or b_net is not None or a == b  # a group may hold any address: assume it meets


def _same_or_any(a: Any, b: Any) -> bool:
    return a is None or b is None or a == b


def _check_overlaps(routes: list[Route], error: Report) -> None:
    """Two routes of one priority that can match one packet: the second is reported (once, naming the first).
    A route is compared only with routes of its priority and (from_site, to_site, proto), or ones that leave
    one of these open, and among those only with routes whose destination ports can meet its own: close to
    linear in a file whose routes name their sites or ports."""
    buckets: dict[tuple, _Bucket] = {}
    for b in routes:
        mb = b.match
        own = (b.priority, mb.from_site, mb.to_site, mb.proto)
        if None in own[1:]:
            keys = [k for k in buckets if k[0] == b.priority and all(
                x is None or y is None or x == y for x, y in zip(k[1:], own[1:], strict=True))]
        else:
            keys = [(b.priority, f, t, p) for f in (mb.from_site, None) for t in (mb.to_site, None)
                    for p in (mb.proto, None)]
        a = next((a for k in keys if k in buckets for a in buckets[k].candidates(mb.dst_ports) if _meet(a, b)),
                 None)
        if a is not None:
            error(b.loc, f"route '{b.name}' and route '{a.name}' ({a.loc}) can match the same traffic at the "
                         f"same priority ({a.priority}); give one a higher priority or narrow a match")
        buckets.setdefault(own, _Bucket()).add(b)


class _Bucket:
    """Routes of one key, indexed by their destination port ranges."""

    def __init__(self) -> None:
        self.open: list[Route] = []  # no dst_port: meets every port
        self.ranges: list[tuple[int, int, int, Route]] = []  # (lo, hi, order, route), sorted
        self.widest = 0

    def add(self, r: Route) -> None:
        if not r.match.dst_ports:
            self.open.append(r)
            return
        for pr in r.match.dst_ports:
            bisect.insort(self.ranges, (pr.lo, pr.hi, len(self.ranges), r))
            self.widest = max(self.widest, pr.hi - pr.lo)

    def candidates(self, ports: tuple[PortRange, ...]) -> Iterator[Route]:
        yield from self.open
        if not ports:
            yield from (r for _, _, _, r in self.ranges)
            return
        for pr in ports:
            first = bisect.bisect_left(self.ranges, (pr.lo - self.widest,))
            for _lo, hi, _, r in self.ranges[first:bisect.bisect_right(self.ranges, (pr.hi, 1 << 17))]:
                if hi >= pr.lo:
                    yield r


def _meet(a: Route, b: Route) -> bool:
    ma, mb = a.match, b.match
    return a.priority == b.priority and all((
        _same_or_any(ma.proto, mb.proto), _same_or_any(ma.segment, mb.segment),
        _same_or_any(ma.from_site, mb.from_site), _same_or_any(ma.to_site, mb.to_site),
        _ranges_meet(ma.src_ports, mb.src_ports), _ranges_meet(ma.dst_ports, mb.dst_ports),
        _peers_meet(ma.src, ma.src_net, mb.src, mb.src_net), _peers_meet(ma.dst, ma.dst_net, mb.dst, mb.dst_net)))
