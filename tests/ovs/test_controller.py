"""The controller against real ovs-vswitchd instances (userspace datapath), over real OpenFlow and OVSDB."""

import os
import signal
import subprocess
import sys

import pytest

from cloudweave.config import load_model
from cloudweave.flows.compile import compile_site
from cloudweave.flows.ofctl import render_flows
from cloudweave.flows.tables import L2_FORWARD
from controller.codec import canonical_desired
from testkit.harness import ROOT, Controller, OvsSites, rewrite_topology, wait_for

pytestmark = pytest.mark.ovs
REFERENCE = os.path.join(ROOT, "topologies", "three-clouds.yaml")
SITES = ("onprem", "cloud1", "cloud2")
FOREIGN_COOKIE = "0x1234"


@pytest.fixture
def fabric(tmp_path):
    """Three OVS instances, each with br-int holding its endpoints' ports (as a hypervisor would plug them)."""
    sites = OvsSites(REFERENCE, str(tmp_path))
    try:
        yield sites.instances, sites.config, tmp_path
    finally:
        sites.stop()


def expected_count(config: str, site: str) -> int:
    return len(compile_site(load_model(config)[0], site).flows)


def start(config, tmp_path, instances, **kw) -> Controller:
    return Controller(config, str(tmp_path), [o.rundir for o in instances.values()], **kw).start()


def test_connect_sets_up_bridges_and_flows(fabric):
    instances, config, tmp_path = fabric
    onprem = instances["onprem"]
    onprem.vsctl("add-port", "br-int", "foreign0", "--", "set", "interface", "foreign0", "type=internal")
    ctl = start(config, tmp_path, instances)
    try:
        for site in SITES:
            line = ctl.wait_reconciles(site, 1)
            n = expected_count(config, site)
            assert f"{n} flows desired, 0 were on the switch: {n} added, 0 replaced, 0 deleted" in line
            assert len(instances[site].flows()) == n
        assert onprem.vsctl("get", "bridge", "br-int", "fail_mode").strip() == "secure"
        assert onprem.vsctl("get", "bridge", "br-int", "other_config:datapath-id").strip() == '"0000000000000001"'
        ports = set(onprem.vsctl("list-ports", "br-int").split())
        assert {"vx-cloud1", "vx-cloud2", "foreign0", "web1", "lab1"} <= ports
        assert onprem.vsctl("get", "interface", "vx-cloud2", "type").strip() == "vxlan"
        opts = onprem.vsctl("get", "interface", "vx-cloud2", "options")
        assert 'remote_ip="172.31.3.1"' in opts and "key=flow" in opts
        assert "unix:" in onprem.vsctl("get-controller", "br-int")
        # Someone else's flows are never touched. (OVS itself flushes a bridge's flows when it first gets a
        # controller, so the foreign flows go in once the controller is attached; a reload re-reconciles.)
        onprem.ofctl("add-flow", "br-int", f"cookie={FOREIGN_COOKIE},table=9,priority=5,actions=drop")
        onprem.ofctl("add-flow", "br-int", f"cookie={FOREIGN_COOKIE},table={L2_FORWARD},priority=100,reg6=1001,"
                                           "dl_dst=02:00:00:00:01:01,actions=drop")
        ctl.proc.send_signal(signal.SIGHUP)
        ctl.wait_reconciles("onprem", 2)
        dump = onprem.ofctl("dump-flows", "br-int")
        assert dump.count("cookie=0x1234") == 1  # the L2 one collided with ours and was replaced
        assert "table=9" in dump and len(onprem.flows()) == expected_count(config, "onprem")
        assert ctl.metric("cloudweave_switches_connected") == 3.0
        sent = ctl.metric("cloudweave_flow_mods_total", site="onprem")
        assert sent == expected_count(config, "onprem") + 1  # the first program, then the collided flow
        assert ctl.metric("cloudweave_switch_flows", site="cloud2") == expected_count(config, "cloud2")
        assert ctl.metric("cloudweave_reloads_total", result="applied") == 1.0
    finally:
        ctl.stop()


def test_reconnect_sends_nothing_and_keeps_flows(fabric):
    instances, config, tmp_path = fabric
    ctl = start(config, tmp_path, instances)
    try:
        for site in SITES:
            ctl.wait_reconciles(site, 1)
    finally:
        ctl.stop()
    before = {s: instances[s].flow_durations() for s in SITES}
    ctl = start(config, tmp_path, instances)
    try:
        for site in SITES:
            assert "(0 flow-mods)" in ctl.wait_reconciles(site, 1)
            after = instances[site].flow_durations()
            assert after.keys() == before[site].keys()
            # Not re-added: every flow is older than it was before the restart.
            assert all(after[k] >= before[site][k] for k in after)
    finally:
        ctl.stop()


def test_flows_loaded_from_compile_output_are_what_the_controller_wants(fabric):
    """`cloudweave compile` output loads with ovs-ofctl and is, to the controller, exactly its own flows."""
    instances, config, tmp_path = fabric
    ctl = start(config, tmp_path, instances)  # creates the tunnel ports the flows name
    try:
        for site in SITES:
            ctl.wait_reconciles(site, 1)
    finally:
        ctl.stop()
    for site in SITES:
        ovs = instances[site]
        ovs.ofctl("del-flows", "br-int", "cookie=0xc10d000000000000/0xffff000000000000")
        text = subprocess.run([sys.executable, "-m", "cloudweave", "compile", config, "--site", site],
                              capture_output=True, text=True, check=True, cwd=ROOT).stdout
        path = tmp_path / f"{site}.flows"
        path.write_text(text)
        subprocess.run(["ovs-ofctl", "-O", "OpenFlow15", "--bundle", "add-flows", ovs.mgmt("br-int"), str(path)],
                       check=True, capture_output=True)
        assert len(ovs.flows()) == expected_count(config, site)
    ctl = start(config, tmp_path, instances)
    try:
        for site in SITES:
            assert "(0 flow-mods)" in ctl.wait_reconciles(site, 1)
    finally:
        ctl.stop()


def _diff_counts(old_cfg: str, new_cfg: str, site: str) -> tuple[int, int, int]:
    """Added, replaced, deleted flows between two configs' compiled flows (ports named, not numbered)."""
    ports = {}

    def canon(cfg):
        flows = compile_site(load_model(cfg)[0], site).flows
        for f in flows:
            for p in f.ports():
                ports.setdefault(p, len(ports) + 1)
        return dict(canonical_desired(f, ports) for f in flows)

    old, new = canon(old_cfg), canon(new_cfg)
    added = sum(1 for k in new if k not in old)
    replaced = sum(1 for k in new if k in old and old[k] != new[k])
    deleted = sum(1 for k in old if k not in new)
    return added, replaced, deleted


def test_reload_on_edit_and_sighup_touches_only_changed_flows(fabric):
    instances, config, tmp_path = fabric
    instances["onprem"].vsctl("add-port", "br-int", "web9", "--", "set", "interface", "web9", "type=internal")
    old_copy = str(tmp_path / "old.yaml")
    with open(config) as fh:
        original = fh.read()
    with open(old_copy, "w") as fh:
        fh.write(original)
    ctl = start(config, tmp_path, instances)
    try:
        for site in SITES:
            ctl.wait_reconciles(site, 1)
        before = instances["cloud2"].flow_durations()
        # Edit 1 (file change): a new endpoint at onprem.
        rewrite_topology(REFERENCE, config, {s: str(tmp_path / s) for s in SITES},
                         edit=lambda doc: doc["endpoints"].update(web9={
                             "site": "onprem", "port": "web9", "segment": "prod", "mac": "02:00:00:00:01:09",
                             "ip": "10.10.0.19", "groups": ["web"]}))
        for site in SITES:
            a, r, d = _diff_counts(old_copy, config, site)
            assert a + r + d > 0
            line = ctl.wait_reconciles(site, 2)
            assert f"{a} added, {r} replaced, {d} deleted ({a + r + d} flow-mods)" in line, line
        assert "reload: endpoints added: web9" in ctl.log()
        after = instances["cloud2"].flow_durations()
        untouched = [k for k in before if k in after]
        assert untouched and all(after[k] >= before[k] for k in untouched)
        # Edit 2 (SIGHUP only): remove it again. An editor that writes twice reloads once per settled change.
        with open(config, "w") as fh:
            fh.write(original)
        ctl.proc.send_signal(signal.SIGHUP)
        for site in SITES:
            a, r, d = _diff_counts(config, old_copy, site)
            line = ctl.wait_reconciles(site, 3)
            assert "deleted" in line and "FAILED" not in line
        assert len(instances["onprem"].flows()) == expected_count(config, "onprem")
        assert ctl.metric("cloudweave_reloads_total", result="applied") == 2.0
    finally:
        ctl.stop()


def test_broken_reload_is_rejected_and_flows_stay(fabric):
    instances, config, tmp_path = fabric
    ctl = start(config, tmp_path, instances)
    try:
        for site in SITES:
            ctl.wait_reconciles(site, 1)
        before = {s: instances[s].flows() for s in SITES}
        with open(config) as fh:
            text = fh.read()
        with open(config, "w") as fh:
            fh.write(text.replace("vni: 1002", "vni: 1001"))
        wait_for(lambda: "reload rejected" in ctl.log(), what="rejected reload")
        log = ctl.log()
        assert f"{config}:" in log and "VNI 1001 is used twice" in log
        assert {s: instances[s].flows() for s in SITES} == before
        for site in SITES:
            assert len(ctl.reconcile_lines(site)) == 1
        assert ctl.metric("cloudweave_reloads_total", result="rejected") == 1.0
    finally:
        ctl.stop()


def test_removed_link_removes_only_our_tunnel_port(fabric):
    instances, config, tmp_path = fabric
    onprem = instances["onprem"]
    onprem.vsctl("add-port", "br-int", "foreign0", "--", "set", "interface", "foreign0", "type=internal")
    ctl = start(config, tmp_path, instances)
    try:
        ctl.wait_reconciles("onprem", 1)
        wait_for(lambda: "vx-cloud2" in onprem.vsctl("list-ports", "br-int"), what="tunnel port")
        def drop_link(doc):  # onprem-cloud2, and the path split that uses it (check refuses it otherwise)
            doc["links"].pop(1)
            doc["routes"] = [r for r in doc["routes"] if r["name"] != "http-from-onprem"]

        rewrite_topology(REFERENCE, config, {s: str(tmp_path / s) for s in SITES}, edit=drop_link)
        wait_for(lambda: "vx-cloud2" not in onprem.vsctl("list-ports", "br-int"), what="tunnel port removal")
        ports = onprem.vsctl("list-ports", "br-int").split()
        assert "foreign0" in ports and "vx-cloud1" in ports
        assert "removed vx-cloud2" in ctl.log()
        # Flows now relay cloud2-bound traffic through cloud1, and nothing names the removed port.
        line = ctl.wait_reconciles("onprem", 2)
        assert "waiting for ports" not in line
        assert "vx-cloud2" not in "\n".join(onprem.flows())
    finally:
        ctl.stop()


def test_tunnel_port_removed_by_hand_comes_back(fabric):
    instances, config, tmp_path = fabric
    cloud1 = instances["cloud1"]
    ctl = start(config, tmp_path, instances)
    try:
        ctl.wait_reconciles("cloud1", 1)
        wait_for(lambda: "vx-onprem" in cloud1.vsctl("list-ports", "br-int"), what="tunnel port")
        cloud1.vsctl("del-port", "br-int", "vx-onprem")
        wait_for(lambda: "vx-onprem" in cloud1.vsctl("list-ports", "br-int"), timeout_s=25,
                 what="the tunnel port to be recreated")
        # Its flows come back with it (port status -> reconcile).
        wait_for(lambda: len(cloud1.flows()) == expected_count(config, "cloud1"), what="flows naming it")
        syncs = [ln for ln in ctl.log().splitlines() if "site cloud1: OVSDB bridge br-int: created" in ln
                 and "vx-onprem" in ln.split("created", 1)[1].split(";")[0]]
        assert len(syncs) == 2, syncs  # made at start, and made again
    finally:
        ctl.stop()


@pytest.mark.parametrize("command", ["osken-manager", "ryu-manager"])
def test_osken_manager_runs_the_app(fabric, command):
    """`osken-manager controller.app` (eventlet hub) runs the same application, reloads included; so does
    `ryu-manager controller.app`, as the operator types it (installed with cloudweave)."""
    instances, config, tmp_path = fabric
    sock = str(tmp_path / "ctl.sock")
    manager = os.path.join(os.path.dirname(sys.executable), command)
    if command == "ryu-manager":
        out = subprocess.run([manager, "--help"], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0 and out.stdout.startswith("usage: ryu-manager") and "--ofp-listen-host" in \
            out.stdout, out.stdout[:300] + out.stderr[-300:]
    argv = [manager, "--ofp-listen-host", sock, "--ofp-tcp-listen-port", "6653", "controller.app"]
    ctl = Controller(config, str(tmp_path), [o.rundir for o in instances.values()], argv=argv,
                     env={"CLOUDWEAVE_CONFIG": config, "CLOUDWEAVE_METRICS": "off",
                          "CLOUDWEAVE_SWITCH_TARGET": "unix:{ovsdb_dir}/controller.sock"}).start()
    try:
        wait_for(lambda: all(len(instances[s].flows()) == expected_count(config, s) for s in SITES),
                 what=f"flows from {command}")
        rewrite_topology(REFERENCE, config, {s: str(tmp_path / s) for s in SITES},
                         edit=lambda doc: doc["endpoints"].pop("cdn1"))
        wait_for(lambda: len(instances["cloud1"].flows()) == expected_count(config, "cloud1"),
                 what=f"flows after an edit under {command}")
        assert "reload: endpoints removed: cdn1" in ctl.log()
        assert "Traceback" not in ctl.log()
    finally:
        ctl.stop()


def test_compile_prints_loadable_deterministic_text(fabric):
    _, config, _ = fabric
    out1 = subprocess.run([sys.executable, "-m", "cloudweave", "compile", config, "--site", "cloud1"],
                          capture_output=True, text=True, cwd=ROOT)
    out2 = subprocess.run([sys.executable, "-m", "cloudweave", "compile", config, "--site", "cloud1"],
                          capture_output=True, text=True, cwd=ROOT)
    assert out1.returncode == 0 and out1.stdout == out2.stdout
    assert out1.stdout == render_flows(compile_site(load_model(config)[0], "cloud1").flows, "cloud1")
    bad = subprocess.run([sys.executable, "-m", "cloudweave", "compile", config, "--site", "mars"],
                         capture_output=True, text=True, cwd=ROOT)
    assert bad.returncode == 2 and "unknown site 'mars'" in bad.stderr
