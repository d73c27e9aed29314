"""The traffic-engineering loop of the controller: every poll interval, read the byte counters of the
`split: auto` routes' first-hop flows (one cookie-filtered flow-desc request per source site) and of every
site's tunnel ports (one port-stats request per site with links: what each link carried, as received at its
far end), answered or not within the interval; feed te.engine, apply new shares when it says so, persist
the state, export it.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Mapping
from typing import Any

from os_ken.lib import hub

from cloudweave.config.model import Model
from cloudweave.flows import cookies
from cloudweave.flows.routing import PATH_MARK_MASK, PATH_MARK_SHIFT, route_cookie
from cloudweave.flows.topology import SiteGraph, tunnel_port_name
from cloudweave.te.engine import Key, TrafficEngineer, capacities
from cloudweave.te.lp import prepare_solver
from cloudweave.te.rates import Outcome
from cloudweave.te.statefile import BadState, load_state
from controller.messages import WeightsAdopted

LOG = logging.getLogger("cloudweave.te")
ROUTE_KIND_MASK = cookies.OWNER_MASK | (0xFF << cookies.KIND_SHIFT)
ROUTE_KIND = cookies.OWNER | (cookies.KINDS["route"] << cookies.KIND_SHIFT)
MAX_ENTRIES = 200_000  # flow or port entries of one counter reply (a route has a few flows per path)


def route_flows_request(dp: Any) -> Any:
    """The route kind's flows with their counters (OpenFlow 1.5 flow descriptions)."""
    ofp, parser = dp.ofproto, dp.ofproto_parser
    return parser.OFPFlowDescStatsRequest(dp, 0, ofp.OFPTT_ALL, ofp.OFPP_ANY, ofp.OFPG_ANY, ROUTE_KIND,
                                          ROUTE_KIND_MASK, parser.OFPMatch())


def port_stats_request(dp: Any) -> Any:
    return dp.ofproto_parser.OFPPortStatsRequest(dp, 0, dp.ofproto.OFPP_ANY)


class TeLoop:
    def __init__(self, state_path: str | None, metrics: Any):
        self.state_path = state_path
        self.metrics = metrics
        self.engine = self._load()
        # This round's answers, on this loop's thread only (replaced whole each round):
        self.answered_at: dict[str, float] = {}  # site -> when its flow counters came in
        self.port_bodies: dict[str, list[Any]] = {}  # site -> its port counters
        self.ports_at: dict[str, float] = {}  # site -> when its port counters came in
        self.reported_stale: set[str] = set()
        self.said_background: dict[tuple[str, str], float] = {}  # link -> the learned other traffic last logged
        self.active = True
        # With replicas (controller.replica): rounds only while this replica coordinates, the state kept in
        # the store instead of a file, and a new coordinator's engine restored from it.
        self.leading: Callable[[], bool] | None = None
        self.persist: Callable[[dict], None] | None = None
        self.take_restore: Callable[[], dict | None] | None = None

    # ---- state ----------------------------------------------------------------------------------------------

    def _load(self) -> TrafficEngineer:
        if not self.state_path or not os.path.exists(self.state_path):
            return TrafficEngineer()
        try:
            engine = TrafficEngineer.from_json(load_state(self.state_path))
            LOG.info("traffic matrix restored from %s: %d keys", self.state_path, len(engine.predictors))
            return engine
        except (FileNotFoundError, BadState) as exc:
            LOG.warning("%s is not a state file this controller wrote (%s); the traffic matrix starts empty",
                        self.state_path, exc)
            return TrafficEngineer()

    def save(self, extra: dict) -> None:
        if self.persist is not None:
            self.persist(self.engine.to_json())
            return
        if not self.state_path:
            return
        doc = dict(self.engine.to_json(), **extra)
        directory = os.path.dirname(os.path.abspath(self.state_path))
        os.makedirs(directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".te-")
        with os.fdopen(fd, "w") as fh:
            json.dump(doc, fh, indent=1)
        os.replace(tmp, self.state_path)

    # ---- counters ---------------------------------------------------------------------------------------------

    @staticmethod
    def _entries(site: str, what: str, got: tuple[tuple[Any, ...], float] | None) -> list[Any] | None:
        """The entries of a counter reply's parts; None for no answer, or one past MAX_ENTRIES (dropped: the
        site counts as not answering)."""
        if got is None:
            return None
        entries = [e for part in got[0] for e in part.body]
        if len(entries) > MAX_ENTRIES:
            LOG.warning("site %s: a %s reply passed %d entries; dropped", site, what, MAX_ENTRIES)
            return None
        return entries

    def _collect(self, model: Model, switches: Mapping[int, Any], keys: list[Key], timeout_s: float
                 ) -> tuple[dict[Key, int | None], dict[tuple[Key, int], int], dict[tuple[str, str], int | None]]:
        """Each key's byte counter (None: its site did not answer), each (key, bucket)'s, each link direction's."""
        sites = sorted({k[1] for k in keys})
        linked = sorted({s for link in model.links for s in link.sites})
        # Asked through each switch's session (its worker sends; a frozen switch stalls only its own answer),
        # waited for here: nothing of this round is shared with another thread.
        flows_asked, ports_asked, why = {}, {}, {}
        for site in sites:
            session = switches.get(model.site(site).dpid)
            if session is not None:
                flows_asked[site] = session.ask(route_flows_request, multi=True)
                why[site] = f"no answer within {timeout_s:.1f} s"
            else:
                why[site] = "its switch is not connected"
        for site in linked:
            session = switches.get(model.site(site).dpid)
            if session is not None:
                ports_asked[site] = session.ask(port_stats_request, multi=True)
        deadline = time.monotonic() + timeout_s
        flows, self.answered_at = {}, {}
        for site, asked in flows_asked.items():
            got = asked.wait(deadline)
            entries = self._entries(site, "flow counter", got)
            if entries is not None:
                flows[site], self.answered_at[site] = entries, got[1]  # the interval ends when they were read
        self.port_bodies, self.ports_at = {}, {}
        for site, asked in ports_asked.items():
            got = asked.wait(deadline)
            entries = self._entries(site, "port counter", got)
            if entries is not None:
                self.port_bodies[site], self.ports_at[site] = entries, got[1]
        by_cookie: dict[str, dict[int, int]] = {}
        buckets: dict[tuple[Key, int], int] = defaultdict(int)
        key_of = {route_cookie(*k): k for k in keys}
        for site in self.answered_at:
            totals: dict[int, int] = defaultdict(int)
            for f in flows[site]:
                # Every routed packet passes exactly one pinned-path flow (ct_mark names its bucket). The group's
                # flow sees the packets a bucket pins as well: a connection's first, or every packet of one that
                # stays new (one-way UDP: the ACL commits it again and its ct_mark loses the path): not counted.
                mark = f.match.get("ct_mark")
                if mark is None:
                    continue
                count = int(dict(f.stats.fields).get("byte_count", 0))
                totals[f.cookie] += count
                if f.cookie in key_of:
                    value = mark[0] if isinstance(mark, tuple) else mark
                    buckets[(key_of[f.cookie], ((value & PATH_MARK_MASK) >> PATH_MARK_SHIFT) - 1)] += count
            by_cookie[site] = totals
        for site in sites:
            if site not in by_cookie and site not in self.reported_stale:
                LOG.warning("site %s: no traffic counters (%s): its demands are unknown, not zero, until it "
                            "answers", site, why[site])
                self.reported_stale.add(site)
            elif site in by_cookie and site in self.reported_stale:
                LOG.info("site %s answers the traffic counters again", site)
                self.reported_stale.discard(site)
            self.metrics.te_stale.labels(site).set(0 if site in by_cookie else 1)
        counters = {k: by_cookie[k[1]].get(route_cookie(*k), 0) if k[1] in by_cookie else None for k in keys}
        return counters, dict(buckets), self._link_totals(model, switches)

    def _link_totals(self, model: Model, switches: Mapping[int, Any]) -> dict[tuple[str, str], int | None]:
        """Bytes each direction of each link carried, as its far end's tunnel port received them; None where
        that site did not answer or has no such port. Received, not sent: OVS 3.1's userspace tunnel ports
        count a routed packet's transmission about twice (measured on the test bed: 14.5 Mbit/s sent for
        the 7.8 Mbit/s the far end received and the pinned-path flow counted)."""
        out: dict[tuple[str, str], int | None] = {}
        for link in model.links:
            for a, b in (link.sites, link.sites[::-1]):
                session = switches.get(model.site(b).dpid)
                port = session.status().ports.get(tunnel_port_name(a)) if session is not None else None
                got = {p.port_no: p.rx_bytes for p in self.port_bodies.get(b, ())} if b in self.ports_at else {}
                out[(a, b)] = got.get(port)
        return out

    # ---- a round ------------------------------------------------------------------------------------------------

    def run(self, published: Callable[[], Any], post: Callable[[Any], None]) -> None:
        """Every poll interval, a round; new weights go to the core as a message (it owns the state)."""
        solver_ready = False
        while self.active:
            started = time.monotonic()
            snap = published()
            if not solver_ready and any(r.auto for r in snap.state.model.routes):
                # scipy's import (most of a second of CPU) now, before there is traffic to engineer, not in
                # the first round that solves: on two cores that second cost the datapaths packets.
                prepare_solver()
                solver_ready = True
            if self.leading is not None and not self.leading():
                hub.sleep(0.2)
                continue
            restore = self.take_restore() if self.take_restore is not None else None
            if restore is not None:
                try:
                    self.engine = TrafficEngineer.from_json(restore)
                except (KeyError, TypeError, ValueError) as exc:
                    LOG.warning("the store's traffic-engineering state does not load (%s); starting empty", exc)
                    self.engine = TrafficEngineer()
            try:
                if self.round(snap.state.model, snap.state.down, snap.switches):
                    post(WeightsAdopted(tuple(self.auto_shares().items())))
            except Exception:  # noqa: BLE001 - one bad round must not stop traffic engineering
                LOG.exception("traffic-engineering loop")
            hub.sleep(max(0.1, snap.state.model.poll_interval_s - (time.monotonic() - started)))

    def stop(self) -> None:
        self.active = False

    def round(self, model: Model, down: frozenset, switches: Mapping[int, Any]) -> bool:
        """One round; True when new shares were adopted (the caller recompiles and reconciles)."""
        graph = SiteGraph(model, down)
        keys = self.engine.prepare(model, graph.declared)
        if not keys:
            return False
        counters, buckets, links = self._collect(model, switches, keys, min(2.0, model.poll_interval_s * 0.8))
        events = []
        sources = sorted({k[1] for k in keys})
        for site in sources:
            at = self.answered_at.get(site, time.monotonic())  # a site without an answer has no counters anyway
            events += self.engine.observe(at, {k: v for k, v in counters.items() if k[1] == site})
        capacity = capacities(model)
        if all(site in self.answered_at for site in sources):  # else what the routes carried is not known
            for arc in self.engine.observe_links(self.ports_at, links, self.answered_at, buckets, capacity):
                self._log_background(arc, capacity.get(arc, 0.0))
        for key, outcome in events:
            if outcome is Outcome.RESET:
                LOG.info("route %s %s->%s: counter reset (flows replaced or switch restarted); no rate this "
                         "interval", *key)
        for a, b in down:  # a dead link carries nothing: the LP must not count on it
            capacity[(a, b)] = capacity[(b, a)] = 1.0
        proposal = self.engine.propose(graph.declared, capacity)
        adopted = False
        if proposal is not None:
            reason = self.engine.decide(proposal)
            self.metrics.te_solve_seconds.set(proposal.solve_s)
            self.metrics.te_mlu.labels("proposed").set(proposal.mlu)
            self.metrics.te_mlu.labels("current").set(proposal.current_mlu)
            if reason:
                self.engine.apply(proposal)
                adopted = True
                LOG.info("traffic engineering: new weights (%s); solved in %.0f ms", reason, proposal.solve_s * 1000)
                for key, shares in sorted(proposal.shares.items()):
                    parts = ", ".join(f"{' -> '.join(p)} {s:.0%}" for p, s in zip(self.engine.paths[key], shares,
                                                                                  strict=False) if s > 0.005)
                    LOG.info("  route %s %s->%s: %s", *key, parts)
                other = [f"{a}->{b} {bps / 1e6:.1f} Mbit/s" for (a, b), bps in sorted(proposal.background.items())
                         if bps > 0.01 * capacity.get((a, b), 0.0)]
                if other:
                    LOG.info("  other traffic planned around: %s", ", ".join(other))
            for (a, b), u in proposal.utilisation.items():
                self.metrics.te_utilisation.labels(f"{a}->{b}").set(u)
        for (a, b), pred in self.engine.background.items():  # 0 once a link's other traffic has stopped
            self.metrics.te_background.labels(f"{a}->{b}").set(pred.mean or 0.0)
        for key, pred in self.engine.predictors.items():
            self.metrics.te_demand.labels(*key).set(pred.mean or 0.0)
            self.metrics.te_prediction.labels(*key).set(pred.prediction)
        self.save({"updated": time.time(), "poll_interval_s": model.poll_interval_s,
                   "capacity_bps": {f"{a}->{b}": c for (a, b), c in capacity.items()},
                   "utilisation": {f"{a}->{b}": u for (a, b), u in (proposal.utilisation.items() if proposal else [])},
                   "mlu": {"proposed": proposal.mlu, "in_force": proposal.current_mlu} if proposal else None})
        return adopted

    def _log_background(self, arc: tuple[str, str], capacity_bps: float) -> None:
        """Each sample at DEBUG; at INFO when the learned other traffic has moved by a tenth of the link's
        capacity since it was last said (what the split plans around is then in the log, with the round that
        moved it)."""
        carried, other = self.engine.carried_rates[arc], self.engine.background_rates[arc]
        learned = self.engine.background[arc].mean or 0.0
        LOG.debug("link %s->%s: carried %.2f Mbit/s, other traffic %.2f, learned %.2f", *arc, carried / 1e6,
                  other / 1e6, learned / 1e6)
        said = self.said_background.get(arc, 0.0)
        if abs(learned - said) >= 0.1 * capacity_bps:
            LOG.info("link %s->%s: other traffic learned %.1f Mbit/s (was %.1f; this round it carried %.1f, "
                     "%.1f of it not the routes')", *arc, learned / 1e6, said / 1e6, carried / 1e6, other / 1e6)
            self.said_background[arc] = learned

    def auto_shares(self) -> dict[Key, tuple[tuple, tuple[float, ...]]]:
        return self.engine.in_force()
