"""A tiny interpreter of compiled flows across sites, to check delivery and loop-freedom exhaustively.

It knows only what the overlay uses: exact matches, set_field, output, goto. The real pipeline is checked
against OVS elsewhere (tests/ovs, tests/e2e); this checks the compiler's logic on every pair, in milliseconds.
"""

from __future__ import annotations

from flows.topology import TUNNEL_PREFIX
from flows.values import Goto, Output, SetField


class Fabric:
    def __init__(self, model, states):
        self.model = model
        self.states = states
        self.tunnel_to = {}  # (site, tunnel port name) -> peer site
        for site, st in states.items():
            for t in st.tunnels:
                self.tunnel_to[(site, t.name)] = t.peer
        self.tables = {site: sorted(st.flows, key=lambda f: -f.priority) for site, st in states.items()}

    def port_to(self, site: str, peer: str) -> str:
        return next(t.name for t in self.states[site].tunnels if t.peer == peer)

    def send(self, site: str, in_port: str, pkt: dict, max_hops: int = 64) -> list[tuple[str, str]]:
        """Inject a packet; return every (site, port) it leaves on toward an endpoint. Raises on a loop."""
        delivered: list[tuple[str, str]] = []
        queue = [(site, in_port, dict(pkt), 0)]
        while queue:
            s, port, p, hops = queue.pop()
            if hops > max_hops:
                raise AssertionError(f"loop: packet still travelling after {max_hops} hops")
            p = dict(p, in_port=port, reg6=p.get("reg6", 0) if port.startswith(TUNNEL_PREFIX) else 0, reg7=0)
            if not port.startswith(TUNNEL_PREFIX):
                p.pop("tunnel_id", None)
            for out_port, out_pkt in self._pipeline(s, p):
                if out_port.startswith(TUNNEL_PREFIX):
                    peer = self.tunnel_to[(s, out_port)]
                    clean = {k: v for k, v in out_pkt.items() if not k.startswith("reg")}
                    queue.append((peer, self.port_to(peer, s), clean, hops + 1))
                else:
                    delivered.append((s, out_port))
        return delivered

    def _pipeline(self, site: str, p: dict):
        table = 0
        while True:
            f = next((f for f in self.tables[site] if f.table == table and
                      all(p.get(k) == v for k, v in f.match)), None)
            if f is None:
                return
            nxt = None
            for a in f.actions:
                if isinstance(a, SetField):
                    p[a.field] = a.value
                elif isinstance(a, Output):
                    if a.port != p["in_port"]:
                        yield a.port, dict(p)
                elif isinstance(a, Goto):
                    nxt = a.table
            if nxt is None:
                return
            table = nxt


def frame(src, dst_mac: str) -> dict:
    """An IPv4 frame from endpoint src."""
    return {"eth_src": src.mac, "eth_dst": dst_mac, "eth_type": 0x0800, "ipv4_src": str(src.ip)}
