"""The `cloud_policy` section, as the article behind cloudweave writes its cross-cloud routing policy:

    cloud_policy:
      - match: {protocol: tcp, source: 10.0.0.0/8, destination: 172.16.0.0/12}
        action: cloud1                  # or {cloud1: 70, cloud2: 30}, or auto

Each entry is a route (`routes`), read into the same Route values and compiled by the same code. Its class is
the match: `protocol`, `source` and `destination` (a CIDR or a security group), `source_port` and
`destination_port` where given. Its traffic between two sites is carried through the site that `action`
names: straight there when the destination (or the source) is at that site, else relayed via it, along the
shortest chain of links; a mapping splits by weight over such paths; `auto` lets traffic engineering choose
(the `routes` entry `split: auto`). An entry with a site or weights stands for one `routes` entry per pair of
sites that hold a matching source and a matching destination endpoint:

    {name: cloud_policy.N.A-B, priority: P, match: {..., from_site: A, to_site: B}, split: {via X: w, ...}}

Entries are tried in order: of M entries, entry N has priority M - N + 1 (above routes of the default
priority 0). An entry whose match covers no endpoint is a warning, not an error: it routes nothing yet.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import networkx as nx

from cloudweave.config import values as v
from cloudweave.config.errors import Invalid, Loc
from cloudweave.config.model import Endpoint, Link, PathChoice, Route, RouteMatch, Site
from cloudweave.config.routes import route_peer, weight
from cloudweave.config.security import port_ranges, proto
from cloudweave.config.yamlpos import LDict, known_keys, show

Report = Callable[[Loc, str], None]
ENTRY_KEYS = ("match", "action")
MATCH_KEYS = ("protocol", "source", "destination", "source_port", "destination_port")
NAME = "cloud_policy"


def read_cloud_policy(items: list[tuple[Any, Loc]], sites: list[Site], links: list[Link], endpoints: list[Endpoint],
                      error: Report, warn: Report) -> list[Route]:
    """The routes the section's entries (merged from every file, with their places) stand for; checked further
    by routes.check_routes, like any route."""
    if not items:
        return []
    members: dict[str, set[str]] = {}
    for e in endpoints:
        for g in e.groups:
            members.setdefault(g, set()).add(e.name)
    site_names = {s.name for s in sites}
    graph = nx.Graph()
    graph.add_nodes_from(s.name for s in sites)
    graph.add_edges_from(link.sites for link in links if all(s in site_names for s in link.sites))
    routes: list[Route] = []
    for index, (raw, loc) in enumerate(items):
        what = f"{NAME} entry {index + 1}"
        entry = _entry(raw, loc, what, site_names, error)
        if entry is None:
            continue
        match, action = entry
        priority = len(items) - index
        srcs = _covered(match.src, match.src_net, endpoints, members)
        dsts = _covered(match.dst, match.dst_net, endpoints, members)
        for side, covered, text in (("source", srcs, match.src), ("destination", dsts, match.dst)):
            if not covered:
                warn(loc, f"{what}: no endpoint has a {side} address in {text}; it routes nothing yet")
        name = f"{NAME}.{index + 1}"
        if action == "auto":
            routes.append(Route(name, priority, match=match, auto=True, loc=loc))
            continue
        for a in sorted({e.site for e in srcs}):
            for b in sorted({e.site for e in dsts}):
                if a == b:
                    continue
                paths = _paths(graph, a, b, action, what, loc, error)
                if paths is None:
                    break
                pair = RouteMatch(match.proto, match.src, match.src_net, match.dst, match.dst_net, match.src_ports,
                                  match.dst_ports, None, a, b)
                routes.append(Route(f"{name}.{a}-{b}", priority, match=pair, paths=paths, loc=loc))
    return routes


def _entry(raw: Any, loc: Loc, what: str, site_names: set[str], error: Report
           ) -> tuple[RouteMatch, str | dict[str, float]] | None:
    if not isinstance(raw, LDict):
        error(loc, f"{what} must be a mapping with 'match' and 'action'")
        return None
    if not known_keys(raw, ENTRY_KEYS, what, error):
        return None
    for key in ENTRY_KEYS:
        if key not in raw:
            error(loc, f"{what}: missing required key '{key}'")
            return None
    m = raw["match"]
    if not isinstance(m, LDict):
        error(raw.val_locs["match"], f"{what}: match must be a mapping with keys {', '.join(MATCH_KEYS)}")
        return None
    if not known_keys(m, MATCH_KEYS, f"{what}: match", error):
        return None
    out: dict[str, Any] = {}
    for key, value in m.items():
        try:
            if key == "protocol":
                out["proto"] = proto(value)
            elif key in ("source", "destination"):
                short = "src" if key == "source" else "dst"
                out[short], out[f"{short}_net"] = route_peer(value)
            else:
                out["src_ports" if key == "source_port" else "dst_ports"] = port_ranges(value)
        except Invalid as exc:
            error(m.val_locs[key], f"{what}: match: {key}: {exc}")
            return None
    if (out.get("src_ports") or out.get("dst_ports")) and out.get("proto") not in (6, 17, 132):
        error(raw.val_locs["match"], f"{what}: match: ports need protocol tcp, udp or sctp")
        return None
    action = _action(raw["action"], raw.val_locs["action"], what, site_names, error)
    if action is None:
        return None
    return RouteMatch(**out), action


def _action(value: Any, loc: Loc, what: str, site_names: set[str], error: Report) -> str | dict[str, float] | None:
    if value == "auto":
        return "auto"
    if isinstance(value, str):
        value_map: dict[str, float] = {value: 1.0}
        locs = {value: loc}
    elif isinstance(value, LDict) and value:
        value_map, locs, kinds = {}, {}, set()
        for site, w in value.items():
            try:
                value_map[str(site)], percent = weight(w)
            except Invalid as exc:
                error(value.val_locs[site], f"{what}: action: {exc}")
                return None
            kinds.add(percent)
            locs[str(site)] = value.key_locs[site]
        if len(kinds) > 1:
            error(loc, f"{what}: action: mix of percentages and plain weights; use one kind")
            return None
        if sum(value_map.values()) <= 0:
            error(loc, f"{what}: action: the weights sum to zero")
            return None
    else:
        error(loc, f"{what}: action must be a site, a mapping of sites to weights, or auto; got {show(value)}")
        return None
    for site in value_map:
        if site not in site_names:
            error(locs[site], f"{what}: action: unknown site '{show(site)}'")
            return None
    try:
        for site in value_map:
            v.name(site)
    except Invalid as exc:
        error(loc, f"{what}: action: {exc}")
        return None
    return value_map


def _covered(peer: str | None, net: Any, endpoints: list[Endpoint], members: dict[str, set[str]]) -> list[Endpoint]:
    if peer is None:
        return list(endpoints)
    if net is not None:
        return [e for e in endpoints if e.ip in net]
    names = members.get(peer, set())
    return [e for e in endpoints if e.name in names]


def _paths(graph: nx.Graph, a: str, b: str, action: dict[str, float], what: str, loc: Loc, error: Report
           ) -> tuple[PathChoice, ...] | None:
    """The paths from a to b through each site of the action, with its weight (one path: the weights summed)."""
    by_path: dict[tuple[str, ...], float] = {}
    for via, w in action.items():
        try:
            if via in (a, b):
                path = tuple(nx.shortest_path(graph, a, b))
            else:
                path = tuple(nx.shortest_path(graph, a, via)) + tuple(nx.shortest_path(graph, via, b))[1:]
        except nx.NetworkXNoPath:
            error(loc, f"{what}: no chain of links carries {a} -> {b} through {via}")
            return None
        if len(set(path)) != len(path):
            error(loc, f"{what}: carrying {a} -> {b} through {via} visits a site twice ({' -> '.join(path)}); "
                       "declare a link that avoids it, or name another site")
            return None
        by_path[path] = by_path.get(path, 0.0) + w
    return tuple(PathChoice("direct" if len(p) == 2 else "via " + " ".join(p[1:-1]), p, w)
                 for p, w in by_path.items())
