"""Traffic inside a running test bed's namespaces: commands, probe servers, probes and iperf3 runs, as the
demo, the tests and the benchmarks use them."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from collections.abc import Iterable

from cloudweave.launch import PYTHON_M
from cloudweave.testbed.state import State

LOAD = (*PYTHON_M, "cloudweave.testbed.load")  # the load generator, run inside a namespace


def ns_argv(workdir: str, name: str, *argv: str) -> list[str]:
    """A command line that runs argv inside the named endpoint's (or site's) network namespace."""
    state = State.load(workdir)
    if state is None:
        raise LookupError(f"no test bed in {workdir}")
    pid = state.namespace_pid(name)
    if pid is None:
        raise LookupError(f"no endpoint or site named '{name}' (endpoints: {', '.join(sorted(state.hosts))})")
    return ["mnexec", "-a", str(pid), *argv]


LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}) ")


def log_times(workdir: str, text: str, after: float = 0.0) -> list[float]:
    """When the test bed's controller logged lines containing `text` (its log's wall clock, to the ms),
    from `after` on."""
    out = []
    with open(os.path.join(workdir, "controller.log"), errors="replace") as fh:
        for line in fh:
            m = LOG_TIME.match(line)
            if m and text in line:
                t = time.mktime(time.strptime(m.group(1), "%Y-%m-%d %H:%M:%S")) + int(m.group(2)) / 1000
                if t >= after:
                    out.append(t)
    return out


def serve_probes(workdir: str, hosts: Iterable[str], tcp: Iterable[int] = (),
                 udp: Iterable[int] = ()) -> list[subprocess.Popen]:
    """Start TCP listeners and UDP echo servers in each host; returns once all are listening."""
    servers = []
    for host in hosts:
        srv = subprocess.Popen(ns_argv(workdir, host, *PYTHON_M, "cloudweave.testbed.probe", "serve",
                                       "--tcp", ",".join(map(str, tcp)), "--udp", ",".join(map(str, udp))),
                               stdout=subprocess.PIPE, text=True)
        servers.append(srv)
        if srv.stdout.readline().strip() != "ready":
            stop(servers)
            raise RuntimeError(f"probe server in {host} did not start")
    return servers


def probe(workdir: str, src: str, targets: list[str], timeout: float = 1.0) -> dict[str, bool]:
    """Run probes (tcp:IP:PORT, udp:IP:PORT, icmp:IP) from src, concurrently; target -> reached."""
    run = subprocess.run(ns_argv(workdir, src, *PYTHON_M, "cloudweave.testbed.probe", "check", "--timeout",
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
    """Terminate, then kill what is left. A `timeout` wrapper passes SIGTERM on to its command; killed, it
    would leave the command running (an hping3 flood outlived its test that way)."""
    processes = list(processes)
    for p in processes:
        if p.poll() is None:
            p.terminate()
    for p in processes:
        try:
            p.wait(5)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


VIP = "10.41.0.100"  # topologies/matrix.yaml's api service, as the security-operations tests add it
API_SERVICE = {"name": "api-vip", "service": {"vip": VIP, "proto": "tcp", "port": 9004, "segment": "shop"},
               "split": {"api1": 50, "api2": 50}}


BENIGN_SOURCES = ("web2", "dev1", "web1", "web3", "lb2", "db2", "lb1", "ops1", "api2", "dev2")


def benign_mix(workdir: str, seconds: int) -> list[subprocess.Popen]:
    """Benign traffic on topologies/matrix.yaml (with API_SERVICE) for `seconds`, from each of BENIGN_SOURCES:
    iperf3 bulk in bursts, many short HTTP-like connections (also to a service VIP), pings (one the policy
    denies), a one-way stream the policy allows, one it denies, and one nobody answers. Returns every process
    it started (servers too), for `stop`."""
    procs = serve_probes(workdir, ["api1", "api2", "web2", "db1"], tcp=[9004, 8080, 5432])
    procs += [subprocess.Popen(ns_argv(workdir, h, "iperf3", "-s", "-p", "9006"), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL) for h in ("api1", "dev2")]
    time.sleep(0.5)

    def repeat(argv: list[str]) -> subprocess.Popen:
        loop = f"end=$((SECONDS+{seconds})); while [ $SECONDS -lt $end ]; do {' '.join(argv)}; sleep 2; done"
        return subprocess.Popen(["bash", "-c", loop], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def load(src: str, *args: str) -> subprocess.Popen:
        return subprocess.Popen(ns_argv(workdir, src, *LOAD, *args), stdout=subprocess.DEVNULL)

    def ping(src: str, interval: float, dst: str) -> subprocess.Popen:
        return subprocess.Popen(ns_argv(workdir, src, "ping", "-q", "-i", str(interval), "-w", str(seconds), dst),
                                stdout=subprocess.DEVNULL)

    n = str(10 * seconds * 300)
    procs += [
        repeat(ns_argv(workdir, "web2", "iperf3", "-c", "10.41.0.21", "-p", "9006", "-t", "8")),  # bulk
        repeat(ns_argv(workdir, "dev1", "iperf3", "-c", "10.41.0.11", "-p", "9006", "-t", "8")),
        load("web1", "tcp", "10.41.0.22", "9004", n, "--rate", "300"),  # short connections
        load("web3", "tcp", VIP, "9004", n, "--rate", "200"),  # a busy service behind its VIP
        load("lb2", "tcp", "10.41.0.12", "8080", n, "--rate", "200"),
        load("db2", "tcp", "10.41.0.31", "5432", n, "--rate", "100"),
        ping("lb1", 0.02, "10.41.0.2"),
        ping("ops1", 0.2, "10.41.0.32"),  # db2 does not take pings: one denied connection, all along
        load("web2", "stamped", "10.41.0.21", "5353", "--pps", "2000", "--seconds", str(seconds), "--sport", "5353"),
        load("api2", "stamped", "10.41.0.12", "5353", "--pps", "500", "--seconds", str(seconds), "--sport", "5353"),
        load("dev2", "stamped", "10.41.0.1", "7001", "--pps", "1000", "--seconds", str(seconds), "--sport", "7001"),
    ]
    return procs
