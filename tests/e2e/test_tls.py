"""The test bed as across hosts (`testbed up --tls`): every switch reaches the controller over ssl: on a
management network, the controller reaches every site's OVSDB over ssl: on it. What crosses that network is
TLS and nothing in clear; certificates are rotated under 10 ms pings with no packet lost and no flow-mod."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import pytest
import yaml

from cloudweave import pki
from cloudweave.testbed.cli import down
from cloudweave.testbed.ovs import alive
from cloudweave.testbed.state import State
from cloudweave.testbed.tls import MGMT
from cloudweave.testbed.traffic import ns_argv
from testkit.harness import ROOT, wait_for
from tests.e2e.test_testbed import bring_up

pytestmark = pytest.mark.testbed


@pytest.fixture(scope="module")
def bed(tmp_path_factory):
    import tests.e2e.test_testbed as tb

    was, tb.TLS = tb.TLS, True
    try:
        workdir, model = bring_up(tmp_path_factory, "three-clouds")
    finally:
        tb.TLS = was
    try:
        yield workdir, model
    finally:
        down(workdir, force=False)


def reconciles(workdir: str) -> list[str]:
    with open(os.path.join(workdir, "controller.log"), errors="replace") as fh:
        return [ln for ln in fh if "flow-mods) in" in ln]


def test_everything_crosses_the_management_network_in_tls(bed):
    workdir, model = bed
    state = State.load(workdir)
    for site in model.sites:
        assert site.ovsdb.startswith("ssl:10.253."), site.ovsdb
        rundir = state.sites[site.name]["rundir"]
        target = subprocess.run(["ovs-vsctl", f"--db=unix:{rundir}/db.sock", "get", "controller", "br-int", "target"],
                                capture_output=True, text=True).stdout.strip()
        assert target == f'"{state.controller["target"]}"' and target.startswith('"ssl:'), target

    # An edit (one endpoint's MAC) while the host's link into the management bridge is watched: TLS only.
    capture = os.path.join(workdir, "mgmt.frames")
    sniffer = subprocess.Popen(ns_argv(workdir, MGMT, sys.executable, "-m", "testkit.tls_peer", "sniff", "mg-host",
                                       "5", capture), cwd=ROOT, stdout=subprocess.PIPE, text=True)
    time.sleep(1.0)
    seen = len(reconciles(workdir))
    with open(state.topology) as fh:
        doc = yaml.safe_load(fh)
    doc["endpoints"]["db1"]["mac"] = "02:00:00:5e:10:7a"
    with open(state.topology + ".tmp", "w") as fh:
        yaml.safe_dump(doc, fh, sort_keys=False)
    os.replace(state.topology + ".tmp", state.topology)
    wait_for(lambda: len(reconciles(workdir)) >= seen + len(model.sites), 20, what="the edit at every site")
    said = sniffer.communicate(timeout=30)[0].strip()
    frames = open(capture, "rb").read()
    assert int(said.split()[1]) > 0 and b"\x17\x03\x03" in frames, said  # TLS application data went by
    assert bytes.fromhex("0200005e107a") not in frames  # the new MAC, in every site's flow-mods: never in clear
    assert b"br-int" not in frames and b"Open_vSwitch" not in frames


def test_certificates_rotate_under_pings_with_nothing_lost_and_no_flow_mod(bed):
    workdir, model = bed
    state = State.load(workdir)
    src, dst = "lab1", "lab2"  # onprem -> cloud2, across a tunnel; the lab segment has no groups: ping passes
    dst_ip = str(next(e.ip for e in model.endpoints if e.name == dst))
    ping = subprocess.Popen(ns_argv(workdir, src, "ping", "-i", "0.01", "-w", "12", "-q", dst_ip),
                            stdout=subprocess.PIPE, text=True)
    time.sleep(2.0)
    d = state.tls["pki"]
    for site in model.sites:  # new keys and certificates in place, same CA; OVS reads them at its next connection
        pki.issue(d, site.name, "site")
    pki.issue(d, "controller", "replica")
    # The controller starts again with its new certificate: every connection is made again, with new ones.
    pid = state.controller["pid"]
    argv = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")[:-1]
    seen = len(reconciles(workdir))
    os.kill(pid, signal.SIGTERM)
    wait_for(lambda: not alive(pid), 15, what="the controller stopping")
    with open(state.controller["log"], "ab") as fh:
        proc = subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
    state.controller["pid"] = proc.pid
    state.save()
    wait_for(lambda: len(reconciles(workdir)) >= seen + len(model.sites), 30, what="every site reconciled again")
    after = reconciles(workdir)[seen:]
    assert all("(0 flow-mods)" in ln for ln in after), after
    out = ping.communicate(timeout=30)[0]
    m = re.search(r"(\d+) packets transmitted, (\d+) received", out)
    assert m and int(m.group(1)) > 500 and m.group(1) == m.group(2), out
    print(f"rotation of {len(model.sites)} site certificates and the controller's under 10 ms pings: "
          f"{m.group(1)} sent, {m.group(2)} received; reconciles after it: "
          + "; ".join(re.sub(r".*(site \S+).*(\(\d+ flow-mods\) in \d+ ms).*", r"\1 \2", ln.strip()) for ln in after))
