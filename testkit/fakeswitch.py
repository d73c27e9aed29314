"""A switch in memory, to drive a `SwitchSession` without ovs-vswitchd (as Faucet's clib/fakeoftable.py does).

`FakeDatapath` stands where os-ken's `Datapath` stands: the session calls `send_msg(msg)` and `send(bytes)`
on it, and it answers by calling the session's `deliver(reply)` at once, on the caller's thread (as the shim
would, later, on os-ken's). It applies what OVS applies: flow-mods (add, modify, strict delete), group-mods
and meter-mods, bundles (open, add, commit, discard; atomic: a refused message fails the commit and changes
nothing); it answers port, flow, group and meter descriptions, aggregate counts, barriers and role requests
(with OVS's stale-generation check; a slave's commit is refused). Flows are kept as the flow-mods' bytes and
read back through the decoder that reads OVS's replies. It can be made faulty: `reject` refuses flow-mods
whose match holds a field, `frozen` answers nothing, `refuse_roles` answers a role request with OFPRRFC_STALE,
`on_commit` runs as a commit arrives (another master taking over). The tests call the session's steps
directly (`_step`, `_audit`, `_hold_role`), so that each is a few milliseconds and no thread is left behind.

What it does not model: the datapath (packets), flow timeouts, table-full errors, OpenFlow flow monitors.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from os_ken.ofproto import ofproto_parser as ofproto_parser_mod
from os_ken.ofproto import ofproto_v1_5 as ofp
from os_ken.ofproto import ofproto_v1_5_parser as parser

from controller import osken_fixes
from controller.flow_desc import RawFlowDescBody

osken_fixes.install()  # as the controller does at start: os-ken's parsers fixed where they misread OVS

_HEADER = struct.Struct("!BBHI")
_BUNDLE_ADD = struct.Struct("!IHH")  # bundle id, pad, flags (after the header)
_FLOW_MOD = struct.Struct("!QQBBHHHIIIHH")  # cookie, mask, table, command, timeouts, priority, ..., importance
_FLOW_DESC = struct.Struct(ofp.OFP_FLOW_DESC_0_PACK_STR)
_NO_STATS = struct.pack("!HH4x", 0, 4)  # an ofp_stats with no fields, padded


@dataclass(frozen=True)
class RawFlow:
    """A flow as the switch keeps it: the flow-mod's match and instructions, as bytes (read back by the same
    decoder that reads OVS's replies, controller/flow_desc.py)."""

    table_id: int
    priority: int
    cookie: int
    command: int
    match: bytes  # ofp_match with its padding
    instructions: bytes

    @property
    def key(self) -> tuple[int, int, bytes]:
        return self.table_id, self.priority, self.match

    def fields(self) -> set[int]:
        """The OXM field numbers it matches on."""
        out, o, end = set(), 4, struct.unpack_from("!H", self.match, 2)[0]
        while o < end:
            (header,) = struct.unpack_from("!I", self.match, o)
            out.add((header >> 9) & 0x7F)
            o += 4 + (header & 0xFF)
        return out

    @staticmethod
    def parse(raw: bytes) -> RawFlow:
        cookie, _, table, command, _, _, priority, _, _, _, _, _ = _FLOW_MOD.unpack_from(raw, _HEADER.size)
        at = _HEADER.size + _FLOW_MOD.size
        match_len = struct.unpack_from("!H", raw, at + 2)[0]
        padded = (match_len + 7) & ~7
        return RawFlow(table, priority, cookie, command, bytes(raw[at:at + padded]), bytes(raw[at + padded:]))

    def desc(self) -> bytes:
        body = self.match + _NO_STATS + self.instructions
        return _FLOW_DESC.pack(_FLOW_DESC.size + len(body), self.table_id, self.priority, 0, 0, 0, 0,
                               self.cookie) + body


class FakeDatapath:
    def __init__(self, dpid: int, ports: dict[str, int]):
        self.id = dpid
        self.ofproto, self.ofproto_parser = ofp, parser
        self.xid = 0
        self.ports = dict(ports)  # name -> number
        self.flows: dict[tuple, RawFlow] = {}  # (table, priority, match bytes) -> the flow
        self.groups: dict[int, Any] = {}
        self.meters: dict[int, Any] = {}
        self.bundles: dict[int, list[Any]] = {}  # bundle id -> the messages added so far
        self.failed: set[int] = set()  # bundles with a refused message: their commit fails
        self.deliver: Callable[[Any], bool] = lambda msg: False  # the session's deliver
        self.frozen = False
        self.reject: int | None = None  # an OXM field (ofp.OFPXMT_OFB_*): flow-mods matching on it are refused
        self.refuse_roles = False
        self.on_commit: Callable[[], None] | None = None  # runs as a commit arrives (a role change mid-reconcile)
        self.role, self.generation = ofp.OFPCR_ROLE_EQUAL, None
        self.received: list[str] = []  # the kinds of message seen, in order
        self.is_active = True  # as os-ken's Datapath: False once the connection is closed

    def close(self) -> None:
        self.is_active = False

    # ---- what the session calls ------------------------------------------------------------------------

    def send_msg(self, msg: Any) -> bool:
        if msg.xid is None:
            msg.set_xid(self._next_xid())
        self.received.append(type(msg).__name__)
        if not self.frozen:
            self._handle(msg)
        return True

    def send(self, data: bytes) -> bool:
        offset = 0
        while offset < len(data):
            version, msg_type, length, xid = _HEADER.unpack_from(data, offset)
            body = data[offset:offset + length]
            offset += length
            self.received.append(f"raw type {msg_type}")
            if self.frozen:
                continue
            if msg_type == ofp.OFPT_BUNDLE_ADD_MESSAGE:
                bundle_id, _, _ = _BUNDLE_ADD.unpack_from(body, _HEADER.size)
                inner = body[_HEADER.size + _BUNDLE_ADD.size:]
                m = RawFlow.parse(inner) if inner[1] == ofp.OFPT_FLOW_MOD else self._parse(inner)
                if isinstance(m, RawFlow) and self.reject is not None and self.reject in m.fields():
                    self.failed.add(bundle_id)  # as OVS: refused at once, named by the bundle-add's xid
                    self._error(xid, ofp.OFPET_BAD_MATCH, ofp.OFPBMC_BAD_FIELD)
                else:
                    self.bundles.setdefault(bundle_id, []).append(m)
            # Anything else sent raw (a flow-monitor request) needs no answer here.
        return True

    # ---- switch behaviour ------------------------------------------------------------------------------

    def _next_xid(self) -> int:
        self.xid = (self.xid + 1) & ofp.MAX_XID
        return self.xid

    def _parse(self, raw: bytes) -> Any:
        version, msg_type, length, xid = _HEADER.unpack_from(raw)
        return ofproto_parser_mod.msg(self, version, msg_type, length, xid, bytearray(raw))

    def _reply(self, reply: Any, xid: int) -> None:
        reply.set_headers(ofp.OFP_VERSION, reply.cls_msg_type, 0, xid)
        self.deliver(reply)

    def _error(self, xid: int, type_: int, code: int) -> None:
        self._reply(parser.OFPErrorMsg(self, type_, code, b""), xid)

    def _handle(self, msg: Any) -> None:
        xid = msg.xid
        if isinstance(msg, parser.OFPBundleCtrlMsg):
            self._bundle(msg)
        elif isinstance(msg, parser.OFPBarrierRequest):
            self._reply(parser.OFPBarrierReply(self), xid)
        elif isinstance(msg, parser.OFPRoleRequest):
            self._role(msg)
        elif isinstance(msg, (parser.OFPMeterMod, parser.OFPGroupMod)):
            self._apply(msg)
        elif isinstance(msg, parser.OFPPortDescStatsRequest):
            body = [parser.OFPPort(port_no=no, hw_addr="02:00:00:00:00:01", name=name.encode(), config=0,
                                   state=ofp.OFPPS_LIVE, properties=[]) for name, no in sorted(self.ports.items())]
            self._multipart(parser.OFPPortDescStatsReply, body, xid)
        elif isinstance(msg, parser.OFPFlowDescStatsRequest):
            body = RawFlowDescBody(b"".join(f.desc() for f in self.flows.values()
                                            if f.cookie & msg.cookie_mask == msg.cookie & msg.cookie_mask))
            self._multipart(parser.OFPFlowDescStatsReply, body, xid)
        elif isinstance(msg, parser.OFPGroupDescStatsRequest):
            body = [parser.OFPGroupDescStats(type_=g.type, group_id=g.group_id, buckets=g.buckets,
                                             properties=g.properties) for g in self.groups.values()]
            self._multipart(parser.OFPGroupDescStatsReply, body, xid)
        elif isinstance(msg, parser.OFPMeterDescStatsRequest):
            body = [parser.OFPMeterDescStats(flags=m.flags, meter_id=m.meter_id, bands=m.bands)
                    for m in self.meters.values()]
            self._multipart(parser.OFPMeterDescStatsReply, body, xid)
        elif isinstance(msg, parser.OFPPortStatsRequest):
            self._multipart(parser.OFPPortStatsReply, [], xid)  # no traffic here
        elif isinstance(msg, parser.OFPAggregateStatsRequest):
            count = sum(1 for fm in self.flows.values() if fm.cookie & msg.cookie_mask == msg.cookie & msg.cookie_mask)
            body = parser.OFPAggregateStats(stats=parser.OFPStats(flow_count=count, packet_count=0, byte_count=0))
            self._multipart(parser.OFPAggregateStatsReply, body, xid)
        # A packet-out or anything else: taken, no answer.

    def _multipart(self, cls: Any, body: Any, xid: int) -> None:
        reply = cls(self, body=body)
        reply.flags = 0
        self._reply(reply, xid)

    def _role(self, msg: Any) -> None:
        if msg.role != ofp.OFPCR_ROLE_NOCHANGE:
            if self.refuse_roles or (self.generation is not None and msg.role == ofp.OFPCR_ROLE_MASTER and
                                     msg.generation_id < self.generation):
                self._error(msg.xid, ofp.OFPET_ROLE_REQUEST_FAILED, ofp.OFPRRFC_STALE)
                return
            self.role, self.generation = msg.role, msg.generation_id
        self._reply(parser.OFPRoleReply(self, self.role, 0, self.generation or 0), msg.xid)

    def _bundle(self, msg: Any) -> None:
        kind = {ofp.OFPBCT_OPEN_REQUEST: ofp.OFPBCT_OPEN_REPLY, ofp.OFPBCT_COMMIT_REQUEST: ofp.OFPBCT_COMMIT_REPLY,
                ofp.OFPBCT_DISCARD_REQUEST: ofp.OFPBCT_DISCARD_REPLY}[msg.type]
        if msg.type == ofp.OFPBCT_OPEN_REQUEST:
            self.bundles[msg.bundle_id] = []
        elif msg.type == ofp.OFPBCT_DISCARD_REQUEST:
            self.bundles.pop(msg.bundle_id, None)
        else:
            if self.on_commit is not None:
                self.on_commit()
            added = self.bundles.pop(msg.bundle_id, [])
            if self.role == ofp.OFPCR_ROLE_SLAVE:  # another master took the switch meanwhile
                self._error(msg.xid, ofp.OFPET_BAD_REQUEST, ofp.OFPBRC_IS_SLAVE)
                return
            if msg.bundle_id in self.failed:  # nothing of it applied
                self.failed.discard(msg.bundle_id)
                self._error(msg.xid, ofp.OFPET_BUNDLE_FAILED, ofp.OFPBFC_MSG_FAILED)
                return
            for m in added:
                self._apply(m)
        self._reply(parser.OFPBundleCtrlMsg(self, msg.bundle_id, kind, msg.flags, []), msg.xid)

    def _apply(self, m: Any) -> None:
        if isinstance(m, RawFlow):
            if m.command in (ofp.OFPFC_ADD, ofp.OFPFC_MODIFY_STRICT):
                self.flows[m.key] = m
            elif m.command == ofp.OFPFC_DELETE_STRICT:
                self.flows.pop(m.key, None)
            else:
                raise NotImplementedError(f"flow-mod command {m.command}")
        elif isinstance(m, parser.OFPGroupMod):
            if m.command == ofp.OFPGC_DELETE:
                self.groups.pop(m.group_id, None)
            else:
                self.groups[m.group_id] = m
        elif isinstance(m, parser.OFPMeterMod):
            if m.command == ofp.OFPMC_DELETE:
                self.meters.pop(m.meter_id, None)
            else:
                self.meters[m.meter_id] = m

    # ---- what a test does behind the controller's back -------------------------------------------------

    def rewrite_all(self) -> None:
        """As `ovs-ofctl mod-flows actions=drop` of every flow: the same flows and count, no actions."""
        for key, f in list(self.flows.items()):
            self.flows[key] = replace(f, instructions=b"")

    def delete_one(self) -> None:
        self.flows.pop(next(iter(self.flows)))
