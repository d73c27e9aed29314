"""Weighted routing on the test bed with real packets (topologies/routes.yaml): a TCP and a UDP class split
over two paths within 2 points of the weights, measured from the select group's bucket counters; a weight
change moves new connections and not existing ones; a service VIP spreads connections over backends in two
clouds, answers from the VIP and keeps a connection on its backend; failover when an underlay link is cut;
a bad routing file changes nothing."""

import os
import re
import signal
import subprocess
import sys
import time

import pytest
import yaml

from cloudweave.flows.routing import route_group_id
from cloudweave.testbed.build import underlay_port
from cloudweave.testbed.cli import down
from cloudweave.testbed.state import State
from cloudweave.testbed.traffic import LOAD, ns_argv, serve_probes, stop
from testkit.harness import appctl, wait_for
from tests.e2e.test_testbed import STATS_SETTLE_S, bring_up

pytestmark = pytest.mark.testbed
SERVER, VIP = "10.61.0.21", "10.61.0.100"
TOLERANCE = 0.02
FLOWS = 6000  # connections per measurement: the sampling noise of a 70/30 share is 0.6 points
HELD_PORT = 7002  # in bulk-tcp's class; its server keeps connections open
HOLD = """
import socket, sys, time
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
s.recv(64)  # the server's greeting: read now, so that each round trip below gets its own answer alone
print(s.getsockname()[1], s.getpeername()[0], flush=True)
for line in sys.stdin:  # one line in -> one round trip on the same connection
    s.sendall(b"x"); print(s.recv(64).decode() or "closed", flush=True)
"""
NAMED_SERVER = """
import socket, sys, threading
srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("0.0.0.0", int(sys.argv[2]))); srv.listen(512); print("ready", flush=True)
def serve(c):
    c.sendall(sys.argv[1].encode())
    while c.recv(64): c.sendall(sys.argv[1].encode())
    c.close()
while True:
    c, _ = srv.accept(); threading.Thread(target=serve, args=(c,), daemon=True).start()
"""
MANY = """
import socket, sys, collections
seen = collections.Counter(); peers = set()
for _ in range(int(sys.argv[3])):
    with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5) as s:
        seen[s.recv(64).decode()] += 1; peers.add(s.getpeername()[0])
print(dict(seen), sorted(peers))
"""


def start(workdir: str, host: str, *argv: str) -> subprocess.Popen:
    p = subprocess.Popen(ns_argv(workdir, host, sys.executable, *argv), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         text=True)
    return p


@pytest.fixture(scope="module")
def routes(tmp_path_factory):
    workdir, model = bring_up(tmp_path_factory, "routes")
    procs = []
    try:
        procs = serve_probes(workdir, ["server"], [7000], [6000])
        for name, port in (("web1", "80"), ("web2", "80"), ("server", str(HELD_PORT))):
            p = start(workdir, name, "-c", NAMED_SERVER, name, port)
            assert p.stdout.readline().strip() == "ready"
            procs.append(p)
        # A bucket is used once its tunnel port is live (BFD up): both tunnels of every site.
        wait_for(lambda: all(live_tunnels(workdir, s.name) == 2 for s in model.sites), timeout_s=30,
                 what="live tunnels")
        yield workdir, model
    finally:
        stop(procs)
        down(workdir)



def live_tunnels(workdir: str, site: str) -> int:
    out = subprocess.run(["ovs-ofctl", "-O", "OpenFlow15", "dump-ports-desc", mgmt(workdir, site)],
                         capture_output=True, text=True, check=True).stdout
    return len(re.findall(r"\(vx-[^)]*\):[^\n]*\n[^\n]*\n\s*state:\s*LIVE", out))


def tail_log(workdir: str) -> str:
    return open(State.load(workdir).controller["log"]).read()[-4000:]


def mgmt(workdir: str, site: str) -> str:
    return f"unix:{State.load(workdir).sites[site]['rundir']}/br-int.mgmt"


def buckets(workdir: str, route: str) -> dict[int, int]:
    """Packets each bucket of the route's group at onprem has sent (bucket id -> packets)."""
    out = subprocess.run(["ovs-ofctl", "-O", "OpenFlow15", "dump-group-stats", mgmt(workdir, "onprem"),
                          f"group_id={route_group_id(route, 'onprem', 'cloud1')}"], capture_output=True, text=True,
                         check=True).stdout
    return {int(b): int(n) for b, n in re.findall(r"bucket(\d+):packet_count=(\d+)", out)}


def load(workdir: str, proto: str, ports: str, count: int, sport: int = 20000) -> tuple[int, int]:
    run = subprocess.run(ns_argv(workdir, "client", *LOAD, proto, SERVER, ports,
                                 str(count), "--sport", str(sport)), capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    sent, accepted = run.stdout.split()
    return int(sent), int(accepted)


def measured_split(workdir: str, route: str, proto: str, ports: str, sport: int = 20000) -> dict[int, float]:
    before = buckets(workdir, route)
    load(workdir, proto, ports, FLOWS, sport)
    time.sleep(STATS_SETTLE_S)
    after = buckets(workdir, route)
    delta = {b: after[b] - before.get(b, 0) for b in after}
    total = sum(delta.values())
    assert total >= FLOWS * 0.98, (delta, FLOWS)  # one first packet per connection went through the group
    return {b: n / total for b, n in delta.items()}


def reloads_done(workdir: str) -> int:
    """Reloads the controller has finished, applied or rejected (each logs exactly one of these lines)."""
    log = open(State.load(workdir).controller["log"]).read()
    return log.count("reload applied in") + log.count("reload rejected")


def rewrite_routes(workdir: str, edit) -> None:
    """Edit the routes in the file and wait until the controller has taken the edit (or refused it), so that
    the next step, or the next test after a restore, starts from it."""
    path = State.load(workdir).topology
    doc = yaml.safe_load(open(path))
    edit(doc["routes"])
    with open(path + ".tmp", "w") as fh:
        yaml.safe_dump(doc, fh, sort_keys=False)
    done = reloads_done(workdir)
    os.replace(path + ".tmp", path)
    wait_for(lambda: reloads_done(workdir) > done, timeout_s=20, what="the controller to take the edited routes")


def route(doc_routes: list, name: str) -> dict:
    return next(r for r in doc_routes if r["name"] == name)


def test_tcp_class_splits_as_weighted_and_every_connection_arrives(routes):
    workdir, _ = routes
    got = measured_split(workdir, "bulk-tcp", "tcp", "7000-7999")
    assert abs(got[0] - 0.70) <= TOLERANCE and abs(got[1] - 0.30) <= TOLERANCE, got
    sent, accepted = load(workdir, "tcp", "7000-7000", 300)  # a listener: both paths deliver
    assert accepted == sent == 300


def test_udp_class_splits_as_weighted(routes):
    workdir, _ = routes
    got = measured_split(workdir, "bulk-udp", "udp", "6000-6999", sport=20000)
    assert abs(got[0] - 0.60) <= TOLERANCE and abs(got[1] - 0.40) <= TOLERANCE, got


def test_weight_change_moves_new_connections_and_keeps_existing_ones(routes):
    workdir, model = routes
    held = start(workdir, "client", "-c", HOLD, SERVER, str(HELD_PORT))
    try:
        sport = int(held.stdout.readline().split()[0])
        held.stdin.write("\n")
        held.stdin.flush()
        assert held.stdout.readline().strip()  # the connection works
        mark_before = conn_mark(workdir, sport)
        rewrite_routes(workdir, lambda rs: route(rs, "bulk-tcp").update(split={"direct": 20, "via cloud2": 80}))
        wait_for(lambda: "route bulk-tcp onprem->cloud1: onprem -> cloud1 20%" in tail_log(workdir), timeout_s=20,
                 what="the new weights in a group")
        got = measured_split(workdir, "bulk-tcp", "tcp", "7000-7999")
        assert abs(got[0] - 0.20) <= TOLERANCE and abs(got[1] - 0.80) <= TOLERANCE, got
        held.stdin.write("\n")
        held.stdin.flush()
        assert held.stdout.readline().strip() == "server"
        assert conn_mark(workdir, sport) == mark_before  # the same path as before the change
    finally:
        held.kill()
        rewrite_routes(workdir, lambda rs: route(rs, "bulk-tcp").update(split={"direct": 70, "via cloud2": 30}))


def conn_mark(workdir: str, sport: int) -> int:
    """The ct_mark of the client's connection from `sport` in onprem's conntrack (its path in bits 8..15)."""
    out = appctl(workdir, "onprem", "dpctl/dump-conntrack", "zone=6101")
    line = next(ln for ln in out.splitlines() if f"sport={sport}," in ln and f"dport={HELD_PORT}" in ln)
    mark = int(re.search(r"mark=(\d+)", line).group(1))
    assert mark >> 8 in (1, 2), line
    return mark


def test_service_split_spreads_connections_and_answers_from_the_vip(routes):
    workdir, _ = routes
    run = subprocess.run(ns_argv(workdir, "client", sys.executable, "-c", MANY, VIP, "80", "3000"),
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    counts_text, peers_text = run.stdout.rsplit("}", 1)
    counts = eval(counts_text + "}")  # noqa: S307 - our own script's dict literal
    assert peers_text.strip() == f"['{VIP}']"  # every reply came from the VIP
    share = counts["web1"] / sum(counts.values())
    assert abs(share - 0.70) <= 0.03, counts


def test_service_connection_survives_a_weight_change(routes):
    workdir, _ = routes
    held = start(workdir, "client", "-c", HOLD, VIP, "80")
    try:
        _, peer = held.stdout.readline().split()
        assert peer == VIP
        held.stdin.write("\n")
        held.stdin.flush()
        backend = held.stdout.readline().strip()
        assert backend in ("web1", "web2")
        rewrite_routes(workdir, lambda rs: route(rs, "web").update(split={"web1": 5, "web2": 95}))
        wait_for(lambda: "service web at onprem: web1 5%" in tail_log(workdir), timeout_s=20, what="new weights")
        for _ in range(3):
            held.stdin.write("\n")
            held.stdin.flush()
            assert held.stdout.readline().strip() == backend  # still the same backend
    finally:
        held.kill()
        rewrite_routes(workdir, lambda rs: route(rs, "web").update(split={"web1": 70, "web2": 30}))


def test_bad_routing_file_keeps_the_running_routes(routes):
    workdir, _ = routes
    before = buckets(workdir, "bulk-tcp")
    groups_before = subprocess.run(["ovs-ofctl", "-O", "OpenFlow15", "dump-groups", mgmt(workdir, "onprem")],
                                   capture_output=True, text=True, check=True).stdout
    rewrite_routes(workdir, lambda rs: route(rs, "bulk-tcp").update(split={"direct": 70, "via cloud9": 30}))
    try:
        wait_for(lambda: "route 'bulk-tcp': path 'via cloud9': unknown site 'cloud9'" in tail_log(workdir),
                 timeout_s=20, what="the rejection in the log")
        assert "reload rejected" in tail_log(workdir)
        groups_after = subprocess.run(["ovs-ofctl", "-O", "OpenFlow15", "dump-groups", mgmt(workdir, "onprem")],
                                      capture_output=True, text=True, check=True).stdout
        assert groups_after == groups_before and set(buckets(workdir, "bulk-tcp")) == set(before)
    finally:
        rewrite_routes(workdir, lambda rs: route(rs, "bulk-tcp").update(split={"direct": 70, "via cloud2": 30}))


def test_failover_when_an_underlay_link_is_cut(routes):
    workdir, _ = routes
    cut = ns_argv(workdir, "onprem", "ip", "link", "set", underlay_port("cloud1"), "down")
    heal = ns_argv(workdir, "onprem", "ip", "link", "set", underlay_port("cloud1"), "up")
    interval = 0.01
    pinger = subprocess.Popen(ns_argv(workdir, "client", "ping", "-i", str(interval), "-w", "8", "-n", SERVER),
                              stdout=subprocess.PIPE, text=True)
    iperf_srv = start(workdir, "server", "-c", "import os; os.execvp('iperf3', ['iperf3', '-s', '-1', '-p', '7001'])")
    time.sleep(0.5)
    iperf = subprocess.Popen(ns_argv(workdir, "client", "iperf3", "-c", SERVER, "-p", "7001", "-t", "6", "-J"),
                             stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(2)
        subprocess.run(cut, check=True)
        wait_for(lambda: "link cloud1-onprem is down" in tail_log(workdir), timeout_s=10, what="the link down")
        out, _ = pinger.communicate(timeout=30)
        seqs = sorted(int(m) for m in re.findall(r"icmp_seq=(\d+)", out))
        gaps = [b - a for a, b in zip(seqs, seqs[1:], strict=False)]
        window_s = (max(gaps) - 1) * interval
        assert seqs and seqs[-1] > 500, "ping did not resume on the remaining path"
        assert window_s < 2.0, f"loss window {window_s:.2f} s"
        result, _ = iperf.communicate(timeout=60)
        assert '"bits_per_second"' in result and iperf.returncode == 0
        print(f"failover: ping loss window {window_s * 1000:.0f} ms")
    finally:
        subprocess.run(heal, check=True)
        for p in (pinger, iperf, iperf_srv):
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
                p.wait()
    wait_for(lambda: "link cloud1-onprem is up again" in tail_log(workdir), timeout_s=15, what="the link back")
    wait_for(lambda: len(buckets(workdir, "bulk-tcp")) == 2, timeout_s=10, what="both buckets back")
