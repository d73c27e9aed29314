"""Traffic inside a running test bed's namespaces: commands, probe servers, probes and iperf3 runs, as the
demo, the tests and the benchmarks use them."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterable

from cloudweave.testbed.state import State

LOAD = (sys.executable, "-m", "cloudweave.testbed.load")  # the load generator, run inside a namespace


def ns_argv(workdir: str, name: str, *argv: str) -> list[str]:
    """A command line that runs argv inside the named endpoint's (or site's) network namespace."""
    state = State.load(workdir)
    if state is None:
        raise LookupError(f"no test bed in {workdir}")
    pid = state.namespace_pid(name)
    if pid is None:
        raise LookupError(f"no endpoint or site named '{name}' (endpoints: {', '.join(sorted(state.hosts))})")
    return ["mnexec", "-a", str(pid), *argv]


def serve_probes(workdir: str, hosts: Iterable[str], tcp: Iterable[int] = (),
                 udp: Iterable[int] = ()) -> list[subprocess.Popen]:
    """Start TCP listeners and UDP echo servers in each host; returns once all are listening."""
    servers = []
    for host in hosts:
        srv = subprocess.Popen(ns_argv(workdir, host, sys.executable, "-m", "cloudweave.testbed.probe", "serve",
                                       "--tcp", ",".join(map(str, tcp)), "--udp", ",".join(map(str, udp))),
                               stdout=subprocess.PIPE, text=True)
        servers.append(srv)
        if srv.stdout.readline().strip() != "ready":
            stop(servers)
            raise RuntimeError(f"probe server in {host} did not start")
    return servers


def probe(workdir: str, src: str, targets: list[str], timeout: float = 1.0) -> dict[str, bool]:
    """Run probes (tcp:IP:PORT, udp:IP:PORT, icmp:IP) from src, concurrently; target -> reached."""
    run = subprocess.run(ns_argv(workdir, src, sys.executable, "-m", "cloudweave.testbed.probe", "check", "--timeout",
                                 str(timeout), *targets), capture_output=True, text=True, timeout=120)
    if run.returncode != 0:
        raise RuntimeError(f"probe from {src} failed: {run.stderr.strip()}")
    return json.loads(run.stdout)


def iperf(workdir: str, server: str, client: str, server_ip: str, seconds: int = 3, port: int = 5201) -> dict:
    """One iperf3 TCP run from client to server; iperf3's `sum_received` (bytes, bits_per_second)."""
    srv = subprocess.Popen(ns_argv(workdir, server, "iperf3", "-s", "-1", "-p", str(port)), stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    try:
        for _ in range(25):  # until the server listens
            run = subprocess.run(ns_argv(workdir, client, "iperf3", "-J", "-t", str(seconds), "-c", server_ip,
                                         "-p", str(port)),
                                 capture_output=True, text=True, timeout=seconds + 30)
            if run.returncode == 0:
                result = json.loads(run.stdout)
                if "sum_received" in result.get("end", {}):  # iperf3 may report an error in JSON with status 0
                    return result["end"]["sum_received"]
            time.sleep(0.2)
        raise RuntimeError(f"iperf3 from {client} to {server_ip} did not connect")
    finally:
        stop([srv])


def stop(processes: Iterable[subprocess.Popen]) -> None:
    for p in processes:
        p.kill()
        p.wait()
