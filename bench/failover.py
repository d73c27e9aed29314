"""Failover time of weighted routing: on topologies/routes.yaml, ping from onprem's client to cloud1's server
every 5 ms (ping -D timestamps) while the onprem-cloud1 underlay link is cut (its veth set down) and, two
seconds later, restored; repeated. The failover time of a cut is from the first lost packet to the first
packet answered again (the gap in answered timestamps less one interval); the same for the restore. Tunnel
BFD runs at 100 ms (3 missed: ~300 ms to notice); buckets watching the tunnel stop at once, and the
controller then recompiles around the dead link.

Then throughput through the select group beside the plain path, same run, alternated: iperf3 to port 7001
(bulk-tcp's class, its split made `direct: 1`, so both take the direct link: the difference is the group and
the connection pinning) and to port 5201 (no route: plain shortest path). Links at 10 Gbit/s here, so that
shaping does not cap.

Run: .venv/bin/python bench/failover.py [--cuts 5] [--rounds 3]
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import time

from on_testbed import running

from cloudweave.testbed.build import underlay_port
from cloudweave.testbed.state import State
from cloudweave.testbed.traffic import iperf, ns_argv

INTERVAL_S = 0.005
STAMP = re.compile(r"^\[(\d+\.\d+)\].*icmp_seq=(\d+)", re.M)


def log(workdir: str) -> str:
    return open(State.load(workdir).controller["log"]).read()


def wait_log(workdir: str, text: str, count: int, timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while log(workdir).count(text) < count:
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for '{text}' in the controller log")
        time.sleep(0.05)


def gap_after(out: str, event: float, within_s: float = 2.0) -> float:
    """The longest silence (seconds, less one interval) between answers in ping -D output that ends after
    `event` (wall clock) and starts no later than `within_s` after it: the loss that event caused."""
    stamps = [float(t) for t, _ in STAMP.findall(out)]
    holes = [b - a - INTERVAL_S for a, b in zip(stamps, stamps[1:], strict=False) if b > event and a < event + within_s]
    return max(holes, default=0.0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cuts", type=int, default=5)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=int, default=3)
    args = p.parse_args()

    def fast_links(doc: dict) -> None:
        for link in doc["links"]:
            link["capacity"] = "10Gbit"
        next(r for r in doc["routes"] if r["name"] == "bulk-tcp")["split"] = {"direct": 1}

    with running("routes", fast_links) as (workdir, _):
        time.sleep(4)  # BFD up on every tunnel
        cut_s, heal_s = [], []
        port = underlay_port("cloud1")
        for i in range(args.cuts):
            ping = subprocess.Popen(ns_argv(workdir, "client", "ping", "-D", "-n", "-i", str(INTERVAL_S), "-w", "6",
                                            "10.61.0.21"), stdout=subprocess.PIPE, text=True)
            time.sleep(1)
            t_cut = time.time()
            subprocess.run(ns_argv(workdir, "onprem", "ip", "link", "set", port, "down"), check=True)
            wait_log(workdir, "link cloud1-onprem is down", i + 1)
            time.sleep(1.5)
            t_heal = time.time()
            subprocess.run(ns_argv(workdir, "onprem", "ip", "link", "set", port, "up"), check=True)
            wait_log(workdir, "link cloud1-onprem is up again", i + 1)
            out, _ = ping.communicate(timeout=30)
            cut_s.append(gap_after(out, t_cut, within_s=t_heal - t_cut - 0.2))
            heal_s.append(gap_after(out, t_heal))
            time.sleep(1)
        print(f"failover, {args.cuts} cuts of onprem-cloud1 (ping every {INTERVAL_S * 1000:.0f} ms, client -> server)")
        print(f"  cut:     median {statistics.median(cut_s) * 1000:.0f} ms, worst {max(cut_s) * 1000:.0f} ms  "
              f"({', '.join(f'{x * 1000:.0f}' for x in cut_s)})")
        print(f"  restore: median {statistics.median(heal_s) * 1000:.0f} ms, worst {max(heal_s) * 1000:.0f} ms  "
              f"({', '.join(f'{x * 1000:.0f}' for x in heal_s)})")
        routed, plain = [], []
        for _ in range(args.rounds):
            routed.append(iperf(workdir, "server", "client", "10.61.0.21", args.seconds, port=7001)["bits_per_second"])
            plain.append(iperf(workdir, "server", "client", "10.61.0.21", args.seconds)["bits_per_second"])
        r, q = statistics.median(routed) / 1e9, statistics.median(plain) / 1e9
        print(f"throughput, iperf3 one TCP stream onprem -> cloud1, medians of {args.rounds} alternated rounds")
        rows_by_label = (("routed class (select group + pinning)", r, routed), ("plain shortest path", q, plain))
        for label, med, rows in rows_by_label:
            print(f"  {label:<38} {med:.2f} Gbit/s  ({', '.join(f'{x / 1e9:.2f}' for x in rows)})")
        print(f"  ratio routed / plain: {r / q:.2f}")
        print(f"reproduce: .venv/bin/python bench/failover.py --cuts {args.cuts} --rounds {args.rounds} "
              f"--seconds {args.seconds}")


if __name__ == "__main__":
    main()
