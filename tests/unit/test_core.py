"""The core against switches in memory (testkit/fakeswitch.py): its inputs handled one by one, each session
stepped by hand (their workers are not started), so that each path of the reducer is pinned down without
OVS: which switch hears of a change, what a keeper's reply commits, what a refused input leaves alone."""

from __future__ import annotations

import os

import pytest
import yaml
from os_ken.lib.packet import arp, ethernet, packet

from cloudweave.flows.compile import compile_site
from cloudweave.secops import quarantine
from controller.core import Core
from controller.messages import NextHopsStored, PacketIn, PortsSeen, QuarantineAlarm, SwitchUp, Tick
from controller.metrics import Metrics
from controller.session import SwitchSession
from controller.settings import Settings
from controller.watch import ReloadRequests
from testkit.fakeswitch import FakeDatapath
from testkit.harness import ROOT

GATEWAY, GATEWAY_MAC = "198.51.100.254", "02:aa:bb:cc:dd:ee"


@pytest.fixture
def fabric(tmp_path, monkeypatch):
    """A core on a copy of three-clouds.yaml (cloud2 given an uplink gateway), its switches in memory."""
    monkeypatch.setattr(SwitchSession, "start", lambda self: None)  # the test steps each session itself
    with open(os.path.join(ROOT, "topologies", "three-clouds.yaml")) as fh:
        doc = yaml.safe_load(fh)
    doc["sites"]["cloud2"]["uplink_gateway"] = GATEWAY
    config = str(tmp_path / "fabric.yaml")
    write(config, doc)
    metrics = Metrics()
    settings = Settings(config, "unix:/nonexistent", None, quarantine=str(tmp_path / "q.json"))
    core = Core(settings, metrics, ReloadRequests(0.0), False)
    model = core.state.model
    switches = {}
    for site in model.sites:
        names = [e.port for e in model.endpoints_at(site.name)] + \
            [t.name for t in compile_site(model, site.name).tunnels] + ([site.uplink] if site.uplink else [])
        dp = FakeDatapath(site.dpid, {name: n for n, name in enumerate(names, start=1)})
        dp.deliver = lambda msg, dpid=site.dpid: core.published.switches[dpid].deliver(msg)  # as the shim does
        switches[site.name] = dp
        core._handle(SwitchUp(dp))
    step(core)
    yield core, switches, doc, config, metrics
    core.stop()


def write(path: str, doc: dict) -> None:
    with open(path, "w") as fh:
        yaml.safe_dump(doc, fh, sort_keys=False)


def step(core: Core) -> None:
    """What each session's worker does when woken: send what was handed to it, then reconcile."""
    for session in core.sessions.values():
        session._flush_outbox()
        session._step()


def flows_of(core: Core, site: str, quarantined: frozenset[str] = frozenset()) -> int:
    return len(compile_site(core.state.model, site, quarantined=quarantined).flows)


def counter(metrics: Metrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


def test_each_switch_is_programmed_and_an_edit_reaches_only_the_sites_it_changes(fabric):
    core, switches, doc, config, metrics = fabric
    assert {s: len(dp.flows) for s, dp in switches.items()} == {s: flows_of(core, s) for s in switches}
    heard = {s: len(dp.received) for s, dp in switches.items()}
    before = {s: compile_site(core.state.model, s).flows for s in switches}
    ep = next(e for e in core.state.model.endpoints if e.segment == "edge")  # direct mode: its own site only
    doc["endpoints"][ep.name]["mac"] = "02:00:00:00:99:99"
    write(config, doc)
    assert core.reload()
    step(core)
    assert {s: len(dp.flows) for s, dp in switches.items()} == {s: flows_of(core, s) for s in switches}
    assert any(bytes.fromhex("020000009999") in f.match + f.instructions for f in switches[ep.site].flows.values())
    changed = {s for s in switches if compile_site(core.state.model, s).flows != before[s]}
    assert changed and changed != set(switches)
    assert {s for s, dp in switches.items() if len(dp.received) != heard[s]} == changed  # the others hear nothing
    assert counter(metrics, "cloudweave_reloads_total", result="applied") == 1


def test_a_bad_edit_is_refused_and_changes_nothing(fabric):
    core, switches, doc, config, metrics = fabric
    state = core.state
    with open(config, "a") as fh:
        fh.write("  bogus: [\n")
    assert not core.reload()
    assert core.state is state
    assert counter(metrics, "cloudweave_reloads_total", result="rejected") == 1


def test_a_tunnel_seen_down_reroutes_and_its_return_restores(fabric):
    core, switches, _, _, metrics = fabric
    tunnel = next(t for t in core.published.tunnels["onprem"] if t.peer == "cloud1")
    dpid = core.state.model.site("onprem").dpid
    no = switches["onprem"].ports[tunnel.name]
    core._handle(PortsSeen(dpid, ((tunnel.name, no, True),), complete=False))
    assert core.state.down == frozenset()
    core._handle(PortsSeen(dpid, ((tunnel.name, no, False),), complete=False))
    assert core.state.down == frozenset({("cloud1", "onprem")})
    assert counter(metrics, "cloudweave_link_changes_total", link="cloud1-onprem", state="down") == 1
    core._handle(PortsSeen(dpid, ((tunnel.name, no, True),), complete=False))
    assert core.state.down == frozenset()


def arp_reply(core: Core, site: str, mac: str) -> bytes:
    s = core.state.model.site(site)
    pkt = packet.Packet()
    pkt.add_protocol(ethernet.ethernet(s.nat_mac, mac, ethernet.ether.ETH_TYPE_ARP))
    pkt.add_protocol(arp.arp_ip(arp.ARP_REPLY, mac, GATEWAY, s.nat_mac, str(s.nat_ip)))
    pkt.serialize()
    return bytes(pkt.data)


def test_the_next_hop_is_asked_learned_from_the_uplink_only_and_shared(fabric):
    core, switches, _, _, metrics = fabric
    dp, site = switches["cloud2"], core.state.model.site("cloud2")
    core._handle(Tick())
    step(core)
    assert "OFPPacketOut" in dp.received  # the ARP for the uplink gateway, sent by the session
    assert [s for s, d in switches.items() if "OFPPacketOut" in d.received] == ["cloud2"]
    reply = arp_reply(core, "cloud2", GATEWAY_MAC)
    core._handle(PacketIn(site.dpid, reply, in_port=dp.ports[site.uplink] + 100))  # not the uplink: refused
    assert core.state.next_hops == ()
    assert counter(metrics, "cloudweave_next_hop_refused_total", site="cloud2") == 1
    core._handle(PacketIn(site.dpid, reply, in_port=dp.ports[site.uplink]))
    assert core.state.next_hops == (("cloud2", GATEWAY_MAC),)
    assert counter(metrics, "cloudweave_next_hop_changes_total", site="cloud2") == 1
    # Alone, this controller masters every site: the store's word does not override what it learned itself.
    core._handle(NextHopsStored((("cloud2", "02:00:00:00:00:66"), ("onprem", "02:00:00:00:00:77"))))
    assert core.state.next_hops == (("cloud2", GATEWAY_MAC), ("onprem", "02:00:00:00:00:77"))


def test_an_alarm_cuts_the_endpoint_off_first_then_writes_the_list(fabric, tmp_path):
    core, switches, _, _, metrics = fabric
    ep = next(e for e in core.state.model.endpoints if e.site == "cloud2")
    core._handle(QuarantineAlarm(ep.name, "scan", {"ports": 100}, 30.0, 0.0))
    assert core.state.quarantined == frozenset({ep.name})
    assert [(e.endpoint, e.source) for e in quarantine.load(str(tmp_path / "q.json"))] == [(ep.name, "auto")]
    step(core)
    held = frozenset({ep.name})
    assert len(switches["cloud2"].flows) == flows_of(core, "cloud2", held) != flows_of(core, "cloud2")
    core._handle(QuarantineAlarm(ep.name, "scan again", {}, 30.0, 0.0))  # already held: nothing new
    assert len(quarantine.load(str(tmp_path / "q.json"))) == 1
    quarantine.release(str(tmp_path / "q.json"), ep.name)
    core._handle(Tick())
    assert core.state.quarantined == frozenset()


def test_a_compile_failure_keeps_the_state_and_every_switch_as_they_were(fabric, monkeypatch):
    core, switches, doc, config, metrics = fabric
    state, flows = core.state, {s: dict(dp.flows) for s, dp in switches.items()}
    monkeypatch.setattr(core.compiler, "compile", lambda *a, **k: 1 / 0)
    ep = next(e for e in core.state.model.endpoints if e.site == "cloud1")
    core._handle(QuarantineAlarm(ep.name, "scan", {}, 30.0, 0.0))
    assert core.state is state
    step(core)
    assert {s: dict(dp.flows) for s, dp in switches.items()} == flows
    assert counter(metrics, "cloudweave_compile_failures_total") == 1
    assert quarantine.load(core.settings.quarantine) == ()  # not cut off: not written either


def test_a_second_connection_with_a_dpid_is_refused_while_the_first_lives(fabric):
    """ONOS's rule: an impostor (or a confused peer) announcing a site's dpid gets nothing and is closed; the
    switch that holds the session keeps it. Once the first connection has ended, a new one takes over."""
    core, switches, _, _, metrics = fabric
    real = switches["cloud1"]
    impostor = FakeDatapath(real.id, dict(real.ports))
    impostor.deliver = lambda msg: core.published.switches[real.id].deliver(msg)
    core._handle(SwitchUp(impostor))
    assert not impostor.is_active and not impostor.flows and impostor.received == []
    assert core.sessions[real.id].dp is real
    assert counter(metrics, "cloudweave_duplicate_switch_connections_total", site="cloud1") == 1
    real.close()  # the first connection ends (its SwitchDown not yet handled): the next one is served
    again = FakeDatapath(real.id, dict(real.ports))
    again.deliver = lambda msg: core.published.switches[real.id].deliver(msg)
    core._handle(SwitchUp(again))
    assert core.sessions[real.id].dp is again
    step(core)
    assert len(again.flows) == flows_of(core, "cloud1")


def test_a_connection_is_gone_once_its_peer_closed_it_and_never_blocks_to_say_so():
    import socket
    import time as clock
    from types import SimpleNamespace

    from controller.peer_gone import peer_gone

    ours, theirs = socket.socketpair()
    ours.settimeout(5.0)  # as os-ken's Datapath sets it: a blocking peek would wait this long
    dp = SimpleNamespace(is_active=True, socket=ours)
    started = clock.monotonic()
    assert not peer_gone(dp)  # idle
    theirs.sendall(b"x")
    assert not peer_gone(dp)  # bytes to read: alive
    assert ours.recv(1) == b"x"
    theirs.close()
    assert peer_gone(dp)  # end of stream waiting to be read
    assert clock.monotonic() - started < 0.5
    ours.close()
    assert peer_gone(dp)  # closed on our side (os-ken closed it before its end reached the core)
    assert peer_gone(SimpleNamespace(is_active=False, socket=None))
    assert peer_gone(SimpleNamespace(is_active=False, socket=None))
