"""Controller replicas on a real 3-member Raft store and real ovs-vswitchd instances: the shards shared, one
master per switch, a killed or frozen master replaced, its stale writes refused by OVS, a store leader lost,
a replica added, a policy applied during a failover."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime

import pytest
import yaml

from cloudweave.config import load_model
from cloudweave.flows.compile import compile_site
from cloudweave.store.shards import site_shards
from cloudweave.testbed.ovs import OvsError
from testkit.harness import ROOT, OvsSites, Replica, Store, wait_for

pytestmark = pytest.mark.ovs
REFERENCE = os.path.join(ROOT, "topologies", "three-clouds.yaml")
SITES = ("cloud1", "cloud2", "onprem")
DPID = {"onprem": 0x1, "cloud1": 0x2, "cloud2": 0x3}


class Cluster:
    def __init__(self, workdir: str):
        self.workdir = workdir
        self.sites = OvsSites(REFERENCE, workdir)
        self.replicas: dict[str, Replica] = {}
        try:
            self.store = Store(workdir)
        except BaseException:
            self.sites.stop()
            raise

    def add(self, name: str, import_file: bool = False) -> Replica:
        r = Replica(name, self.store.remotes, self.workdir, [o.rundir for o in self.sites.instances.values()],
                    self.sites.config if import_file else None)
        self.replicas[name] = r
        return r.start()

    def stop(self) -> None:
        for r in self.replicas.values():
            r.stop()
        self.store.stop()
        self.sites.stop()

    # ---- what the store and the switches say ---------------------------------------------------------------

    def owners(self) -> dict[str, str]:
        """site -> the replica the store names master of its shard."""
        rows = {r["name"]: r for r in self.store.query("Shard")}
        if not rows:
            return {}
        return {site: rows[shard]["owner"] for site, shard in site_shards(SITES, len(rows)).items() if shard in rows}

    def generation(self, site: str) -> int:
        rows = {r["name"]: r for r in self.store.query("Shard")}
        return rows[site_shards(SITES, len(rows))[site]]["generation"]

    def ovs_roles(self, site: str) -> dict[str, str]:
        """replica -> the role OVS reports for its connection (Controller.role, refreshed by ovs-vswitchd)."""
        out = self.sites.instances[site].vsctl("--format=csv", "--data=bare", "--no-headings",
                                               "--columns=target,role", "list", "Controller")
        roles = {}
        for line in out.splitlines():
            target, _, role = line.partition(",")
            roles[os.path.basename(target).removesuffix(".sock")] = role
        return roles

    def flows(self) -> dict[str, list[str]]:
        return {s: self._flows(s) for s in SITES}

    def _flows(self, site: str) -> list[str]:
        """A busy ovs-vswitchd now and then resets a management connection: ask again (not our controller)."""
        for attempt in range(5):
            try:
                return self.sites.instances[site].flows()
            except OvsError:
                if attempt == 4:
                    raise
                time.sleep(0.1)
        raise AssertionError("unreachable")

    def expected(self, config: str | None = None, quarantined: frozenset[str] = frozenset()) -> dict[str, int]:
        model = load_model(config or self.sites.config)[0]
        return {s: len(compile_site(model, s, quarantined=quarantined).flows) for s in SITES}

    def programmed(self, config: str | None = None, quarantined: frozenset[str] = frozenset()) -> None:
        want = self.expected(config, quarantined)
        wait_for(lambda: {s: len(f) for s, f in self.flows().items()} == want, 40, what=f"flows {want}")

    def balanced(self, names: list[str]) -> None:
        quota = -(-len(SITES) // len(names))
        wait_for(lambda: set(self.owners().values()) <= set(names) and len(self.owners()) == len(SITES) and all(
            list(self.owners().values()).count(n) <= quota for n in names), 40, what=f"shards shared by {names}")


@pytest.fixture
def cluster(tmp_path):
    c = Cluster(str(tmp_path))
    try:
        yield c
    finally:
        c.stop()


def flow_mods(r: Replica) -> float:
    return sum(r.metric("cloudweave_flow_mods_total", site=s) or 0.0 for s in SITES)


def master_line_at(r: Replica, site: str, generation: int) -> float | None:
    """When the replica's session confirmed MASTER with `generation` on the site's switch (its log's clock)."""
    pat = re.compile(rf"^(\S+ \S+) INFO cloudweave: site {site} \(dpid {DPID[site]:#x}\): master, generation "
                     rf"{generation}$", re.M)
    m = pat.search(r.log())
    return datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp() if m else None


def reconcile_after(r: Replica, site: str, generation: int) -> str | None:
    """The replica's first reconcile line for the site after it became master with `generation`."""
    log = r.log()
    at = log.find(f"site {site} (dpid {DPID[site]:#x}): master, generation {generation}\n")
    if at < 0:
        return None
    m = re.search(rf"site {site} \(dpid {DPID[site]:#x}\): \d+ flows desired.*\((\d+) flow-mods\)", log[at:])
    return m.group(0) if m else None


def start_three(c: Cluster) -> None:
    c.add("r1", import_file=True)
    c.programmed()
    c.add("r2")
    c.add("r3")
    c.balanced(["r1", "r2", "r3"])


def apply(c: Cluster, edit, *extra: str) -> subprocess.CompletedProcess:
    """Edit a copy of the topology and `cloudweave apply` it."""
    path = os.path.join(c.workdir, f"edit-{time.monotonic_ns()}.yaml")
    with open(c.sites.config) as fh:
        doc = yaml.safe_load(fh)
    edit(doc)
    with open(path, "w") as fh:
        yaml.safe_dump(doc, fh, sort_keys=False)
    out = subprocess.run([sys.executable, "-m", "cloudweave", "apply", path, "--store", c.store.remotes, *extra],
                         capture_output=True, text=True, cwd=ROOT, timeout=60)
    out.path = path  # type: ignore[attr-defined]
    return out


def add_rule(doc: dict) -> None:
    """A policy edit that changes flows at every site (web and db endpoints are everywhere but onprem's db)."""
    doc["security_groups"]["db"]["ingress"].append({"from": "web", "proto": "tcp", "ports": 5432})
    doc["security_groups"]["web"]["ingress"].append({"from": "db", "proto": "tcp", "ports": 8443})


def test_three_replicas_share_the_shards_with_one_master_per_switch(cluster):
    start_three(cluster)
    owners = cluster.owners()
    assert sorted(owners.values()) == ["r1", "r2", "r3"], owners
    for site in SITES:  # OVS's own view: exactly one master, the store's owner; the others slaves
        # OVS refreshes Controller.role on its own schedule: both facts are waited for together.
        wait_for(lambda s=site: sorted(cluster.ovs_roles(s).values()) == ["master", "slave", "slave"]
                 and cluster.ovs_roles(s).get(owners[s]) == "master", 20,
                 what=f"{site}: {owners[site]} master, the others slaves (OVS says {cluster.ovs_roles(site)})")
    # The replicas that joined took their shards by voluntary release: the switches were right, nothing sent.
    assert flow_mods(cluster.replicas["r2"]) == 0
    assert flow_mods(cluster.replicas["r3"]) == 0
    status = subprocess.run([sys.executable, "-m", "cloudweave", "status", "--store", cluster.store.remotes],
                            capture_output=True, text=True, cwd=ROOT, timeout=30)
    assert status.returncode == 0, status.stderr
    assert status.stdout.count(": leader, in the cluster") == 1, status.stdout
    for site, owner in owners.items():
        assert re.search(rf"master {owner} \(generation \d+\), policy 1; sites {site}", status.stdout), status.stdout


def test_a_killed_master_is_replaced_within_a_second_and_sends_nothing(cluster):
    start_three(cluster)
    site = "onprem"
    victim = cluster.replicas[cluster.owners()[site]]
    before = cluster.flows()
    gen = cluster.generation(site)
    killed_at = time.time()
    victim.signal(signal.SIGKILL)
    new = wait_for(lambda: cluster.owners()[site] != victim.name and cluster.generation(site) > gen and
                   cluster.owners()[site], 10, interval_s=0.02, what="a new owner")
    taker = cluster.replicas[new]
    confirmed = wait_for(lambda: master_line_at(taker, site, cluster.generation(site)), 10, what="MASTER confirmed")
    assert confirmed - killed_at < 1.0, f"new master after {confirmed - killed_at:.3f} s"
    line = wait_for(lambda: reconcile_after(taker, site, cluster.generation(site)), 10, what="its reconcile")
    assert line.endswith("(0 flow-mods)"), line
    assert cluster.flows() == before
    wait_for(lambda: cluster.ovs_roles(site).get(new) == "master", 20, what="OVS reports the new master")
    assert list(cluster.ovs_roles(site).values()).count("master") == 1


def test_a_frozen_master_is_replaced_and_its_writes_are_refused_when_it_wakes(cluster):
    start_three(cluster)
    site = "cloud1"
    victim = cluster.replicas[cluster.owners()[site]]
    mods_before = victim.metric("cloudweave_flow_mods_total", site=site) or 0.0
    gen = cluster.generation(site)
    frozen_at = time.time()
    victim.signal(signal.SIGSTOP)
    try:
        new = wait_for(lambda: cluster.generation(site) > gen and cluster.owners()[site], 10, interval_s=0.02,
                       what="a new owner")
        taker = cluster.replicas[new]
        confirmed = wait_for(lambda: master_line_at(taker, site, cluster.generation(site)), 10, what="MASTER")
        assert confirmed - frozen_at < 2.5, f"takeover after {confirmed - frozen_at:.3f} s"
        # While the old master sleeps, the policy changes: the new master programs it.
        out = apply(cluster, add_rule)
        assert out.returncode == 0, out.stderr
        cluster.programmed(out.path)
    finally:
        victim.signal(signal.SIGCONT)
    programmed = cluster.flows()
    # The old master wakes believing it still masters the switch; OVS refuses it (role status or a stale
    # generation), and it writes nothing: the switch keeps the new master's flows.
    wait_for(lambda: re.search(rf"site {site} \(dpid {DPID[site]:#x}\): (demoted to slave|the switch refused MASTER)",
                               victim.log()), 20, what=f"the stale master fenced\n{victim.log()[-3000:]}")
    time.sleep(3)
    assert cluster.flows() == programmed
    assert (victim.metric("cloudweave_flow_mods_total", site=site) or 0.0) == mods_before
    assert cluster.owners()[site] == new


def election_after(cluster: Cluster, dead, killed_at: float) -> tuple[float, int] | None:
    """(seconds after the kill, term) of the first survivor's "elected leader" log line since the kill."""
    wall_at_kill = time.time() - (time.monotonic() - killed_at)
    found = []
    for m in cluster.store.members:
        if m == dead:
            continue
        for line in open(m.path("ovsdb-server.log")):
            said = re.search(r"term (\d+): elected leader", line)
            at = datetime.strptime(line[:23], "%Y-%m-%dT%H:%M:%S.%f").replace(tzinfo=UTC).timestamp()
            if said and at > wall_at_kill:
                found.append((at - wall_at_kill, int(said.group(1))))
    return min(found, default=None)


def test_a_lost_store_leader_pauses_writes_for_under_3s_and_loses_none(cluster):
    from cloudweave.store import client

    start_three(cluster)
    writer = client.connect(cluster.store.remotes, ["Probe"])
    acked: list[tuple[int, float]] = []  # (sequence number, when its commit succeeded)

    def write(seq: int) -> bool:
        status, _ = writer.commit(lambda txn, t: client.StoreIdl.insert(
            txn, t, "Probe", writer="test", seq=seq))
        return status == client.SUCCESS

    seq, killed_at, deadline = 0, None, time.monotonic() + 20
    leader = cluster.store.leader()
    term = int(cluster.store.cluster.status(leader)["Term"])
    while time.monotonic() < deadline:
        if writer.ready and write(seq):
            acked.append((seq, time.monotonic()))
            seq += 1
            if killed_at is not None and acked[-1][1] > killed_at + 0.5:
                break
        else:
            client.run_until([writer], lambda: writer.ready, 5, "reconnecting")
        if killed_at is None and seq == 50:
            os.kill(cluster.store.pid(leader), signal.SIGKILL)
            killed_at = time.monotonic()
        time.sleep(0.02)
    assert killed_at is not None
    after = [t for _, t in acked if t > killed_at]
    assert after, "no write succeeded after the leader was killed"
    gap = after[0] - killed_at
    elected = election_after(cluster, leader, killed_at)
    assert elected is not None, "no survivor logged its election"
    elected_s, terms = elected[0], elected[1] - term
    said = f"writes back {gap:.2f} s after the leader loss, elected after {elected_s:.2f} s in {terms} term(s)"
    print(said)
    # Raft: a follower stands the election timer plus up to 1 s (raft.c's ELECTION_RANGE_MSEC) after the last
    # heartbeat, once per term a split vote costs. Ours: the client finds the new leader within a second of it.
    assert elected_s < terms * (cluster.store.cluster.ELECTION_MS + 1000) / 1000 + 0.5, said
    assert gap - elected_s < 1.0, said
    assert terms > 1 or gap < 3.0, said
    stored = {r["seq"] for r in cluster.store.query("Probe") if r["writer"] == "test"}
    assert {s for s, _ in acked} <= stored  # no acknowledged write lost
    writer.close()
    # The replicas carry on through it: a policy applied now reaches every switch.
    out = apply(cluster, add_rule, "--wait", "30")
    assert out.returncode == 0, out.stdout + out.stderr
    assert [r["version"] for r in cluster.store.query("Policy")] == [2]  # exactly one new version
    cluster.programmed(out.path)
    cluster.store.start(leader)
    cluster.store.cluster.wait_formed(cluster.store.members)
    assert [r["version"] for r in cluster.store.query("Policy")] == [2]


def test_a_replica_that_joins_takes_shards_with_no_flow_mod(cluster):
    cluster.add("r1", import_file=True)
    cluster.programmed()
    cluster.add("r2")
    cluster.balanced(["r1", "r2"])
    mods = {n: flow_mods(r) for n, r in cluster.replicas.items()}
    before = cluster.flows()
    cluster.add("r3")
    cluster.balanced(["r1", "r2", "r3"])
    assert sorted(cluster.owners().values()) == ["r1", "r2", "r3"]
    time.sleep(2)  # the new masters' first reconciles
    assert flow_mods(cluster.replicas["r3"]) == 0
    assert {n: flow_mods(r) for n, r in cluster.replicas.items() if n in mods} == mods
    assert cluster.flows() == before


def test_a_policy_applied_during_a_failover_lands_exactly_once(cluster):
    start_three(cluster)
    victim = cluster.replicas[cluster.owners()["cloud1"]]
    victim.signal(signal.SIGKILL)
    out = apply(cluster, add_rule, "--wait", "30")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "every shard reports version 2 in force" in out.stdout
    assert [r["version"] for r in cluster.store.query("Policy")] == [2]
    cluster.programmed(out.path)
    for site in SITES:  # the flows are the new file's, exactly
        want = compile_site(load_model(out.path)[0], site)
        assert len(cluster.sites.instances[site].flows()) == len(want.flows)


def test_an_invalid_apply_changes_nothing(cluster):
    cluster.add("r1", import_file=True)
    cluster.programmed()
    before = cluster.flows()
    out = apply(cluster, lambda doc: doc["endpoints"]["web1"].update(site="nowhere"))
    assert out.returncode == 1
    assert re.search(r"edit-\d+\.yaml:\d+:\d+: .*nowhere", out.stderr), out.stderr
    assert "not applied; the store keeps the policy in force" in out.stderr
    assert [r["version"] for r in cluster.store.query("Policy")] == [1]
    time.sleep(1)
    assert cluster.flows() == before


def test_a_new_coordinator_continues_from_the_stored_traffic_matrix(cluster):
    start_three(cluster)

    def coordinator() -> str | None:
        names = [r["name"] for r in cluster.store.query("Replica") if r["coordinator"] and time.time() - r["seen"] < 3]
        return names[0] if len(names) == 1 else None

    old = wait_for(coordinator, 20, what="one coordinator")

    def learned() -> dict[tuple, int]:
        return {(r["route"], r["src"], r["dst"]): r["n"] for r in cluster.store.query("Demand")}

    before = wait_for(learned, 20, what="the traffic matrix in the store")
    shares = sorted((r["route"], r["src"], r["dst"], r["paths"], r["shares"]) for r in cluster.store.query("Shares"))
    keys = len(set(before) | {s[:3] for s in shares})
    cluster.replicas[old].signal(signal.SIGKILL)
    new = wait_for(lambda: coordinator() not in (None, old) and coordinator(), 20, what="a new coordinator")
    log = wait_for(lambda: re.search(r"coordinator: this replica runs traffic engineering \((\d+) learned keys from "
                                     r"the store\)", cluster.replicas[new].log()), 20, what="the state restored")
    assert int(log.group(1)) == keys > 0
    # It goes on from there: the same keys, their sample counts carried on (not started again from 0), the
    # shares in force unchanged without traffic to learn from.
    time.sleep(4)
    after = learned()
    assert set(after) == set(before) and all(after[k] >= before[k] for k in before), (before, after)
    assert sorted((r["route"], r["src"], r["dst"], r["paths"], r["shares"])
                  for r in cluster.store.query("Shares")) == shares


def test_a_store_made_anew_takes_over_switches_that_remember_higher_generations(cluster):
    import shutil

    start_three(cluster)  # claims and handoffs: the switches hold generations above the shard count
    remembered = max(cluster.generation(s) for s in SITES)
    assert remembered > len(SITES)
    before = cluster.flows()
    for r in cluster.replicas.values():
        r.stop()
    cluster.store.stop()
    shutil.rmtree(os.path.join(cluster.workdir, "store"))
    cluster.store = Store(cluster.workdir)  # counting from 0 again
    r = cluster.add("r1", import_file=True)
    wait_for(lambda: set(cluster.owners().values()) == {"r1"} and all(
        master_line_at(r, s, cluster.generation(s)) for s in SITES), 30, what="r1 masters every switch")
    assert "claiming again above it" in r.log()
    assert cluster.flows() == before  # nothing to change: the same policy


def test_replicas_write_the_stores_flow_log_domains(cluster):
    """The flow-log key lives in the store (Cluster.flowlog_key): whichever replica masters a site, its samplers
    carry the site's domain under that one key, so the collector of any replica believes them (#24)."""
    from cloudweave.flows.flowlog import site_domain

    c = cluster
    start_three(c)
    out = apply(c, lambda doc: doc.update(flow_logs={}), "--wait", "30")
    assert out.returncode == 0, out.stderr
    key = c.store.query("Cluster")[0]["flowlog_key"]
    assert re.fullmatch(r"[0-9a-f]{32}", key), key
    for site in SITES:
        want = f"obs_domain_id={site_domain(bytes.fromhex(key), site, DPID[site])},"
        wait_for(lambda s=site, w=want: any(w in f for f in c._flows(s)), 20, what=f"{site}: samplers with {want}")
        assert not any(f"obs_domain_id={DPID[site]}," in f for f in c._flows(site))


def collector_port(r: Replica, site: str) -> str | None:
    """The port of the replica's flow-log collector for `site` as its log last said it, None if closed or none."""
    said = re.findall(rf"site {site}: flow-log collector (on 127\.0\.0\.1:(\d+)|closed)", r.log())
    return said[-1][1] or None if said else None


def ipfix_port(c: Cluster, site: str) -> str:
    out = c.sites.instances[site].vsctl("--format=csv", "--data=bare", "--no-headings", "--columns=targets",
                                        "list", "IPFIX")
    return ",".join(t.rpartition(":")[2] for t in out.split())


def limits_said(r: Replica, site: str) -> bool:
    return re.search(rf"site {site}: connection limits lab 64\b", r.log()) is not None


def test_each_sites_flow_log_collector_and_zone_limits_follow_its_master(cluster):
    """controller.roles: a site's IPFIX row is aimed at its master's collector and only its master sets its zone
    limits; when the master dies, both move to the new one."""
    c = cluster
    start_three(c)

    def edit(doc: dict) -> None:
        doc["flow_logs"] = {}
        doc["segments"]["lab"]["max_connections"] = 64

    out = apply(c, edit, "--wait", "30")
    assert out.returncode == 0, out.stderr
    owners = c.owners()
    for site in SITES:
        master = c.replicas[owners[site]]
        wait_for(lambda s=site, m=master: collector_port(m, s) is not None and ipfix_port(c, s) == collector_port(m, s),
                 20, what=f"{site}: its IPFIX row aimed at {master.name}'s collector")
        for other in c.replicas.values():
            if other is not master:
                assert collector_port(other, site) is None, f"{other.name} collects {site} too"
    for site in ("onprem", "cloud2"):  # the sites with lab endpoints (cloud1 has none: no limit to set)
        wait_for(lambda s=site: limits_said(c.replicas[owners[s]], s), 20, what=f"{site}: limits by its master")
        assert [r.name for r in c.replicas.values() if limits_said(r, site)] == [owners[site]]

    site = "cloud2"
    victim = c.replicas[owners[site]]
    victim.signal(signal.SIGKILL)
    new = wait_for(lambda: c.owners()[site] != victim.name and c.owners()[site], 15, what="a new owner")
    taker = c.replicas[new]
    wait_for(lambda: collector_port(taker, site) is not None and ipfix_port(c, site) == collector_port(taker, site),
             20, what=f"{site}: its IPFIX row aimed at {new}'s collector")
    wait_for(lambda: limits_said(taker, site), 20, what=f"{site}: limits set by {new}")


def quarantine_cli(c: Cluster, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cloudweave", "quarantine", *args, "--store", c.store.remotes],
                          capture_output=True, text=True, cwd=ROOT, timeout=60)


def test_a_quarantine_in_the_store_holds_at_every_master_and_through_a_failover(cluster):
    """The quarantine list lives in the store: `cloudweave quarantine add --store` (no file: the endpoint is
    checked against the store's policy) cuts the endpoint off through its site's master, `list --store` shows
    it, the master that takes over after a kill holds it from its first reconcile (0 flow-mods: its desired
    state has the quarantine), and `release --store` restores the flows."""
    c = cluster
    start_three(c)
    model = load_model(c.sites.config)[0]
    site = "cloud2"
    victim_ep = next(e.name for e in model.endpoints if e.site == site)
    out = quarantine_cli(c, "add", victim_ep, "--reason", "by hand")
    assert out.returncode == 0 and out.stdout.strip() == f"{victim_ep} quarantined at site {site} until released", \
        out.stdout + out.stderr
    held = frozenset({victim_ep})
    c.programmed(quarantined=held)
    listed = quarantine_cli(c, "list")
    assert listed.returncode == 0 and listed.stdout.startswith(f"{victim_ep}: since ") and "by cli: by hand" in \
        listed.stdout, listed.stdout + listed.stderr
    unknown = quarantine_cli(c, "add", "no-such-endpoint")
    assert unknown.returncode == 2 and "'no-such-endpoint' is neither an endpoint of the policy in the store" in \
        unknown.stderr, unknown.stderr

    victim = c.replicas[c.owners()[site]]
    gen = c.generation(site)
    victim.signal(signal.SIGKILL)
    new = wait_for(lambda: c.owners()[site] != victim.name and c.generation(site) > gen and c.owners()[site], 15,
                   what="a new owner")
    taker = c.replicas[new]
    line = wait_for(lambda: reconcile_after(taker, site, c.generation(site)), 15, what="its reconcile")
    assert line.endswith("(0 flow-mods)"), line
    assert {s: len(f) for s, f in c.flows().items()} == c.expected(quarantined=held)

    out = quarantine_cli(c, "release", victim_ep)
    assert out.returncode == 0 and out.stdout.strip() == f"{victim_ep} released; the controller restores its traffic"
    c.programmed()
    assert quarantine_cli(c, "list").stdout.startswith("no endpoint is quarantined (the store at ")
