"""Translate between flow values and os-ken OpenFlow messages, via one canonical form that both sides share.

A canonical flow is a key (table, priority, match) and a content (cookie, actions), with ports as numbers.
The switch's reply and the compiler's value are brought to this form and compared; nothing else is.
"""

from __future__ import annotations

from typing import Any

from flows.cookies import OWNER, OWNER_MASK
from flows.values import CONTROLLER, CT, IN_PORT, Conjunction, Flow, Goto, Move, Output, SetField

CT_ZONE_FIELD, CT_ZONE_OFS_NBITS, NO_TABLE = "reg6", 15, 0xFF  # zone = reg6[0..15]
RESERVED_PORT_NUMBERS = {IN_PORT: 0xFFFFFFF8, CONTROLLER: 0xFFFFFFFD}  # OFPP_IN_PORT, OFPP_CONTROLLER (OF1.3+)
NO_BUFFER_LEN = 0xFFFF  # OFPCML_NO_BUFFER: the whole packet to the controller
NX_CT_F_COMMIT, NX_NAT_F_SRC, NX_NAT_F_DST = 1, 1, 2
MOVE_BITS = {"eth_src": 48, "eth_dst": 48, "arp_sha": 48, "arp_tha": 48, "arp_spa": 32, "arp_tpa": 32}

CanonKey = tuple[int, int, tuple[tuple[str, Any], ...]]
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
    return tuple(sorted((k, _port(ports, v) if k == "in_port" else _norm(v)) for k, v in match))


def canonical_actions(flow: Flow, ports: dict[str, int]) -> tuple[tuple[Any, ...], ...]:
    out: list[tuple[Any, ...]] = []
    for a in flow.actions:
        if isinstance(a, Output):
            out.append(("output", _port(ports, a.port)))
        elif isinstance(a, SetField):
            out.append(("set_field", a.field, _norm(a.value)))
        elif isinstance(a, Goto):
            out.append(("goto", a.table))
        elif isinstance(a, CT):
            nat = None if a.nat is None else _canonical_nat(a.nat.kind, a.nat.ip, a.nat.ip, a.nat.port_lo,
                                                             a.nat.port_hi)
            out.append(("ct", a.commit, a.table, a.zone, nat, a.mark))
        elif isinstance(a, Conjunction):
            out.append(("conjunction", a.id, a.clause, a.n_clauses))
        elif isinstance(a, Move):
            out.append(("move", a.src, a.dst))
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
            mark = inner.value
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


def canonical_actual(stats: Any, ofp: Any) -> tuple[CanonKey, CanonContent]:
    """The canonical form of one flow entry (OFPFlowDesc) from the switch."""
    match = tuple(sorted(kv for k, v in stats.match.items() for kv in _registers(k, v)))
    actions: list[tuple[Any, ...]] = []
    for inst in stats.instructions:
        if inst.type == ofp.OFPIT_APPLY_ACTIONS:
            for a in inst.actions:
                if a.type == ofp.OFPAT_OUTPUT:
                    actions.append(("output", a.port))
                elif a.type == ofp.OFPAT_SET_FIELD:
                    actions.append(("set_field", a.key, _norm(a.value)))
                elif type(a).__name__ == "NXActionCT":
                    actions.append(_actual_ct(a))
                elif a.type == ofp.OFPAT_COPY_FIELD and a.src_offset == 0 and a.dst_offset == 0 \
                        and a.n_bits == MOVE_BITS.get(a.oxm_ids[0].type):
                    actions.append(("move", a.oxm_ids[0].type, a.oxm_ids[1].type))
                elif type(a).__name__ == "NXActionConjunction":
                    actions.append(("conjunction", a.id, a.clause + 1, a.n_clauses))
                else:
                    actions.append(("other", repr(a)))
        elif inst.type == ofp.OFPIT_GOTO_TABLE:
            actions.append(("goto", inst.table_id))
        else:
            actions.append(("other", repr(inst)))
    return (stats.table_id, stats.priority, match), (stats.cookie, tuple(actions))


def flow_add(dp: Any, key: CanonKey, content: CanonContent) -> Any:
    """An OFPFC_ADD that installs (or wholly replaces) the flow with this key."""
    ofp, parser = dp.ofproto, dp.ofproto_parser
    table, priority, match = key
    cookie, actions = content
    apply, inst = [], []
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
    if apply:
        inst.append(parser.OFPInstructionActions(ofp.OFPIT_APPLY_ACTIONS, apply))
    inst += [parser.OFPInstructionGotoTable(a[1]) for a in actions if a[0] == "goto"]
    return parser.OFPFlowMod(dp, cookie=cookie, cookie_mask=0, table_id=table, command=ofp.OFPFC_ADD,
                             priority=priority, buffer_id=ofp.OFP_NO_BUFFER, out_port=ofp.OFPP_ANY,
                             out_group=ofp.OFPG_ANY, match=parser.OFPMatch(**dict(match)), instructions=inst)


def _ct_action(parser: Any, a: tuple[Any, ...]) -> Any:
    _, commit, table, zone, nat, mark = a
    inner = []
    if mark is not None:
        inner.append(parser.OFPActionSetField(ct_mark=mark))
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
