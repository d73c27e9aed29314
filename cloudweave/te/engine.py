"""The traffic-engineering round: counters in, shares for `split: auto` routes out (pure; no I/O).

Keys are (route, source site, destination site). Each round:
1. `observe`: the byte counter of each key's first-hop flows (their cookies name the key) -> a rate
   (te.rates) -> the key's predictor (te.predict). A site that did not answer leaves its keys stale.
   `observe_links`: what each direction of each link carries (its far end's tunnel port's received bytes) less what
   the keys' own paths put on it (the pinned-path flows' counters, one per bucket) is the link's background,
   traffic that no split moves (other routes, plain forwarding, floods), with a predictor of its own.
2. `propose`: the LP (te.lp, column generation) on the predicted means over each key's candidate paths
   (te.paths; kept and extended from round to round, so bucket ids stay put) against the links'
   capacities, the background's means counted as fixed loads: shares, the MLU they would give, and the MLU
   the current shares would give.
3. `decide`: apply only when some link is at least QUIET busy (at the mean or the burst prediction), and
   then when the MLU improves by more than IMPROVEMENT, or when the current shares would put a link over
   its capacity at the burst prediction; else keep the groups as they are. Existing connections never move
   either way (flows/routing.py pins them).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import networkx as nx

from cloudweave.config.model import Model
from cloudweave.config.routes import AUTO_PATHS
from cloudweave.te.lp import Arc, NoSolution, link_loads, mlu, split_with_more_paths
from cloudweave.te.paths import Path, arcs, candidate_paths
from cloudweave.te.predict import Predictor
from cloudweave.te.rates import Meters, Outcome

Key = tuple[str, str, str]  # route, source site, destination site
IMPROVEMENT = 0.05  # relative MLU gain that is worth regrouping for
SATURATED = 0.9  # of a link's capacity delivered: it dropped some of what it was offered
QUIET = 0.5  # the utilisation below which no link needs relief: the weights in force stay
K_PATHS, MAX_PATHS = AUTO_PATHS, 8  # the compiler's paths are the engine's first K_PATHS: one constant


def auto_keys(model: Model) -> list[Key]:
    """Every (route, source, destination) a `split: auto` route applies to: as flows/routing.py plans them."""
    return [(r.name, a, b) for r in model.routes if r.match is not None and r.auto for a, b in model.route_pairs(r)]


def capacities(model: Model) -> dict[tuple[str, str], float]:
    """Bits per second of each direction of each link."""
    out = {}
    for link in model.links:
        a, b = link.sites
        out[(a, b)] = out[(b, a)] = link.capacity_mbps * 1e6
    return out


@dataclass
class Proposal:
    """A round's answer, a value of its own: adopting it (`TrafficEngineer.apply`) takes its paths and its
    shares together, and rejecting it leaves the engine exactly as it was (column generation may have found
    paths for it that the engine does not have)."""

    paths: dict[Key, list[Path]]  # per key: the engine's paths, plus any the LP added this round
    shares: dict[Key, list[float]]  # per key, over paths[key]
    mlu: float
    current_mlu: float
    current_burst_mlu: float
    utilisation: dict[tuple[str, str], float]  # at the proposed shares and predicted means, background included
    solve_s: float
    background: dict[tuple[str, str], float] = field(default_factory=dict)  # what the LP planned around


@dataclass
class TrafficEngineer:
    paths: dict[Key, list[Path]] = field(default_factory=dict)
    shares: dict[Key, list[float]] = field(default_factory=dict)  # in force
    predictors: dict[Key, Predictor] = field(default_factory=dict)
    meters: Meters = field(default_factory=Meters)
    stale: set[Key] = field(default_factory=set)
    rates: dict[Key, float] = field(default_factory=dict)  # the last measured rate
    background: dict[Arc, Predictor] = field(default_factory=dict)  # per direction of a link
    background_rates: dict[Arc, float] = field(default_factory=dict)  # the last measured background
    carried_rates: dict[Arc, float] = field(default_factory=dict)  # what each link last carried, all told

    def prepare(self, model: Model, graph: nx.Graph) -> list[Key]:
        """Candidate paths for every key of the model (kept ones stay, in their order)."""
        keys = auto_keys(model)
        for key in keys:
            if key not in self.paths:
                self.paths[key] = candidate_paths(graph, key[1], key[2], K_PATHS)
        for key in list(self.paths):
            if key not in keys:
                del self.paths[key]
                self.shares.pop(key, None)
                self.predictors.pop(key, None)
        return keys

    def observe(self, now: float, counters: Mapping[Key, int | None]) -> list[tuple[Key, Outcome]]:
        events = []
        for key, total in counters.items():
            outcome, rate = self.meters.sample(key, now, total)
            if outcome is Outcome.RATE:
                self.predictors.setdefault(key, Predictor()).update(rate)
                self.rates[key] = rate
                self.stale.discard(key)
            elif outcome is Outcome.STALE:
                self.stale.add(key)
            if outcome in (Outcome.RESET, Outcome.STALE):
                events.append((key, outcome))
        return events

    def observe_links(self, ports_at: Mapping[str, float], links: Mapping[Arc, int | None],
                      flows_at: Mapping[str, float], buckets: Mapping[tuple[Key, int], int],
                      capacity: Mapping[Arc, float]) -> list[Arc]:
        """Byte counters of each link direction (what the second site's tunnel port from the first received,
        read at that site's `ports_at`) and of each key's pinned-path flows (key, bucket id; read at the source site's
        `flows_at`) -> each link's background, the rest of what it carried. Links are updated only in a round
        where every counter gave a rate (a site that did not answer, a path just added or a counter reset
        leaves the backgrounds as they were). A link that delivered SATURATED of its capacity or more lost
        traffic on the way (the routes' share was counted before the loss): its sample is a lower bound, which
        may raise the background's mean but never lowers it. Returns the links updated."""
        complete = True
        auto_on: dict[Arc, float] = {}
        for (key, bucket), total in buckets.items():
            outcome, rate = self.meters.sample(("bucket", key, bucket), flows_at[key[1]], total)
            if outcome is not Outcome.RATE:
                complete = complete and outcome is Outcome.FIRST and total == 0  # a new path, still idle
                continue
            paths = self.paths.get(key, [])
            for a in arcs(paths[bucket]) if bucket < len(paths) else ():
                auto_on[a] = auto_on.get(a, 0.0) + rate
        updated = []
        for arc, total in links.items():
            outcome, rate = self.meters.sample(("link", arc), ports_at.get(arc[1], 0.0), total)
            if outcome is not Outcome.RATE or not complete:
                continue
            other = max(0.0, rate - auto_on.get(arc, 0.0))
            pred = self.background.setdefault(arc, Predictor())
            if rate >= SATURATED * capacity.get(arc, float("inf")) and other <= (pred.mean or 0.0):
                continue
            pred.update(other)
            self.background_rates[arc] = other
            self.carried_rates[arc] = rate
            updated.append(arc)
        return updated

    def background_load(self) -> dict[Arc, float]:
        """The background to plan around: each link direction's learned mean."""
        return {a: p.mean for a, p in self.background.items() if p.mean}

    def demands(self, burst: bool = False) -> dict[Key, float]:
        return {k: (p.prediction if burst else p.mean) or 0.0 for k, p in self.predictors.items()
                if k in self.paths and p.mean is not None}

    def _mlu_of(self, shares: Mapping[Key, list[float]], demands: Mapping[Key, float],
                capacity: Mapping[tuple[str, str], float], links: frozenset[Arc]) -> float:
        routing = {k: [(p, s) for p, s in zip(self.paths[k], shares[k], strict=False)]
                   for k in demands if k in shares}
        return mlu(with_background(link_loads(routing, demands), self.background_load(), links), capacity)

    def propose(self, graph: nx.Graph, capacity: Mapping[tuple[str, str], float]) -> Proposal | None:
        demands = self.demands()
        if not demands or not any(demands.values()):
            return None
        started = time.perf_counter()
        paths = {k: list(v) for k, v in self.paths.items()}  # column generation extends these, not ours
        background = self.background_load()
        try:
            split = split_with_more_paths(demands, paths, capacity, graph, max_paths=MAX_PATHS,
                                          background=background)
        except NoSolution:
            return None
        shares = {k: split.shares.get(k, [1.0] + [0.0] * (len(paths[k]) - 1)) for k in demands}
        # Before any weights: the shortest path alone, as flows/routing.py compiles it.
        current = {k: self.shares.get(k) or [1.0] + [0.0] * (len(self.paths[k]) - 1) for k in demands}
        routing = {k: list(zip(paths[k], shares[k], strict=True)) for k in demands}
        # Both MLUs over the same links, the ones a split can load: a busy link that no candidate path crosses
        # is no reason to keep or change weights.
        links = frozenset(a for k in demands for p in paths[k] for a in arcs(p))
        loads = with_background(link_loads(routing, demands), background, frozenset(capacity))
        return Proposal({k: paths[k] for k in demands}, shares, split.mlu,
                        self._mlu_of(current, demands, capacity, links),
                        self._mlu_of(current, self.demands(burst=True), capacity, links),
                        {a: loads.get(a, 0.0) / c for a, c in capacity.items()}, time.perf_counter() - started,
                        background)

    def decide(self, p: Proposal) -> str | None:
        """Why to apply the proposal, or None to keep the shares in force."""
        if max(p.current_mlu, p.current_burst_mlu) < QUIET:
            # No link near full, even at the burst prediction: moving traffic would only lengthen its paths
            # (and make a relay site's flows a new dependency), for nothing (a 0.4 Mbit/s stream on 1 Gbit
            # links was split over a detour, and moved again by every new coordinator).
            return None
        if not self.shares:
            return "first weights"
        if p.current_burst_mlu > 1.0 and p.mlu < p.current_mlu:
            return f"a link would exceed its capacity at the burst prediction ({p.current_burst_mlu:.0%})"
        if p.mlu < p.current_mlu * (1 - IMPROVEMENT):
            return f"MLU {p.current_mlu:.0%} -> {p.mlu:.0%}"
        return None

    def apply(self, p: Proposal) -> None:
        """Adopt the proposal's paths and shares together: for every key, as many shares as paths."""
        for key, shares in p.shares.items():
            self.paths[key] = list(p.paths[key])
            self.shares[key] = list(shares)

    def in_force(self) -> dict[Key, tuple[tuple[Path, ...], tuple[float, ...]]]:
        """The paths and shares the compiler is to use, as an immutable snapshot (never the engine's lists)."""
        return {k: (tuple(tuple(p) for p in self.paths[k]), tuple(self.shares[k]))
                for k in sorted(self.shares) if k in self.paths and len(self.paths[k]) == len(self.shares[k])}

    def to_json(self) -> dict:
        return {"keys": [{"route": k[0], "src": k[1], "dst": k[2], "paths": [list(x) for x in self.paths.get(k, [])],
                          "shares": self.shares.get(k), "predictor": self.predictors[k].to_json()
                          if k in self.predictors else None, "rate": self.rates.get(k), "stale": k in self.stale}
                         for k in sorted(set(self.paths) | set(self.predictors))],
                "background": {f"{a}->{b}": dict(p.to_json(), rate=self.background_rates.get((a, b)))
                               for (a, b), p in sorted(self.background.items())}}

    @staticmethod
    def from_json(data: dict) -> TrafficEngineer:
        eng = TrafficEngineer()
        for item in data.get("keys", []):
            key = (item["route"], item["src"], item["dst"])
            if item.get("paths"):
                eng.paths[key] = [tuple(p) for p in item["paths"]]
            if item.get("shares"):
                if len(item["shares"]) != len(item.get("paths") or ()):
                    raise ValueError(f"route {key[0]} {key[1]}->{key[2]}: {len(item['shares'])} shares for "
                                     f"{len(item.get('paths') or ())} paths")
                eng.shares[key] = list(item["shares"])
            if item.get("predictor"):
                eng.predictors[key] = Predictor.from_json(item["predictor"])
            if item.get("rate") is not None:
                eng.rates[key] = item["rate"]
        for link, item in (data.get("background") or {}).items():
            a, b = link.split("->", 1)
            eng.background[(a, b)] = Predictor.from_json(item)
            if item.get("rate") is not None:
                eng.background_rates[(a, b)] = item["rate"]
        return eng


def with_background(loads: Mapping[Arc, float], background: Mapping[Arc, float], links: frozenset[Arc]
                    ) -> dict[Arc, float]:
    """`loads` plus the background of each link in `links` (a link with background only included)."""
    out = dict(loads)
    for a, bg in background.items():
        if a in links:
            out[a] = out.get(a, 0.0) + bg
    return out
