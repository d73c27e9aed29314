"""Replica services and their cores on a real store (one ovsdb-server member), with switches in memory
(testkit/fakeswitch.py) instead of ovs-vswitchd: each replica's rounds and each core's messages are driven on
this thread, so the paths between the store, the replica service and the core are pinned down one by one:
mastership becomes each session's role, an automatic quarantine made at one replica is held by the other,
a next hop learned by a site's master reaches the other replica's state."""

from __future__ import annotations

import os
import time

import pytest
import yaml
from os_ken.lib.packet import arp, ethernet, packet

from cloudweave.flows.compile import compile_site
from cloudweave.store import client
from controller.core import Core
from controller.messages import PacketIn, QuarantineAlarm, SwitchUp, Tick
from controller.metrics import Metrics
from controller.quarantine_keeper import StoreFeed
from controller.replica import ReplicaService
from controller.session import SwitchSession
from controller.settings import Settings
from controller.watch import ReloadRequests
from testkit.fakeswitch import FakeDatapath, ofp
from testkit.harness import ROOT, Store, store_rows

pytestmark = pytest.mark.ovs
GATEWAY, GATEWAY_MAC = "198.51.100.254", "02:aa:bb:cc:dd:ee"


class Member:
    """One replica: its service on the store, its core, a switch in memory per site (its own connection)."""

    def __init__(self, name: str, store: Store, workdir: str, import_file: str | None = None):
        self.name = name
        self.service = ReplicaService(name, store.remotes, f"unix:/nonexistent/{name}.sock",
                                      os.path.join(workdir, f"{name}-policy"), Metrics())
        version, path = self.service.fetch_policy(import_file, False)
        settings = Settings(path, "unix:/nonexistent", None, store=store.remotes, replica=name)
        listed = StoreFeed(self.service.stored_quarantine(), self.service.write_quarantine)
        self.core = Core(settings, Metrics(), ReloadRequests(0.0), False, (), version, self.service.flowlog_key(),
                         listed)
        self.posted: list = []
        self.service._published, self.service._post = (lambda: self.core.published), self.posted.append
        model = self.core.state.model
        self.switches = {}
        for site in model.sites:
            names = [e.port for e in model.endpoints_at(site.name)] + \
                [t.name for t in compile_site(model, site.name).tunnels] + ([site.uplink] if site.uplink else [])
            dp = FakeDatapath(site.dpid, {n: i for i, n in enumerate(names, start=1)})
            dp.deliver = lambda msg, dpid=site.dpid: self.core.published.switches[dpid].deliver(msg)
            self.switches[site.name] = dp
            self.core._handle(SwitchUp(dp))

    def turn(self) -> None:
        """A round of the replica service, the messages it posted handled by the core, each session stepped."""
        self.service.round()
        posted, self.posted[:] = list(self.posted), []
        for msg in (*posted, Tick()):  # and time passes, as the core's loop ticks
            self.core._handle(msg)
        for session in self.core.sessions.values():
            session._flush_outbox()
            session._step()

    def close(self) -> None:
        self.core.stop()
        for s in self.service._sessions():
            s.close()


def turn_until(members: list[Member], done, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not done():
        assert time.monotonic() < deadline, f"timed out after {timeout_s} s waiting for {what}"
        for m in members:
            m.turn()
        time.sleep(0.02)


@pytest.fixture
def cluster(tmp_path, monkeypatch):
    yield from _cluster(tmp_path, monkeypatch, listed=False)


@pytest.fixture
def listed_cluster(tmp_path, monkeypatch):
    """The same, with the policy's `replicas:` list naming r1 and r2."""
    yield from _cluster(tmp_path, monkeypatch, listed=True)


def _cluster(tmp_path, monkeypatch, listed: bool):
    monkeypatch.setattr(SwitchSession, "start", lambda self: None)  # this thread steps each session
    with open(os.path.join(ROOT, "topologies", "three-clouds.yaml")) as fh:
        doc = yaml.safe_load(fh)
    doc["sites"]["cloud2"]["uplink_gateway"] = GATEWAY
    if listed:
        doc["replicas"] = {name: f"unix:/nonexistent/{name}.sock" for name in ("r1", "r2")}
    config = str(tmp_path / "fabric.yaml")
    with open(config, "w") as fh:
        yaml.safe_dump(doc, fh, sort_keys=False)
    store = Store(str(tmp_path), members=1)
    members: list[Member] = []
    try:
        members.append(Member("r1", store, str(tmp_path), import_file=config))
        members.append(Member("r2", store, str(tmp_path)))
        yield members, store
    finally:
        for m in members:
            m.close()
        store.stop()


def masters(m: Member) -> set[str]:
    return set(m.core.published.mastered or ())


def test_mastership_quarantine_and_next_hops_go_through_the_store(cluster):
    (r1, r2), store = cluster
    sites = {s.name for s in r1.core.state.model.sites}
    turn_until([r1, r2], lambda: masters(r1) | masters(r2) == sites and not masters(r1) & masters(r2), 30,
               "every site mastered by one replica")
    for m in (r1, r2):  # a master holds MASTER at its switches and has programmed them; a slave wrote nothing
        for site, dp in m.switches.items():
            if site in masters(m):
                want = len(compile_site(m.core.state.model, site).flows)
                turn_until([r1, r2], lambda dp=dp, want=want: dp.role == ofp.OFPCR_ROLE_MASTER and
                           len(dp.flows) == want, 20, f"{m.name} programs {site}")
            else:
                assert not dp.flows and "OFPBundleCtrlMsg" not in dp.received, (m.name, site)

    # An automatic quarantine raised at the master of the endpoint's site: cut off there, written to the store,
    # held by the other replica too.
    model = r1.core.state.model
    owner = r1 if "cloud1" in masters(r1) else r2
    other = r2 if owner is r1 else r1
    ep = next(e.name for e in model.endpoints if e.site == "cloud1")
    owner.core._handle(QuarantineAlarm(ep, "scan", {"ports": 100}, 60.0, time.time()))
    assert ep in owner.core.state.quarantined
    turn_until([r1, r2], lambda: ep in other.core.state.quarantined, 10, "the other replica holding it")
    rows = store_rows(store.remotes, "Quarantine")
    assert [(r["endpoint"], r["source"], r["written_by"]) for r in rows] == [(ep, "auto", owner.name)]

    # A next hop learned by cloud2's master reaches the other replica's state (a new master starts from it).
    nat_master = r1 if "cloud2" in masters(r1) else r2
    follower = r2 if nat_master is r1 else r1
    site = model.site("cloud2")
    pkt = packet.Packet()
    pkt.add_protocol(ethernet.ethernet(site.nat_mac, GATEWAY_MAC, ethernet.ether.ETH_TYPE_ARP))
    pkt.add_protocol(arp.arp_ip(arp.ARP_REPLY, GATEWAY_MAC, GATEWAY, site.nat_mac, str(site.nat_ip)))
    pkt.serialize()
    uplink = nat_master.switches["cloud2"].ports[site.uplink]
    follower.core._handle(PacketIn(site.dpid, bytes(pkt.data), in_port=uplink))  # not its site: ignored
    assert dict(follower.core.state.next_hops).get("cloud2") is None
    nat_master.core._handle(PacketIn(site.dpid, bytes(pkt.data), in_port=uplink))
    assert dict(nat_master.core.state.next_hops)["cloud2"] == GATEWAY_MAC
    turn_until([r1, r2], lambda: dict(follower.core.state.next_hops).get("cloud2") == GATEWAY_MAC, 10,
               "the next hop at the other replica")


def test_a_claim_by_a_name_the_policy_does_not_list_is_taken_back_by_the_lock_holder(listed_cluster):
    (r1, r2), store = listed_cluster
    sites = {s.name for s in r1.core.state.model.sites}
    turn_until([r1, r2], lambda: masters(r1) | masters(r2) == sites, 30, "every site mastered")
    owner = r1 if "cloud1" in masters(r1) else r2
    shard = dict(owner.core.published.site_shards)["cloud1"]
    forger = client.connect(store.remotes, ["Shard"])
    try:
        def forge(txn, tables):
            row = next(r for r in tables["Shard"].rows.values() if r.name == shard)
            row.owner, row.generation = "east", row.generation + 100
        assert forger.commit(forge)[0] == client.SUCCESS
    finally:
        forger.close()
    turn_until([r1, r2], lambda: {r["owner"] for r in store_rows(store.remotes, "Shard") if r["name"] == shard}
               == {owner.name}, 10, "the lock holder claiming its shard again")
    assert "cloud1" in masters(owner)
    assert owner.service.metrics.replica_forged_claims._value.get() == 1
