"""Load configuration files (with includes) into a validated Model, or raise ConfigError with every problem."""

from __future__ import annotations

import gc
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from ipaddress import ip_address
from typing import Any

import networkx as nx

from cloudweave.config import values as v
from cloudweave.config.chunks import ChunkCache, load_chunked
from cloudweave.config.cloud_policy import read_cloud_policy
from cloudweave.config.errors import ConfigError, Invalid, Loc, Problem
from cloudweave.config.files import MAX_FILES, Unreadable, read_text
from cloudweave.config.filters import Names, read_filters
from cloudweave.config.flowlogs import read_detection, read_flow_logs
from cloudweave.config.model import TUNNEL_PREFIX, Endpoint, Link, Model, Segment, Site
from cloudweave.config.nat import check_nat, forwards_list, port_range, read_forwards, with_default_gateway
from cloudweave.config.replicas import read_replicas
from cloudweave.config.routes import check_routes, read_routes
from cloudweave.config.security import check_groups, read_groups
from cloudweave.config.yamlpos import LDict, LList, known_keys, load_located, show

Schema = dict[str, tuple[Callable[[Any], Any], bool]]  # key -> (converter, required)

SITE: Schema = {
    "dpid": (v.integer(1, 2**64 - 1), True),
    "vtep": (v.unicast_ipv4, True),
    "ovsdb": (v.ovsdb_remote, True),
    "bridge": (v.ifname, False),
    "datapath": (v.choice("system", "netdev"), False),
    "uplink": (v.ifname, False),
    "nat_ip": (v.unicast_ipv4, False),
    "uplink_gateway": (v.unicast_ipv4, False),
    "nat_ports": (port_range, False),
}
LINK: Schema = {"between": (v.name_list, True), "capacity": (v.rate_mbps, True)}
SEGMENT: Schema = {
    "vni": (v.integer(1, 2**24 - 1), True),
    "subnet": (v.ipv4_net, True),
    "mode": (v.choice("bridge", "nat", "direct"), False),
    "default": (v.choice("deny", "allow"), False),
    "gateway": (v.ipv4, False),
    "max_connections": (v.integer(1, 100_000_000), False),
    "forwards": (forwards_list, False),
}
ENDPOINT: Schema = {
    "site": (v.name, True),
    "port": (v.ifname, True),
    "segment": (v.name, True),
    "mac": (v.mac, True),
    "ip": (v.ipv4, True),
    "groups": (v.name_list, False),
}
TRAFFIC: Schema = {"poll_interval": (v.between_s(0.5, 3600.0), False)}
MIN_SUBNET_PREFIX = 8  # a segment wider than a /8 is a typo (a /0 would claim every address)
TOP_KEYS = ("version", "include", "sites", "links", "segments", "endpoints",
            "security_groups", "routes", "cloud_policy", "filters", "flow_logs", "detection", "traffic",
            "replicas")
MAX_PROBLEMS = 1000  # kept and printed; the rest are counted
NAMED_SECTIONS = ("sites", "segments", "endpoints", "security_groups")
LIST_SECTIONS = ("links", "routes", "cloud_policy", "filters")
SINGLE_SECTIONS = ("flow_logs", "detection", "traffic", "replicas")  # a mapping, given once in all the files


@dataclass
class LoadCache:
    """What a loader keeps between loads of the same files (the controller, across reloads): each file's text
    and tree (an unchanged file is read, compared, and not parsed again), the chunks of every file (an edited
    file parses only its edited chunks: cloudweave.config.chunks), and the model objects built from entries
    whose tree did not change (the same object again, so the compiler sees them as unchanged at once)."""

    chunks: ChunkCache = field(default_factory=ChunkCache)
    files: dict[str, tuple[str, Any, list[Problem]]] = field(default_factory=dict)
    records: dict[int, tuple[Any, str, Loc, Any]] = field(default_factory=dict)
    next_records: dict[int, tuple[Any, str, Loc, Any]] = field(default_factory=dict)
    result: tuple | None = None  # (path, ((file, text), ...), model, warnings) of the last load that succeeded


class _Collector:
    """Accumulates problems; every check appends and carries on, so one run reports them all."""

    def __init__(self) -> None:
        self.problems: list[Problem] = []
        self.said = 0  # problems found, also those not kept
        self.errors_said = 0
        self.unshown: list[Problem] = []  # the first problem not kept, and how many more there were
        self.unshown_count = 0

    def add(self, problem: Problem) -> None:
        self.said += 1
        self.errors_said += problem.severity == "error"
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(problem)
        else:
            # 10 MB of junk keys are a million problems: a million lines help no one and cost a gigabyte.
            self.unshown_count += 1
            if not self.unshown:
                self.unshown.append(problem)

    @property
    def full(self) -> bool:
        """No more problems will be kept (the next ones are only counted)."""
        return len(self.problems) >= MAX_PROBLEMS

    def error(self, loc: Loc, message: str) -> None:
        self.add(Problem(loc, message))

    def warn(self, loc: Loc, message: str) -> None:
        self.add(Problem(loc, message, "warning"))

    def summary(self) -> list[Problem]:
        """A last problem that says how many were found and not kept (none when all were)."""
        if not self.unshown_count:
            return []
        first = self.unshown[0]
        return [Problem(first.loc, f"and {self.unshown_count} more problems from here on, not shown (the first "
                                   f"{MAX_PROBLEMS} are)", first.severity)]

    def record(self, raw: Any, loc: Loc, schema: Schema, what: str) -> dict[str, Any] | None:
        """Convert one mapping by its schema; None when it is not a mapping or a field is wrong."""
        if not isinstance(raw, LDict):
            self.error(loc, f"{what} must be a mapping, got {type(raw).__name__}")
            return None
        out: dict[str, Any] = {}
        ok = known_keys(raw, schema, what, self.error)
        for key, value in raw.items():
            if key not in schema:
                continue
            try:
                out[key] = schema[key][0](value)
            except Invalid as exc:
                self.error(raw.val_locs[key], f"{what}: {key}: {exc}")
                ok = False
        for key, (_, required) in schema.items():
            if required and key not in raw:
                self.error(raw.loc, f"{what}: missing required key '{key}'")
                ok = False
        return out if ok else None


def _read_files(path: str, c: _Collector, seen: list[str], merged: dict[str, Any],
                cache: LoadCache | None = None) -> None:
    """Read one file and, depth first, the files it includes; merge their sections."""
    real = os.path.realpath(path)
    if real in seen:
        return
    seen.append(real)
    try:
        text = read_text(path)
    except Unreadable as exc:
        c.error(Loc(path, 1, 1), str(exc))
        return
    if cache is None:
        doc, problems = load_located(path, text, TOP_KEYS)
    elif real in cache.files and cache.files[real][0] == text:
        doc, problems = cache.files[real][1:]
    else:
        doc, problems = load_chunked(path, text, cache.chunks, TOP_KEYS)
        cache.files[real] = (text, doc, problems)
    for problem in problems:
        c.add(problem)
    if doc is None:
        return
    if not isinstance(doc, LDict):
        c.error(getattr(doc, "loc", Loc(path, 1, 1)), "the file must hold a mapping of sections")
        return
    for key in doc:
        if key not in TOP_KEYS:
            if c.full:  # counted, not worded: 10 MB of junk keys are a million of these
                c.add(Problem(doc.key_locs[key], "unknown section"))
            else:
                c.error(doc.key_locs[key], f"unknown section '{show(key)}' (expected one of: {', '.join(TOP_KEYS)})")
    if "version" in doc and (type(doc["version"]) is not int or doc["version"] != 1):
        c.error(doc.val_locs["version"], f"unsupported version {show(doc['version'])} (this cloudweave reads "
                                         "version 1)")
    for section in NAMED_SECTIONS:
        if section not in doc or doc[section] is None:
            continue
        body = doc[section]
        if not isinstance(body, LDict):
            c.error(doc.val_locs[section], f"section '{section}' must be a mapping of names")
            continue
        target = merged.setdefault(section, {})
        for item_name, item in body.items():
            key_loc = body.key_locs[item_name]
            if item_name in target:
                c.error(key_loc, f"{section[:-1]} '{item_name}' is defined twice (first at {target[item_name][1]})")
                continue
            try:
                v.name(item_name)
            except Invalid as exc:
                c.error(key_loc, str(exc))
                continue
            target[item_name] = (item, key_loc)
    for section in LIST_SECTIONS:
        if section not in doc or doc[section] is None:
            continue
        body = doc[section]
        if not isinstance(body, LList):
            c.error(doc.val_locs[section], f"section '{section}' must be a list")
            continue
        merged.setdefault(section, []).extend(zip(body, body.item_locs, strict=False))
    for section in SINGLE_SECTIONS:
        if section not in doc:
            continue
        if section in merged:
            c.error(doc.key_locs[section], f"section '{section}' is given twice (first at {merged[section][1]})")
        else:
            merged[section] = (doc[section], doc.val_locs[section])
    if "include" in doc:
        includes = doc["include"]
        locs = includes.item_locs if isinstance(includes, LList) else [doc.val_locs["include"]]
        includes = includes if isinstance(includes, list) else [includes]
        for inc, loc in zip(includes, locs, strict=False):
            inc_path = _include_path(c, inc, loc, path, seen)
            if inc_path is not None:
                _read_files(inc_path, c, seen, merged, cache)


def _include_path(c: _Collector, inc: Any, loc: Loc, path: str, seen: list[str]) -> str | None:
    """The file an include names, or None (said) when it may not be read: an include is a relative path that
    stays in the directory of the file given on the command line (or below it), so that a policy file cannot
    make the controller read /proc, /dev or another user's files."""
    if not isinstance(inc, str) or not inc:
        c.error(loc, f"include: expected a file name, got {show(inc)}")
        return None
    if os.path.isabs(inc):
        c.error(loc, f"include: '{show(inc)}' is an absolute path; an include names a file relative to the "
                     "including file, in the directory of the top file or below it")
        return None
    inc_path = os.path.join(os.path.dirname(path), inc)
    top = os.path.dirname(seen[0])
    if os.path.commonpath([top, os.path.realpath(inc_path)]) != top:
        c.error(loc, f"include: '{show(inc)}' is outside {top}, the directory of the top file; an include "
                     "must live in it or below it")
        return None
    if not os.path.lexists(inc_path):
        c.error(loc, f"include: no such file '{show(inc)}'")
        return None
    if len(seen) >= MAX_FILES:
        c.error(loc, f"include: more than {MAX_FILES} files in one configuration")
        return None
    return inc_path


def _unique(c: _Collector, items: list[Any], key: Callable[[Any], Any], what: Callable[[Any], str]) -> None:
    """Report every item whose key an earlier item already has; `what` words the key for the message."""
    keys = [key(item) for item in items]
    if len(set(keys)) == len(keys):
        return  # the usual case, decided in C; the loop below only words the clashes
    first: dict[Any, Any] = {}
    for item in items:
        k = key(item)
        if k in first:
            c.error(item.loc, f"{what(item)} is used twice: by '{first[k].name}' ({first[k].loc}) and '{item.name}'")
        else:
            first[k] = item


def _built(cache: LoadCache | None, c: _Collector, raw: Any, nm: str, loc: Loc, make: Callable[[], Any]) -> Any:
    """make(), or the object it made last time from this very tree, name and place (when it said nothing)."""
    if cache is not None:
        hit = cache.records.get(id(raw))
        if hit is not None and hit[0] is raw and hit[1] == nm and hit[2] == loc:
            cache.next_records[id(raw)] = hit
            return hit[3]
    said = c.said
    obj = make()
    if cache is not None and obj is not None and c.said == said:
        cache.next_records[id(raw)] = (raw, nm, loc, obj)
    return obj


def _site(c: _Collector, raw: Any, nm: str, loc: Loc) -> Site | None:
    rec = c.record(raw, loc, SITE, f"site '{nm}'")
    return None if rec is None else Site(name=nm, loc=loc, **rec)


def _segment(c: _Collector, raw: Any, nm: str, loc: Loc) -> Segment | None:
    rec = c.record(raw, loc, SEGMENT, f"segment '{nm}'")
    if rec is None:
        return None
    if "forwards" in rec:
        rec["forwards"] = read_forwards(nm, rec["forwards"], c.error)
    return with_default_gateway(Segment(name=nm, loc=loc, **rec))


def _endpoint(c: _Collector, raw: Any, nm: str, loc: Loc) -> Endpoint | None:
    if _is_address(nm):
        # explain and the CLI take an endpoint's name or an address: a name that is an address is both.
        c.error(loc, f"endpoint '{nm}': a name that is an IP address would read as one; choose another")
        return None
    rec = c.record(raw, loc, ENDPOINT, f"endpoint '{nm}'")
    return None if rec is None else Endpoint(name=nm, loc=loc, **rec)


def _build(merged: dict[str, Any], c: _Collector, files: tuple[str, ...], cache: LoadCache | None = None) -> Model:
    sites, segments, endpoints, links = [], [], [], []
    for out, section, make in ((sites, "sites", _site), (segments, "segments", _segment),
                               (endpoints, "endpoints", _endpoint)):
        for nm, (raw, loc) in merged.get(section, {}).items():
            obj = _built(cache, c, raw, nm, loc, lambda raw=raw, nm=nm, loc=loc, make=make: make(c, raw, nm, loc))
            if obj is not None:
                out.append(obj)
    if cache is not None:
        cache.records, cache.next_records = cache.next_records, {}
    for raw, loc in merged.get("links", []):
        rec = c.record(raw, loc, LINK, "link")
        if rec is None:
            continue
        between = rec["between"]
        if len(between) != 2 or between[0] == between[1]:
            c.error(raw.val_locs["between"], "link: 'between' must name two different sites")
            continue
        links.append(Link(sites=tuple(sorted(between)), capacity_mbps=rec["capacity"], loc=loc))
    poll = 5.0
    if "traffic" in merged:
        rec = c.record(merged["traffic"][0], merged["traffic"][1], TRAFFIC, "traffic")
        poll = (rec or {}).get("poll_interval", poll)

    # References are checked against every defined name, valid or not: a site with a bad field is reported
    # once, not again by each endpoint that names it.
    site_names = set(merged.get("sites", {}))
    seg_by_name = {s.name: s for s in segments}
    seg_names = set(merged.get("segments", {}))
    _unique(c, sites, lambda s: s.dpid, lambda s: f"dpid {s.dpid:#x}")
    _unique(c, sites, lambda s: s.vtep, lambda s: f"vtep address {s.vtep}")
    _unique(c, sites, lambda s: s.ovsdb, lambda s: f"OVSDB {s.ovsdb}")
    _unique(c, segments, lambda s: s.vni, lambda s: f"VNI {s.vni}")
    distinct_vnis = list({s.vni: s for s in reversed(segments)}.values())[::-1]  # a VNI clash is said above
    _unique(c, distinct_vnis, lambda s: s.ct_zone,
            lambda s: f"conntrack zone {s.ct_zone} (the low 16 bits of VNI {s.vni})")
    _unique(c, endpoints, lambda e: (e.site, e.port), lambda e: f"port {e.port} of site '{e.site}'")
    _unique(c, endpoints, lambda e: (e.segment, e.mac), lambda e: f"MAC {e.mac} in segment '{e.segment}'")
    _unique(c, endpoints, lambda e: (e.segment, e.ip), lambda e: f"IP {e.ip} in segment '{e.segment}'")
    for seg in segments:
        if seg.subnet.prefixlen < MIN_SUBNET_PREFIX:
            c.error(seg.loc, f"segment '{seg.name}': subnet {seg.subnet} is wider than a /{MIN_SUBNET_PREFIX}")
    site_by_name = {s.name: s for s in sites}
    seen_links: dict[tuple[str, str], Link] = {}
    for link in links:
        for s in link.sites:
            if s not in site_names:
                c.error(link.loc, f"link: unknown site '{s}'")
        if link.sites in seen_links:
            c.error(link.loc, f"link between {link.sites[0]} and {link.sites[1]} is given twice "
                              f"(first at {seen_links[link.sites].loc})")
        seen_links[link.sites] = link
    for ep in endpoints:
        if ep.site not in site_names:
            c.error(ep.loc, f"endpoint '{ep.name}': unknown site '{ep.site}'")
        else:
            _check_port(c, ep, site_by_name.get(ep.site))
        seg = seg_by_name.get(ep.segment)
        if ep.segment not in seg_names:
            c.error(ep.loc, f"endpoint '{ep.name}': unknown segment '{ep.segment}'")
        elif seg is None:
            continue
        elif ep.ip not in seg.subnet:
            c.error(ep.loc, f"endpoint '{ep.name}': IP {ep.ip} is outside segment '{seg.name}' subnet {seg.subnet}")
        elif ep.ip in (seg.subnet.network_address, seg.subnet.broadcast_address):
            c.error(ep.loc, f"endpoint '{ep.name}': IP {ep.ip} is the network or broadcast address of {seg.subnet}")
    groups = read_groups(merged.get("security_groups", {}), c.error)
    check_groups(groups, endpoints, c.error, c.warn)
    _check_reachability(c, sites, links, segments, endpoints)
    _check_modes(c, sites, segments, endpoints)
    check_nat(sites, segments, endpoints, c.error, c.warn)
    group_names = {g.name for g in groups} | {g for e in endpoints for g in e.groups}
    routes = check_routes(read_routes(merged.get("routes", []), c.error) + read_cloud_policy(
        merged.get("cloud_policy", []), sites, links, endpoints, c.error, c.warn), sites, links, segments, endpoints,
        group_names, c.error, c.warn)
    filters = read_filters(merged.get("filters", []), Names(site_by_name, {e.name: e for e in endpoints}, group_names),
                           c.error, c.warn) if merged.get("filters") else []
    replicas = read_replicas(*merged["replicas"], c.error) if "replicas" in merged else None
    flow_logs = read_flow_logs(*merged["flow_logs"], c.error) if "flow_logs" in merged else None
    detection = read_detection(*merged["detection"], flow_logs, group_names | {e.name for e in endpoints},
                               {s.name for s in segments}, c.error, c.warn) if "detection" in merged else None
    return Model(sites=tuple(sites), links=tuple(links), segments=tuple(segments), endpoints=tuple(endpoints),
                 poll_interval_s=poll, security_groups=tuple(groups), routes=tuple(routes), filters=tuple(filters),
                 flow_logs=flow_logs, detection=detection, files=files, replicas=replicas)


def _is_address(text: str) -> bool:
    if "." not in text and ":" not in text:
        return False  # the usual name, decided without ipaddress trying both families
    try:
        ip_address(text)
        return True
    except ValueError:
        return False


def _check_port(c: _Collector, ep: Endpoint, site: Site | None) -> None:
    """An endpoint's port is its own: not the site's bridge, uplink or a tunnel port the controller creates."""
    if site is None:
        return
    for taken, what in ((site.bridge, "the bridge itself"), (site.uplink, "the site's uplink")):
        if ep.port == taken:
            c.error(ep.loc, f"endpoint '{ep.name}': port '{ep.port}' of site '{site.name}' is {what}")
    if ep.port.startswith(TUNNEL_PREFIX):
        c.error(ep.loc, f"endpoint '{ep.name}': port names starting '{TUNNEL_PREFIX}' are the controller's "
                        "tunnel ports; choose another")


def _check_reachability(c: _Collector, sites: list[Site], links: list[Link], segments: list[Segment],
                        endpoints: list[Endpoint]) -> None:
    graph = nx.Graph()
    graph.add_nodes_from(s.name for s in sites)
    graph.add_edges_from(link.sites for link in links if all(graph.has_node(s) for s in link.sites))
    homes: dict[str, set[str]] = {}
    for e in endpoints:
        if graph.has_node(e.site):
            homes.setdefault(e.segment, set()).add(e.site)
    for seg in segments:
        seg_sites = sorted(homes.get(seg.name, ()))
        for other in seg_sites[1:]:
            if not nx.has_path(graph, seg_sites[0], other):
                c.error(seg.loc, f"segment '{seg.name}' spans sites '{seg_sites[0]}' and '{other}' "
                                 "that no chain of links joins")


def _check_modes(c: _Collector, sites: list[Site], segments: list[Segment], endpoints: list[Endpoint]) -> None:
    """A direct-mode endpoint needs its site's uplink; security groups do not apply to it."""
    by_site = {s.name: s for s in sites}
    modes = {s.name: s.mode for s in segments}
    direct = [e for e in endpoints if modes.get(e.segment) == "direct"]
    # They share their site's uplink: a MAC or an address used twice there could not be told apart.
    _unique(c, direct, lambda e: (e.site, e.mac), lambda e: f"MAC {e.mac} of direct-mode endpoints at '{e.site}'")
    _unique(c, direct, lambda e: (e.site, e.ip), lambda e: f"IP {e.ip} of direct-mode endpoints at '{e.site}'")
    for ep in direct:
        site = by_site.get(ep.site)
        if site is not None and site.uplink is None:
            c.error(ep.loc, f"endpoint '{ep.name}': segment '{ep.segment}' is in direct mode, but site "
                            f"'{ep.site}' has no uplink")
        if ep.groups:
            c.warn(ep.loc, f"endpoint '{ep.name}': security groups do not apply in direct mode "
                           "(anti-spoofing only)")


def load_model(path: str, cache: LoadCache | None = None) -> tuple[Model, list[Problem]]:
    """Load a configuration; return the model and its warnings, or raise ConfigError listing every error.
    `cache`: kept by a caller that loads the same files again (the same result, sooner)."""
    c = _Collector()
    merged: dict[str, Any] = {}
    seen: list[str] = []
    was = gc.isenabled()
    gc.disable()  # a large file is millions of acyclic objects: the cyclic collector would scan them again and again
    try:
        _read_files(path, c, seen, merged, cache)
        model = _build(merged, c, tuple(seen), cache)
    finally:
        if was:
            gc.enable()
    errors = [p for p in c.problems + c.summary() if p.severity == "error"]
    if errors:
        raise ConfigError(errors, c.errors_said)
    return model, sorted(p for p in c.problems if p.severity == "warning")


def load_model_cached(path: str, cache: LoadCache) -> tuple[Model, list[Problem]]:
    """load_model(path, cache), answered at once when every file it read last time reads the same (loading
    is a function of the files' texts)."""
    last = cache.result
    if last is not None and last[0] == os.path.realpath(path) and all(
            _text_of(f) == text for f, text in last[1]):
        return last[2], list(last[3])
    model, warnings = load_model(path, cache)
    cache.result = (os.path.realpath(path), tuple((f, cache.files[f][0]) for f in model.files if f in cache.files),
                    model, tuple(warnings))
    return model, warnings


def _text_of(path: str) -> str | None:
    try:
        return read_text(path)
    except Unreadable:
        return None
