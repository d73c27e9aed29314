"""Per-switch sessions against real ovs-vswitchd instances: drift repaired within 2 s, a frozen switch that
delays only itself, a rejected bundle retried until it goes in, and reloads that send only what changed."""

import os
import signal
import time

import pytest

from cloudweave.config import load_model
from cloudweave.flows.compile import compile_site
from testkit.harness import ROOT, OvsSites, rewrite_topology, wait_for

pytestmark = pytest.mark.ovs
REFERENCE = os.path.join(ROOT, "topologies", "three-clouds.yaml")
SITES = ("onprem", "cloud1", "cloud2")
OURS = "cookie=0xc10d000000000000/0xffff000000000000"


@pytest.fixture
def fabric(tmp_path):
    sites = OvsSites(REFERENCE, str(tmp_path))
    try:
        yield sites
    finally:
        for ovs in sites.instances.values():  # never leave a frozen vswitchd behind
            try:
                os.kill(ovs.vswitchd_pid(), signal.SIGCONT)
            except (OSError, ValueError):
                pass
        sites.stop()


def expected(config: str, site: str) -> int:
    return len(compile_site(load_model(config)[0], site).flows)


def programmed(sites: OvsSites, ctl) -> None:
    for site in SITES:
        ctl.wait_reconciles(site, 1)
        wait_for(lambda s=site: len(sites.instances[s].flows()) == expected(sites.config, s), what=f"{site} flows")


def time_until(predicate, timeout_s: float, what: str) -> float:
    started = time.monotonic()
    wait_for(predicate, timeout_s, interval_s=0.02, what=what)
    return time.monotonic() - started


def test_flows_deleted_behind_our_back_come_back_within_2s(fabric):
    ctl = fabric.controller().start()
    try:
        programmed(fabric, ctl)
        cloud1 = fabric.instances["cloud1"]
        want = expected(fabric.config, "cloud1")
        before = cloud1.flows()
        cloud1.ofctl("del-flows", "br-int")  # everything, as an operator's mistake would (the flow monitor
        # reports it at once: the flows may be back before the next line could look)
        took = time_until(lambda: cloud1.flows() == before, 2.0, "the deleted flows to come back")
        assert took < 2.0
        log = ctl.log()
        # Told at once by the flow monitor (or, where a switch has none, found by the 1 s count audit).
        assert "site cloud1 (dpid 0x2): a flow of ours" in log and "removed by another connection" in log or \
            "site cloud1 (dpid 0x2): the switch holds 0 of our flows" in log
        assert f"{want} flows desired, 0 were on the switch: {want} added" in log
        assert ctl.metric("cloudweave_switch_drift_total", site="cloud1") >= 1.0
        wait_for(lambda: (ctl.metric("cloudweave_switch_audits_total", site="onprem") or 0) >= 2, 5.0,
                 what="onprem audited")
        assert ctl.metric("cloudweave_switch_drift_total", site="onprem") is None  # audited, found nothing
        # One flow changed in place under another cookie is found too (the count of ours drops by one).
        key = before[0].split(" actions=")[0].replace("cookie=", "").split(", ", 1)[1]
        cloud1.ofctl("add-flow", "br-int", f"cookie=0x1234,{key},actions=drop")
        time_until(lambda: cloud1.flows() == before, 2.0, "the replaced flow to be ours again")
    finally:
        ctl.stop()


def test_flows_rewritten_in_place_under_our_cookie_are_repaired_within_2s(fabric):
    """The count stays the same, so the 1 s audit cannot see it; the flow monitor does (before: the site stayed
    dark until the 5-minute full audit, which crashed on every switch and repaired only by failing, #23)."""
    ctl = fabric.controller().start()
    try:
        programmed(fabric, ctl)
        cloud2 = fabric.instances["cloud2"]
        before = cloud2.flows()
        t0 = time.monotonic()
        cloud2.ofctl("mod-flows", "br-int", "actions=drop")  # every flow, in place: same count, same cookies
        wait_for(lambda: "was modified by another connection" in ctl.log(), 2.0, what="the change reported")
        wait_for(lambda: cloud2.flows() == before, 2.0, interval_s=0.02, what="the rewritten flows repaired")
        took = time.monotonic() - t0
        print(f"repaired in {took * 1000:.0f} ms")
        assert "was modified by another connection" in ctl.log()
        # Our own changes are not taken for someone else's: an edit sends its flow-mods and reads nothing back.
        reads = ctl.metric("cloudweave_switch_reads_total", site="cloud2")
        rewrite_topology(REFERENCE, fabric.config, {s: os.path.join(fabric.workdir, s) for s in SITES},
                         edit=lambda doc: doc["endpoints"]["web1"].update(mac="02:00:00:00:01:98"))
        wait_for(lambda: "02:00:00:00:01:98" in "\n".join(cloud2.flows()), 5.0, what="the edit at cloud2")
        time.sleep(1.5)
        assert ctl.metric("cloudweave_switch_reads_total", site="cloud2") == reads
        assert "Traceback" not in ctl.log()
    finally:
        ctl.stop()


def test_the_full_audit_compares_everything_without_failing(fabric):
    ctl = fabric.controller(env={"CLOUDWEAVE_FULL_AUDIT_S": "1"}).start()
    try:
        programmed(fabric, ctl)
        wait_for(lambda: (ctl.metric("cloudweave_switch_audits_total", site="onprem") or 0) >= 4, 10.0,
                 what="full audits of onprem")
        assert ctl.metric("cloudweave_reconcile_failures_total", site="onprem") is None, ctl.log()[-2000:]
        assert ctl.metric("cloudweave_switch_drift_total", site="onprem") is None
        assert "TypeError" not in ctl.log()
    finally:
        ctl.stop()


def test_a_group_deleted_by_hand_comes_back_with_its_flows(fabric):
    ctl = fabric.controller().start()
    try:
        programmed(fabric, ctl)
        onprem = fabric.instances["onprem"]
        groups = onprem.ofctl("dump-groups", "br-int")
        assert "group_id=" in groups
        flows = onprem.flows()
        onprem.ofctl("del-groups", "br-int")  # OVS also deletes the flows that send to them (the flow monitor
        # reports those at once: they may be back before the next line could look)
        time_until(lambda: onprem.flows() == flows and "group_id=" in onprem.ofctl("dump-groups", "br-int"), 2.0,
                   "the groups and their flows to come back")
        assert ctl.metric("cloudweave_switch_drift_total", site="onprem") >= 1.0  # it was seen, and repaired
    finally:
        ctl.stop()


def test_a_frozen_switch_delays_only_itself(fabric):
    ctl = fabric.controller().start()
    try:
        programmed(fabric, ctl)
        cloud2 = fabric.instances["cloud2"]
        pid = cloud2.vswitchd_pid()
        os.kill(pid, signal.SIGSTOP)
        new_mac = "02:00:00:00:01:99"
        rewrite_topology(REFERENCE, fabric.config, {s: os.path.join(fabric.workdir, s) for s in SITES},
                         edit=lambda doc: doc["endpoints"]["web1"].update(mac=new_mac))  # in prod, at every site
        written = time.monotonic()
        for site in ("onprem", "cloud1"):
            wait_for(lambda s=site: new_mac in "\n".join(fabric.instances[s].flows()), 5.0, interval_s=0.02,
                     what=f"the edit at {site} while cloud2 is frozen")
        took = time.monotonic() - written
        assert took < 2.0, f"{took:.2f} s"
        os.kill(pid, signal.SIGCONT)
        wait_for(lambda: new_mac in "\n".join(cloud2.flows())
                 and len(cloud2.flows()) == expected(fabric.config, "cloud2"), 30.0,
                 what="cloud2 to converge after SIGCONT")
        assert "02:00:00:00:01:01" not in "\n".join(cloud2.flows())
        assert "Traceback" not in ctl.log()
    finally:
        ctl.stop()


def test_a_rejected_bundle_is_retried_until_it_goes_in(fabric):
    onprem = fabric.instances["onprem"]
    # A full table refuses flow-mods (OFPFMFC_TABLE_FULL): the switch itself rejects the bundle.
    onprem.vsctl("--", "--id=@ft", "create", "Flow_Table", "flow_limit=3", "overflow_policy=refuse",
                 "--", "set", "Bridge", "br-int", "flow_tables:0=@ft")
    ctl = fabric.controller().start()
    try:
        for site in ("cloud1", "cloud2"):  # the others are programmed meanwhile
            ctl.wait_reconciles(site, 1)
        wait_for(lambda: (ctl.metric("cloudweave_reconcile_failures_total", site="onprem") or 0) >= 2, 15.0,
                 what="onprem's bundle rejected and retried")
        assert len(onprem.flows()) == 0  # discarded whole, never half-applied
        log = ctl.log()
        said = [ln for ln in log.splitlines() if "site onprem (dpid 0x1)" in ln and "retrying with backoff" in ln]
        assert len(said) == 1, said  # logged once per change of state, not once per try
        assert "OFPFMFC_TABLE_FULL" in said[0] and "flows stay as they were" in said[0], said  # and why
        # The switch's own errors (one per refused flow-mod, at every try): once a minute per kind.
        raw = [ln for ln in log.splitlines() if " ERROR " in ln and "switch 0x1: OpenFlow error" in ln]
        assert 1 <= len(raw) <= 2, raw
        onprem.vsctl("clear", "Bridge", "br-int", "flow_tables")
        wait_for(lambda: len(onprem.flows()) == expected(fabric.config, "onprem"), 15.0,
                 what="onprem programmed once the table has room")
        wait_for(lambda: "site onprem (dpid 0x1): in step with the switch again" in ctl.log(), 5.0,
                 what="the recovery line")
    finally:
        ctl.stop()


def test_a_reload_that_changes_nothing_sends_nothing(fabric):
    ctl = fabric.controller().start()
    try:
        programmed(fabric, ctl)
        sent = {s: ctl.metric("cloudweave_flow_mods_total", site=s) for s in SITES}
        lines = {s: len(ctl.reconcile_lines(s)) for s in SITES}
        with open(fabric.config) as fh:
            text = fh.read()
        with open(fabric.config, "w") as fh:
            fh.write(text + "\n# a comment\n")
        wait_for(lambda: "reload: no change to the model" in ctl.log(), 10.0, what="the reload")
        wait_for(lambda: "reload applied in" in ctl.log(), 5.0, what="the reload to be applied")
        time.sleep(1.5)  # an audit round, too
        assert {s: ctl.metric("cloudweave_flow_mods_total", site=s) for s in SITES} == sent
        assert {s: len(ctl.reconcile_lines(s)) for s in SITES} == lines
        assert ctl.metric("cloudweave_reloads_total", result="applied") == 1.0
        # A file emptied (or caught half-written) would remove every site: refused, nothing changes.
        flows = {s: fabric.instances[s].flows() for s in SITES}
        with open(fabric.config, "w") as fh:
            fh.write("")
        wait_for(lambda: "defines no sites" in ctl.log(), 10.0, what="the empty file refused")
        time.sleep(1.5)
        assert {s: fabric.instances[s].flows() for s in SITES} == flows
        assert ctl.metric("cloudweave_switches_connected") == 3.0
        with open(fabric.config, "w") as fh:
            fh.write(text)
        wait_for(lambda: ctl.log().count("reload applied in") >= 2, 10.0, what="the file back")
        assert "no longer a site" not in ctl.log()
    finally:
        ctl.stop()


def test_a_switch_killed_mid_reconcile_logs_one_line_and_is_reprogrammed(fabric):
    """ovs-vswitchd killed while the controller reads it back (SIGHUP: every switch reconciled in full), at
    several moments of the reconcile: each time one line says so, never a traceback, and the restarted switch
    is programmed again."""
    ctl = fabric.controller().start()
    try:
        programmed(fabric, ctl)
        cloud1 = fabric.instances["cloud1"]
        want = expected(fabric.config, "cloud1")
        for delay in (0.0, 0.005, 0.01, 0.02, 0.04):
            pid = cloud1.vswitchd_pid()
            gone = ctl.log().count("switch 0x2 disconnected")
            os.kill(ctl.proc.pid, signal.SIGHUP)
            time.sleep(delay)
            os.kill(pid, signal.SIGKILL)
            wait_for(lambda n=gone: ctl.log().count("switch 0x2 disconnected") > n, 10, what="the disconnect noticed")
            cloud1.start_vswitchd()
            wait_for(lambda: len(cloud1.flows()) == want, 15, what="cloud1 programmed again")
        log = ctl.log()
        assert "Traceback" not in log
        lines = [ln for ln in log.splitlines() if "the switch disconnected" in ln]
        assert len(lines) <= 5 and all("retrying" not in ln for ln in lines), lines
    finally:
        ctl.stop()


def test_a_flow_that_is_not_ours_is_said_and_left_alone(fabric):
    """#25: the audit counted only our cookie, so a flow added by another controller (or by hand) above our
    pipeline went unseen. It is now said, with its count, within the 1 s audit, and left alone (an operator's
    flow is not ours to remove); our own flows stay as they are."""
    ctl = fabric.controller().start()
    try:
        programmed(fabric, ctl)
        ovs = fabric.instances["cloud1"]
        ovs.ofctl("add-flow", "br-int", "priority=65535,cookie=0x1234,actions=drop")
        took = time_until(lambda: "site cloud1 (dpid 0x2): 1 flow(s) on the switch are not ours" in ctl.log(), 5,
                          "the foreign flow said")
        assert took < 3.0, f"{took:.2f} s"
        assert ctl.metric("cloudweave_foreign_flows", site="cloud1") == 1
        assert "cookie=0x1234" in ovs.ofctl("dump-flows", "br-int")  # left alone
        assert len(ovs.flows()) == expected(fabric.config, "cloud1")
        ovs.ofctl("del-flows", "br-int", "cookie=0x1234/-1")
        wait_for(lambda: "site cloud1 (dpid 0x2): no flow but ours on the switch again" in ctl.log(), 5,
                 what="the all-clear")
    finally:
        ctl.stop()
