"""`cloudweave demo`: the three-site test bed up, pings and iperf3 across sites, a report, and down again."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import time

from cloudweave.config import load_model
from testbed.cli import down, exec_in, up
from testbed.state import State

DEFAULT_TOPOLOGY = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                                "topologies", "three-clouds.yaml")


def _ping(workdir: str, src: str, ip: str) -> float | None:
    """Average round-trip time in ms, or None when no reply came back."""
    run = exec_in(workdir, src, ["ping", "-c", "3", "-i", "0.2", "-W", "2", ip], capture_output=True, text=True)
    if run.returncode != 0:
        return None
    stats = run.stdout.strip().splitlines()[-1]  # rtt min/avg/max/mdev = a/b/c/d ms
    return float(stats.split("=")[1].split("/")[1])


def _iperf(workdir: str, server: str, client: str, ip: str, seconds: int = 3) -> dict:
    pid = State.load(workdir).hosts[server]
    srv = subprocess.Popen(["mnexec", "-a", str(pid), "iperf3", "-s", "-1"], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    try:
        for _ in range(25):
            run = exec_in(workdir, client, ["iperf3", "-J", "-t", str(seconds), "-c", ip], capture_output=True,
                          text=True)
            if run.returncode == 0:
                return json.loads(run.stdout)["end"]["sum_received"]
            time.sleep(0.2)
        raise RuntimeError(f"iperf3 from {client} to {ip} did not connect")
    finally:
        srv.kill()
        srv.wait()


def demo(topology: str | None, workdir: str) -> int:
    topology = topology or DEFAULT_TOPOLOGY
    model = load_model(topology)[0]
    print(f"== cloudweave demo: {topology}")
    started = time.monotonic()
    if up(topology, workdir) != 0:
        return 1
    print(f"   up in {time.monotonic() - started:.1f} s")
    failures = 0
    try:
        by_name = {e.name: e for e in model.endpoints}
        print("\n== reachability within segments (ping, 3 packets; avg RTT)")
        for a, b in itertools.permutations(model.endpoints, 2):
            if a.segment != b.segment:
                continue
            rtt = _ping(workdir, a.name, str(b.ip))
            ok = rtt is not None
            failures += not ok
            where = f"{a.site} -> {b.site}"
            print(f"   {a.segment:<6} {a.name:>6} -> {b.name:<6} {where:<18} "
                  f"{'ok ' + format(rtt, '.2f') + ' ms' if ok else 'FAILED'}")
        print("\n== isolation between segments (must not answer)")
        for a, b in itertools.permutations(model.endpoints, 2):
            if a.segment == b.segment or model.segment(a.segment).subnet != model.segment(b.segment).subnet:
                continue
            same_ip = [e for e in model.endpoints if e.segment == a.segment and e.ip == b.ip]
            if same_ip:
                continue  # that address answers from a's own segment, as it should
            rtt = _ping(workdir, a.name, str(b.ip))
            failures += rtt is not None
            print(f"   {a.name} ({a.segment}) -> {b.name} ({b.segment}, {b.ip}): "
                  f"{'isolated' if rtt is None else 'LEAK'}")
        pairs = [(a, b) for a, b in itertools.combinations(model.endpoints, 2)
                 if a.segment == b.segment and a.site != b.site]
        if pairs:
            a, b = pairs[0]
            link = next((lk for lk in model.links if set(lk.sites) == {a.site, b.site}), None)
            print(f"\n== TCP across a tunnel (iperf3, 3 s): {a.name}@{a.site} -> {b.name}@{b.site}")
            got = _iperf(workdir, b.name, a.name, str(by_name[b.name].ip))
            cap = f", link capacity {link.capacity_mbps:.0f} Mbit/s" if link else ""
            print(f"   {got['bits_per_second'] / 1e6:.1f} Mbit/s received, {got['bytes'] / 1e6:.1f} MB{cap}")
        print(f"\n== result: {'all checks passed' if not failures else f'{failures} check(s) FAILED'}")
    finally:
        down(workdir)
    return 1 if failures else 0
