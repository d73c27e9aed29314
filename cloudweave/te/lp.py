"""Linear programs for traffic engineering (scipy's HiGHS).

- `split_over_paths`: for each demand, shares over its candidate paths that minimise the maximum link
  utilisation (MLU) against the capacities, with path length as a tie-breaker (a small cost per hop-unit of
  traffic, so that among equal-MLU answers the shorter paths win); `background` is traffic on the links that
  the split does not move (measured by the controller: everything on a link but the `auto` routes' own), a
  fixed load that counts toward each link's utilisation;
- `optimal_mlu`: the exact optimum over all routings, the edge formulation of the multi-commodity flow
  (commodities aggregated by source), as the yardstick for the others.

Links are undirected and full duplex: each direction of a link has the link's capacity.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Hashable, Mapping
from dataclasses import dataclass

import networkx as nx
import numpy as np

from cloudweave.te.paths import Path, arcs


def prepare_solver() -> None:
    """Import the solver now (controller.te_loop does, once a route is `auto`)."""
    _solver()


def _solver() -> tuple:
    """scipy takes most of a second to import, and only a controller with `auto` routes solves anything."""
    from scipy.optimize import linprog
    from scipy.sparse import coo_matrix

    return linprog, coo_matrix

Arc = tuple[Hashable, Hashable]
Demand = tuple[Hashable, Hashable]
LENGTH_COST = 1e-4  # per unit of traffic and hop, relative to the MLU: breaks ties, never trades MLU away


class NoSolution(RuntimeError):
    """The solver found no routing (a demand without a path, or a solver failure)."""


@dataclass(frozen=True)
class Split:
    shares: dict[Demand, list[float]]  # demand -> share per candidate path (sums to 1)
    mlu: float  # the maximum link utilisation the LP predicts for these demands
    link_prices: dict[Arc, float] | None = None  # the capacity constraints' duals: what a unit of load costs


def link_loads(routing: Mapping[Demand, list[tuple[Path, float]]], demands: Mapping[Demand, float]
               ) -> dict[Arc, float]:
    """Load on every arc when each demand is split over paths as given (path, share)."""
    loads: dict[Arc, float] = defaultdict(float)
    for d, parts in routing.items():
        for path, share in parts:
            for a in arcs(path):
                loads[a] += demands[d] * share
    return loads


def mlu(loads: Mapping[Arc, float], capacity: Mapping[Arc, float]) -> float:
    return max((load / capacity[a] for a, load in loads.items()), default=0.0)


NO_BACKGROUND: Mapping[Arc, float] = {}


def split_over_paths(demands: Mapping[Demand, float], paths: Mapping[Demand, list[Path]],
                     capacity: Mapping[Arc, float], background: Mapping[Arc, float] = NO_BACKGROUND) -> Split:
    """Shares over each demand's candidate paths minimising the MLU, background included (then total path
    length)."""
    linprog, coo_matrix = _solver()
    ds = [d for d in demands if demands[d] > 0]
    for d in ds:
        if not paths.get(d):
            raise NoSolution(f"no candidate path for demand {d}")
    var: list[tuple[Demand, int]] = [(d, i) for d in ds for i in range(len(paths[d]))]
    n = len(var) + 1  # the last variable is U, the MLU
    arc_index: dict[Arc, int] = {}
    rows, cols, vals = [], [], []
    for j, (d, i) in enumerate(var):
        for a in arcs(paths[d][i]):
            r = arc_index.setdefault(a, len(arc_index))
            rows.append(r)
            cols.append(j)
            vals.append(demands[d])
    b_ub = np.zeros(len(arc_index))
    for a, r in arc_index.items():  # load(a) + background(a) - U * c(a) <= 0
        rows.append(r)
        cols.append(n - 1)
        vals.append(-capacity[a])
        b_ub[r] = -background.get(a, 0.0)
    a_ub = coo_matrix((vals, (rows, cols)), shape=(len(arc_index), n)).tocsr()
    row_of = {d: r for r, d in enumerate(ds)}  # sum of a demand's shares = 1
    a_eq = coo_matrix((np.ones(len(var)), ([row_of[d] for d, _ in var], list(range(len(var))))),
                      shape=(len(ds), n)).tocsr()
    total = sum(demands[d] for d in ds) or 1.0
    cost = np.zeros(n)
    cost[-1] = 1.0
    for j, (d, i) in enumerate(var):
        cost[j] = LENGTH_COST * demands[d] * (len(paths[d][i]) - 1) / total
    res = linprog(cost, A_ub=a_ub, b_ub=b_ub, A_eq=a_eq, b_eq=np.ones(len(ds)),
                  bounds=[(0, None)] * n, method="highs")
    if res.status != 0:
        raise NoSolution(res.message)
    shares: dict[Demand, list[float]] = {d: [0.0] * len(paths[d]) for d in ds}
    for j, (d, i) in enumerate(var):
        shares[d][i] = max(0.0, float(res.x[j]))
    for d in ds:
        s = sum(shares[d]) or 1.0
        shares[d] = [x / s for x in shares[d]]
    prices = {a: max(0.0, -float(res.ineqlin.marginals[r])) for a, r in arc_index.items()}
    return Split(shares, float(res.x[-1]), prices)


def split_with_more_paths(demands: Mapping[Demand, float], paths: dict[Demand, list[Path]],
                          capacity: Mapping[Arc, float], graph: nx.Graph, max_paths: int = 8,
                          rounds: int = 6, background: Mapping[Arc, float] = NO_BACKGROUND) -> Split:
    """`split_over_paths`, adding paths where they would lower the MLU (column generation): after each solve,
    a demand whose cheapest path under the link prices is cheaper than the paths it has gets that path (up
    to `max_paths`). `paths` is extended in place: the controller keeps them for the next round."""
    split = split_over_paths(demands, paths, capacity, background)
    for _ in range(rounds):
        prices = split.link_prices or {}
        if not any(p > 1e-12 for p in prices.values()):
            break
        def price(u: Hashable, w: Hashable, _: dict, prices: dict = prices) -> float:
            return prices.get((u, w), 0.0) + 1e-9  # a hop costs a little: no zero-price detours

        added = 0
        ends = {d: (paths[d][0][0], paths[d][0][-1]) for d, v in demands.items() if v > 0}  # a demand's key
        for src in {s for s, _ in ends.values()}:  # may be more than its two sites (e.g. a route's name too)
            cheapest = nx.single_source_dijkstra_path(graph, src, weight=price)
            for d, (s, t) in ends.items():
                if s != src or len(paths[d]) >= max_paths or t not in cheapest:
                    continue
                best = tuple(cheapest[t])
                have = min(sum(prices.get(a, 0.0) for a in arcs(p)) for p in paths[d])
                # Clearly cheaper only: equal-price alternatives (degenerate duals) would add paths forever.
                if best not in paths[d] and sum(prices.get(a, 0.0) for a in arcs(best)) < have * (1 - 1e-3) - 1e-9:
                    paths[d].append(best)
                    added += 1
        if not added:
            break
        better = split_over_paths(demands, paths, capacity, background)
        improved = better.mlu < split.mlu * (1 - 1e-4)
        split = better
        if not improved:
            break
    return split


def optimal_mlu(nodes: list[Hashable], capacity: Mapping[Arc, float], demands: Mapping[Demand, float]) -> float:
    """The least MLU of any routing (fractional multi-commodity flow, one commodity per source)."""
    linprog, coo_matrix = _solver()
    sources = sorted({s for (s, _), v in demands.items() if v > 0}, key=str)
    arc_list = sorted(capacity, key=str)
    na, nn = len(arc_list), len(nodes)
    node_i = {v: i for i, v in enumerate(nodes)}
    n = len(sources) * na + 1
    rows, cols, vals = [], [], []
    b_eq = []
    row = 0
    for k, s in enumerate(sources):
        supply = defaultdict(float)
        for (a, b), v in demands.items():
            if a == s and v > 0:
                supply[b] -= v
                supply[s] += v
        for v in nodes:  # out - in = supply
            b_eq.append(supply.get(v, 0.0))
        for j, (u, w) in enumerate(arc_list):
            col = k * na + j
            rows += [row + node_i[u], row + node_i[w]]
            cols += [col, col]
            vals += [1.0, -1.0]
        row += nn
    a_eq = coo_matrix((vals, (rows, cols)), shape=(row, n)).tocsr()
    rows, cols, vals = [], [], []
    for j, a in enumerate(arc_list):  # sum_s f(s, a) - U c(a) <= 0
        for k in range(len(sources)):
            rows.append(j)
            cols.append(k * na + j)
            vals.append(1.0)
        rows.append(j)
        cols.append(n - 1)
        vals.append(-capacity[a])
    a_ub = coo_matrix((vals, (rows, cols)), shape=(na, n)).tocsr()
    cost = np.zeros(n)
    cost[-1] = 1.0
    res = linprog(cost, A_ub=a_ub, b_ub=np.zeros(na), A_eq=a_eq, b_eq=np.array(b_eq), bounds=[(0, None)] * n,
                  method="highs")
    if res.status != 0:
        raise NoSolution(res.message)
    return float(res.x[-1])
