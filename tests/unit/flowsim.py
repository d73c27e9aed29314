"""A small interpreter of compiled flows across sites, to check them against the policy exhaustively.

It knows what the compiler emits: exact and masked matches, set_field, output, goto, conntrack (a table of
committed connections per site and zone, with new/established/reply state) and conjunctive matches (a
priority level's conjunction clauses are gathered; a complete conjunction sets conj_id and is looked up).
The real pipeline is checked against OVS in tests/ovs and tests/e2e; this checks the compiler's logic on
every pair in milliseconds.
"""

from __future__ import annotations

import zlib
from ipaddress import IPv4Address

from cloudweave.flows.acl import EST, NEW, TRK
from cloudweave.flows.topology import TUNNEL_PREFIX
from cloudweave.flows.values import CT, IN_PORT, Conjunction, Goto, Move, Output, SetField, ToGroup

RPL = 0x08
PORT_FIELDS = ("tcp_dst", "udp_dst", "sctp_dst")


def _field_matches(want, have) -> bool:
    if have is None:
        return False
    if isinstance(want, tuple):
        value, mask = want
        if isinstance(value, str):  # IPv4 with a netmask
            return int(IPv4Address(have)) & int(IPv4Address(mask)) == int(IPv4Address(value))
        return have & mask == value & mask
    return have == want


class Fabric:
    def __init__(self, model, states):
        self.model = model
        self.states = states
        self.tunnel_to = {}
        for site, st in states.items():
            for t in st.tunnels:
                self.tunnel_to[(site, t.name)] = t.peer
        self.tables = {site: sorted(st.flows, key=lambda f: -f.priority) for site, st in states.items()}
        self.groups = {site: {g.group_id: g for g in st.groups} for site, st in states.items()}
        self.conntrack: dict[str, set[tuple]] = {site: set() for site in states}

    def port_to(self, site: str, peer: str) -> str:
        return next(t.name for t in self.states[site].tunnels if t.peer == peer)

    def send(self, site: str, in_port: str, pkt: dict, max_hops: int = 64) -> list[tuple[str, str]]:
        """Inject a packet; return every (site, port) it leaves on toward an endpoint. Raises on a loop."""
        delivered: list[tuple[str, str]] = []
        self.hops: list[tuple[str, str]] = []  # (site, tunnel port) the packet left on, in order
        queue = [(site, in_port, dict(pkt), 0)]
        while queue:
            s, port, p, hops = queue.pop()
            if hops > max_hops:
                raise AssertionError(f"loop: packet still travelling after {max_hops} hops")
            p = {k: v for k, v in p.items() if not k.startswith(("reg", "ct_", "conj"))}
            p.update(in_port=port, reg6=p.pop("_vni", 0), reg7=0)
            if not port.startswith(TUNNEL_PREFIX):
                p.pop("tunnel_id", None)
            for out_port, out_pkt in self._pipeline(s, p):
                if out_port.startswith(TUNNEL_PREFIX):
                    self.hops.append((s, out_port))
                    peer = self.tunnel_to[(s, out_port)]
                    queue.append((peer, self.port_to(peer, s), out_pkt, hops + 1))
                else:
                    delivered.append((s, out_port))
        return delivered

    def _lookup(self, site: str, table: int, p: dict):
        flows = [f for f in self.tables[site] if f.table == table and
                 all(_field_matches(v, p.get(k)) for k, v in f.match)]
        for prio in sorted({f.priority for f in flows}, reverse=True):
            level = [f for f in flows if f.priority == prio]
            direct = [f for f in level if not any(isinstance(a, Conjunction) for a in f.actions)
                      and "conj_id" not in dict(f.match)]
            if direct:
                return direct[0]
            clauses: dict[int, set[int]] = {}
            sizes: dict[int, int] = {}
            for f in level:
                for a in f.actions:
                    if isinstance(a, Conjunction):
                        clauses.setdefault(a.id, set()).add(a.clause)
                        sizes[a.id] = a.n_clauses
            for cid in sorted(clauses):
                if len(clauses[cid]) == sizes[cid]:
                    q = dict(p, conj_id=cid)
                    hit = next((f for f in self.tables[site] if f.table == table and dict(f.match).get("conj_id")
                                == cid and all(_field_matches(v, q.get(k)) for k, v in f.match)), None)
                    # OVS drops such a packet rather than trying lower priorities: the compiler must not let
                    # a conjunction complete for a packet its result flow refuses.
                    assert hit is not None, f"conjunction {cid} complete but its result flow does not match {p}"
                    return hit
        return None

    def _conn(self, p: dict) -> tuple:
        port = next((p[f] for f in PORT_FIELDS if f in p), None)
        return (p["reg6"] & 0xFFFF, p.get("ip_proto"), p.get("ipv4_src"), p.get("sport"), p.get("ipv4_dst"), port)

    def _pipeline(self, site: str, p: dict):
        table = 0
        while True:
            f = self._lookup(site, table, p)
            if f is None:
                return
            nxt = None
            actions = list(f.actions)
            while actions:
                a = actions.pop(0)
                if isinstance(a, ToGroup):  # a select group: one bucket, always the same for one connection
                    group = self.groups[site][a.group_id]
                    bucket = group.buckets[zlib.crc32(repr(self._conn(p)).encode()) % len(group.buckets)]
                    actions = [x for x in bucket.actions if not (isinstance(x, CT) and x.nat)] + actions
                    continue
                if isinstance(a, SetField):
                    p[a.field] = a.value
                elif isinstance(a, Move):
                    p[a.dst] = p.get(a.src)
                elif isinstance(a, Output) and a.port == IN_PORT:
                    out = {k: v for k, v in p.items() if not k.startswith(("reg", "ct_", "conj"))}
                    yield p["in_port"], out
                elif isinstance(a, Output):
                    if a.port != p["in_port"]:
                        out = {k: v for k, v in p.items() if not k.startswith(("reg", "ct_", "conj"))}
                        out["_vni"] = p.get("tunnel_id", 0)
                        yield a.port, out
                elif isinstance(a, Goto):
                    nxt = a.table
                elif isinstance(a, CT):
                    conn = self._conn(p)
                    z, proto, src, sport, dst, dport = conn
                    reverse = (z, proto, dst, dport, src, sport)
                    # NAT (fixed zones) is not modelled: tests/e2e/test_nat.py checks it with real packets.
                    if a.commit:
                        if conn not in self.conntrack[site] and reverse not in self.conntrack[site]:
                            self.conntrack[site].add(conn)
                    if a.table is not None:
                        if a.commit:
                            p["ct_state"] = NEW | TRK  # a connection stays new until its reply is seen
                        elif conn in self.conntrack[site]:
                            p["ct_state"] = EST | TRK
                        elif reverse in self.conntrack[site]:
                            p["ct_state"] = EST | TRK | RPL
                        else:
                            p["ct_state"] = NEW | TRK
                        known = conn in self.conntrack[site] or reverse in self.conntrack[site]
                        p["ct_mark"] = (a.mark or 1) if a.commit or known else 0
                        nxt = a.table
            if nxt is None:
                return
            table = nxt


def frame(src, dst, proto: int | None = 1, port: int | None = None, sport: int = 40000,
          dst_mac: str | None = None) -> dict:
    """An IPv4 packet from endpoint src to endpoint dst (proto 1 icmp, 6 tcp, 17 udp)."""
    pkt = {"eth_src": src.mac, "eth_dst": dst_mac or dst.mac, "eth_type": 0x0800, "ipv4_src": str(src.ip),
           "ipv4_dst": str(dst.ip), "ip_proto": proto}
    if proto in (6, 17):
        pkt[{6: "tcp_dst", 17: "udp_dst"}[proto]] = port
        pkt["sport"] = sport
    return pkt


def arp(src, target_ip: str) -> dict:
    """A broadcast ARP request from src."""
    return {"eth_src": src.mac, "eth_dst": "ff:ff:ff:ff:ff:ff", "eth_type": 0x0806, "arp_spa": str(src.ip),
            "arp_sha": src.mac, "arp_tpa": target_ip}
