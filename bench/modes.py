"""The three attachment modes side by side on one site of the test bed (topologies/nat.yaml): iperf3 TCP
throughput and ping round-trip time, alternated in the same run.

- bridge: red1 -> red2, two endpoints of a bridge-mode segment on the same switch (classify, anti-spoofing,
  L2 forwarding; the segment has no policy, so no conntrack);
- nat:    blue1 -> the internet server, through the gateway, conntrack in the segment's zone and source NAT
          in the NAT zone, out of the uplink;
- direct: edge1 -> the internet server, port <-> uplink with anti-spoofing only.

Each path crosses one OVS (userspace datapath) and two veth pairs; NAT and direct also cross the internet
namespace's Linux bridge. The controller keeps running (it owns the flows).

Run: .venv/bin/python bench/modes.py [--rounds 3] [--seconds 3]
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import time

from on_testbed import running

from cloudweave.testbed.build import INTERNET, INTERNET_SERVER
from cloudweave.testbed.traffic import iperf, ns_argv, probe

MODES = {  # mode -> (client, server namespace, server address)
    "bridge": ("red1", "red2", "10.53.0.12"),
    "nat": ("blue1", INTERNET, INTERNET_SERVER),
    "direct": ("edge1", INTERNET, INTERNET_SERVER),
}
RTT = re.compile(r"= [\d.]+/([\d.]+)/")


def rtt_ms(workdir: str, client: str, address: str, count: int) -> float:
    run = subprocess.run(ns_argv(workdir, client, "ping", "-q", "-c", str(count), "-i", "0.02", address),
                         capture_output=True, text=True, timeout=60)
    m = RTT.search(run.stdout)
    if run.returncode != 0 or m is None:
        raise RuntimeError(f"ping {client} -> {address} failed: {run.stdout}{run.stderr}")
    return float(m.group(1))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=int, default=3)
    p.add_argument("--pings", type=int, default=200)
    args = p.parse_args()
    with running("nat") as (workdir, _):
        deadline = time.monotonic() + 30
        while not probe(workdir, "blue1", [f"icmp:{INTERNET_SERVER}"])[f"icmp:{INTERNET_SERVER}"]:
            if time.monotonic() > deadline:
                sys.exit("NAT never reached the internet server (uplink gateway not learned?)")
            time.sleep(0.5)
        gbps: dict[str, list[float]] = {m: [] for m in MODES}
        rtts: dict[str, list[float]] = {m: [] for m in MODES}
        for _ in range(args.rounds):
            for mode, (client, server, address) in MODES.items():
                gbps[mode].append(iperf(workdir, server, client, address, args.seconds)["bits_per_second"] / 1e9)
                rtts[mode].append(rtt_ms(workdir, client, address, args.pings))
        base_g, base_r = statistics.median(gbps["bridge"]), statistics.median(rtts["bridge"])
        print(f"attachment modes, one site, iperf3 TCP one stream ({args.seconds} s) and ping RTT "
              f"({args.pings} pings), medians of {args.rounds} alternated rounds")
        print(f"  {'mode':<8} {'Gbit/s':>7} {'vs bridge':>9} {'RTT ms':>7} {'vs bridge':>9}   rounds (Gbit/s)")
        for mode in MODES:
            g, r = statistics.median(gbps[mode]), statistics.median(rtts[mode])
            print(f"  {mode:<8} {g:7.2f} {g / base_g:9.2f} {r:7.3f} {r / base_r:9.2f}   "
                  f"{', '.join(f'{x:.2f}' for x in gbps[mode])}")
        print(f"reproduce: .venv/bin/python bench/modes.py --rounds {args.rounds} --seconds {args.seconds} "
              f"--pings {args.pings}")


if __name__ == "__main__":
    main()
