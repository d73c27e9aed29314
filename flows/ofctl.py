"""Render flows in ovs-ofctl syntax, with port names, loadable by `ovs-ofctl -O OpenFlow15 --bundle add-flows`."""

from __future__ import annotations

from .tables import TABLES
from .values import (
    CONTROLLER,
    CT,
    IN_PORT,
    Conjunction,
    Flow,
    Goto,
    Group,
    MatchValue,
    Meter,
    Move,
    Output,
    Resubmit,
    Sample,
    SetField,
    ToGroup,
)

# os-ken (OXM) field names -> ovs-ofctl field names.
OFCTL_FIELD = {"eth_dst": "dl_dst", "eth_src": "dl_src", "eth_type": "dl_type", "ipv4_src": "nw_src",
               "ipv4_dst": "nw_dst", "tunnel_id": "tun_id", "ip_proto": "nw_proto"}
HEX_FIELDS = {"eth_type", "tunnel_id", "tcp_dst", "udp_dst", "sctp_dst", "ct_mark"}
NXM_NAME = {"eth_src": "NXM_OF_ETH_SRC[]", "eth_dst": "NXM_OF_ETH_DST[]", "arp_sha": "NXM_NX_ARP_SHA[]",
            "arp_tha": "NXM_NX_ARP_THA[]", "arp_spa": "NXM_OF_ARP_SPA[]", "arp_tpa": "NXM_OF_ARP_TPA[]"}
CT_FLAGS = (("new", 0x01), ("est", 0x02), ("rel", 0x04), ("rpl", 0x08), ("inv", 0x10), ("trk", 0x20), ("snat", 0x40),
            ("dnat", 0x80))
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


def _ct(action: CT) -> str:
    parts = ["commit"] if action.commit else []
    if action.table is not None:
        parts.append(f"table={action.table}")
    parts.append(f"zone={ZONE if action.zone is None else action.zone}")
    if action.mark is not None:
        mask = f"/{action.mark_mask:#x}" if action.mark_mask is not None else ""
        parts.append(f"exec(set_field:{action.mark:#x}{mask}->ct_mark)")
    if action.nat is not None:
        n = action.nat
        ports = f":{n.port_lo}-{n.port_hi}" if n.port_lo else ""
        parts.append(f"nat({n.kind}={n.ip}{ports})" if n.kind else "nat")
    return f"ct({','.join(parts)})"


def _action(action: object) -> str:
    if isinstance(action, Output):
        if action.port == IN_PORT:
            return "in_port"
        if action.port == CONTROLLER:
            return "CONTROLLER:65535"
        return f'output:"{action.port}"'
    if isinstance(action, SetField):
        return f"set_field:{action.value}->{OFCTL_FIELD.get(action.field, action.field)}"
    if isinstance(action, Move):
        return f"move:{NXM_NAME[action.src]}->{NXM_NAME[action.dst]}"
    if isinstance(action, Goto):
        return f"goto_table:{action.table}"
    if isinstance(action, CT):
        return _ct(action)
    if isinstance(action, Conjunction):
        return f"conjunction({action.id},{action.clause}/{action.n_clauses})"
    if isinstance(action, ToGroup):
        return f"group:{action.group_id}"
    if isinstance(action, Meter):
        return f"meter:{action.meter_id}"
    if isinstance(action, Resubmit):
        return f"resubmit(,{action.table})"
    if isinstance(action, Sample):
        return (f"sample(probability={action.probability},collector_set_id={action.collector_set_id},"
                f"obs_domain_id={action.obs_domain_id},obs_point_id={action.obs_point_id})")
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


def render_group(g: Group) -> str:
    buckets = "".join(
        f",bucket=bucket_id:{b.bucket_id},weight:{b.weight}"
        + (f',watch_port:"{b.watch_port}"' if b.watch_port else "")
        + ",actions=" + (",".join(_action(a) for a in b.actions) or "drop")
        for b in g.buckets)
    return f"group_id={g.group_id},type=select,selection_method=hash,fields({','.join(g.fields)}){buckets}"


def render_meters(meters: tuple[Meter, ...], site: str = "") -> str:
    """Meters in `ovs-ofctl -O OpenFlow15 add-meter` syntax, one per line."""
    lines = [f"# cloudweave meters for site {site}" if site else "# cloudweave meters"]
    for m in meters:
        burst = f",burst_size={m.burst}" if m.burst else ""
        lines.append(f"meter={m.meter_id},{m.unit}{',burst' if m.burst else ''},stats,band=type=drop,rate={m.rate}"
                     f"{burst}")
    return "\n".join(lines) + "\n"


def render_groups(groups: tuple[Group, ...] | list[Group], site: str = "") -> str:
    """Groups in `ovs-ofctl -O OpenFlow15 add-groups` syntax, each under a comment saying what it is for."""
    lines = [f"# cloudweave groups for site {site}" if site else "# cloudweave groups"]
    for g in groups:
        if g.name:
            lines.append(f"# {g.name}")
        lines.append(render_group(g))
    return "\n".join(lines) + "\n"
