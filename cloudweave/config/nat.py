"""NAT-mode settings: port forwards, gateways, connection limits, and their checks."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from ipaddress import IPv4Network
from typing import Any

from cloudweave.config import values as v
from cloudweave.config.errors import Invalid, Loc
from cloudweave.config.model import ALIAS_BASE, NAT_CT_ZONE, Endpoint, Forward, PortRange, Segment, Site
from cloudweave.config.security import port_ranges, proto
from cloudweave.config.yamlpos import LDict, LList, known_keys

Report = Callable[[Loc, str], None]
FORWARD_KEYS = ("proto", "port", "to", "to_port")
MIN_NAT_PREFIX = 16  # the alias keeps 16 bits of the host part
ALIAS_RANGE = IPv4Network((ALIAS_BASE, 4))  # Segment.nat_alias: class E


def port_range(value: Any) -> PortRange:
    """Exactly one port range, e.g. 20000-29999."""
    ranges = port_ranges(value)
    if len(ranges) != 1:
        raise Invalid(f"expected one port range such as 1024-65535, got {value!r}")
    return ranges[0]


def forwards_list(value: Any) -> Any:
    """Kept as read; checked item by item (with each item's position) by read_forwards."""
    if not isinstance(value, LList):
        raise Invalid("expected a list of port forwards, e.g. [{proto: tcp, port: 8080, to: lab1, to_port: 80}]")
    return value


def read_forwards(seg: str, raw: LList, error: Report) -> tuple[Forward, ...]:
    out = []
    for item, loc in zip(raw, raw.item_locs, strict=False):
        what = f"segment '{seg}': port forward"
        if not isinstance(item, LDict):
            error(loc, f"{what} must be a mapping with keys {', '.join(FORWARD_KEYS)}")
            continue
        known = known_keys(item, FORWARD_KEYS, what, error)
        missing = [k for k in ("proto", "port", "to") if k not in item]
        for k in missing:
            error(loc, f"{what}: missing required key '{k}'")
        if not known or missing:
            continue
        try:
            p = proto(item["proto"])
            if p not in (6, 17):
                raise Invalid(f"proto must be tcp or udp, got {item['proto']!r}")
            port = v.integer(1, 65535)(item["port"])
            to_port = v.integer(1, 65535)(item.get("to_port", port))
            endpoint = v.name(item["to"])
        except Invalid as exc:
            error(loc, f"{what}: {exc}")
            continue
        out.append(Forward(p, port, endpoint, to_port, loc))
    return tuple(out)


def with_default_gateway(seg: Segment) -> Segment:
    """A nat-mode segment's gateway defaults to the first host of its subnet."""
    if seg.mode == "nat" and seg.gateway is None and seg.subnet.num_addresses >= 4:
        return dataclasses.replace(seg, gateway=seg.subnet.network_address + 1)
    return seg


def check_nat(sites: list[Site], segments: list[Segment], endpoints: list[Endpoint], error: Report,
              warn: Report) -> None:
    by_site = {s.name: s for s in sites}
    eps = {e.name: e for e in endpoints}
    slots: dict[int, Segment] = {}
    by_segment: dict[str, list[Endpoint]] = {}
    for e in endpoints:
        by_segment.setdefault(e.segment, []).append(e)
    forwarded: dict[tuple[str, int, int], Forward] = {}
    for seg in segments:
        if seg.ct_zone == NAT_CT_ZONE:
            error(seg.loc, f"segment '{seg.name}': VNI {seg.vni} maps to conntrack zone {NAT_CT_ZONE}, which "
                           "source NAT uses; choose another VNI")
        if seg.mode == "direct" and seg.max_connections is not None:
            error(seg.loc, f"segment '{seg.name}': max_connections needs conntrack, which direct mode skips")
        if seg.mode != "nat":
            if seg.gateway is not None or seg.forwards:
                error(seg.loc, f"segment '{seg.name}': gateway and forwards apply to mode 'nat' only")
            continue
        if seg.gateway is None:
            error(seg.loc, f"segment '{seg.name}': subnet {seg.subnet} has no room for a gateway and endpoints")
            continue
        if seg.subnet.overlaps(ALIAS_RANGE):
            error(seg.loc, f"segment '{seg.name}': a nat-mode subnet may not overlap {ALIAS_RANGE}, where the "
                           "controller keeps its NAT aliases")
        if seg.subnet.prefixlen < MIN_NAT_PREFIX:
            error(seg.loc, f"segment '{seg.name}': a nat-mode subnet must be /{MIN_NAT_PREFIX} or smaller, "
                           f"got {seg.subnet}")
        if seg.gateway not in seg.subnet or seg.gateway in (seg.subnet.network_address,
                                                             seg.subnet.broadcast_address):
            error(seg.loc, f"segment '{seg.name}': gateway {seg.gateway} is not a host address of {seg.subnet}")
        if seg.alias_slot in slots:
            other = slots[seg.alias_slot]
            error(seg.loc, f"segment '{seg.name}': nat-mode segments '{other.name}' and '{seg.name}' have VNIs "
                           f"({other.vni}, {seg.vni}) with the same low 12 bits, which tell their NAT mappings "
                           "apart; change one")
        slots.setdefault(seg.alias_slot, seg)
        members = by_segment.get(seg.name, [])
        for ep in members:
            if ep.ip == seg.gateway:
                error(ep.loc, f"endpoint '{ep.name}': IP {ep.ip} is the gateway of segment '{seg.name}'")
            site = by_site.get(ep.site)
            if site is None:
                continue
            if site.uplink is None or site.nat_ip is None:
                error(ep.loc, f"endpoint '{ep.name}': segment '{seg.name}' is in nat mode, but site "
                              f"'{site.name}' has no {'uplink' if site.uplink is None else 'nat_ip'}")
        for site_name in sorted({e.site for e in members}):
            site = by_site.get(site_name)
            if site is not None and site.uplink and site.nat_ip and site.uplink_gateway is None:
                warn(seg.loc, f"segment '{seg.name}': site '{site_name}' has no uplink_gateway, so its endpoints "
                              "of this segment reach only the segment itself")
        for fw in seg.forwards:
            ep = eps.get(fw.endpoint)
            if ep is None or ep.segment != seg.name:
                error(fw.loc, f"segment '{seg.name}': port forward to '{fw.endpoint}', which is not an endpoint "
                              "of this segment")
                continue
            site = by_site.get(ep.site)
            if site is None:
                continue
            key = (site.name, fw.proto, fw.port)
            if key in forwarded:
                error(fw.loc, f"segment '{seg.name}': port {fw.port} of site '{site.name}' is forwarded twice "
                              f"(first at {forwarded[key].loc})")
            forwarded.setdefault(key, fw)
            if site.nat_ports.lo <= fw.port <= site.nat_ports.hi:
                error(fw.loc, f"segment '{seg.name}': forwarded port {fw.port} is inside site '{site.name}' "
                              f"source-NAT ports {site.nat_ports}; use a port outside them or narrow nat_ports")
