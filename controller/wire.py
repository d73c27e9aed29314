"""OpenFlow 1.5 encoding of flow-mods for the fields and actions the compiler emits, straight to bytes.

os-ken builds each message from generic OXM objects (64 us a message here, most of a 100,000-flow bundle's
time: bench/program_switch.py). These are the same bytes, written with struct; tests/unit/test_wire.py
checks them against os-ken's own serializer for every flow of the shipped topologies. Anything outside the
table below raises, and the caller falls back to os-ken.
"""

from __future__ import annotations

import ipaddress
import struct
from typing import Any

OFP_VERSION = 0x06  # OpenFlow 1.5 (flow-mods are laid out as in 1.4)
OFPT_FLOW_MOD = 14
OFPT_BUNDLE_ADD_MESSAGE = 34
OFPFC_ADD, OFPFC_DELETE_STRICT = 0, 4
OFP_NO_BUFFER = 0xFFFFFFFF
OFPP_ANY = 0xFFFFFFFF
OFPG_ANY = 0xFFFFFFFF
OFPP_CONTROLLER, NO_BUFFER_LEN = 0xFFFFFFFD, 0xFFFF
OFPIT_GOTO_TABLE, OFPIT_APPLY_ACTIONS = 1, 4
OFPAT_OUTPUT, OFPAT_GROUP, OFPAT_SET_FIELD, OFPAT_METER, OFPAT_EXPERIMENTER = 0, 22, 25, 29, 0xFFFF
NX_VENDOR = 0x00002320
NXAST_RESUBMIT_TABLE, NXAST_SAMPLE, NXAST_CONJUNCTION, NXAST_CT = 14, 29, 34, 35
NX_CT_F_COMMIT = 1

OFB, NXM1 = 0x8000, 0x0001
# field -> (oxm class, oxm field, value length, kind)
FIELDS: dict[str, tuple[int, int, int, str]] = {
    "in_port": (OFB, 0, 4, "int"),
    "eth_dst": (OFB, 3, 6, "mac"),
    "eth_src": (OFB, 4, 6, "mac"),
    "eth_type": (OFB, 5, 2, "int"),
    "ipv4_src": (OFB, 11, 4, "ipv4"),
    "ipv4_dst": (OFB, 12, 4, "ipv4"),
    "arp_spa": (OFB, 22, 4, "ipv4"),
    "arp_tpa": (OFB, 23, 4, "ipv4"),
    "arp_sha": (OFB, 24, 6, "mac"),
    "tunnel_id": (OFB, 38, 8, "int"),
    "ip_proto": (OFB, 10, 1, "int"),
    "tcp_src": (OFB, 13, 2, "int"),
    "tcp_dst": (OFB, 14, 2, "int"),
    "udp_src": (OFB, 15, 2, "int"),
    "udp_dst": (OFB, 16, 2, "int"),
    "sctp_src": (OFB, 17, 2, "int"),
    "sctp_dst": (OFB, 18, 2, "int"),
    "conj_id": (NXM1, 37, 4, "int"),
    "ct_state": (NXM1, 105, 4, "int"),
    "ct_mark": (NXM1, 107, 4, "int"),
    "arp_op": (OFB, 21, 2, "int"),
    "arp_tha": (OFB, 25, 6, "mac"),
    **{f"reg{i}": (NXM1, i, 4, "int") for i in range(8)},
}
CT_ZONE_REG6_LOW16 = (struct.pack("!HBB", NXM1, 6 << 1, 4), 15)  # zone from reg6, ofs 0, 16 bits
_HEADER = struct.Struct("!BBHI")
_FLOW_MOD = struct.Struct("!QQBBHHHIIIHH")
_BUNDLE_ADD = struct.Struct("!IHH")


class Unsupported(ValueError):
    """A field or action this encoder does not know; use os-ken for that message."""


def _value(kind: str, length: int, value: Any) -> bytes:
    if kind == "int":
        return int(value).to_bytes(length, "big")
    if kind == "mac":
        return bytes.fromhex(str(value).replace(":", ""))
    return ipaddress.IPv4Address(value).packed


def _oxm(name: str, value: Any) -> bytes:
    try:
        cls, field, length, kind = FIELDS[name]
    except KeyError:
        raise Unsupported(name) from None
    if isinstance(value, tuple):
        v, m = value
        return struct.pack("!HBB", cls, field << 1 | 1, 2 * length) + _value(kind, length, v) + _value(kind, length, m)
    return struct.pack("!HBB", cls, field << 1, length) + _value(kind, length, value)


def _order(name: str) -> int:
    cls, field, _, _ = FIELDS[name] if name in FIELDS else (0, 0, 0, "")
    return cls << 7 | field  # OXM type order, as os-ken sorts (prerequisites such as eth_type come first)


def _pad8(body: bytes) -> bytes:
    return body + b"\0" * (-len(body) % 8)


def match(fields: tuple[tuple[str, Any], ...]) -> bytes:
    oxms = b"".join(_oxm(k, v) for k, v in sorted(fields, key=lambda kv: _order(kv[0])))
    return _pad8(struct.pack("!HH", 1, 4 + len(oxms)) + oxms)


def _set_field(name: str, value: Any) -> bytes:
    body = _pad8(struct.pack("!HH", OFPAT_SET_FIELD, 0) + _oxm(name, value))
    return struct.pack("!HH", OFPAT_SET_FIELD, len(body)) + body[4:]


def _ct(commit: bool, table: int | None, zone: int | None, nat: Any, mark: int | None) -> bytes:
    if nat is not None or isinstance(mark, tuple):
        raise Unsupported("ct with nat, or a masked mark")
    header, ofs_nbits = CT_ZONE_REG6_LOW16 if zone is None else (b"\0" * 4, zone)
    inner = _set_field("ct_mark", mark) if mark is not None else b""
    return struct.pack("!HHIHH4sHB3xH", OFPAT_EXPERIMENTER, 24 + len(inner), NX_VENDOR, NXAST_CT,
                       NX_CT_F_COMMIT if commit else 0, header, ofs_nbits, 0xFF if table is None else table,
                       0) + inner


def instructions(actions: tuple[tuple[Any, ...], ...]) -> bytes:
    apply = b""
    goto = b""
    for a in actions:
        if a[0] == "output":
            apply += struct.pack("!HHIH6x", OFPAT_OUTPUT, 16, a[1], NO_BUFFER_LEN if a[1] == OFPP_CONTROLLER else 0)
        elif a[0] == "set_field":
            apply += _set_field(a[1], a[2])
        elif a[0] == "ct":
            apply += _ct(*a[1:])
        elif a[0] == "conjunction":
            _, cid, clause, n_clauses = a
            apply += struct.pack("!HHIHBBI", OFPAT_EXPERIMENTER, 16, NX_VENDOR, NXAST_CONJUNCTION, clause - 1,
                                 n_clauses, cid)
        elif a[0] == "group":
            apply += struct.pack("!HHI", OFPAT_GROUP, 8, a[1])
        elif a[0] == "meter":
            apply += struct.pack("!HHI", OFPAT_METER, 8, a[1])
        elif a[0] == "sample":
            _, probability, set_id, domain, point = a
            apply += struct.pack("!HHIHHIII", OFPAT_EXPERIMENTER, 24, NX_VENDOR, NXAST_SAMPLE, probability, set_id,
                                 domain, point)
        elif a[0] == "resubmit":  # the in_port field is 16 bits: OFPP_IN_PORT as OpenFlow 1.0 numbered it
            apply += struct.pack("!HHIHHB3x", OFPAT_EXPERIMENTER, 16, NX_VENDOR, NXAST_RESUBMIT_TABLE, 0xFFF8, a[1])
        elif a[0] == "goto":
            goto = struct.pack("!HHB3x", OFPIT_GOTO_TABLE, 8, a[1])
        else:
            raise Unsupported(a[0])
    out = struct.pack("!HH4x", OFPIT_APPLY_ACTIONS, 8 + len(apply)) + apply if apply else b""
    return out + goto


def flow_mod(xid: int, command: int, key: tuple, content: tuple | None, cookie: int = 0,
             cookie_mask: int = 0) -> bytes:
    table, priority, fields = key
    if content is not None:
        cookie = content[0]
    body = _FLOW_MOD.pack(cookie, cookie_mask, table, command, 0, 0, priority, OFP_NO_BUFFER, OFPP_ANY, OFPG_ANY,
                          0, 0) + match(fields) + (instructions(content[1]) if content is not None else b"")
    return _HEADER.pack(OFP_VERSION, OFPT_FLOW_MOD, 8 + len(body), xid) + body


def bundle_add(xid: int, bundle_id: int, flags: int, inner: bytes) -> bytes:
    """Wrap a message for a bundle; the inner message's xid must be the outer one's (OF1.4 7.3.9.2)."""
    inner = inner[:4] + struct.pack("!I", xid) + inner[8:]
    return _HEADER.pack(OFP_VERSION, OFPT_BUNDLE_ADD_MESSAGE, 16 + len(inner), xid) + \
        _BUNDLE_ADD.pack(bundle_id, 0, flags) + inner
