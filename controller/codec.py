"""Translate between flow values and os-ken OpenFlow messages, via one canonical form that both sides share.

A canonical flow is a key (table, priority, match) and a content (cookie, actions), with ports as numbers.
The switch's reply and the compiler's value are brought to this form and compared; nothing else is.
"""

from __future__ import annotations

from typing import Any

from flows.cookies import OWNER, OWNER_MASK
from flows.values import CT, Conjunction, Flow, Goto, Output, SetField

CT_ZONE_FIELD, CT_ZONE_OFS_NBITS, NO_TABLE = "reg6", 15, 0xFF  # zone = reg6[0..15]

CanonKey = tuple[int, int, tuple[tuple[str, Any], ...]]
CanonContent = tuple[int, tuple[tuple[Any, ...], ...]]


class MissingPort(KeyError):
    """A flow names a port that the switch does not have (yet)."""


def _port(ports: dict[str, int], name: str) -> int:
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
            out.append(("ct", a.commit, a.table))
        elif isinstance(a, Conjunction):
            out.append(("conjunction", a.id, a.clause, a.n_clauses))
    return tuple(out)


def canonical_desired(flow: Flow, ports: dict[str, int]) -> tuple[CanonKey, CanonContent]:
    """Raises MissingPort if the flow names a port the switch lacks."""
    key = (flow.table, flow.priority, canonical_match(flow.match, ports))
    return key, (flow.cookie, canonical_actions(flow, ports))


def canonical_actual(stats: Any, ofp: Any) -> tuple[CanonKey, CanonContent]:
    """The canonical form of one OFPFlowStats entry from the switch."""
    match = tuple(sorted((k, _norm(v)) for k, v in stats.match.items()))
    actions: list[tuple[Any, ...]] = []
    for inst in stats.instructions:
        if inst.type == ofp.OFPIT_APPLY_ACTIONS:
            for a in inst.actions:
                if a.type == ofp.OFPAT_OUTPUT:
                    actions.append(("output", a.port))
                elif a.type == ofp.OFPAT_SET_FIELD:
                    actions.append(("set_field", a.key, _norm(a.value)))
                elif type(a).__name__ == "NXActionCT" and a.zone_src == CT_ZONE_FIELD \
                        and a.zone_ofs_nbits == CT_ZONE_OFS_NBITS and not a.actions and not a.alg:
                    table = None if a.recirc_table == NO_TABLE else a.recirc_table
                    actions.append(("ct", bool(a.flags & 1), table))
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
            apply.append(parser.OFPActionOutput(a[1], 0))
        elif a[0] == "set_field":
            apply.append(parser.OFPActionSetField(**{a[1]: a[2]}))
        elif a[0] == "ct":
            apply.append(parser.NXActionCT(flags=1 if a[1] else 0, zone_src=CT_ZONE_FIELD,
                                           zone_ofs_nbits=CT_ZONE_OFS_NBITS,
                                           recirc_table=NO_TABLE if a[2] is None else a[2], alg=0, actions=[]))
        elif a[0] == "conjunction":
            apply.append(parser.NXActionConjunction(clause=a[2] - 1, n_clauses=a[3], id_=a[1]))
    if apply:
        inst.append(parser.OFPInstructionActions(ofp.OFPIT_APPLY_ACTIONS, apply))
    inst += [parser.OFPInstructionGotoTable(a[1]) for a in actions if a[0] == "goto"]
    return parser.OFPFlowMod(dp, cookie=cookie, cookie_mask=0, table_id=table, command=ofp.OFPFC_ADD,
                             priority=priority, buffer_id=ofp.OFP_NO_BUFFER, out_port=ofp.OFPP_ANY,
                             out_group=ofp.OFPG_ANY, match=parser.OFPMatch(**dict(match)), instructions=inst)


def flow_delete(dp: Any, key: CanonKey) -> Any:
    """An OFPFC_DELETE_STRICT of exactly this key, and only if the flow carries our owner cookie."""
    ofp, parser = dp.ofproto, dp.ofproto_parser
    table, priority, match = key
    return parser.OFPFlowMod(dp, cookie=OWNER, cookie_mask=OWNER_MASK, table_id=table,
                             command=ofp.OFPFC_DELETE_STRICT, priority=priority, buffer_id=ofp.OFP_NO_BUFFER,
                             out_port=ofp.OFPP_ANY, out_group=ofp.OFPG_ANY, match=parser.OFPMatch(**dict(match)))
