"""A chaos run as the referee: the three-clouds test bed with 3 replicas on a 3-member store, traffic running
(a 5 ms ping, a sequenced UDP stream through a weighted route, an open TCP connection, NAT egress: the replica
tests' `Traffic`), and a random schedule of faults, each under its own traffic and followed by a settle:

- crash: kill -9 of a random site's master (started again after);
- freeze: SIGSTOP of a random site's master for 3 s;
- leader: kill -9 of the store's Raft leader (started again after);
- deleted: every flow of ours at a random site deleted by hand (`ovs-ofctl del-flows`);
- modified: every flow of ours at a random site rewritten to drop by hand (`ovs-ofctl mod-flows`: same count);
- edits: a bad edit applied (refused, nothing changes), then a good one (a rule added) and its revert;
- ovs: a random site's ovs-vswitchd restarted as an upgrade does (`testbed restart-ovs`, flow-restore-wait);
- link: a random underlay link cut (its veth down at one end), then restored;
- quarantine: an endpoint no stream uses quarantined through the store (`cloudweave quarantine add --store`),
  then released: every replica must hold the same list (each one's cloudweave_quarantined_endpoints).

After each settle it checks the invariants: every switch holds exactly the flows it held before the fault
(traffic-engineered paths aside: they follow the learned matrix), or the edit's; OVS reports one master per
switch, and never two at a sample taken every 100 ms during the fault; the packets each stream lost are
within the fault's budget (none for a replica, store or quarantine fault; for flows broken by hand, what the
streams send in REPAIR_BUDGET_S; for an OVS restart or a link cut, in RESTART_BUDGET_S or LINK_BUDGET_S); no
traceback in any replica's log; the quarantine list the same at every replica. It prints each fault, its
recovery time and losses, and the command that replays the schedule. Exit code 1 when an invariant broke.

Run: .venv/bin/python bench/chaos.py [--seconds 600] [--seed N]   (tests/e2e/test_chaos.py: 2 minutes in CI)
"""

from __future__ import annotations

import argparse
import os
import random
import re
import signal
import subprocess
import sys
import time
import urllib.request
from datetime import datetime

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import yaml  # noqa: E402
from on_testbed import running  # noqa: E402

from cloudweave.config import load_model  # noqa: E402
from cloudweave.store import cluster  # noqa: E402
from cloudweave.testbed.build import start_replica, underlay_port  # noqa: E402
from cloudweave.testbed.restart import restart_ovs  # noqa: E402
from cloudweave.testbed.state import State  # noqa: E402
from cloudweave.testbed.traffic import ns_argv  # noqa: E402
from testkit.harness import wait_for  # noqa: E402
from testkit.replica_bed import SITES, RoleWatch, Traffic, flows, nat_ready, owners, replica_log, with_gateways  # noqa: E402,E501

FAULTS = ("crash", "freeze", "leader", "deleted", "modified", "edits", "ovs", "link", "quarantine")
REPAIR_BUDGET_S = 2.0  # flows broken by hand: repaired within this (the flow monitor reports them at once)
RESTART_BUDGET_S = 1.5  # an OVS restart: the userspace datapath forwards nothing while it is gone (< 1 s measured)
LINK_BUDGET_S = 2.5  # a link cut: BFD's 300 ms detection, then the recompile (tests/e2e/test_routes.py: < 2 s)
STREAM_HOSTS = ("lab1", "lab2")  # the endpoints the traffic uses: never quarantined here
RATES = {"ping": 200, "udp": 500, "nat": 200}  # packets per second of each stream (testkit/replica_bed.py)
OURS = "cookie=0xc10d000000000000/0xffff000000000000"


def ofctl(workdir: str, site: str, *args: str) -> str:
    rundir = State.load(workdir).sites[site]["rundir"]
    return subprocess.run(["ovs-ofctl", "-O", "OpenFlow15", *args[:1], f"unix:{rundir}/br-int.mgmt", *args[1:]],
                          capture_output=True, text=True, check=True).stdout


def masters(workdir: str) -> dict[str, int]:
    out = {}
    for site in SITES:
        rundir = State.load(workdir).sites[site]["rundir"]
        roles = subprocess.run(["ovs-vsctl", f"--db=unix:{rundir}/db.sock", "--data=bare", "--no-headings",
                                "--columns=role", "list", "Controller"], capture_output=True, text=True).stdout
        out[site] = roles.split().count("master")
    return out


def tracebacks(workdir: str) -> int:
    return sum(replica_log(workdir, name).count("Traceback") for name in State.load(workdir).replicas)


def lost(results: dict[str, str]) -> dict[str, int | None]:
    """stream -> packets lost (None: it failed)."""
    out: dict[str, int | None] = {}
    for name, text in results.items():
        m = re.match(r"(\d+) of \d+ lost", text)
        out[name] = int(m.group(1)) if m else None
    return out


def apply(workdir: str, edit) -> subprocess.CompletedProcess:
    state = State.load(workdir)
    doc = yaml.safe_load(open(state.topology))
    edit(doc)
    path = os.path.join(workdir, f"chaos-edit-{time.monotonic_ns()}.yaml")
    with open(path, "w") as fh:
        yaml.safe_dump(doc, fh, sort_keys=False)
    return subprocess.run([sys.executable, "-P", "-m", "cloudweave", "apply", path, "--store",
                           state.store["remotes"], "--wait", "30"], capture_output=True, text=True, cwd=ROOT)


def quarantined_at(workdir: str) -> dict[str, float | None]:
    """replica -> the endpoints its core holds quarantined (its cloudweave_quarantined_endpoints gauge)."""
    out = {}
    for name, r in State.load(workdir).replicas.items():
        try:
            text = urllib.request.urlopen(f"http://{r['metrics']}/metrics", timeout=2).read().decode()
            m = re.search(r"^cloudweave_quarantined_endpoints (\S+)$", text, re.M)
            out[name] = float(m.group(1)) if m else None
        except OSError:
            out[name] = None
    return out


def quarantine(workdir: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-P", "-m", "cloudweave", "quarantine", *args, "--store",
                           State.load(workdir).store["remotes"]], capture_output=True, text=True, cwd=ROOT)


def add_rule(doc: dict) -> None:
    doc["security_groups"]["db"]["ingress"].append({"from": "web", "proto": "tcp", "ports": 15432})


def broken(doc: dict) -> None:
    doc["security_groups"]["db"]["ingress"].append({"from": "no-such-group", "proto": "tcp", "ports": 5432})


class Chaos:
    def __init__(self, workdir: str, rng: random.Random):
        self.workdir, self.rng = workdir, rng
        self.baseline = self.snapshot()
        self.doc = yaml.safe_load(open(State.load(workdir).topology))
        self.model = load_model(State.load(workdir).topology)[0]

    def snapshot(self) -> dict[str, list[str]]:
        return {s: flows(self.workdir, s) for s in SITES}

    def settled(self, timeout_s: float = 30.0) -> float:
        """Seconds until every switch holds the baseline again and one master each; on a timeout, what differs
        and the tail of every replica's log (the test bed's directory goes with it)."""
        started = time.monotonic()
        try:
            wait_for(lambda: self.snapshot() == self.baseline and set(masters(self.workdir).values()) == {1},
                     timeout_s, interval_s=0.1, what="the flows and masters as before the fault")
        except AssertionError:
            now = self.snapshot()
            for site in SITES:
                gone, new = set(self.baseline[site]) - set(now[site]), set(now[site]) - set(self.baseline[site])
                if gone or new:
                    print(f"  {site}: {len(gone)} flows gone, {len(new)} new; e.g. gone {sorted(gone)[:2]}, "
                          f"new {sorted(new)[:2]}")
            print(f"  masters per switch (OVS): {masters(self.workdir)}; owners (store): {owners(self.workdir)}")
            for name in State.load(self.workdir).replicas:
                print(f"  --- {name}'s log, last lines:\n" + "\n".join(replica_log(self.workdir, name)
                                                                       .splitlines()[-40:]))
            raise
        return time.monotonic() - started

    def run_fault(self, kind: str) -> tuple[str, float, dict[str, int | None], dict[str, int]]:
        """One fault under traffic: (what, recovery seconds, packets lost per stream, budget per stream)."""
        site = self.rng.choice(SITES)
        budget = {"ping": 0, "udp": 0, "nat": 0, "tcp": 0}
        watch = RoleWatch(self.workdir)
        watch.start()
        traffic = Traffic(self.workdir)
        time.sleep(2)
        at = time.monotonic()
        what, recovered = kind, 0.0
        if kind in ("crash", "freeze"):
            victim, gen = owners(self.workdir)[site]
            pid = State.load(self.workdir).replicas[victim]["pid"]
            what = f"{kind} {victim}, master of {site}"
            os.kill(pid, signal.SIGKILL if kind == "crash" else signal.SIGSTOP)
            try:
                wait_for(lambda: owners(self.workdir)[site][1] > gen, 15, interval_s=0.02,
                         what=f"a new master of {site}")
                recovered = time.monotonic() - at
                time.sleep(max(0.0, 3.0 - recovered))
            finally:
                if kind == "freeze":
                    os.kill(pid, signal.SIGCONT)
        elif kind == "leader":
            state = State.load(self.workdir)
            members = [cluster.load(d) for d in state.store["members"]]
            leader = cluster.leader(members)
            what = f"store leader {os.path.basename(leader.dir)} killed"
            os.kill(cluster.pid(leader), signal.SIGKILL)
            wait_for(lambda: cluster.leader([m for m in members if m != leader]) is not None, 15,
                     what="a new store leader")
            recovered = time.monotonic() - at
        elif kind in ("deleted", "modified"):
            what = f"every flow of ours at {site} {'deleted' if kind == 'deleted' else 'rewritten to drop'} by hand"
            if kind == "deleted":
                ofctl(self.workdir, site, "del-flows", OURS)
            else:
                ofctl(self.workdir, site, "mod-flows", f"{OURS},actions=drop")
            wait_for(lambda: flows(self.workdir, site) == self.baseline[site], 15, interval_s=0.05,
                     what=f"{site}'s flows repaired")
            recovered = time.monotonic() - at
            budget = {name: int(rate * REPAIR_BUDGET_S) for name, rate in RATES.items()} | {"tcp": 0}
        elif kind == "ovs":
            what = f"ovs-vswitchd of {site} restarted (flow-restore-wait)"
            restart_ovs(self.workdir, site, flow_restore_wait=True)
            wait_for(lambda: flows(self.workdir, site) == self.baseline[site], 20, interval_s=0.05,
                     what=f"{site}'s flows after the restart")
            recovered = time.monotonic() - at
            budget = {name: int(rate * RESTART_BUDGET_S) for name, rate in RATES.items()} | {"tcp": 0}
        elif kind == "link":
            peer = self.rng.choice([p for link in self.model.links for p in link.sites if site in link.sites and
                                    p != site])
            what = f"link {site}-{peer} cut at {site}"
            subprocess.run(ns_argv(self.workdir, site, "ip", "link", "set", underlay_port(peer), "down"), check=True)
            try:
                wait_for(lambda: self.snapshot() != self.baseline, 15, interval_s=0.05, what="traffic rerouted")
                recovered = time.monotonic() - at
                time.sleep(1.0)
            finally:
                subprocess.run(ns_argv(self.workdir, site, "ip", "link", "set", underlay_port(peer), "up"),
                               check=True)
            budget = {name: int(rate * LINK_BUDGET_S) for name, rate in RATES.items()} | {"tcp": 0}
        elif kind == "quarantine":
            ep = self.rng.choice([e for e in self.model.endpoints if e.name not in STREAM_HOSTS])
            what = f"{ep.name} at {ep.site} quarantined through the store, then released"
            added = quarantine(self.workdir, "add", ep.name, "--reason", "chaos")
            if added.returncode != 0:
                traffic.results()
                watch.halt.set()
                watch.join()
                return f"quarantine add failed: {added.stderr[-300:]}", 0.0, {"quarantine": None}, {}
            wait_for(lambda: set(quarantined_at(self.workdir).values()) == {1.0} and
                     flows(self.workdir, ep.site) != self.baseline[ep.site], 15, interval_s=0.05,
                     what="the quarantine at every replica and in force at its site")
            recovered = time.monotonic() - at
            released = quarantine(self.workdir, "release", ep.name)
            if released.returncode != 0:
                what += f" (release failed: {released.stderr[-200:]})"
            wait_for(lambda: set(quarantined_at(self.workdir).values()) == {0.0}, 15, interval_s=0.05,
                     what="the release at every replica")
        results = traffic.results()
        watch.halt.set()
        watch.join()
        if kind == "crash":
            start_replica(State.load(self.workdir), load_model(State.load(self.workdir).topology)[0], victim)
        if kind == "leader":
            cluster.start(leader)
            cluster.wait_formed(members)
        self.settled()
        # Most masters OVS reported for one switch at a sample during the fault: one at most.
        return what, recovered, lost(results) | {"masters": max(watch.most.values())}, budget | {"masters": 1}

    def edits(self) -> tuple[str, float, dict[str, int | None], dict[str, int]]:
        """A bad edit (refused: nothing changes), then a good one and its revert, each in force at every switch."""
        bad = apply(self.workdir, broken)
        if bad.returncode == 0 or self.snapshot() != self.baseline:
            return "a bad edit was applied", 0.0, {"edit": None}, {"edit": 0}
        at = time.monotonic()
        good = apply(self.workdir, add_rule)
        if good.returncode != 0:
            return f"a good edit was refused: {good.stderr[-300:]}", 0.0, {"edit": None}, {"edit": 0}
        took = time.monotonic() - at
        changed = self.snapshot()
        reverted = apply(self.workdir, lambda doc: doc.update(self.doc))
        if reverted.returncode != 0 or changed == self.baseline:
            return "the good edit changed no flow, or its revert failed", took, {"edit": None}, {"edit": 0}
        self.settled()
        return "a bad edit refused; a good one in force at every switch, then reverted", took, {"edit": 0}, \
            {"edit": 0}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=600.0, help="how long faults are injected (default 600)")
    p.add_argument("--seed", type=int, default=None, help="the schedule's seed (default: from the clock)")
    p.add_argument("--only", default=",".join(FAULTS), help=f"the kinds of fault to draw from (default: all, "
                   f"{','.join(FAULTS)})")
    args = p.parse_args()
    kinds = tuple(k for k in args.only.split(",") if k)
    if not kinds or set(kinds) - set(FAULTS):
        p.error(f"--only: kinds of fault among {', '.join(FAULTS)}")
    seed = args.seed if args.seed is not None else int(time.time()) % 100_000
    rng = random.Random(seed)
    print(f"chaos: seed {seed}, {args.seconds:.0f} s of faults", flush=True)
    broken_invariants = 0
    rows = []
    with running("three-clouds", with_gateways, replicas=3) as (workdir, _):
        nat_ready(workdir)
        wait_for(lambda: len({o for o, _ in owners(workdir).values()}) == 3, 60, what="one shard per replica")
        chaos = Chaos(workdir, rng)
        end = time.monotonic() + args.seconds
        n = 0
        while time.monotonic() < end:
            n += 1
            kind = rng.choice(kinds)
            started = datetime.now().strftime("%H:%M:%S")
            what, took, losses, budget = chaos.edits() if kind == "edits" else chaos.run_fault(kind)
            over = {k: v for k, v in losses.items() if v is None or v > budget.get(k, 0)}
            traces = tracebacks(workdir)
            ok = not over and traces == 0
            broken_invariants += not ok
            rows.append((kind, took, ok))
            verdict = "" if ok else "  BROKEN: " + (f"over budget {over}" if over else "") + \
                (f" {traces} tracebacks" if traces else "")
            print(f"{n:3d} {started} {what}: recovered in {took * 1000:.0f} ms; packets lost and most masters "
                  f"at once {losses} (at most {budget}){verdict}", flush=True)
    print(f"chaos: {len(rows)} faults, {broken_invariants} broke an invariant")
    for kind in FAULTS:
        took = sorted(t for k, t, _ in rows if k == kind)
        if took:
            print(f"  {kind:<9} {len(took):3d} x, recovery median {took[len(took) // 2] * 1000:.0f} ms, "
                  f"max {took[-1] * 1000:.0f} ms")
    only = "" if kinds == FAULTS else f" --only {','.join(kinds)}"
    print(f"replay: .venv/bin/python bench/chaos.py --seconds {args.seconds:g} --seed {seed}{only}")
    return 1 if broken_invariants else 0


if __name__ == "__main__":
    sys.exit(main())
