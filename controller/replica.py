"""One controller replica's part in the cluster, on a thread of its own: the store's sessions, the shard locks,
the claims, the policy, the learned next hops and the traffic engineer's state.

Who masters a shard (a group of sites, cloudweave.store.shards):
1. every replica queues on every shard's OVSDB lock (one store session per lock: python-ovs has one lock per
   session). The lock is only the failure detector and the queue: a holder that dies or freezes loses it
   within milliseconds or about two inactivity probes;
2. a replica that holds a lock, on a session that reached the leader and is monitoring, claims the shard:
   `Shard{owner=me, generation=g}` with g = `Cluster.generation + 1`, compare-and-set on the counter in one
   transaction that also asserts the lock. The counter is global, so a switch's generation only grows, also
   when its site moves to another shard;
3. the core then sends OFPCR_ROLE_MASTER with g to each switch of the shard (controller.session), which
   demotes whoever held it and refuses the old master's writes; every other replica holds SLAVE.
A replica stops acting as master when the store shows a newer claim or the switch demotes it, not when it
merely loses the lock (a store leader change re-races the locks; keeping the role then is safe, since the
switch fences any stale writer).

Balance: every replica computes the same assignment from the rows (store.shards.assignment); a holder whose
shard should be elsewhere names the receiver in `Shard.handoff` and re-queues; whoever else is granted that
lock passes it on while the named receiver is live, so the shard reaches it in a few lock grants.

One replica also holds the coordinator lock: it runs the traffic engineer (counters read through any session,
master or slave: stats requests are allowed to slaves) and keeps its state in the store, from which every
replica takes the shares in force and the next coordinator continues.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

import ovs.poller
from os_ken.lib import hub

from cloudweave.config import load_model
from cloudweave.flowlog import key as flowlog_key
from cloudweave.flowlog.key import new_key
from cloudweave.secops import stored
from cloudweave.store import client, ops
from cloudweave.store.policy import read_files, write_out
from cloudweave.store.shards import assignment, lock_name, shard_name
from controller.messages import Mastership, NextHopsStored, PolicyStored, QuarantineStored, WeightsAdopted

LOG = logging.getLogger("cloudweave.replica")
MAIN_TABLES = ("Cluster", "Operator", "Policy", "Shard", "Replica", "NextHop", "Shares", stored.TABLE)
LOCK_TABLES = ("Cluster", "Shard")
COORDINATOR_TABLES = ("Replica", "Demand", "Shares")
COORDINATOR_LOCK = "cloudweave_coordinator"
HEARTBEAT_S = 1.0
LIVE_S = 3.0  # a replica not seen this long is not given shards (balance only: failover never waits for it)
FORGET_S = 120.0  # the coordinator removes replicas not seen this long (their controller targets go too)
HANDOFF_S = 5.0  # a handoff to a receiver that never takes the lock lapses after this
BALANCE_S = 2.0  # at most one voluntary release per this long
TICK_MS = 20
IDLE_ROUND_S = 0.1  # with nothing changed, the timers (heartbeat, balance, handoff) are looked at this often


def _first(rows: Any) -> Any:
    return next(iter(rows.values()), None)


class ReplicaService:
    def __init__(self, name: str, remotes: str, target: str, policy_dir: str, metrics: Any):
        self.name = name
        self.remotes = remotes
        self.target = target  # this replica's switch target template (controller.settings.switch_target_for)
        self.policy_dir = policy_dir
        self.metrics = metrics
        self.main = client.StoreIdl(remotes, MAIN_TABLES)
        self.locks: dict[str, client.StoreIdl] = {}
        self.coordinator_idl = client.StoreIdl(remotes, COORDINATOR_TABLES, lock=COORDINATOR_LOCK)
        self.active = True
        self.started = time.time()
        self.mine: dict[str, int] = {}  # shard -> the generation this replica committed for it
        self._claimed: set[str] = set()  # shards whose current lock grant has been acted on
        self._passed_at: dict[str, float] = {}
        self._claimed_at: dict[str, float] = {}  # shard -> when this replica last claimed it
        self._balanced_at = 0.0
        self._beat_at = 0.0
        self._policy_version = 0
        self._posted: dict[str, Any] = {}
        self.coordinator = False
        self.targets: tuple[str, ...] = (target,)  # every replica's target template, own included
        self._refused_targets: set[tuple[str, str]] = set()  # said once each
        self._forged: dict[str, tuple[str, int]] = {}  # shard -> the unlisted claim last taken back
        self._te_lock = threading.Lock()
        self._quarantine_lock = threading.Lock()
        self._quarantine_writes: list[Any] = []  # entries the core made, to write (under _quarantine_lock)
        self._te_pending: dict | None = None  # the traffic engineer's state to write (coordinator only)
        self.te_restore: dict | None = None  # the stored state a new coordinator's engine starts from
        self._closed = threading.Event()
        self._seen: tuple = ()
        self._next_round = 0.0
        self._post: Callable[[Any], None] = lambda msg: None
        self._published: Callable[[], Any] = lambda: None

    # ---- start: the policy first ---------------------------------------------------------------------------

    def fetch_policy(self, import_file: str | None, force_import: bool) -> tuple[int, str]:
        """Wait for the store (and for a policy in it); import `import_file` when the store has no policy (or
        `force_import`); write the stored files out. (version, path of the main file). A replica may be
        started before the store holds anything: it waits, and says so once."""
        said = ""

        def say(what: str) -> None:
            nonlocal said
            if what != said:
                LOG.warning("replica %s: %s", self.name, what)
                said = what

        while True:
            try:
                client.run_until([self.main], lambda: self.main.ready, 5.0, f"connecting to {self.remotes}")
            except client.StoreUnavailable as exc:
                say(f"{exc}; still trying")
                continue
            have = ops.stored_policy(self.main)
            if import_file and (have is None or force_import):
                model, _ = load_model(import_file)  # ConfigError: the caller reports it; nothing is written
                applied = ops.publish(self.main, read_files(import_file, model.files), len(model.sites))
                LOG.info("imported %s into the store as policy version %d%s", import_file, applied.version,
                         "" if applied.changed else " (the store already held exactly these files)")
                have = ops.stored_policy(self.main)
                import_file = None
            if have is not None:
                break
            say(f"the store at {self.remotes} holds no policy yet; waiting for `cloudweave apply FILE --store "
                f"{self.remotes}`")
            client.run_until([self.main], lambda: ops.stored_policy(self.main) is not None or not self.main.ready,
                             3600.0, "waiting for a policy")
        version, files = have
        self._policy_version = version
        return version, write_out(files, self.policy_dir)

    def flowlog_key(self) -> bytes | None:
        """The store's flow-log key (every replica expects the same observation domains), made if the store
        has none yet (a store made before it had one)."""
        def build(txn, tables):
            cluster = _first(tables["Cluster"].rows)
            if cluster is None:
                return None
            if cluster.flowlog_key:
                return cluster.flowlog_key
            cluster.verify("flowlog_key")
            cluster.flowlog_key = new_key()
            return cluster.flowlog_key

        try:
            status, text = client.commit_retrying(self.main, build)
            if status not in (client.SUCCESS, client.UNCHANGED):
                # Not a key the store holds (a refused write returns the one this replica made, or the error):
                # expecting it would reject every record the other replicas' samplers write.
                raise client.StoreUnavailable(f"the store did not keep a flow-log key: {status} {text or ''}")
            return flowlog_key.parse(text, "the store's Cluster.flowlog_key") if text else None
        except (client.StoreUnavailable, flowlog_key.KeyFileError) as exc:
            LOG.error("replica %s: no flow-log key from the store (%s); flow records are not authenticated",
                      self.name, exc)
            return None

    def stored_quarantine(self) -> tuple:
        """The quarantine list as the store has it (at start: the core begins from it)."""
        entries = stored.entries_of(self.main.rows(stored.TABLE))
        self._posted["quarantine"] = entries
        return entries

    def write_quarantine(self, entry: Any) -> None:
        """An entry this replica's core made (an automatic quarantine, or one held longer): written at the next
        round. Called from the core's thread."""
        with self._quarantine_lock:
            self._quarantine_writes.append(entry)

    def stored_shares(self) -> tuple:
        return _shares_of(self.main.rows("Shares"))

    # ---- the loop --------------------------------------------------------------------------------------------

    def start(self, published: Callable[[], Any], post: Callable[[Any], None]) -> Any:
        self._published, self._post = published, post
        return hub.spawn(self.run)

    def stop(self) -> None:
        """Leave the cluster cleanly (the heartbeat row goes, the locks are released at once)."""
        self.active = False
        self._closed.wait(2.0)

    def close(self) -> None:
        """On a clean stop: drop the heartbeat row (its controller targets go with it) and every session."""
        try:
            if self.main.ready:
                status, _ = self.main.commit(lambda txn, t: [r.delete() for r in list(t["Replica"].rows.values())
                                                             if r.name == self.name])
                LOG.info("replica %s leaves the cluster (%s)", self.name, status)
        except Exception:  # noqa: BLE001 - best effort on the way out
            LOG.exception("replica %s: leaving the cluster", self.name)
        for s in [self.main, self.coordinator_idl, *self.locks.values()]:
            s.close()

    def run(self) -> None:
        while self.active:
            try:
                self.round()
            except Exception:  # noqa: BLE001 - one bad round must not stop the replica
                LOG.exception("replica %s", self.name)
                time.sleep(0.2)
            poller = ovs.poller.Poller()
            for s in self._sessions():
                s.wait(poller)
            poller.timer_wait(TICK_MS)
            poller.block()
        self.close()
        self._closed.set()

    def _sessions(self) -> list[client.StoreIdl]:
        return [self.main, self.coordinator_idl, *self.locks.values()]

    def round(self) -> None:
        sessions = self._sessions()
        for s in sessions:
            s.run()
        now = time.time()
        if not self.main.ready:
            return
        # Work only when something changed (a row, a lock grant, the core's snapshot) or a timer may be due:
        # a replica with nothing to do costs next to nothing.
        seen = (tuple(s.seqno for s in sessions), tuple(s.holds_lock for s in sessions), id(self._published()))
        if seen == self._seen and now < self._next_round:
            return
        self._seen, self._next_round = seen, now + IDLE_ROUND_S
        self._heartbeat(now)
        self._follow_policy()
        self._follow_shards()
        for shard, idl in sorted(self.locks.items()):
            self._shard_step(shard, idl, now)
        self._follow_ownership()
        self._balance(now)
        self._next_hops()
        self._quarantine()
        self._report_applied()
        self._coordinate(now)
        self._follow_shares()

    # ---- rows ------------------------------------------------------------------------------------------------

    def _live(self, now: float) -> list[str]:
        return sorted({r.name for r in self.main.rows("Replica") if now - r.seen <= LIVE_S} | {self.name})

    def _heartbeat(self, now: float) -> None:
        if now - self._beat_at < HEARTBEAT_S:
            return
        self._beat_at = now

        def build(txn, tables):
            row = next((r for r in tables["Replica"].rows.values() if r.name == self.name), None)
            if row is None:
                row = client.StoreIdl.insert(txn, tables, "Replica", name=self.name, started=self.started)
            row.target, row.pid, row.seen, row.coordinator = self.target, os.getpid(), now, self.coordinator
            snap = self._published()
            row.mastered = sorted(snap.mastered or ()) if snap is not None else []

        self.main.commit(build)
        snap = self._published()
        listed = snap.state.model.replicas if snap is not None else None
        rows = tuple((r.name, r.target) for r in self.main.rows("Replica"))
        targets, refused = allowed_targets(rows, listed, (self.name, self.target))
        if targets:  # never empty: a bridge whose controller list empties loses its flows
            self.targets = targets
        for name, target in refused:
            if (name, target) not in self._refused_targets:
                LOG.warning("replica %s's target %s is not on the policy's replicas list: no switch is pointed at "
                            "it", name, target)
        self._refused_targets = set(refused)

    def _follow_policy(self) -> None:
        pol = ops.latest_policy(self.main.rows("Policy"))
        if pol is None or pol.version == self._policy_version or not pol.chunks:
            return
        have = ops.stored_policy(self.main)
        if have is None:
            return
        version, files = have
        path = write_out(files, self.policy_dir)
        self._policy_version = version
        LOG.info("policy version %d from the store (applied by %s)", version, pol.applied_by)
        self._post(PolicyStored(version, pol.digest, path))

    def _follow_shards(self) -> None:
        cluster = _first(self.main.idl.tables["Cluster"].rows)
        k = cluster.shards if cluster is not None and isinstance(cluster.shards, int) else 0
        wanted = {shard_name(i) for i in range(k)}
        for shard in sorted(set(self.locks) - wanted):
            self.locks.pop(shard).close()
            self.mine.pop(shard, None)
            self._claimed.discard(shard)
        for shard in sorted(wanted - set(self.locks)):
            self.locks[shard] = client.StoreIdl(self.remotes, LOCK_TABLES, lock=lock_name(shard))

    def _shard_row(self, idl: client.StoreIdl, shard: str) -> Any:
        return next((r for r in idl.rows("Shard") if r.name == shard), None)

    # ---- claims ----------------------------------------------------------------------------------------------

    def _listed(self) -> set[str] | None:
        """The replicas the policy lists (`replicas:`); None without the section (any replica may master)."""
        snap = self._published()
        listed = snap.state.model.replicas if snap is not None else None
        return None if listed is None else {name for name, _ in listed}

    def _shard_step(self, shard: str, idl: client.StoreIdl, now: float) -> None:
        if not idl.holds_lock:
            self._claimed.discard(shard)
            return
        if shard in self._claimed:
            return
        listed = self._listed()
        if listed is not None and self.name not in listed:
            if now - self._passed_at.get(shard, 0.0) >= HANDOFF_S:
                self._passed_at[shard] = now
                LOG.warning("shard %s: this replica (%s) is not on the policy's replicas list; it claims nothing",
                            shard, self.name)
                self._requeue(idl, shard)  # let a listed replica have the lock
            return
        row = self._shard_row(idl, shard)
        if row is None:
            return
        live = self._live(now)
        if row.handoff not in ("", self.name) and row.handoff in live and now - row.handoff_at < HANDOFF_S:
            if now - self._passed_at.get(shard, 0.0) >= 0.2:
                self._passed_at[shard] = now
                self._requeue(idl, shard)  # it is on its way to row.handoff: pass the lock on
            return
        status, gen = idl.commit(lambda txn, t: self._claim(txn, t, shard))
        if status == client.SUCCESS and gen:
            self._claimed_at[shard] = now
            self._claimed.add(shard)
            was = self.mine.get(shard)
            self.mine[shard] = gen
            LOG.info("shard %s: claimed with generation %d (was %s)", shard, gen,
                     f"mine, generation {was}" if was else f"{row.owner or 'nobody'}'s")
            self.metrics.replica_claims.inc()
        elif status == client.NOT_LOCKED:
            self._claimed.discard(shard)

    def _switch_generations(self) -> dict[str, int]:
        """site -> the generation its switch holds, where it refused ours as stale (0 elsewhere)."""
        snap = self._published()
        if snap is None:
            return {}
        return {st.site: st.switch_generation for st in (s.status() for s in snap.switches.values())
                if st.switch_generation}

    def _claim(self, txn: Any, tables: Any, shard: str) -> int | None:
        cluster = _first(tables["Cluster"].rows)
        row = next((r for r in tables["Shard"].rows.values() if r.name == shard), None)
        if cluster is None or row is None:
            return None
        cluster.verify("generation")  # compare-and-set: two claims never get the same generation
        # Above every generation a switch said it holds: the counter must outgrow what the switches remember
        # (a store created anew starts from 0).
        gen = max([cluster.generation, *self._switch_generations().values()]) + 1
        cluster.generation = gen
        row.owner, row.generation, row.handoff, row.handoff_at = self.name, gen, "", 0.0
        return gen

    def _requeue(self, idl: client.StoreIdl, shard: str) -> None:
        name = idl.lock_name
        idl.set_lock(None)
        idl.set_lock(name)
        self._claimed.discard(shard)

    def _follow_ownership(self) -> None:
        """Stop acting on a shard once the store shows a newer claim; claim again above a switch that refused
        this replica's generation; tell the core what this replica masters."""
        rows = {r.name: r for r in self.main.rows("Shard")}
        snap = self._published()
        behind = self._switch_generations()
        if behind and snap is not None:
            for site, shard in snap.site_shards:
                if shard in self.mine and behind.get(site, 0) >= self.mine[shard] and shard in self._claimed:
                    LOG.warning("shard %s: site %s's switch holds generation %d, above this claim (%d): claiming "
                                "again above it", shard, site, behind[site], self.mine[shard])
                    self._claimed.discard(shard)  # the next step claims again, while the lock is held
        listed = self._listed()
        for shard, gen in list(self.mine.items()):
            row = rows.get(shard)
            if row is not None and listed is not None and row.owner and row.owner not in listed:
                # A claim by a name the policy does not list (the store cannot tie a Shard row to its lock:
                # cloudweave.store.rbac): this replica still holds the lock, so it claims again over it.
                if self._forged.get(shard) != (row.owner, row.generation):  # once per forged row
                    self._forged[shard] = (row.owner, row.generation)
                    LOG.warning("shard %s: the store names '%s' as its master, which is not on the policy's "
                                "replicas list; claiming it again", shard, row.owner)
                    self.metrics.replica_forged_claims.inc()
                    self._claimed.discard(shard)
                continue
            if row is not None and (row.generation > gen or (row.generation == gen and row.owner != self.name)):
                LOG.info("shard %s: now mastered by %s (generation %d); this replica is slave there", shard,
                         row.owner, row.generation)
                del self.mine[shard]
        cluster = _first(self.main.idl.tables["Cluster"].rows)
        k = cluster.shards if cluster is not None and isinstance(cluster.shards, int) else 0
        msg = Mastership(k, tuple(sorted(self.mine.items())),
                         tuple(sorted((n, r.generation) for n, r in rows.items())))
        if msg != self._posted.get("mastership"):
            self._posted["mastership"] = msg
            self.metrics.replica_shards.set(len(self.mine))
            self._post(msg)

    def _balance(self, now: float) -> None:
        if now - self._balanced_at < BALANCE_S:
            return
        rows = {r.name: r for r in self.main.rows("Shard")}
        if not rows:
            return
        live = self._live(now)
        owners = {n: r.owner for n, r in rows.items() if r.owner in live}
        want = assignment(rows, owners, live)
        for shard in sorted(self.mine):
            row = rows.get(shard)
            if row is None or row.owner != self.name or row.generation != self.mine[shard] or \
                    now - self._claimed_at.get(shard, 0.0) < LIVE_S:
                # Not yet: the claim went through the shard's lock session and this view of the rows has not
                # caught up with it; or it is new, and a master that just died still counts as live for
                # LIVE_S by its last heartbeat (handed back to it, a killed master's shard went round the
                # lock queue for seconds). Either only delays a voluntary handover.
                continue
            to = want.get(shard)
            idl = self.locks.get(shard)
            if to is None or to == self.name or idl is None or not idl.holds_lock:
                continue
            self._balanced_at = now

            def build(txn, tables, shard=shard, to=to):
                row = next((r for r in tables["Shard"].rows.values() if r.name == shard), None)
                if row is not None:
                    row.handoff, row.handoff_at = to, now

            status, _ = idl.commit(build)
            if status == client.SUCCESS:
                LOG.info("shard %s: handing over to %s (%d live replicas share %d shards)", shard, to, len(live),
                         len(rows))
                self._requeue(idl, shard)
            return  # one at a time

    # ---- what the master of a site keeps in the store ---------------------------------------------------

    def _my_sites(self, snap: Any) -> set[str]:
        return set(snap.mastered or ()) if snap is not None else set()

    def _next_hops(self) -> None:
        """Write the next hops this replica learned at the sites it masters, one row per (site, replica): the
        store lets a certificate write only rows of its own name (cloudweave.store.rbac). Tell the core, per
        site, the row of the site's master, else the newest row of a replica (of the policy's list, if it has
        one; else of the store's)."""
        snap = self._published()
        mine = {r.site: r for r in self.main.rows("NextHop") if r.learned_by == self.name}
        if snap is not None:
            learned = dict(snap.state.next_hops)
            todo = {s: mac for s, mac in learned.items() if s in self._my_sites(snap) and
                    (s not in mine or mine[s].mac != mac)}
            if todo:
                def build(txn, tables):
                    have = {r.site: r for r in tables["NextHop"].rows.values() if r.learned_by == self.name}
                    for site, mac in todo.items():
                        row = have.get(site) or client.StoreIdl.insert(txn, tables, "NextHop", site=site,
                                                                        learned_by=self.name)
                        row.mac, row.learned_at = mac, time.time()
                self.main.commit(build)
        # With the policy's replicas list, only listed names count (a Shard or Replica row is writable by any
        # certificate of the CA); without it, the replicas the store knows.
        listed = self._listed()
        known = listed if listed is not None else {r.name for r in self.main.rows("Replica")}
        masters = {s: m for s, m in self._site_masters(snap).items() if listed is None or m in listed}
        stored = _next_hops_of(self.main.rows("NextHop"), masters, known)
        if stored != self._posted.get("next_hops"):
            self._posted["next_hops"] = stored
            self._post(NextHopsStored(stored))

    def _site_masters(self, snap: Any) -> dict[str, str]:
        owners = {r.name: r.owner for r in self.main.rows("Shard")}
        return {site: owners.get(shard, "") for site, shard in snap.site_shards} if snap is not None else {}

    def _quarantine(self) -> None:
        """Write the entries the core made, then tell it the list whenever the rows change (any replica's
        entries, and `cloudweave quarantine --store`)."""
        with self._quarantine_lock:
            todo, self._quarantine_writes = self._quarantine_writes, []
        if todo:
            status, _ = client.commit_retrying(
                self.main, lambda txn, tables: stored.write(txn, tables, adds=todo, by=self.name))
            if status not in (client.SUCCESS, client.UNCHANGED):
                LOG.error("replica %s: the store did not take %d quarantine entr%s (%s); in force here only",
                          self.name, len(todo), "y" if len(todo) == 1 else "ies", status)
        entries = stored.entries_of(self.main.rows(stored.TABLE))
        if entries != self._posted.get("quarantine"):
            self._posted["quarantine"] = entries
            self._post(QuarantineStored(entries))

    def _report_applied(self) -> None:
        """Each shard this replica masters: the policy version now in force on every one of its switches."""
        snap = self._published()
        if snap is None or not self.mine or snap.policy_version == 0:
            return
        by_shard: dict[str, list[str]] = {}
        for site, shard in snap.site_shards:
            by_shard.setdefault(shard, []).append(site)
        status = {st.site: st for st in (s.status() for s in snap.switches.values())}
        done = []
        for shard in self.mine:
            ok = all(site in status and status[site].role.kind == "master" and
                     status[site].in_step is not None and status[site].in_step is snap.desired.get(site)
                     for site in by_shard.get(shard, []))
            if ok:
                done.append(shard)
        rows = {r.name: r for r in self.main.rows("Shard")}
        todo = [s for s in done if s in rows and rows[s].policy_applied != snap.policy_version]
        if not todo:
            return

        def build(txn, tables):
            for r in tables["Shard"].rows.values():
                if r.name in todo:
                    r.policy_applied = snap.policy_version

        self.main.commit(build)

    # ---- the coordinator: traffic engineering ----------------------------------------------------------------

    def _coordinate(self, now: float) -> None:
        idl = self.coordinator_idl
        holds = idl.holds_lock
        if holds and not self.coordinator:
            self.te_restore = _te_doc(idl.rows("Demand"), idl.rows("Shares"))
            self.coordinator = True
            LOG.info("coordinator: this replica runs traffic engineering (%d learned keys from the store)",
                     len(self.te_restore["keys"]))
        elif not holds and self.coordinator:
            self.coordinator = False
            LOG.info("coordinator: no longer (another replica runs traffic engineering)")
        if not holds:
            return
        with self._te_lock:
            doc, self._te_pending = self._te_pending, None
        if doc is not None:
            idl.commit(lambda txn, t: _write_te(txn, t, doc))
        stale = [r for r in idl.rows("Replica") if now - r.seen > FORGET_S and r.name != self.name]
        if stale:
            idl.commit(lambda txn, t: [r.delete() for r in list(t["Replica"].rows.values())
                                       if r.name in {s.name for s in stale}])
            LOG.info("forgot replicas not seen for %.0f s: %s", FORGET_S, ", ".join(sorted(r.name for r in stale)))

    def te_take_restore(self) -> dict | None:
        doc, self.te_restore = self.te_restore, None
        return doc

    def te_save(self, doc: dict) -> None:
        """From the traffic engineer's thread: its state after a round, written by the next loop."""
        with self._te_lock:
            self._te_pending = doc

    def _follow_shares(self) -> None:
        auto = _shares_of(self.main.rows("Shares"))
        if auto != self._posted.get("shares"):
            self._posted["shares"] = auto
            self._post(WeightsAdopted(auto))


def allowed_targets(rows: tuple[tuple[str, str], ...], listed: tuple[tuple[str, str], ...] | None,
                    own: tuple[str, str]) -> tuple[tuple[str, ...], tuple[tuple[str, str], ...]]:
    """(the controller targets written into every bridge, the (name, target) rows refused). Without a
    `replicas:` list in the policy, every replica's row and this one's own; with it, only the listed pairs
    of replicas that have a row (or are this one)."""
    if listed is None:
        return tuple(sorted({t for _, t in rows} | {own[1]})), ()
    allowed = set(listed)
    present = {pair for pair in rows if pair in allowed} | ({own} & allowed)
    refused = tuple(sorted(pair for pair in set(rows) | {own} if pair not in allowed))
    return tuple(sorted({t for _, t in present})), refused


def _next_hops_of(rows: list[Any], masters: dict[str, str], replicas: set[str]) -> tuple:
    """(site, mac) pairs: per site, the row its master wrote, else the newest written by a listed replica."""
    best: dict[str, Any] = {}
    for r in rows:
        if r.learned_by not in replicas and r.learned_by != masters.get(r.site):
            continue
        have = best.get(r.site)
        rank = (r.learned_by == masters.get(r.site), r.learned_at)
        if have is None or rank > (have.learned_by == masters.get(r.site), have.learned_at):
            best[r.site] = r
    return tuple(sorted((s, r.mac) for s, r in best.items()))


def _shares_of(rows: list[Any]) -> tuple:
    out = []
    for r in rows:
        try:
            paths, shares = json.loads(r.paths), json.loads(r.shares)
        except ValueError:
            continue
        if paths and shares and len(paths) == len(shares):
            out.append(((r.route, r.src, r.dst), (tuple(tuple(p) for p in paths), tuple(float(x) for x in shares))))
    return tuple(sorted(out))


def _te_doc(demand: list[Any], shares: list[Any]) -> dict:
    keys: dict[tuple, dict] = {}
    for r in demand:
        keys.setdefault((r.route, r.src, r.dst), {})["predictor"] = {
            "mean": r.mean[0] if r.mean else None, "dev": r.dev, "n": r.n}
        keys[(r.route, r.src, r.dst)]["rate"] = r.rate[0] if r.rate else None
    for r in shares:
        try:
            item = keys.setdefault((r.route, r.src, r.dst), {})
            item["paths"], item["shares"] = json.loads(r.paths), json.loads(r.shares)
        except ValueError:
            continue
    return {"keys": [dict(item, route=k[0], src=k[1], dst=k[2]) for k, item in sorted(keys.items())]}


def _write_te(txn: Any, tables: Any, doc: dict) -> None:
    demand = {(r.route, r.src, r.dst): r for r in tables["Demand"].rows.values()}
    shares = {(r.route, r.src, r.dst): r for r in tables["Shares"].rows.values()}
    seen = set()
    for item in doc.get("keys", []):
        key = (item["route"], item["src"], item["dst"])
        seen.add(key)
        pred = item.get("predictor") or {}
        mean = [pred["mean"]] if pred.get("mean") is not None else []
        rate = [item["rate"]] if item.get("rate") is not None else []
        values = {"mean": mean, "dev": float(pred.get("dev", 0.0)), "n": int(pred.get("n", 0)), "rate": rate,
                  "stale": bool(item.get("stale"))}
        d = demand.get(key)
        if d is None:
            client.StoreIdl.insert(txn, tables, "Demand", route=key[0], src=key[1], dst=key[2], **values)
        elif {k: (list(getattr(d, k)) if k in ("mean", "rate") else getattr(d, k)) for k in values} != values:
            for k, v in values.items():
                setattr(d, k, v)
        if item.get("paths") and item.get("shares"):
            paths, sh = json.dumps(item["paths"]), json.dumps(item["shares"])
            s = shares.get(key)
            if s is None:
                client.StoreIdl.insert(txn, tables, "Shares", route=key[0], src=key[1], dst=key[2], paths=paths,
                                       shares=sh, te_version=1)
            elif (s.paths, s.shares) != (paths, sh):
                s.paths, s.shares, s.te_version = paths, sh, s.te_version + 1
    for key, r in list(demand.items()) + list(shares.items()):
        if key not in seen:
            r.delete()
