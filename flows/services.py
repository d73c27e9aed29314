"""Service splits: a virtual IP and port served by backends in several clouds, by weight.

At every site with endpoints of the service's segment (its clients), the switch answers ARP for the VIP; a
new connection to VIP:port goes to a select group whose buckets commit it in the segment's conntrack zone
with `nat(dst=backend:port)` and send it back through the ACL, so that the backend's own rules decide.
Conntrack keeps the connection on its backend for its life (a weight change moves only new ones); the
segment's conntrack table runs `ct(nat)`, so later packets are translated the same way and the backend's
replies leave conntrack with the VIP as their source. Table `nat` then addresses the packet to the
backend's MAC. A backend whose site the client's site cannot reach is left out of the group.
"""

from __future__ import annotations

from cloudweave.config.model import Model, Route

from . import cookies
from .acl import CT_NEW
from .nat import ARP_REQUEST, arp_responder
from .tables import ACL_EGRESS, FROM_LOCAL, NAT, ROUTE
from .topology import SiteGraph, tunnel_port_name
from .values import CT, ETH_ARP, ETH_IPV4, Bucket, Flow, Goto, Group, Nat, SetField, ToGroup, flow
from .weights import weights_for

PRIO_SERVICE = 59500  # above the established short-cut: only new connections match (ct_state)
PORT_FIELD = {6: "tcp_dst", 17: "udp_dst"}


def service_group_purpose(route: str, site: str) -> str:
    return f"service/{route}/{site}"


def service_group_id(route: str, site: str) -> int:
    """The select group of a service split at a client site."""
    return cookies.group_id(service_group_purpose(route, site))


def service_flows(model: Model, site: str, graph: SiteGraph) -> tuple[list[Flow], list[Group]]:
    flows: list[Flow] = []
    groups: list[Group] = []
    answered: set[tuple[int, str]] = set()  # (VNI, VIP): one VIP may serve several ports, its ARP is one
    rewritten: set[tuple[int, str, str]] = set()
    for r in model.routes:
        if r.service is None:
            continue
        svc = r.service
        seg = model.segment(svc.segment)
        if not any(e.segment == seg.name for e in model.endpoints_at(site)):
            continue  # no clients here
        group = _group(model, r, site, graph)
        ck = cookies.cookie("service", f"{r.name}@{site}")
        if group is not None:
            groups.append(group)
            flows.append(flow(ACL_EGRESS, PRIO_SERVICE, ck, (ToGroup(group.group_id, group.purpose),), ct_state=CT_NEW,
                              reg6=seg.vni, reg7=FROM_LOCAL, eth_type=ETH_IPV4, ipv4_dst=str(svc.vip),
                              ip_proto=svc.proto, **{PORT_FIELD[svc.proto]: svc.port}))
        if (seg.vni, str(svc.vip)) not in answered:
            answered.add((seg.vni, str(svc.vip)))
            flows.append(flow(NAT, 100, ck, arp_responder(svc.mac, svc.vip), reg6=seg.vni, eth_type=ETH_ARP,
                              arp_op=ARP_REQUEST, arp_tpa=str(svc.vip)))
            flows.append(flow(NAT, 90, ck, (), reg6=seg.vni, eth_dst=svc.mac))  # nothing else goes to the VIP's MAC
        for name in sorted({n for n, _ in r.backends}):
            if (seg.vni, str(svc.vip), name) in rewritten:
                continue
            rewritten.add((seg.vni, str(svc.vip), name))
            ep = model.endpoint(name)
            flows.append(flow(NAT, 100, ck, (SetField("eth_dst", ep.mac), Goto(ROUTE)), reg6=seg.vni,
                              eth_type=ETH_IPV4, eth_dst=svc.mac, ipv4_dst=str(ep.ip)))
    return flows, groups


def _group(model: Model, r: Route, site: str, graph: SiteGraph) -> Group | None:
    svc = r.service
    live = []
    for bucket_id, (name, w) in enumerate(r.backends):
        if w <= 0:
            continue  # weight 0: a drained backend keeps its connections (conntrack) and takes no new one
        ep = model.endpoint(name)
        if ep.site == site:
            watch = ep.port
        else:
            hop = graph.next_hop(site, ep.site)
            if hop is None:
                continue  # unreachable now: left out, the others' weights renormalised
            watch = tunnel_port_name(hop)
        live.append((bucket_id, ep, w, watch))
    if not live or sum(w for _, _, w, _ in live) <= 0:
        return None
    weights = weights_for([w for _, _, w, _ in live])
    total = sum(w for _, _, w, _ in live)
    buckets = tuple(
        Bucket(bid, weight, (CT(commit=True, table=ACL_EGRESS, nat=Nat("dst", str(ep.ip), svc.port, svc.port)),),
               watch)
        for (bid, ep, _, watch), weight in zip(live, weights, strict=True))
    name = f"service {r.name} at {site}: " + ", ".join(f"{ep.name} {w / total:.0%}" for _, ep, w, _ in live)
    return Group(service_group_id(r.name, site), buckets, name=name, purpose=service_group_purpose(r.name, site))
