"""Converters for configuration values: each takes a YAML value and returns a typed one or raises Invalid."""

from __future__ import annotations

import re
from collections.abc import Callable
from ipaddress import IPv4Address, IPv4Network, ip_address, ip_network
from typing import Any

from cloudweave.config.errors import Invalid

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
MAC_RE = re.compile(r"^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$")
RATE_RE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([kKmMgGtT]?)(?:bit|bps|b)?(?:/s)?\s*$")
DURATION_RE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*(ms|s|m)?\s*$")
RATE_UNITS_MBPS = {"": 1.0, "k": 1e-3, "m": 1.0, "g": 1e3, "t": 1e6}
DURATION_UNITS_S = {None: 1.0, "ms": 1e-3, "s": 1.0, "m": 60.0}


def name(value: Any) -> str:
    if not isinstance(value, str) or not NAME_RE.match(value):
        raise Invalid(f"'{value}' is not a valid name (letters, digits, '_', '.', '-'; at most 63)")
    return value


def ifname(value: Any) -> str:
    if not isinstance(value, str) or not value or len(value) > 15 or "/" in value or " " in value:
        raise Invalid(f"'{value}' is not a valid interface name (1 to 15 characters, no '/' or space)")
    return value


def text(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise Invalid(f"expected a non-empty string, got {value!r}")
    return value


def integer(lo: int, hi: int) -> Callable[[Any], int]:
    def convert(value: Any) -> int:
        if isinstance(value, str):
            try:
                value = int(value, 0)
            except ValueError:
                raise Invalid(f"expected an integer, got '{value}'") from None
        if isinstance(value, bool) or not isinstance(value, int):
            raise Invalid(f"expected an integer, got {value!r}")
        if not lo <= value <= hi:
            raise Invalid(f"{value} is out of range {lo}..{hi}")
        return value
    return convert


def ipv4(value: Any) -> IPv4Address:
    try:
        addr = ip_address(str(value))
    except ValueError:
        raise Invalid(f"'{value}' is not an IP address") from None
    if not isinstance(addr, IPv4Address):
        raise Invalid(f"'{value}' is not an IPv4 address (IPv6 is not supported yet)")
    return addr


def ipv4_net(value: Any) -> IPv4Network:
    try:
        net = ip_network(str(value), strict=True)
    except ValueError as exc:
        raise Invalid(f"'{value}' is not a valid IPv4 subnet ({exc})") from None
    if not isinstance(net, IPv4Network):
        raise Invalid(f"'{value}' is not an IPv4 subnet")
    return net


def mac(value: Any) -> str:
    if not isinstance(value, str) or not MAC_RE.match(value):
        raise Invalid(f"'{value}' is not a MAC address (write it quoted, as \"02:00:00:00:00:01\")")
    octet0 = int(value[:2], 16)
    if octet0 & 1:
        raise Invalid(f"'{value}' is a multicast MAC address, not an endpoint's")
    return value.lower()


def rate_mbps(value: Any) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        mbps = float(value)
    else:
        m = RATE_RE.match(str(value))
        if not m:
            raise Invalid(f"'{value}' is not a rate (examples: 100Mbit, 1Gbit, 500)")
        mbps = float(m.group(1)) * RATE_UNITS_MBPS[m.group(2).lower()]
    if mbps <= 0:
        raise Invalid(f"capacity must be positive, got {value}")
    return mbps


def duration_s(value: Any) -> float:
    m = DURATION_RE.match(str(value))
    if not m or float(m.group(1)) <= 0:
        raise Invalid(f"'{value}' is not a positive duration (examples: 2s, 500ms)")
    return float(m.group(1)) * DURATION_UNITS_S[m.group(2)]


def choice(*options: str) -> Callable[[Any], str]:
    def convert(value: Any) -> str:
        if value not in options:
            raise Invalid(f"'{value}' is not one of: {', '.join(options)}")
        return value
    return convert


def name_list(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        raise Invalid(f"expected a list of names, got {value!r}")
    return tuple(name(v) for v in value)
