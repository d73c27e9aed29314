"""`cloudweave demo`: the three-site test bed up; pings, TCP probes and iperf3 across sites, each compared with
the policy's own answer (`cloudweave explain`); a report; and down again."""

from __future__ import annotations

import itertools
import os
import re
import subprocess
import time

from cloudweave.config import load_model
from cloudweave.flows.policy import Policy
from cloudweave.flows.services import service_group_id
from cloudweave.launch import PYTHON_M
from cloudweave.testbed.cli import down, exec_in, up
from cloudweave.testbed.state import State
from cloudweave.testbed.traffic import iperf, probe, serve_probes, stop

DEFAULT_TOPOLOGY = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                                "topologies", "three-clouds.yaml")


def _ping(workdir: str, src: str, ip: str) -> float | None:
    """Average round-trip time in ms, or None when no reply came back."""
    run = exec_in(workdir, src, ["ping", "-c", "3", "-i", "0.2", "-W", "2", ip], capture_output=True, text=True)
    if run.returncode != 0:
        return None
    stats = run.stdout.strip().splitlines()[-1]  # rtt min/avg/max/mdev = a/b/c/d ms
    return float(stats.split("=")[1].split("/")[1])


def _service_split(workdir: str, model, policy: Policy, connections: int = 300) -> int:
    """Connections to the first service VIP from a client its policy lets through; the realised split, read
    from the client site's group counters. Returns the number of failed checks."""
    route = next((r for r in model.routes if r.service is not None), None)
    if route is None:
        return 0
    svc = route.service
    eps = {e.name: e for e in model.endpoints}
    backends = [eps[name] for name, _ in route.backends]
    client = next((e for e in model.endpoints if e.segment == svc.segment and e not in backends
                   and all(policy.decide(e, b, svc.proto, svc.port).allowed for b in backends)), None)
    if client is None:
        return 0
    total = sum(w for _, w in route.backends)
    print(f"\n== service {route.name}: {svc.vip}:{svc.port}, {connections} connections from {client.name}@"
          f"{client.site}; wanted " + ", ".join(f"{n} {w / total:.0%}" for n, w in route.backends))
    state = State.load(workdir)
    mgmt = f"unix:{state.sites[client.site]['rundir']}/br-int.mgmt"
    gid = service_group_id(route.name, client.site)

    def counts() -> list[int]:
        out = subprocess.run(["ovs-ofctl", "-O", "OpenFlow15", "dump-group-stats", mgmt, f"group_id={gid}"],
                             capture_output=True, text=True).stdout
        return [int(n) for n in re.findall(r"bucket\d+:packet_count=(\d+)", out)]

    before = counts()
    run = exec_in(workdir, client.name, [*PYTHON_M, "cloudweave.testbed.load", "tcp", str(svc.vip),
                                         f"{svc.port}-{svc.port}", str(connections)], capture_output=True, text=True)
    time.sleep(1.5)  # userspace flow statistics lag
    after = counts()
    sent, accepted = (int(x) for x in run.stdout.split()) if run.returncode == 0 else (connections, 0)
    got = [a - b for a, b in zip(after, before or [0] * len(after), strict=False)]
    share = ", ".join(f"{b.name} {n / max(1, sum(got)):.0%}" for b, n in zip(backends, got, strict=False))
    print(f"   {accepted} of {sent} connections answered (from the VIP); realised: {share}")
    return int(accepted != sent)


def demo(topology: str | None, workdir: str) -> int:
    topology = topology or DEFAULT_TOPOLOGY
    model = load_model(topology)[0]
    policy = Policy(model)
    print(f"== cloudweave demo: {topology}")
    started = time.monotonic()
    if up(topology, workdir) != 0:
        return 1
    print(f"   up in {time.monotonic() - started:.1f} s")
    failures = 0
    servers: list[subprocess.Popen] = []
    try:
        tcp_ports = sorted({p.lo for g in model.security_groups for r in g.rules for p in r.ports
                            if r.proto == 6} | {22}) or [80]
        servers = serve_probes(workdir, (e.name for e in model.endpoints), tcp=tcp_ports)
        print(f"\n== every ordered pair in a segment: ping, and TCP to ports {', '.join(map(str, tcp_ports))}")
        print("   observed against `cloudweave explain` (the policy's own answer); '.' agrees, '!' does not")
        for a in model.endpoints:
            peers = [b for b in model.endpoints if b.segment == a.segment and b is not a]
            if not peers:
                continue
            targets = {(b.name, 1, None): f"icmp:{b.ip}" for b in peers}
            targets.update({(b.name, 6, p): f"tcp:{b.ip}:{p}" for b in peers for p in tcp_ports})
            got = probe(workdir, a.name, list(targets.values()))
            opened = []
            marks = ""
            for (b, proto, port), t in targets.items():
                want = policy.decide(a, next(e for e in peers if e.name == b), proto, port).allowed
                marks += "." if got[t] == want else "!"
                failures += got[t] != want
                if got[t]:
                    opened.append(f"{b}:{'icmp' if proto == 1 else port}")
            print(f"   {a.segment:<5} {a.name:>5}@{a.site:<7} {marks}  reaches: {', '.join(opened) or 'nothing'}")
        print("\n== isolation between segments with the same addresses (must not answer)")
        for a, b in itertools.permutations(model.endpoints, 2):
            if a.segment == b.segment or model.segment(a.segment).subnet != model.segment(b.segment).subnet:
                continue
            if any(e.segment == a.segment and e.ip == b.ip for e in model.endpoints):
                continue  # that address answers from a's own segment, as it should
            rtt = _ping(workdir, a.name, str(b.ip))
            failures += rtt is not None
            print(f"   {a.name} ({a.segment}) -> {b.name} ({b.segment}, {b.ip}): "
                  f"{'isolated' if rtt is None else 'LEAK'}")
        pairs = [(a, b) for a, b in itertools.combinations(model.endpoints, 2)
                 if a.segment == b.segment and a.site != b.site and policy.decide(a, b, 6, 5201).allowed]
        if pairs:
            a, b = pairs[0]
            link = next((lk for lk in model.links if set(lk.sites) == {a.site, b.site}), None)
            print(f"\n== TCP across a tunnel (iperf3, 3 s): {a.name}@{a.site} -> {b.name}@{b.site}")
            got = iperf(workdir, b.name, a.name, str(b.ip))
            cap = f", link capacity {link.capacity_mbps:.0f} Mbit/s" if link else ""
            print(f"   {got['bits_per_second'] / 1e6:.1f} Mbit/s received, {got['bytes'] / 1e6:.1f} MB{cap}")
        failures += _service_split(workdir, model, policy)
        print(f"\n== result: {'all checks agree with the policy' if not failures else f'{failures} check(s) FAILED'}")
    finally:
        stop(servers)
        down(workdir)
    return 1 if failures else 0
