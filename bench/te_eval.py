"""Traffic engineering on the SNDlib research topologies and demand matrices shipped in `topohub`: the maximum
link utilisation (MLU) of shortest path, ECMP, k-shortest with equal split and cloudweave's `split: auto`,
each over the optimum (edge-formulation multi-commodity flow LP), on the true demands.

cloudweave's weights are computed the way the controller computes them: candidate paths (k = 4, loop-free,
link-disjoint first, more added where the LP's link prices say they lower the MLU: column generation), a
matrix *learned* from noisy per-interval counters (30 intervals, each demand's rate
log-normally bursty with sigma 0.3 around its mean, one counter reset; te.rates + te.predict's mean), the LP
(te.lp.split_over_paths) on that prediction, and the LP's shares turned into OVS bucket weights and back into
the shares OVS realises (flows/weights.py). topohub carries no link capacities: every link has the same
capacity in both directions (MLU ratios do not depend on its value).

Run: .venv/bin/python bench/te_eval.py [--json] [--only abilene,geant]
     .venv/bin/python bench/te_eval.py --shifts   (the predictor's shift detection alone)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import statistics
import sys
import time
from collections import defaultdict

import networkx as nx
import topohub

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from cloudweave.flows.weights import shares as ovs_shares  # noqa: E402
from cloudweave.flows.weights import weights_for  # noqa: E402
from cloudweave.te.lp import link_loads, mlu, optimal_mlu, split_with_more_paths  # noqa: E402
from cloudweave.te.paths import candidate_paths  # noqa: E402
from cloudweave.te.predict import Predictor  # noqa: E402
from cloudweave.te.rates import Outcome, RateMeter  # noqa: E402

SNDLIB = ["abilene", "atlanta", "brain", "cost266", "dfn-bwin", "dfn-gwin", "di-yuan", "france", "geant",
          "germany50", "giul39", "india35", "janos-us", "janos-us-ca", "newyork", "nobel-eu", "nobel-germany",
          "nobel-us", "norway", "pdh", "pioro40", "polska", "sun", "ta1", "ta2", "zib54"]
K = 4
INTERVALS, SIGMA, INTERVAL_S = 150, 0.3, 2.0  # 5 minutes of 2 s polls


def load(name: str) -> tuple[nx.Graph, dict]:
    g = nx.node_link_graph(topohub.get(f"sndlib/{name}"), edges="edges")
    g = nx.Graph(g)  # parallel links count once
    demands = {}
    for s, row in g.graph["demands"].items():
        for t, v in row.items():
            if s != t and v > 0:
                demands[(int(s), int(t))] = float(v)
    return g, demands


def learned(demands: dict, rng: random.Random) -> dict:
    """The matrix the controller would plan for: counters sampled each interval, rates, the predictor."""
    out = {}
    for d, mean in demands.items():
        meter, pred, total = RateMeter(), Predictor(), 0.0
        reset_at = rng.randrange(1, INTERVALS)
        for i in range(INTERVALS + 1):
            rate = mean * math.exp(rng.gauss(-SIGMA ** 2 / 2, SIGMA))  # log-normal, mean `mean`
            octets = rate * 1e6 * INTERVAL_S / 8  # SNDlib demands read as Mbit/s; counters count bytes
            total = octets if i == reset_at else total + octets
            outcome, r = meter.sample(i * INTERVAL_S, int(total))
            if outcome is Outcome.RATE:
                pred.update(r / 1e6)
        out[d] = pred.mean  # the LP solves on the mean (te/predict.py says why)
    return out


def ecmp_loads(g: nx.Graph, demands: dict) -> dict:
    """Per-destination ECMP over hop-count shortest paths, split equally at every hop."""
    loads: dict = defaultdict(float)
    by_dst = defaultdict(dict)
    for (s, t), v in demands.items():
        by_dst[t][s] = v
    for t, sources in by_dst.items():
        dist = nx.single_source_shortest_path_length(g, t)
        flow = defaultdict(float, sources)
        for u in sorted(dist, key=lambda n: -dist[n]):
            if u == t or flow[u] == 0:
                continue
            nexts = [w for w in g.neighbors(u) if dist.get(w, math.inf) == dist[u] - 1]
            for w in nexts:
                loads[(u, w)] += flow[u] / len(nexts)
                flow[w] += flow[u] / len(nexts)
    return loads


def evaluate(name: str, rng: random.Random) -> dict:
    g, demands = load(name)
    capacity = {(u, v): 1.0 for u, v in g.edges} | {(v, u): 1.0 for u, v in g.edges}
    t0 = time.perf_counter()
    paths = {d: candidate_paths(g, *d, k=K) for d in demands}
    paths_ms = (time.perf_counter() - t0) * 1000
    opt = optimal_mlu(list(g.nodes), capacity, demands)
    sp = mlu(link_loads({d: [(tuple(nx.shortest_path(g, *d)), 1.0)] for d in demands}, demands), capacity)
    ecmp = mlu(ecmp_loads(g, demands), capacity)
    kshort = mlu(link_loads({d: [(p, 1 / len(ps)) for p in ps] for d, ps in paths.items()}, demands), capacity)
    predicted = learned(demands, rng)
    t0 = time.perf_counter()
    split_with_more_paths(predicted, paths, capacity, g)  # the first round grows the candidate paths
    first_ms = (time.perf_counter() - t0) * 1000
    t0 = time.perf_counter()
    split = split_with_more_paths(predicted, paths, capacity, g)  # a round as the controller runs it
    realised = {}
    for d, s in split.shares.items():
        used = [i for i, x in enumerate(s) if x > 1e-6]
        got = ovs_shares(weights_for([s[i] for i in used]))
        realised[d] = [(paths[d][i], got[j]) for j, i in enumerate(used)]
    solve_ms = (time.perf_counter() - t0) * 1000
    quant_pp = max(abs(got_share - split.shares[d][paths[d].index(p)]) for d, parts in realised.items()
                   for p, got_share in parts) * 100
    auto = mlu(link_loads(realised, demands), capacity)
    return {"name": name, "sites": g.number_of_nodes(), "links": g.number_of_edges(), "demands": len(demands),
            "optimal_mlu": opt, "auto_mlu_ratio": auto / opt, "ecmp_mlu_ratio": ecmp / opt,
            "sp_mlu_ratio": sp / opt, "kshortest_mlu_ratio": kshort / opt, "solve_ms": round(solve_ms, 1),
            "first_solve_ms": round(first_ms, 1),
            "paths_ms": round(paths_ms, 1), "paths": sum(len(p) for p in paths.values()),
            "buckets": sum(len(v) for v in realised.values()), "quantisation_pp": round(quant_pp, 4),
            "paths_per_demand_max": max(len(p) for p in paths.values())}


def predictor_study(rng: random.Random) -> dict:
    """How often the next interval exceeds the prediction, and the mean overshoot, on bursty series."""
    series = []
    for _ in range(200):
        mean, level = rng.uniform(10, 100), []
        for i in range(120):
            if i == 60:
                mean *= rng.choice((0.5, 2.0))  # a lasting shift half way
            level.append(mean * math.exp(rng.gauss(-SIGMA ** 2 / 2, SIGMA)))
        series.append(level)

    def score(predict) -> tuple[float, float]:
        misses = overs = n = 0
        for s in series:
            for i in range(20, len(s) - 1):
                p = predict(s[:i + 1])
                n += 1
                misses += s[i + 1] > p
                overs += max(0.0, p - s[i + 1]) / s[i + 1]
        return misses / n, overs / n

    def ewma(xs: list[float]) -> float:
        m = xs[0]
        for x in xs[1:]:
            m = 0.75 * m + 0.25 * x
        return m

    def jacobson(xs: list[float]) -> float:
        p = Predictor()
        for x in xs:
            p.update(x)
        return p.prediction

    def p90(xs: list[float]) -> float:
        return statistics.quantiles(xs[-20:], n=10)[-1]

    return {name: dict(zip(("under_predicted", "mean_overshoot"), score(f), strict=True))
            for name, f in (("ewma", ewma), ("mean+2dev (cloudweave)", jacobson), ("p90 of 20", p90))}


def shift_study(rng: random.Random, series: int = 400) -> dict:
    """te.predict's shift detection: restarts on stationary log-normal bursts (sigma SIGMA, 150 intervals), and
    the intervals until the mean is within 20 % of a doubling, a halving, a stop (after 100 intervals at 10),
    and a start to 16 from a link's noisy near-zero background (zeros and blips: what the counters give a link
    that carries only BFD, with the routes' share subtracted): the median, and the 90th percentile."""
    def burst(mean: float) -> float:
        return mean * math.exp(rng.gauss(-SIGMA ** 2 / 2, SIGMA))

    def until(p: Predictor, draw, target: float) -> int:
        return next((i for i in range(1, 301) if (p.update(draw()) or abs(p.mean - target) <= 0.2 * max(target, 1.0))),
                    300)

    restarts = 0
    for _ in range(series):
        p = Predictor()
        for _ in range(150):
            n = p.n
            p.update(burst(10.0))
            restarts += p.n <= n
    out: dict = {"restarts_on_stationary_series": restarts, "series": series}
    for name, factor in (("doubling", 2.0), ("halving", 0.5), ("stop", 0.0)):
        took = []
        for _ in range(series):
            p = Predictor()
            for _ in range(100):
                p.update(burst(10.0))
            took.append(until(p, lambda f=factor: burst(10.0 * f), 10.0 * factor))
        out[name] = (statistics.median(took), sorted(took)[int(0.9 * series)])
    took = []
    for _ in range(series):
        p = Predictor()
        for _ in range(50):
            p.update(rng.choice((0.0, 0.01, 0.01, 0.02, rng.uniform(0.0, 1.0))))
        took.append(until(p, lambda: burst(16.0), 16.0))
    out["start_from_noisy_zero"] = (statistics.median(took), sorted(took)[int(0.9 * series)])
    return out


def spread(names: list[str], seeds: int) -> None:
    """auto's MLU ratio over `seeds` learned matrices per topology: how much the result owes to one draw of the
    noise (150 intervals leave each demand's mean about 2.5 % off)."""
    print(f"{'topology':<14} {'median':>7} {'p90':>7} {'max':>7} {'within 5 %':>11}   (auto MLU / optimal MLU, "
          f"{seeds} learned matrices each)")
    for name in names:
        ratios = sorted(evaluate(name, random.Random(seed))["auto_mlu_ratio"] for seed in range(1, seeds + 1))
        within = sum(r <= 1.05 for r in ratios)
        print(f"{name:<14} {statistics.median(ratios):7.3f} {ratios[int(0.9 * (seeds - 1))]:7.3f} {ratios[-1]:7.3f} "
              f"{within:>5} of {seeds}")
    print(f"reproduce: .venv/bin/python bench/te_eval.py --only {','.join(names)} --seeds {seeds}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", action="store_true", help="print a JSON list, one object per topology")
    p.add_argument("--only", default="", help="comma-separated topology names")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--seeds", type=int, default=0,
                   help="instead: learn each topology's matrix N times (seeds 1..N) and print auto's spread")
    p.add_argument("--shifts", action="store_true", help="instead: the predictor's shift detection study")
    args = p.parse_args()
    rng = random.Random(args.seed)
    if args.shifts:
        s = shift_study(rng)
        print(f"restarts on {s['series']} stationary series of 150 intervals: {s['restarts_on_stationary_series']}")
        for name in ("doubling", "halving", "stop", "start_from_noisy_zero"):
            print(f"  {name:<22} followed in a median of {s[name][0]:g} intervals (p90 {s[name][1]:g})")
        print(f"reproduce: .venv/bin/python bench/te_eval.py --shifts --seed {args.seed}")
        return
    names = [n for n in args.only.split(",") if n] or SNDLIB
    if args.seeds:
        spread(names, args.seeds)
        return
    rows = [evaluate(n, rng) for n in names]
    if args.json:
        print(json.dumps(rows, indent=1))
        return
    print(f"{'topology':<14} {'sites':>5} {'links':>5} {'dem':>5}  {'auto':>5} {'ecmp':>5} {'sp':>5} {'k-eq':>5}  "
          f"{'solve ms':>8} {'first':>6} {'buckets':>7} {'quant pp':>8}   (MLU / optimal MLU)")
    for r in rows:
        print(f"{r['name']:<14} {r['sites']:>5} {r['links']:>5} {r['demands']:>5}  {r['auto_mlu_ratio']:5.3f} "
              f"{r['ecmp_mlu_ratio']:5.3f} {r['sp_mlu_ratio']:5.3f} {r['kshortest_mlu_ratio']:5.3f}  "
              f"{r['solve_ms']:8.1f} {r['first_solve_ms']:6.0f} {r['buckets']:>7} {r['quantisation_pp']:8.4f}")
    worst = max(rows, key=lambda r: r["auto_mlu_ratio"])
    print(f"auto: worst {worst['auto_mlu_ratio']:.3f} ({worst['name']}), median "
          f"{statistics.median(r['auto_mlu_ratio'] for r in rows):.3f}; ECMP median "
          f"{statistics.median(r['ecmp_mlu_ratio'] for r in rows):.3f}")
    print("predictor (next interval vs prediction, bursty series with a shift):")
    for name, s in predictor_study(rng).items():
        print(f"  {name:<24} under-predicted {s['under_predicted']:6.1%}   mean overshoot {s['mean_overshoot']:6.1%}")
    print(f"reproduce: .venv/bin/python bench/te_eval.py --seed {args.seed}")


if __name__ == "__main__":
    main()
