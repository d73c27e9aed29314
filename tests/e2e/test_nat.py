"""NAT mode on the Mininet test bed with real packets (topologies/nat.yaml): the internet server sees the
site's NAT address; replies find their way back, also for two endpoints with the same private address and
source port in two segments; a port forward reaches its endpoint and nothing else does; a segment's
connection limit refuses new connections and is reported."""

import os
import re
import signal
import subprocess
import sys

import pytest

from cloudweave.testbed.build import INTERNET, INTERNET_SERVER
from cloudweave.testbed.cli import down
from cloudweave.testbed.state import State
from cloudweave.testbed.traffic import ns_argv, probe, serve_probes, stop
from testkit.harness import appctl, wait_for
from tests.e2e.test_testbed import TLS, bring_up

pytestmark = pytest.mark.testbed
EAST_NAT, WEST_NAT = "198.51.100.51", "198.51.100.52"
SAME_PORT_CLIENT = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", 40001)); s.settimeout(2)
s.sendto(b"who", (sys.argv[1], 5353))
print(s.recvfrom(64)[0].decode())
"""


@pytest.fixture(scope="module")
def nat(tmp_path_factory):
    workdir, model = bring_up(tmp_path_factory, "nat")
    servers = []
    try:
        servers = serve_probes(workdir, [INTERNET], [80], [5353])
        servers += serve_probes(workdir, ["blue1", "green1"], [80], [])
        # NAT traffic leaves once the controller has learned the uplink gateway's MAC (ARP, within seconds).
        wait_for(lambda: probe(workdir, "blue1", [f"seen-tcp:{INTERNET_SERVER}:80"])[f"seen-tcp:{INTERNET_SERVER}:80"],
                 timeout_s=30, what="blue1 reaching the internet server")
        yield workdir, model
    finally:
        stop(servers)
        down(workdir)


def seen(workdir: str, src: str, proto: str, host: str = INTERNET_SERVER, port: int | None = None) -> str | None:
    port = port or (80 if proto == "tcp" else 5353)
    target = f"seen-{proto}:{host}:{port}"
    return probe(workdir, src, [target], timeout=2.0)[target]



def test_the_internet_sees_the_site_nat_address(nat):
    workdir, model = nat
    lo, hi = model.site("east").nat_ports.lo, model.site("east").nat_ports.hi
    for src, want in (("blue1", EAST_NAT), ("blue2", WEST_NAT), ("green2", WEST_NAT)):
        for proto in ("tcp", "udp"):
            got = wait_for(lambda s=src, p=proto: seen(workdir, s, p), timeout_s=15, what=f"{src} {proto}")
            ip, port = got.split(":")
            assert ip == want, (src, proto, got)
            if src == "blue1":
                assert lo <= int(port) <= hi, got
    assert probe(workdir, "blue1", [f"icmp:{INTERNET_SERVER}"])[f"icmp:{INTERNET_SERVER}"]


def test_same_private_address_and_port_in_two_segments_both_get_their_replies(nat):
    workdir, model = nat
    blue1, green1 = next(e for e in model.endpoints if e.name == "blue1"), \
        next(e for e in model.endpoints if e.name == "green1")
    assert blue1.ip == green1.ip and blue1.site == green1.site
    answers = {}
    for src in ("blue1", "green1"):  # the same 5-tuple from both; the first one's mapping still lives
        run = subprocess.run(ns_argv(workdir, src, sys.executable, "-c", SAME_PORT_CLIENT, INTERNET_SERVER),
                             capture_output=True, text=True, timeout=30)
        assert run.returncode == 0, (src, run.stderr)
        answers[src] = run.stdout.strip()
    assert {a.split(":")[0] for a in answers.values()} == {EAST_NAT}
    assert answers["blue1"] != answers["green1"]  # two mappings, one per segment


def test_port_forward_reaches_its_endpoint_and_nothing_else_comes_in(nat):
    workdir, _ = nat
    got = probe(workdir, INTERNET, [f"seen-tcp:{EAST_NAT}:8080", f"tcp:{EAST_NAT}:80", f"tcp:{EAST_NAT}:8081",
                                    f"tcp:{WEST_NAT}:8080", "tcp:10.51.0.11:80"], timeout=2.0)
    assert got[f"seen-tcp:{EAST_NAT}:8080"].split(":")[0] == INTERNET_SERVER  # blue1 sees the real client
    assert got == {f"seen-tcp:{EAST_NAT}:8080": got[f"seen-tcp:{EAST_NAT}:8080"], f"tcp:{EAST_NAT}:80": False,
                   f"tcp:{EAST_NAT}:8081": False, f"tcp:{WEST_NAT}:8080": False, "tcp:10.51.0.11:80": False}


def test_no_flow_changes_when_nothing_changed(nat):
    """NAT, moves and packet-in flows read back from OVS exactly as compiled: a reconcile sends nothing."""
    workdir, _ = nat
    state = State.load(workdir)
    log = state.controller["log"]
    before = open(log).read().count("flow-mods")
    os.kill(state.controller["pid"], signal.SIGHUP)
    wait_for(lambda: open(log).read().count("flow-mods") >= before + 2, timeout_s=20, what="two reconciles")
    lines = [ln for ln in open(log).read().splitlines() if "flow-mods" in ln][before:]
    assert lines and all("(0 flow-mods" in ln for ln in lines), lines


def test_connection_limit_refuses_new_connections_and_is_reported(nat):
    workdir, model = nat
    blue = model.segment("blue")
    if TLS:  # as across hosts: OVS 3.1 sets zone limits only with ovs-appctl on the switch's host
        log = State.load(workdir).controller["log"]
        wait_for(lambda: "site east: OVSDB is not a unix socket; connection limits need the controller on the "
                 "switch's host" in open(log).read(), timeout_s=10, what="the controller saying so")
        line = appctl(workdir, "east", "dpctl/ct-get-limits", "netdev@ovs-netdev", f"zone={blue.ct_zone}")
        assert "limit=0" in line or f"zone={blue.ct_zone}" not in line, line  # nothing half-set
        return
    try:
        # Distinct UDP flows, each a conntrack entry in blue's zone at east: more than the limit.
        targets = [f"udp:{INTERNET_SERVER}:{p}" for p in range(6000, 6000 + blue.max_connections + 20)]
        probe(workdir, "blue1", targets, timeout=0.5)
        line = appctl(workdir, "east", "dpctl/ct-get-limits", "netdev@ovs-netdev", f"zone={blue.ct_zone}")
        count, limit = (int(x) for x in re.search(r"limit=(\d+),count=(\d+)", line).groups()[::-1])
        assert limit == blue.max_connections and count == limit, line
        assert not probe(workdir, "blue1", [f"tcp:{INTERNET_SERVER}:80"])[f"tcp:{INTERNET_SERVER}:80"]
        assert probe(workdir, "green1", [f"tcp:{INTERNET_SERVER}:80"])[f"tcp:{INTERNET_SERVER}:80"]  # not green's
        log = State.load(workdir).controller["log"]
        wait_for(lambda: "segment blue reached its connection limit (40 of 40)" in open(log).read(), timeout_s=10,
                 what="the limit in the controller's log")
    finally:
        appctl(workdir, "east", "dpctl/flush-conntrack", f"zone={blue.ct_zone}")
    wait_for(lambda: probe(workdir, "blue1", [f"tcp:{INTERNET_SERVER}:80"])[f"tcp:{INTERNET_SERVER}:80"],
             timeout_s=10, what="blue1 connecting again once its zone is flushed")
