"""Security groups on the Mininet test bed with real packets: the reachability matrix of
topologies/matrix.yaml (TCP connect, UDP echo, ping for every ordered pair) against `cloudweave explain`,
statefulness, and policy reloads."""

import os
import subprocess
import sys
import time

import pytest
import yaml

from cloudweave.flows.policy import Policy
from cloudweave.testbed.cli import down
from cloudweave.testbed.state import State
from cloudweave.testbed.traffic import ns_argv, probe, serve_probes, stop
from testkit.harness import wait_for
from tests.e2e.test_testbed import bring_up

pytestmark = pytest.mark.testbed
TCP_PORTS = [80, 443, 8080, 9004, 9005, 5432, 22]
UDP_PORTS = [5353, 5000]


@pytest.fixture(scope="module")
def matrix(tmp_path_factory):
    workdir, model = bring_up(tmp_path_factory, "matrix")
    servers = []
    try:
        servers = serve_probes(workdir, (e.name for e in model.endpoints), TCP_PORTS, UDP_PORTS)
        yield workdir, model
    finally:
        stop(servers)
        down(workdir)


def test_reachability_matrix_agrees_with_explain(matrix):
    workdir, model = matrix
    policy = Policy(model)
    wrong, cells = [], 0
    for src in model.endpoints:
        own_ips = {e.ip for e in model.endpoints if e.segment == src.segment}
        targets, expect = [], {}
        for dst in model.endpoints:
            if dst is src or (dst.segment != src.segment and dst.ip in own_ips):
                continue  # that address answers from src's own segment: not a cell about dst
            same = dst.segment == src.segment
            for proto, ports in ((1, [None]), (6, TCP_PORTS), (17, UDP_PORTS)):
                for port in ports:
                    t = f"icmp:{dst.ip}" if proto == 1 else f"{'tcp' if proto == 6 else 'udp'}:{dst.ip}:{port}"
                    targets.append(t)
                    expect[t] = (dst.name, same and policy.decide(src, dst, proto, port).allowed)
        got = probe(workdir, src.name, targets)
        for t, (dst, want) in expect.items():
            cells += 1
            if got[t] != want:
                wrong.append(f"{src.name}->{dst} {t}: {'passed' if got[t] else 'blocked'}, explain says "
                             f"{'allow' if want else 'deny'}")
    assert wrong == []
    assert cells > 1000


UDP_CLIENT = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("0.0.0.0", 40000)); s.settimeout(2)
s.sendto(b"hello", (sys.argv[1], 5353))
print("reply" if s.recvfrom(100)[0] == b"hello" else "wrong")
s.settimeout(3)
try:
    data, addr = s.recvfrom(100); print("unsolicited", addr)
except TimeoutError:
    print("quiet")
"""
UDP_SENDER = """
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("0.0.0.0", int(sys.argv[2])))
for _ in range(5):
    s.sendto(b"unsolicited", (sys.argv[1], 40000)); time.sleep(0.2)
"""


def test_replies_pass_and_unsolicited_packets_toward_the_client_do_not(matrix):
    workdir, model = matrix
    # web2 (east) -> api2 (west) udp/5353 is allowed; api2 -> web2 udp is not (web has no udp ingress).
    by = {e.name: e for e in model.endpoints}
    policy = Policy(model)
    assert policy.decide(by["web2"], by["api2"], 17, 5353).allowed
    assert not policy.decide(by["api2"], by["web2"], 17, 40000).allowed
    client = subprocess.Popen(ns_argv(workdir, "web2", sys.executable, "-c", UDP_CLIENT, "10.41.0.22"),
                              stdout=subprocess.PIPE, text=True)
    assert client.stdout.readline().strip() == "reply"  # the echo came back through both sites' conntrack
    # From a port other than the one web2 talked to: a new connection in the reply direction, not allowed.
    subprocess.run(ns_argv(workdir, "api2", sys.executable, "-c", UDP_SENDER, "10.41.0.12", "5354"), check=True)
    assert client.stdout.readline().strip() == "quiet"
    client.wait(10)


def edit_policy(workdir: str, change) -> None:
    path = State.load(workdir).topology
    with open(path) as fh:
        doc = yaml.safe_load(fh)
    change(doc)
    tmp = path + ".tmp"
    with open(tmp, "w") as fh:
        yaml.safe_dump(doc, fh, sort_keys=False)
    os.replace(tmp, path)  # as editors save: write elsewhere, rename over


def test_reload_refuses_new_connections_the_new_policy_denies(matrix):
    workdir, _ = matrix
    target = "tcp:10.41.0.11:8080"  # lb1 -> web1: edge egress to web 8080, web ingress from edge 8080
    assert probe(workdir, "lb1", [target])[target]
    original = State.load(workdir).topology
    with open(original) as fh:
        saved = fh.read()
    try:
        edit_policy(workdir, lambda doc: doc["security_groups"]["web"]["ingress"].pop(0))
        wait_for(lambda: not probe(workdir, "lb1", [target])[target], timeout_s=30, what="the new policy")
    finally:
        with open(original, "w") as fh:
            fh.write(saved)
    wait_for(lambda: probe(workdir, "lb1", [target])[target], timeout_s=30, what="the policy restored")


def test_reloads_open_no_gap(matrix):
    """api ingress: allow web tcp 9000-9010, and a priority-5 deny of 9005, reordered five times under
    continuous probing: rule flows are keyed by what a rule says, so a reorder changes no flow, and whatever a
    reload sends goes in one bundle: 9005 never opens."""
    workdir, _ = matrix
    denied, allowed = "tcp:10.41.0.21:9005", "tcp:10.41.0.21:9004"
    hits = []
    stop = time.monotonic() + 12
    swap_at = [time.monotonic() + 1 + 2 * i for i in range(5)]
    while time.monotonic() < stop:
        if swap_at and time.monotonic() >= swap_at[0]:
            swap_at.pop(0)
            edit_policy(workdir, lambda doc: doc["security_groups"]["api"]["ingress"].reverse())
        got = probe(workdir, "web2", [denied] * 8 + [allowed], timeout=0.3)
        hits.append(got[denied])
        assert got[allowed], "the allowed port must stay open through the reloads"
    assert not any(hits) and len(hits) > 10
