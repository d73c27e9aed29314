"""Converters for configuration values: each takes a YAML value and returns a typed one or raises Invalid."""

from __future__ import annotations

import math
import re
import socket
from collections.abc import Callable
from ipaddress import IPv4Address, IPv4Network, ip_address, ip_network
from typing import Any

from cloudweave.config.errors import Invalid
from cloudweave.config.yamlpos import show

# Patterns are used with fullmatch: `$` would also match before a final newline.
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
MAC_RE = re.compile(r"[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}")
# Linux takes almost any bytes (not '/', ':', whitespace, '.' or '..'; IFNAMSIZ 16 with the NUL); these pass
# through ovs-ofctl, ovs-vsctl and a shell unquoted.
IFNAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.@+-]{0,14}")
RATE_RE = re.compile(r"\s*([0-9]{1,15}(?:\.[0-9]{1,15})?)\s*([kKmMgGtT]?)(?:bit|bps|b)?(?:/s)?\s*")
DURATION_RE = re.compile(r"\s*([0-9]{1,15}(?:\.[0-9]{1,15})?)\s*(ms|s|m|h)?\s*")
RATE_UNITS_MBPS = {"": 1.0, "k": 1e-3, "m": 1.0, "g": 1e3, "t": 1e6}
DURATION_UNITS_S = {None: 1.0, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
MAX_RATE_MBPS = 1e9  # 1 Pbit/s: a larger capacity is a typo
ASCII_INT_RE = re.compile(r"[-+]?(?:[0-9]+|0[xX][0-9a-fA-F]+|0[oO][0-7]+)")


def name(value: Any) -> str:
    if not isinstance(value, str) or not NAME_RE.fullmatch(value):
        raise Invalid(f"'{show(value)}' is not a valid name (letters, digits, '_', '.', '-'; at most 63)")
    return value


def ifname(value: Any) -> str:
    if isinstance(value, str) and value not in (".", "..") and IFNAME_RE.fullmatch(value):
        return value
    raise Invalid(f"'{show(value)}' is not a valid interface name (1 to 15 of letters, digits, '_', '.', '@', "
                  "'+', '-'; not starting with '.', '@', '+' or '-')")


def ovsdb_remote(value: Any) -> str:
    """Where the controller reaches a site's ovsdb-server: unix:/absolute/path, tcp:IP:PORT or ssl:IP:PORT
    (active remotes: the controller connects; a passive p... remote would listen instead)."""
    if isinstance(value, str):
        kind, _, rest = value.partition(":")
        if kind == "unix" and rest.startswith("/") and rest.isprintable() and " " not in rest:
            return value
        if kind in ("tcp", "ssl"):
            host, _, port = rest.rpartition(":")
            try:
                ipv4(host)
                integer(1, 65535)(port)
                return value
            except Invalid:
                pass
    raise Invalid(f"'{show(value)}' is not an OVSDB remote the controller can connect to (unix:/PATH, "
                  "tcp:IP:PORT or ssl:IP:PORT)")


def integer(lo: int, hi: int) -> Callable[[Any], int]:
    def convert(value: Any) -> int:
        if isinstance(value, str):
            text = value.strip()
            # A leading zero is refused, not guessed: YAML 1.1 would read it as octal.
            if not ASCII_INT_RE.fullmatch(text) or len(text) > 40 or re.fullmatch(r"[-+]?0[0-9]+", text):
                raise Invalid(f"expected an integer, got '{show(value)}'{_number_hint(text)}")
            value = int(text, 0)
        if isinstance(value, bool) or not isinstance(value, int):
            raise Invalid(f"expected an integer, got {show(value)}")
        if not lo <= value <= hi:
            raise Invalid(f"{value} is out of range {lo}..{hi}")
        return value
    return convert


def _number_hint(text: str) -> str:
    """Why a number-like string is not read as a number: YAML 1.1 and 1.2 read these differently."""
    if re.fullmatch(r"[-+]?0[0-9]+", text):
        digits = text.lstrip("+-0") or "0"
        return f" (a leading zero: YAML 1.1 reads it as octal, 1.2 as decimal; write {int(text)} or 0o{digits})"
    if re.fullmatch(r"[0-9]+(:[0-5]?[0-9])+", text):
        return " (YAML 1.1 reads this as a base-60 number; write the number itself)"
    if "_" in text:
        return " (write it without '_')"
    if any(c.isdigit() and not c.isascii() for c in text):
        return " (only the digits 0-9 count)"
    return ""


def finite(value: Any, what: str) -> float:
    """A real number that is finite and not NaN (YAML's .inf and .nan, or a float too large, are refused)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise Invalid(f"expected a number for {what}, got {show(value)}")
    try:
        out = float(value)
    except OverflowError:
        raise Invalid(f"{what} {show(value)} is too large") from None
    if not math.isfinite(out):
        raise Invalid(f"{what} must be a finite number, got {show(value)}")
    return out


def ipv4(value: Any) -> IPv4Address:
    if not isinstance(value, str):
        raise Invalid(f"'{show(value)}' is not an IP address (write it as a string, e.g. 10.0.0.1)")
    try:  # the C parser takes what ipaddress takes (four decimal octets, no leading zeros), 3 times faster
        return IPv4Address(socket.inet_pton(socket.AF_INET, value))
    except (OSError, ValueError, UnicodeError):
        pass  # not a plain dotted quad: ipaddress decides, and words why
    try:
        addr = ip_address(value)
    except ValueError:
        raise Invalid(f"'{show(value)}' is not an IP address") from None
    if not isinstance(addr, IPv4Address):
        raise Invalid(f"'{value}' is not an IPv4 address (IPv6 is not supported yet)")
    return addr


def unicast_ipv4(value: Any) -> IPv4Address:
    """An address a host may have on a wire: not 0.0.0.0, broadcast, multicast, loopback or class E."""
    addr = ipv4(value)
    for test, what in ((addr.is_unspecified, "unspecified"), (addr == IPv4Address("255.255.255.255"), "broadcast"),
                       (addr.is_multicast, "multicast"), (addr.is_loopback, "loopback"),
                       (addr in IPv4Network("240.0.0.0/4"), "class E (reserved)")):
        if test:
            raise Invalid(f"{addr} is a {what} address, not one a host can use")
    return addr


def ipv4_net(value: Any) -> IPv4Network:
    if not isinstance(value, str):
        raise Invalid(f"'{show(value)}' is not an IPv4 subnet (write it as a string, e.g. 10.0.0.0/24)")
    try:
        net = ip_network(value, strict=True)
    except ValueError as exc:
        raise Invalid(f"'{show(value)}' is not a valid IPv4 subnet ({exc})") from None
    if not isinstance(net, IPv4Network):
        raise Invalid(f"'{value}' is not an IPv4 subnet")
    return net


def mac(value: Any) -> str:
    if not isinstance(value, str) or not MAC_RE.fullmatch(value):
        raise Invalid(f"'{show(value)}' is not a MAC address (write it quoted, as \"02:00:00:00:00:01\")")
    octet0 = int(value[:2], 16)
    if octet0 & 1:
        raise Invalid(f"'{value}' is a multicast MAC address, not an endpoint's")
    if int(value.replace(":", ""), 16) == 0:
        raise Invalid(f"'{value}' is the all-zero MAC address, which no interface may have")
    return value.lower()


def rate_mbps(value: Any) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        mbps = finite(value, "a capacity")
    else:
        m = RATE_RE.fullmatch(value) if isinstance(value, str) else None
        if not m:
            raise Invalid(f"'{show(value)}' is not a rate (examples: 100Mbit, 1Gbit, 500)")
        mbps = float(m.group(1)) * RATE_UNITS_MBPS[m.group(2).lower()]
    if mbps <= 0:
        raise Invalid(f"capacity must be positive, got {show(value)}")
    if mbps > MAX_RATE_MBPS:
        raise Invalid(f"capacity {show(value)} is more than 1 Pbit/s")
    return mbps


def duration_s(value: Any) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0:
        return float(value)
    m = DURATION_RE.fullmatch(value) if isinstance(value, str) else None
    if not m or float(m.group(1)) <= 0:
        raise Invalid(f"'{show(value)}' is not a positive duration (examples: 2s, 500ms)")
    return float(m.group(1)) * DURATION_UNITS_S[m.group(2)]


def between_s(lo: float, hi: float) -> Callable[[Any], float]:
    """A duration from `lo` to `hi` seconds."""
    def convert(value: Any) -> float:
        out = duration_s(value)
        if not lo <= out <= hi:
            raise Invalid(f"{show(value)} is out of range {lo:g}s..{hi:g}s")
        return out
    return convert


def choice(*options: str) -> Callable[[Any], str]:
    def convert(value: Any) -> str:
        if not isinstance(value, str) or value not in options:
            raise Invalid(f"'{show(value)}' is not one of: {', '.join(options)}")
        return value
    return convert


def name_list(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        raise Invalid(f"expected a list of names, got {show(value)}")
    return tuple(name(v) for v in value)
