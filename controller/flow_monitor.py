"""OpenFlow 1.5 flow monitors: the switch tells the session at once when someone else adds, removes or
changes one of our flows.

The 1 s audit counts our flows and reads our groups; it cannot see a flow of ours rewritten in place (the
count stays), and the full read-back that can costs about a second of the switch's time at 100,000 flows,
too much to run every second. A monitor costs nothing while nothing changes: OVS 3.1 reports a change made
by any other connection as a full update (event, table, priority, cookie, ...), and one made by this
connection as an abbreviated one (its xid only), which the session ignores. A paused monitor (the
controller read too slowly) counts as a change: the session reads back.

The reply's body is left as bytes by the receive loop (as flow-desc replies are, controller.flow_desc) and
only the event and the cookie of each update are read here; os-ken's objects are never built for it.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator
from typing import Any

from os_ken.ofproto import ofproto_v1_5 as ofp
from os_ken.ofproto import ofproto_v1_5_parser as parser

MONITOR_ID = 0xC10D
ADDED, REMOVED, MODIFIED, ABBREV, PAUSED, RESUMED = (ofp.OFPFME_ADDED, ofp.OFPFME_REMOVED, ofp.OFPFME_MODIFIED,
                                                    ofp.OFPFME_ABBREV, ofp.OFPFME_PAUSED, ofp.OFPFME_RESUMED)
_HEADER = struct.Struct("!BBHI")
_MP = struct.Struct("!HH4x")
_REQUEST = struct.Struct("!IIIHBB")
_UPDATE = struct.Struct("!HH")
_COOKIE_AT = 16  # ofp_flow_update_full: length, event, table_id, reason, idle, hard, priority, pad[4], cookie


def request(xid: int, command: int = ofp.OFPFMC_ADD) -> bytes:
    """A monitor of every table for flows added, removed and modified (others' in full, ours abbreviated)."""
    flags = ofp.OFPFMF_ADD | ofp.OFPFMF_REMOVED | ofp.OFPFMF_MODIFY
    body = _REQUEST.pack(MONITOR_ID, ofp.OFPP_ANY, ofp.OFPG_ANY, flags, ofp.OFPTT_ALL, command)
    body += struct.pack("!HH4x", ofp.OFPMT_OXM, 4)  # an empty match
    mp = _MP.pack(ofp.OFPMP_FLOW_MONITOR, 0) + body
    return _HEADER.pack(ofp.OFP_VERSION, ofp.OFPT_MULTIPART_REQUEST, 8 + len(mp), xid) + mp


class RawFlowUpdates:
    """A flow-monitor reply's body as the switch sent it."""

    __slots__ = ("raw",)

    def __init__(self, raw: bytes) -> None:
        self.raw = raw


def updates(body: Any) -> Iterator[tuple[int, int | None]]:
    """(event, cookie) of each update; the cookie is None where the event carries none (abbreviated, paused,
    resumed). Stops at the first entry whose length cannot be (what a switch sends is never trusted)."""
    raw = body.raw if isinstance(body, RawFlowUpdates) else b""
    offset = 0
    while offset + _UPDATE.size <= len(raw):
        length, event = _UPDATE.unpack_from(raw, offset)
        if length < _UPDATE.size or offset + length > len(raw):
            return
        cookie = None
        if event in (ADDED, REMOVED, MODIFIED, ofp.OFPFME_INITIAL) and length >= _COOKIE_AT + 8:
            (cookie,) = struct.unpack_from("!Q", raw, offset + _COOKIE_AT)
        yield event, cookie
        offset += length


def changed_behind_our_back(body: Any, ours: Callable[[int], bool]) -> str | None:
    """What a monitor reply says someone else did to our flows (None: nothing, or only our own changes)."""
    for event, cookie in updates(body):
        if event == PAUSED:
            return "the switch paused the flow monitor (its buffer filled): changes may have been missed"
        if cookie is not None and ours(cookie) and event in (ADDED, REMOVED, MODIFIED):
            what = {ADDED: "added", REMOVED: "removed", MODIFIED: "modified"}[event]
            return f"a flow of ours (cookie {cookie:#x}) was {what} by another connection"
    return None


def wrap(previous: Callable[..., Any]) -> Callable[..., Any]:
    """The multipart-reply parser, with flow-monitor replies left as bytes (others as `previous` does)."""
    def parse(datapath: Any, version: int, msg_type: int, msg_len: int, xid: int, buf: bytes) -> Any:
        type_, flags = struct.unpack_from(ofp.OFP_MULTIPART_REPLY_PACK_STR, buf, ofp.OFP_HEADER_SIZE)
        if type_ != ofp.OFPMP_FLOW_MONITOR:
            return previous(datapath, version, msg_type, msg_len, xid, buf)
        msg = parser.MsgBase.parser.__func__(parser.OFPFlowMonitorReply, datapath, version, msg_type, msg_len, xid,
                                             buf)
        msg.type, msg.flags = type_, flags
        msg.body = RawFlowUpdates(bytes(msg.buf[ofp.OFP_MULTIPART_REPLY_SIZE:msg_len]))
        return msg
    return parse


def install() -> None:
    """After controller.flow_desc.install(): flow-monitor replies stay bytes too."""
    current = parser._MSG_PARSERS[ofp.OFPT_MULTIPART_REPLY]
    if not getattr(current, "cw_flow_monitor", False):
        parse = wrap(current)
        parse.cw_flow_monitor = True  # type: ignore[attr-defined]
        parser._MSG_PARSERS[ofp.OFPT_MULTIPART_REPLY] = parse
