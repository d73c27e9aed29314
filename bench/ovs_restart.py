"""An OVS restart as an upgrade would do it (issue #12): on topologies/three-clouds.yaml, 10 ms pings from
lab1 (onprem) to lab2 (cloud2) while `cloudweave testbed restart-ovs cloud2` restarts cloud2's ovs-vswitchd,
with and without flow-restore-wait, alternated; prints the pings lost (x 10 ms: the outage) and how long the
old process was gone, per round and as medians.

Run: .venv/bin/python bench/ovs_restart.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import time

from on_testbed import running

from cloudweave.testbed.restart import restart_ovs
from cloudweave.testbed.traffic import ns_argv


def lost_pings(workdir: str, frw: bool) -> tuple[int, int, float]:
    ping = subprocess.Popen(ns_argv(workdir, "lab1", "ping", "-i", "0.01", "-W", "1", "-w", "5", "10.10.0.12"),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    time.sleep(1.0)
    done = restart_ovs(workdir, "cloud2", flow_restore_wait=frw)
    out, _ = ping.communicate(timeout=20)
    m = re.search(r"(\d+) packets transmitted, (\d+) received", out)
    sent, got = int(m.group(1)), int(m.group(2))
    return sent, sent - got, done.down_s


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    results: dict[bool, list[tuple[int, int, float]]] = {True: [], False: []}
    with running("three-clouds") as (workdir, _):
        for r in range(args.rounds):
            for frw in (True, False):
                sent, lost, down = lost_pings(workdir, frw)
                results[frw].append((sent, lost, down))
                print(f"round {r + 1}: {'with' if frw else 'without'} flow-restore-wait: {lost} of {sent} pings lost "
                      f"({lost * 10} ms), ovs-vswitchd down {down * 1000:.0f} ms", flush=True)
                time.sleep(3)  # BFD back up, the controller settled
    for frw in (True, False):
        lost = [x[1] for x in results[frw]]
        down = [x[2] for x in results[frw]]
        print(f"{'with' if frw else 'without'} flow-restore-wait: median {statistics.median(lost) * 10:.0f} ms lost "
              f"(10 ms pings; max {max(lost) * 10} ms), ovs-vswitchd down median "
              f"{statistics.median(down) * 1000:.0f} ms")
    print(f"reproduce: .venv/bin/python bench/ovs_restart.py --rounds {args.rounds}")


if __name__ == "__main__":
    main()
