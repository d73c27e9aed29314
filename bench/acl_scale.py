"""Flow count and compile time of group-to-group rules with conjunction, beside the cross product.

Group `clients` (N endpoints on site a) may reach group `servers` (N endpoints on site b) on tcp/5432 and
8000-8099: an egress rule of clients and an ingress rule of servers. Without conjunction each direction
needs N x N x (port pieces) flows at the source's site.

Run: .venv/bin/python bench/acl_scale.py [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from ipaddress import IPv4Address, IPv4Network

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cloudweave.config.model import Endpoint, Link, Model, PortRange, Rule, SecurityGroup, Segment  # noqa: E402
from cloudweave.flows.compile import compile_model  # noqa: E402
from cloudweave.flows.tables import ACL_EGRESS, ACL_INGRESS  # noqa: E402
from testkit.generate import site  # noqa: E402

PORTS = (PortRange(5432, 5432), PortRange(8000, 8099))


def model(n: int) -> Model:
    seg = Segment(name="g", vni=7000, subnet=IPv4Network("10.0.0.0/16"))
    eps = []
    for i in range(2 * n):
        group, where = ("clients", "s0") if i < n else ("servers", "s1")
        eps.append(Endpoint(name=f"e{i}", site=where, port=f"p{i}", segment="g",
                            mac="02:" + ":".join(f"{(i >> s) & 0xFF:02x}" for s in (32, 24, 16, 8, 0)),
                            ip=IPv4Address(int(IPv4Address("10.0.0.1")) + i), groups=(group,)))
    rules = (
        SecurityGroup("clients", (Rule("clients", "egress", 0, "servers", None, 6, PORTS),)),
        SecurityGroup("servers", (Rule("servers", "ingress", 0, "clients", None, 6, PORTS),)),
    )
    return Model(sites=(site(0), site(1)), links=(Link(("s0", "s1"), 1000.0),), segments=(seg,),
                 endpoints=tuple(eps), security_groups=rules)


def run(n: int) -> dict:
    m = model(n)
    started = time.perf_counter()
    states = compile_model(m)
    elapsed = time.perf_counter() - started
    acl = sum(1 for f in states["s0"].flows if f.table in (ACL_EGRESS, ACL_INGRESS))
    pieces = sum(len(p.pieces()) for p in PORTS)
    return {"pairs": f"{n} x {n}", "acl_flows_source_site": acl, "cross_product_flows": 2 * n * n * pieces,
            "all_flows_both_sites": sum(len(s.flows) for s in states.values()), "compile_s": round(elapsed, 3)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    rows = [run(n) for n in (100, 1000)]
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print(f"{'pairs':>12} {'ACL flows (source site)':>24} {'cross product':>14} {'all flows':>10} {'compile s':>10}")
    for r in rows:
        print(f"{r['pairs']:>12} {r['acl_flows_source_site']:>24} {r['cross_product_flows']:>14} "
              f"{r['all_flows_both_sites']:>10} {r['compile_s']:>10}")
    print("reproduce: .venv/bin/python bench/acl_scale.py")


if __name__ == "__main__":
    main()
