"""A switch's session against a switch in memory (testkit/fakeswitch.py): its steps called directly, each test a
few milliseconds. What the real-OVS tests (tests/ovs/test_sessions.py) show end to end, these pin down one
path at a time, the paths a real switch rarely takes among them."""

import time

import pytest

from cloudweave.config import load_model
from cloudweave.flows.compile import compile_site
from controller.metrics import Metrics
from controller.session import Role, SwitchSession
from controller.te_loop import port_stats_request
from testkit.fakeswitch import FakeDatapath, ofp, parser
from testkit.harness import ROOT

SITE = "cloud2"  # three-clouds.yaml: endpoints of every mode (NAT too), routed classes (groups), a service


@pytest.fixture
def switch():
    model = load_model(f"{ROOT}/topologies/three-clouds.yaml")[0]
    desired = compile_site(model, SITE)
    site = model.site(SITE)
    names = [e.port for e in model.endpoints_at(SITE)] + [t.name for t in desired.tunnels] + \
        ([site.uplink] if site.uplink else [])
    dp = FakeDatapath(site.dpid, {name: n for n, name in enumerate(names, start=1)})
    metrics = Metrics()
    session = SwitchSession(dp, SITE, metrics, lambda ports: None)
    dp.deliver = session.deliver
    session.set_desired(desired)
    return dp, session, desired, metrics


def programmed(dp: FakeDatapath, desired) -> bool:
    return len(dp.flows) == desired.flow_count and len(dp.groups) == len(desired.groups)


def counter(metrics: Metrics, name: str) -> float:
    return metrics.registry.get_sample_value(name, {"site": SITE}) or 0.0


def test_a_session_programs_the_switch_in_one_bundle_and_then_sends_nothing(switch):
    dp, session, desired, _ = switch
    assert desired.groups, "the fixture's site must have groups"
    session._step()
    assert programmed(dp, desired)
    assert dp.received.count("OFPBundleCtrlMsg") == 2  # open, commit: one bundle
    assert session.status().in_step is desired  # what other threads see: one value, taken at once
    seen = len(dp.received)
    session._step()  # nothing changed: nothing sent, nothing read
    assert len(dp.received) == seen


def test_the_count_audit_finds_a_deleted_flow_and_the_next_step_repairs_it(switch):
    dp, session, desired, metrics = switch
    session._step()
    before = dict(dp.flows)
    dp.delete_one()
    session._audit()
    assert session.installed is None and counter(metrics, "cloudweave_switch_drift_total") == 1
    session._step()
    assert dp.flows.keys() == before.keys()


def test_the_full_audit_finds_flows_rewritten_in_place(switch):
    """The count stays the same: only the full audit (a read-back) sees it. It raised TypeError on every switch
    before it was fixed, which counted as the switch's failure and hid it."""
    dp, session, desired, metrics = switch
    session._step()
    good = dict(dp.flows)
    dp.rewrite_all()  # actions=drop, every flow
    session._audit()  # the count audit: same count, same groups
    assert session.installed is not None
    session._full_audit_at = 0.0
    session._audit()
    assert session.installed is None and counter(metrics, "cloudweave_switch_drift_total") == 1
    assert counter(metrics, "cloudweave_session_errors_total") == 0
    session._step()
    assert dp.flows == good


def test_a_rejected_bundle_changes_nothing_and_names_what_was_refused(switch):
    from controller.session import RequestFailed

    dp, session, desired, _ = switch
    dp.reject = ofp.OFPXMT_OFB_IPV4_SRC  # anti-spoofing and ACL flows match on it
    with pytest.raises(RequestFailed, match=r"the switch rejected \d+ of \d+ messages .*ipv4_src") as failed:
        session._step()
    assert dp.flows == {} and dp.groups == {}  # atomic: not one flow-mod of the bundle applied
    assert dp.received.count("OFPBundleCtrlMsg") == 2  # open, discard: never committed
    session._failed(str(failed.value))  # what the worker does: read back at the next attempt
    dp.reject = None
    session._step()
    assert programmed(dp, desired)


def test_a_stale_generation_is_refused_and_the_session_writes_nothing(switch):
    dp, session, desired, _ = switch
    dp.generation = 7  # another master took the switch with generation 7
    session.set_role(Role("master", 5))
    session._step()
    status = session.status()
    assert status.role.kind == "stale" and status.switch_generation == 7 and status.in_step is None
    assert dp.flows == {}  # no write after a refused role
    session.set_role(Role("master", 8))
    session._step()
    assert session.role == Role("master", 8) and programmed(dp, desired)


def test_a_frozen_switch_fails_only_its_own_ask_and_by_its_deadline(switch):
    dp, session, _, _ = switch
    answered = session.ask(port_stats_request, multi=True)
    session._flush_outbox()  # what the worker does
    got = answered.wait(time.monotonic() + 1.0)
    assert got is not None and got[0][0].xid is not None
    dp.frozen = True
    asked = session.ask(lambda d: parser.OFPPortStatsRequest(d, 0, d.ofproto.OFPP_ANY), multi=True)
    session._flush_outbox()
    started = time.monotonic()
    assert asked.wait(started + 0.2) is None
    assert time.monotonic() - started < 0.5
    assert not session._pending  # nothing left waiting for the frozen switch


def test_a_master_demoted_mid_reconcile_applies_nothing_and_writes_no_more(switch):
    """Another replica takes the switch while this one's bundle is on its way: OVS refuses the commit of a
    slave, the switch tells the session (OFPT_ROLE_STATUS), and the session asks for nothing more."""
    from controller.session import RequestFailed

    dp, session, desired, _ = switch
    session.set_role(Role("master", 5))

    def taken() -> None:
        dp.role, dp.generation = ofp.OFPCR_ROLE_SLAVE, 9
        session.demoted(9)

    dp.on_commit = taken
    with pytest.raises(RequestFailed) as failed:
        session._step()
    assert dp.flows == {} and session.status().role == Role("slave", 9)
    session._failed(str(failed.value))
    dp.on_commit = None
    seen = len(dp.received)
    session._step()  # it still wants master with 5, below the switch's 9: it does not even ask
    assert dp.flows == {} and "OFPRoleRequest" not in dp.received[seen:]
    assert not any(k.startswith("raw") or k == "OFPBundleCtrlMsg" for k in dp.received[seen:])


def test_the_count_audit_says_flows_that_are_not_ours_and_leaves_them(switch):
    import dataclasses

    dp, session, desired, metrics = switch
    session._step()
    ours = next(iter(dp.flows.values()))
    foreign = dataclasses.replace(ours, cookie=0x1234, priority=65535)  # a hand edit above our pipeline
    dp.flows[foreign.key] = foreign
    session._audit()
    assert counter(metrics, "cloudweave_foreign_flows") == 1
    assert session.installed is not None and foreign.key in dp.flows  # not drift of ours, and left alone
    del dp.flows[foreign.key]
    session._audit()
    assert counter(metrics, "cloudweave_foreign_flows") == 0
