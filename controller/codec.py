"""Translate between flow values and os-ken OpenFlow messages, via one canonical form that both sides share.

A canonical flow is a key (table, priority, match) and a content (cookie, actions), with ports as numbers.
The switch's reply and the compiler's value are brought to this form and compared; nothing else is.
"""

from __future__ import annotations

import struct
from typing import Any

from cloudweave.flows.cookies import OWNER, OWNER_MASK
from cloudweave.flows.values import (
    CONTROLLER,
    CT,
    IN_PORT,
    Action,
    Conjunction,
    Flow,
    Goto,
    Group,
    Meter,
    Move,
    Output,
    Resubmit,
    Sample,
    SetField,
    ToGroup,
)

CT_ZONE_FIELD, CT_ZONE_OFS_NBITS, NO_TABLE = "reg6", 15, 0xFF  # zone = reg6[0..15]
RESERVED_PORT_NUMBERS = {IN_PORT: 0xFFFFFFF8, CONTROLLER: 0xFFFFFFFD}  # OFPP_IN_PORT, OFPP_CONTROLLER (OF1.3+)
NO_BUFFER_LEN = 0xFFFF  # OFPCML_NO_BUFFER: the whole packet to the controller
NX_IN_PORT = 0xFFF8  # OFPP_IN_PORT in the 16 bits of a Nicira resubmit: look up as the packet came in
NX_CT_F_COMMIT, NX_NAT_F_SRC, NX_NAT_F_DST = 1, 1, 2
MOVE_BITS = {"eth_src": 48, "eth_dst": 48, "arp_sha": 48, "arp_tha": 48, "arp_spa": 32, "arp_tpa": 32}

CanonKey = tuple[int, int, tuple[tuple[str, Any], ...]]
CanonMeter = tuple[str, int, int]  # unit (pktps, kbps), rate, burst (0: the switch's default)
CanonContent = tuple[int, tuple[tuple[Any, ...], ...]]


class MissingPort(KeyError):
    """A flow names a port that the switch does not have (yet)."""


def _port(ports: dict[str, int], name: str) -> int:
    if name in RESERVED_PORT_NUMBERS:
        return RESERVED_PORT_NUMBERS[name]
    try:
        return ports[name]
    except KeyError:
        raise MissingPort(name) from None


def _norm(value: Any) -> Any:
    if isinstance(value, str):
        return value.lower()
    if isinstance(value, list):
        return tuple(value)
    return value


def canonical_match(match: tuple[tuple[str, Any], ...], ports: dict[str, int]) -> tuple[tuple[str, Any], ...]:
    # _norm inlined: this runs once per desired flow (100,000 on a restart, while the switch replies)
    out = []
    for k, v in match:
        if k == "in_port":
            v = _port(ports, v)
        elif isinstance(v, str):
            v = v.lower()
        elif isinstance(v, list):
            v = tuple(v)
        out.append((k, v))
    out.sort()
    return tuple(out)


def canonical_actions(flow: Flow, ports: dict[str, int]) -> tuple[tuple[Any, ...], ...]:
    return _canonical_action_list(flow.actions, ports)


def _canonical_action_list(actions: tuple[Action, ...], ports: dict[str, int]) -> tuple[tuple[Any, ...], ...]:
    out: list[tuple[Any, ...]] = []
    for a in actions:
        if isinstance(a, Output):
            out.append(("output", _port(ports, a.port)))
        elif isinstance(a, SetField):
            out.append(("set_field", a.field, _norm(a.value)))
        elif isinstance(a, Goto):
            out.append(("goto", a.table))
        elif isinstance(a, CT):
            nat = None if a.nat is None else _canonical_nat(a.nat.kind, a.nat.ip, a.nat.ip, a.nat.port_lo,
                                                             a.nat.port_hi)
            mark = a.mark if a.mark_mask is None else (a.mark, a.mark_mask)
            out.append(("ct", a.commit, a.table, a.zone, nat, mark))
        elif isinstance(a, Conjunction):
            out.append(("conjunction", a.id, a.clause, a.n_clauses))
        elif isinstance(a, Move):
            out.append(("move", a.src, a.dst))
        elif isinstance(a, ToGroup):
            out.append(("group", a.group_id))
        elif isinstance(a, Meter):
            out.append(("meter", a.meter_id))
        elif isinstance(a, Resubmit):
            out.append(("resubmit", a.table))
        elif isinstance(a, Sample):
            out.append(("sample", a.probability, a.collector_set_id, a.obs_domain_id, a.obs_point_id))
    return tuple(out)


def _canonical_nat(kind: str, ip_min: str, ip_max: str, port_lo: int | None, port_hi: int | None) -> tuple:
    # OVS reports a single address without its maximum and a single port without its top.
    return (kind, ip_min or "", ip_max or ip_min or "", port_lo or 0, port_hi or port_lo or 0)


def _actual_ct(a: Any) -> tuple[Any, ...]:
    if a.zone_src == CT_ZONE_FIELD and a.zone_ofs_nbits == CT_ZONE_OFS_NBITS:
        zone = None
    elif not a.zone_src:
        zone = a.zone_ofs_nbits
    else:
        return ("other", repr(a))
    nat, mark = None, None
    for inner in a.actions:
        name = type(inner).__name__
        if name == "NXActionNAT":
            kind = "src" if inner.flags & NX_NAT_F_SRC else "dst" if inner.flags & NX_NAT_F_DST else ""
            nat = _canonical_nat(kind, inner.range_ipv4_min, inner.range_ipv4_max, inner.range_proto_min,
                                 inner.range_proto_max)
        elif name == "OFPActionSetField" and inner.key == "ct_mark":
            mark = _norm(inner.value)
        else:
            return ("other", repr(a))
    if a.alg:
        return ("other", repr(a))
    table = None if a.recirc_table == NO_TABLE else a.recirc_table
    return ("ct", bool(a.flags & NX_CT_F_COMMIT), table, zone, nat, mark)


def canonical_desired(flow: Flow, ports: dict[str, int]) -> tuple[CanonKey, CanonContent]:
    """Raises MissingPort if the flow names a port the switch lacks."""
    key = (flow.table, flow.priority, canonical_match(flow.match, ports))
    return key, (flow.cookie, canonical_actions(flow, ports))


def _registers(field: str, value: Any) -> list[tuple[str, Any]]:
    """OpenFlow 1.5 reports reg2N/reg2N+1 together as xregN (reg2N in the high 32 bits): split it back."""
    if not field.startswith("xreg"):
        return [(field, _norm(value))]
    n = int(field[4:])
    v, m = value if isinstance(value, tuple) else (value, (1 << 64) - 1)
    out = []
    for reg, shift in ((2 * n, 32), (2 * n + 1, 0)):
        part_v, part_m = (v >> shift) & 0xFFFFFFFF, (m >> shift) & 0xFFFFFFFF
        if part_m:
            out.append((f"reg{reg}", part_v if part_m == 0xFFFFFFFF else (part_v, part_m)))
    return out


def canonical_match_fields(items: Any) -> tuple[tuple[str, Any], ...]:
    """A switch's match fields, (name, os-ken value) pairs, in canonical form (unsorted)."""
    return tuple(kv for k, v in items for kv in _registers(k, v))


def canonical_instructions(instructions: Any, ofp: Any) -> tuple[tuple[Any, ...], ...]:
    """A switch's instructions (os-ken objects) as canonical actions."""
    actions: list[tuple[Any, ...]] = []
    for inst in instructions:
        if inst.type == ofp.OFPIT_APPLY_ACTIONS:
            actions += _actual_actions(inst.actions, ofp)
        elif inst.type == ofp.OFPIT_GOTO_TABLE:
            actions.append(("goto", inst.table_id))
        else:
            actions.append(("other", repr(inst)))
    return tuple(actions)


def canonical_actual(stats: Any, ofp: Any) -> tuple[CanonKey, CanonContent]:
    """The canonical form of one flow entry (OFPFlowDesc) from the switch."""
    match = tuple(sorted(canonical_match_fields(stats.match.items())))
    return (stats.table_id, stats.priority, match), (stats.cookie, canonical_instructions(stats.instructions, ofp))


def _actual_actions(actions: list[Any], ofp: Any) -> list[tuple[Any, ...]]:
    out: list[tuple[Any, ...]] = []
    for a in actions:
        if a.type == ofp.OFPAT_OUTPUT:
            out.append(("output", a.port))
        elif a.type == ofp.OFPAT_SET_FIELD:
            out.append(("set_field", a.key, _norm(a.value)))
        elif a.type == ofp.OFPAT_GROUP:
            out.append(("group", a.group_id))
        elif type(a).__name__ == "NXActionCT":
            out.append(_actual_ct(a))
        elif a.type == ofp.OFPAT_COPY_FIELD and a.src_offset == 0 and a.dst_offset == 0 \
                and a.n_bits == MOVE_BITS.get(a.oxm_ids[0].type):
            out.append(("move", a.oxm_ids[0].type, a.oxm_ids[1].type))
        elif type(a).__name__ == "NXActionConjunction":
            out.append(("conjunction", a.id, a.clause + 1, a.n_clauses))
        elif a.type == ofp.OFPAT_METER:
            out.append(("meter", a.meter_id))
        elif type(a).__name__ == "NXActionResubmitTable" and a.in_port == NX_IN_PORT:
            out.append(("resubmit", a.table_id))
        elif type(a).__name__ == "NXActionSample":
            out.append(("sample", a.probability, a.collector_set_id, a.obs_domain_id, a.obs_point_id))
        else:
            out.append(("other", repr(a)))
    return out


def flow_add(dp: Any, key: CanonKey, content: CanonContent) -> Any:
    """An OFPFC_ADD that installs (or wholly replaces) the flow with this key."""
    ofp, parser = dp.ofproto, dp.ofproto_parser
    table, priority, match = key
    cookie, actions = content
    inst = []
    apply = _apply_actions(ofp, parser, actions)
    if apply:
        inst.append(parser.OFPInstructionActions(ofp.OFPIT_APPLY_ACTIONS, apply))
    inst += [parser.OFPInstructionGotoTable(a[1]) for a in actions if a[0] == "goto"]
    return parser.OFPFlowMod(dp, cookie=cookie, cookie_mask=0, table_id=table, command=ofp.OFPFC_ADD,
                             priority=priority, buffer_id=ofp.OFP_NO_BUFFER, out_port=ofp.OFPP_ANY,
                             out_group=ofp.OFPG_ANY, match=parser.OFPMatch(**dict(match)), instructions=inst)


def _apply_actions(ofp: Any, parser: Any, actions: tuple[tuple[Any, ...], ...]) -> list[Any]:
    """os-ken action objects for canonical actions (gotos are instructions, not actions: left out)."""
    apply = []
    for a in actions:
        if a[0] == "output":
            apply.append(parser.OFPActionOutput(a[1], NO_BUFFER_LEN if a[1] == ofp.OFPP_CONTROLLER else 0))
        elif a[0] == "set_field":
            apply.append(parser.OFPActionSetField(**{a[1]: a[2]}))
        elif a[0] == "move":  # OpenFlow 1.5 copy-field (OVS refuses NXAST_REG_MOVE in 1.5)
            apply.append(parser.OFPActionCopyField(n_bits=MOVE_BITS[a[1]], oxm_ids=[a[1], a[2]]))
        elif a[0] == "ct":
            apply.append(_ct_action(parser, a))
        elif a[0] == "conjunction":
            apply.append(parser.NXActionConjunction(clause=a[2] - 1, n_clauses=a[3], id_=a[1]))
        elif a[0] == "group":
            apply.append(parser.OFPActionGroup(a[1]))
        elif a[0] == "meter":
            apply.append(parser.OFPActionMeter(a[1]))
        elif a[0] == "resubmit":
            apply.append(parser.NXActionResubmitTable(in_port=NX_IN_PORT, table_id=a[1]))
        elif a[0] == "sample":
            apply.append(parser.NXActionSample(probability=a[1], collector_set_id=a[2], obs_domain_id=a[3],
                                               obs_point_id=a[4]))
    return apply


def _ct_action(parser: Any, a: tuple[Any, ...]) -> Any:
    _, commit, table, zone, nat, mark = a
    inner = []
    if mark is not None:
        inner.append(parser.OFPActionSetField(ct_mark=mark))  # an int, or (value, mask)
    if nat is not None:
        kind, ip_min, ip_max, port_lo, port_hi = nat
        flags = {"src": NX_NAT_F_SRC, "dst": NX_NAT_F_DST, "": 0}[kind]
        kwargs: dict[str, Any] = {"range_ipv4_min": ip_min} if ip_min else {}
        if ip_max and ip_max != ip_min:
            kwargs["range_ipv4_max"] = ip_max
        if port_lo:
            kwargs.update(range_proto_min=port_lo, range_proto_max=port_hi)
        inner.append(parser.NXActionNAT(flags=flags, **kwargs))
    return parser.NXActionCT(flags=NX_CT_F_COMMIT if commit else 0,
                             zone_src=CT_ZONE_FIELD if zone is None else "",
                             zone_ofs_nbits=CT_ZONE_OFS_NBITS if zone is None else zone,
                             recirc_table=NO_TABLE if table is None else table, alg=0, actions=inner)


def flow_delete(dp: Any, key: CanonKey) -> Any:
    """An OFPFC_DELETE_STRICT of exactly this key, and only if the flow carries our owner cookie."""
    ofp, parser = dp.ofproto, dp.ofproto_parser
    table, priority, match = key
    return parser.OFPFlowMod(dp, cookie=OWNER, cookie_mask=OWNER_MASK, table_id=table,
                             command=ofp.OFPFC_DELETE_STRICT, priority=priority, buffer_id=ofp.OFP_NO_BUFFER,
                             out_port=ofp.OFPP_ANY, out_group=ofp.OFPG_ANY, match=parser.OFPMatch(**dict(match)))


# ---- groups -------------------------------------------------------------------------------------------------

NTR_VENDOR, NTRT_SELECTION_METHOD = 0x0000154D, 1  # OVS's selection-method group property (Netronome)
SELECTION_METHOD = "hash"
OXM_HEADERS = {  # field -> OXM header (class 0x8000, field, length), as OVS reports the hash fields
    "eth_type": (0x8000, 5, 2), "ip_src": (0x8000, 11, 4), "ip_dst": (0x8000, 12, 4), "ip_proto": (0x8000, 10, 1),
    "tcp_src": (0x8000, 13, 2), "tcp_dst": (0x8000, 14, 2), "udp_src": (0x8000, 15, 2), "udp_dst": (0x8000, 16, 2),
    "icmp_type": (0x8000, 19, 1),
}
OFPP_ANY = 0xFFFFFFFF
CanonGroup = tuple[Any, ...]


def _oxm_header(field: str) -> int:
    cls, f, length = OXM_HEADERS[field]
    return cls << 16 | f << 9 | length


def canonical_group_desired(g: Group, ports: dict[str, int]) -> tuple[int, CanonGroup]:
    """Raises MissingPort if a bucket names a port the switch lacks."""
    buckets = tuple(sorted(
        (b.bucket_id, b.weight, _port(ports, b.watch_port) if b.watch_port else OFPP_ANY,
         _canonical_action_list(b.actions, ports)) for b in g.buckets))
    return g.group_id, ("select", SELECTION_METHOD, tuple(sorted(_oxm_header(f) for f in g.fields)), buckets)


def _selection(properties: list[Any]) -> tuple[str, tuple[int, ...]]:
    for prop in properties:
        if getattr(prop, "experimenter", None) == NTR_VENDOR and prop.exp_type == NTRT_SELECTION_METHOD:
            raw = b"".join(struct.pack("!I", d) for d in prop.data)
            method = raw[4:20].rstrip(b"\0").decode()
            headers, rest = [], raw[28:]
            while len(rest) >= 4:  # each field: its OXM header, then its mask (all ones: the whole field)
                (h,) = struct.unpack("!I", rest[:4])
                if h == 0:
                    break
                # A header with the has-mask bit carries value and mask: the same field, half the length.
                headers.append((h & ~0x1FF) | (h & 0xFF) // 2 if h & 0x100 else h)
                rest = rest[4 + (h & 0xFF):]
            return method, tuple(sorted(headers))
    return "", ()


def canonical_group_actual(desc: Any, ofp: Any) -> tuple[int, CanonGroup]:
    """The canonical form of one OFPGroupDesc from the switch."""
    method, fields = _selection(desc.properties)
    buckets = []
    for b in desc.buckets:
        weight, watch = 0, OFPP_ANY
        for prop in b.properties:
            if prop.type == ofp.OFPGBPT_WEIGHT:
                weight = prop.weight
            elif prop.type == ofp.OFPGBPT_WATCH_PORT:
                watch = prop.watch
        buckets.append((b.bucket_id, weight, watch, tuple(_actual_actions(b.actions, ofp))))
    kind = "select" if desc.type == ofp.OFPGT_SELECT else str(desc.type)
    return desc.group_id, (kind, method, fields, tuple(sorted(buckets)))


def group_mod(dp: Any, command: str, group_id: int, content: CanonGroup | None) -> Any:
    """add, modify (both with the group's content) or delete, as an os-ken OFPGroupMod."""
    ofp, parser = dp.ofproto, dp.ofproto_parser
    if command == "delete":
        return parser.OFPGroupMod(dp, ofp.OFPGC_DELETE, ofp.OFPGT_SELECT, group_id)
    _, method, fields, buckets = content
    out = []
    for bucket_id, weight, watch, actions in buckets:
        props = [parser.OFPGroupBucketPropWeight(type_=ofp.OFPGBPT_WEIGHT, weight=weight)]
        if watch != OFPP_ANY:
            props.append(parser.OFPGroupBucketPropWatch(type_=ofp.OFPGBPT_WATCH_PORT, watch=watch))
        out.append(parser.OFPBucket(bucket_id, _apply_actions(ofp, parser, actions), props))
    # Each field: its OXM header and an all-ones mask (OVS reads a field list as masks; this is the whole field).
    body = struct.pack("!4x16sQ", method.encode(), 0) + b"".join(
        struct.pack("!I", h) + b"\xff" * (h & 0xFF) for h in fields)
    prop = parser.OFPGroupPropExperimenter(type_=ofp.OFPGPT_EXPERIMENTER, experimenter=NTR_VENDOR,
                                           exp_type=NTRT_SELECTION_METHOD,
                                           data=list(struct.unpack(f"!{len(body) // 4}I", body)))
    command_id = ofp.OFPGC_ADD if command == "add" else ofp.OFPGC_MODIFY
    return parser.OFPGroupMod(dp, command_id, ofp.OFPGT_SELECT, group_id, buckets=out, properties=[prop])


# ---- meters -------------------------------------------------------------------------------------------------

def canonical_meter_desired(m: Meter) -> tuple[int, CanonMeter]:
    return m.meter_id, (m.unit, m.rate, m.burst)


def canonical_meter_actual(desc: Any, ofp: Any) -> tuple[int, CanonMeter]:
    """One meter (OFPMeterDescStats) from the switch; a meter that is not one drop band compares unequal."""
    unit = "pktps" if desc.flags & ofp.OFPMF_PKTPS else "kbps"
    bands = [b for b in desc.bands if getattr(b, "type", None) == ofp.OFPMBT_DROP]
    if len(bands) != 1 or len(desc.bands) != 1:
        return desc.meter_id, ("other", len(desc.bands), 0)
    burst = bands[0].burst_size if desc.flags & ofp.OFPMF_BURST else 0
    return desc.meter_id, (unit, bands[0].rate, burst)


def meter_mod(dp: Any, command: str, meter_id: int, content: CanonMeter | None) -> Any:
    ofp, parser = dp.ofproto, dp.ofproto_parser
    cmd = {"add": ofp.OFPMC_ADD, "modify": ofp.OFPMC_MODIFY, "delete": ofp.OFPMC_DELETE}[command]
    if content is None:
        return parser.OFPMeterMod(dp, command=cmd, flags=0, meter_id=meter_id, bands=[])
    unit, rate, burst = content
    flags = ofp.OFPMF_STATS | (ofp.OFPMF_PKTPS if unit == "pktps" else ofp.OFPMF_KBPS)
    flags |= ofp.OFPMF_BURST if burst else 0
    return parser.OFPMeterMod(dp, command=cmd, flags=flags, meter_id=meter_id,
                              bands=[parser.OFPMeterBandDrop(rate=rate, burst_size=burst)])
