"""Render flows in ovs-ofctl syntax, with port names, loadable by `ovs-ofctl -O OpenFlow15 --bundle add-flows`."""

from __future__ import annotations

from flows.tables import TABLES
from flows.values import CT, Conjunction, Flow, Goto, MatchValue, Output, SetField

# os-ken (OXM) field names -> ovs-ofctl field names.
OFCTL_FIELD = {"eth_dst": "dl_dst", "eth_src": "dl_src", "eth_type": "dl_type", "ipv4_src": "nw_src",
               "ipv4_dst": "nw_dst", "tunnel_id": "tun_id", "ip_proto": "nw_proto"}
HEX_FIELDS = {"eth_type", "tunnel_id", "tcp_dst", "udp_dst", "sctp_dst"}
CT_FLAGS = (("new", 0x01), ("est", 0x02), ("rel", 0x04), ("rpl", 0x08), ("inv", 0x10), ("trk", 0x20))
ZONE = "NXM_NX_REG6[0..15]"


def _value(field: str, value: MatchValue) -> str:
    if field == "ct_state":
        bits, mask = value if isinstance(value, tuple) else (value, 0x3F)
        return "".join(("+" if bits & b else "-") + name for name, b in CT_FLAGS if mask & b)
    if isinstance(value, tuple):
        return f"{_value(field, value[0])}/{_value(field, value[1])}"
    if field == "in_port":
        return f'"{value}"'
    if isinstance(value, int) and field in HEX_FIELDS:
        return hex(value)
    return str(value)


def _action(action: object) -> str:
    if isinstance(action, Output):
        return f'output:"{action.port}"'
    if isinstance(action, SetField):
        return f"set_field:{action.value}->{OFCTL_FIELD.get(action.field, action.field)}"
    if isinstance(action, Goto):
        return f"goto_table:{action.table}"
    if isinstance(action, CT):
        head = "commit" if action.commit else f"table={action.table}"
        return f"ct({head},zone={ZONE})"
    if isinstance(action, Conjunction):
        return f"conjunction({action.id},{action.clause}/{action.n_clauses})"
    raise TypeError(f"cannot render {action!r}")


def render_flow(f: Flow) -> str:
    match = "".join(f", {OFCTL_FIELD.get(k, k)}={_value(k, v)}" for k, v in f.match)
    actions = ",".join(_action(a) for a in f.actions) or "drop"
    return f"table={f.table}, priority={f.priority}, cookie={f.cookie:#x}{match}, actions={actions}"


def render_flows(flows: tuple[Flow, ...] | list[Flow], site: str = "") -> str:
    """The flows of one switch, one per line, grouped by table under a comment naming it."""
    lines = [f"# cloudweave flows for site {site}" if site else "# cloudweave flows"]
    current = None
    for f in flows:
        if f.table != current:
            current = f.table
            lines.append(f"# table {f.table}: {TABLES[f.table].name}")
        lines.append(render_flow(f))
    return "\n".join(lines) + "\n"
