"""What OVS really does with select-group weights: the split it realises, for TCP and for UDP, against the
split asked for, with cloudweave's weight encoding (flows/weights.py) and without it (weights = the shares,
as a naive controller would write them).

On topologies/routes.yaml (onprem -> cloud1, direct or via cloud2) each target split is written into the file,
the controller regroups, and N new flows of the class are started from onprem's client (TCP: one SYN each;
UDP: one datagram each from its own source port); the realised split is read from the group's bucket
counters. Sampling noise for N flows is sqrt(p(1-p)/N): 0.42 points for 70/30 at N = 12,000.

Run: .venv/bin/python bench/group_split.py [--flows 12000]
"""

from __future__ import annotations

import argparse
import re
import subprocess
import time

from on_testbed import edit_live, running

from cloudweave.flows.routing import route_group_id
from cloudweave.flows.weights import shares, weights_for
from cloudweave.testbed.state import State
from cloudweave.testbed.traffic import LOAD, ns_argv

TARGETS = [(70, 30), (50, 50), (90, 10), (97, 3)]
CLASSES = {"tcp": ("bulk-tcp", "7000-7999"), "udp": ("bulk-udp", "6000-6999")}


def buckets(workdir: str, route: str) -> dict[int, int]:
    mgmt = f"unix:{State.load(workdir).sites['onprem']['rundir']}/br-int.mgmt"
    out = subprocess.run(["ovs-ofctl", "-O", "OpenFlow15", "dump-group-stats", mgmt,
                          f"group_id={route_group_id(route, 'onprem', 'cloud1')}"], capture_output=True, text=True,
                         check=True).stdout
    return {int(b): int(n) for b, n in re.findall(r"bucket(\d+):packet_count=(\d+)", out)}


def set_split(workdir: str, route: str, split: dict) -> None:
    edit_live(workdir, lambda doc: next(r for r in doc["routes"] if r["name"] == route).update(split=split))


def realised(workdir: str, proto: str, flows: int, sport: int) -> float:
    route, ports = CLASSES[proto]
    before = buckets(workdir, route)
    subprocess.run(ns_argv(workdir, "client", *LOAD, proto, "10.61.0.21", ports,
                           str(flows), "--sport", str(sport)), check=True, capture_output=True)
    time.sleep(1.5)  # userspace flow statistics lag
    after = buckets(workdir, route)
    delta = {b: after.get(b, 0) - before.get(b, 0) for b in after}
    return delta.get(0, 0) / max(1, sum(delta.values()))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--flows", type=int, default=12000)
    args = p.parse_args()
    with running("routes") as (workdir, _):
        time.sleep(4)  # BFD up: buckets live
        print(f"realised share of the direct path, {args.flows} new flows per cell (noise ~0.4 points)")
        print(f"  {'target':>7} {'naive weights':>14} {'cloudweave weights':>19} {'tcp':>7} {'udp':>7}  error tcp/udp")
        # UDP flows take fresh source ports in every cell: a 5-tuple seen before is pinned to its old path.
        sport = 10000
        for direct, detour in TARGETS:
            w = weights_for([direct, detour])
            naive = shares([direct, detour])[0]  # what writing the shares as weights would give (exact formula)
            got = {}
            for proto in ("tcp", "udp"):
                set_split(workdir, CLASSES[proto][0], {"direct": direct, "via cloud2": detour})
                got[proto] = realised(workdir, proto, args.flows, sport)
            sport += args.flows
            want = direct / (direct + detour)
            print(f"  {want:7.1%} {naive:14.1%} {str(w):>19} {got['tcp']:7.1%} {got['udp']:7.1%}  "
                  f"{100 * (got['tcp'] - want):+.2f} / {100 * (got['udp'] - want):+.2f} points")
        print(f"reproduce: .venv/bin/python bench/group_split.py --flows {args.flows}")


if __name__ == "__main__":
    main()
