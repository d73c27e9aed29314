"""Flow-desc replies (OpenFlow 1.5 OFPMP_FLOW_DESC): left unparsed by os-ken's receive loop, decoded by the
session straight to canonical flows.

os-ken turns every entry of a reply into generic objects before the application sees it: for 100,000 flows
that is most of a restart's read-back (docs/benchmarks.md), and it runs on the loop that receives every
switch's messages. Here the reply's body stays bytes (`RawFlowDescBody`, which still iterates as os-ken's
objects for whoever wants them) and `canonical_flows` decodes it. The decoding is os-ken's own, memoised by
value: a match field's bytes or an entry's instruction bytes decoded once serve every entry that carries
the same bytes (most instruction lists and many fields repeat across a switch's flows), and only MAC and
IPv4 values, which are mostly distinct, are written out here. tests/unit/test_flow_desc.py and
tests/ovs/test_compile_loads.py check the result against os-ken's objects through `codec.canonical_actual`.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator
from typing import Any

from os_ken.ofproto import ofproto_v1_5 as ofp
from os_ken.ofproto import ofproto_v1_5_parser as parser

from controller.codec import CanonContent, CanonKey, canonical_actual, canonical_instructions, canonical_match_fields

_ENTRY = struct.Struct(ofp.OFP_FLOW_DESC_0_PACK_STR)  # length, table, priority, timeouts, flags, importance, cookie
_HH = struct.Struct("!HH")
_I = struct.Struct("!I")
_OFB = ofp.OFPXMC_OPENFLOW_BASIC
# OXM (class, field) of the fields whose values are MACs or IPv4 addresses, written as os-ken writes them.
_MAC_FIELDS = {(_OFB, ofp.OFPXMT_OFB_ETH_DST), (_OFB, ofp.OFPXMT_OFB_ETH_SRC), (_OFB, ofp.OFPXMT_OFB_ARP_SHA),
               (_OFB, ofp.OFPXMT_OFB_ARP_THA)}
_IPV4_FIELDS = {(_OFB, ofp.OFPXMT_OFB_IPV4_SRC), (_OFB, ofp.OFPXMT_OFB_IPV4_DST),
                (_OFB, ofp.OFPXMT_OFB_ARP_SPA), (_OFB, ofp.OFPXMT_OFB_ARP_TPA)}
_FAST: dict[int, tuple[str, Any]] = {}  # unmasked OXM header -> (field name, value writer)


def _mac(b: bytes) -> str:
    return b.hex(":")


def _init_fast() -> None:
    for cls_field in _MAC_FIELDS | _IPV4_FIELDS:
        cls, field = cls_field
        is_mac = cls_field in _MAC_FIELDS
        header = cls << 16 | field << 9 | (6 if is_mac else 4)
        name = ofp.oxm_to_user_header((cls << 7) | field)
        _FAST[header] = (name, _mac if is_mac else socket.inet_ntoa)


_init_fast()


class MalformedReply(ValueError):
    """A flow-desc entry whose length cannot be: decoding it would never end, or read past the reply."""


def _check_length(length: int, offset: int, end: int) -> None:
    if length < _ENTRY.size or offset + length > end:
        raise MalformedReply(f"flow-desc entry of {length} bytes at offset {offset} of a {end}-byte reply")


class RawFlowDescBody:
    """A flow-desc reply's body as the switch sent it; iterating gives os-ken's OFPFlowDesc objects. (No
    __len__: list() and += would call it and parse the body twice.)"""

    __slots__ = ("raw",)

    def __init__(self, raw: bytes) -> None:
        self.raw = raw

    def __iter__(self) -> Iterator[Any]:
        offset = 0
        while offset < len(self.raw):
            entry = parser.OFPFlowDesc.parser(self.raw, offset)
            _check_length(entry.length, offset, len(self.raw))
            yield entry
            offset += entry.length


_PARSE_MULTIPART = parser._MSG_PARSERS[ofp.OFPT_MULTIPART_REPLY]  # os-ken's, for every other multipart reply


def _parse_multipart(datapath: Any, version: int, msg_type: int, msg_len: int, xid: int, buf: bytes) -> Any:
    type_, flags = struct.unpack_from(ofp.OFP_MULTIPART_REPLY_PACK_STR, buf, ofp.OFP_HEADER_SIZE)
    if type_ != ofp.OFPMP_FLOW_DESC:
        return _PARSE_MULTIPART(datapath, version, msg_type, msg_len, xid, buf)
    msg = parser.MsgBase.parser.__func__(parser.OFPFlowDescStatsReply, datapath, version, msg_type, msg_len, xid,
                                         buf)
    msg.type, msg.flags = type_, flags
    msg.body = RawFlowDescBody(bytes(msg.buf[ofp.OFP_MULTIPART_REPLY_SIZE:msg_len]))
    return msg


def install() -> None:
    """os-ken leaves flow-desc replies' bodies as bytes from here on (other replies as before)."""
    parser._MSG_PARSERS[ofp.OFPT_MULTIPART_REPLY] = _parse_multipart


def _field(tlv: bytes) -> tuple[tuple[str, Any], ...]:
    """One OXM TLV as canonical (field, value) pairs (an xreg is two registers), as os-ken decodes it."""
    (header,) = _I.unpack_from(tlv)
    fast = _FAST.get(header)
    if fast is not None:
        name, write = fast
        return ((name, write(tlv[4:])),)
    n, value, mask, _ = ofp.oxm_parse(tlv, 0)
    return canonical_match_fields((ofp.oxm_to_user(n, value, mask),))


def _instructions(raw: bytes) -> tuple[tuple[Any, ...], ...]:
    insts, offset = [], 0
    while offset < len(raw):
        inst = parser.OFPInstruction.parser(raw, offset)
        insts.append(inst)
        offset += inst.len
    return canonical_instructions(insts, ofp)


def canonical_flows(body: Any) -> Iterator[tuple[CanonKey, CanonContent]]:
    """Every entry of a flow-desc reply's body in canonical form (codec.canonical_actual's, exactly)."""
    if not isinstance(body, RawFlowDescBody):  # os-ken's objects (the body was parsed before install())
        yield from (canonical_actual(s, ofp) for s in body)
        return
    try:
        yield from _canonical_raw(body.raw)
    except MalformedReply:
        raise
    except Exception as exc:  # noqa: BLE001 - whatever the bytes are, the session hears one kind of failure
        raise MalformedReply(f"a flow-desc reply that cannot be decoded: {type(exc).__name__}: {exc}") from None


def _canonical_raw(raw: bytes) -> Iterator[tuple[CanonKey, CanonContent]]:
    fields: dict[bytes, tuple[tuple[str, Any], ...]] = {}
    actions: dict[bytes, tuple[tuple[Any, ...], ...]] = {}
    offset, end = 0, len(raw)
    while offset < end:
        length, table, priority, _, _, _, _, cookie = _ENTRY.unpack_from(raw, offset)
        _check_length(length, offset, end)
        at = offset + _ENTRY.size
        _, match_len = _HH.unpack_from(raw, at)
        match: list[tuple[str, Any]] = []
        o, match_end = at + 4, at + match_len
        while o < match_end:
            (header,) = _I.unpack_from(raw, o)
            tlv = raw[o:o + 4 + (header & 0xFF)]
            got = fields.get(tlv)
            if got is None:
                got = fields[tlv] = _field(tlv)
            match += got
            o += len(tlv)
        at += (match_len + 7) & ~7
        _, stats_len = _HH.unpack_from(raw, at)
        at += (stats_len + 7) & ~7
        inst = raw[at:offset + length]
        acts = actions.get(inst)
        if acts is None:
            acts = actions[inst] = _instructions(inst)
        match.sort()
        yield (table, priority, tuple(match)), (cookie, acts)
        offset += length
