"""Traffic engineering's pure parts: rates from counters (resets, missing samples), the predictor, candidate
paths, and the LPs on small graphs whose optimum is known by hand."""

import json
import os

import networkx as nx
import pytest

from cloudweave.te.lp import link_loads, mlu, optimal_mlu, split_over_paths
from cloudweave.te.paths import candidate_paths
from cloudweave.te.predict import Predictor
from cloudweave.te.rates import Outcome, RateMeter

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_rates_from_counters_survive_resets_and_missing_samples():
    m = RateMeter()
    assert m.sample(0.0, 1000) == (Outcome.FIRST, None)
    assert m.sample(2.0, 3000) == (Outcome.RATE, 8000.0)  # 2000 bytes in 2 s
    assert m.sample(4.0, 500) == (Outcome.RESET, None)  # went down: no negative, no spike
    assert m.sample(6.0, 2500) == (Outcome.RATE, 8000.0)  # the reset value is the new baseline
    assert m.sample(8.0, None) == (Outcome.STALE, None) and m.missed == 1  # no answer: not zero demand
    assert m.sample(10.0, 4500) == (Outcome.RATE, 4000.0)  # over the whole gap since the last answer


def test_predictor_averages_long_covers_bursts_and_follows_a_shift():
    p = Predictor()
    for r in [100, 150, 100, 160, 100, 140] * 20:
        p.update(r)
    assert p.mean == pytest.approx(125, abs=3)  # the long-run mean of a bursty series
    assert p.prediction >= 150  # planned for near its bursts
    for _ in range(3):
        p.update(400.0)
    assert p.mean == pytest.approx(400, rel=0.05)  # a lasting shift is followed within three intervals
    for _ in range(30):
        p.update(400.0)
    p.update(1000.0)  # one burst is not a shift: averaged in, it moves the mean by a 34th of itself
    assert p.mean == pytest.approx(400 + 600 / 34)
    for _ in range(3):
        p.update(0.0)  # a stop is a shift, in three intervals
    assert p.mean == 0.0
    assert Predictor.from_json(p.to_json()).mean == p.mean


def test_predictor_sees_no_shift_in_stationary_bursts_and_follows_real_ones_within_a_few_intervals():
    """Log-normal bursts of sigma 0.3 (bench/te_eval.py's): 100 series of 150 intervals shift nowhere, and their
    means are as close as 150 samples allow; a doubling, a halving and a stop are followed."""
    import math
    import random
    import statistics

    rng = random.Random(5)

    def burst(mean: float) -> float:
        return mean * math.exp(rng.gauss(-0.045, 0.3))

    errors = []
    for _ in range(100):
        p = Predictor()
        for _ in range(150):
            n = p.n
            p.update(burst(10.0))
            assert p.n > n  # no restart
        errors.append(p.mean / 10.0 - 1)
    assert statistics.pstdev(errors) < 0.035  # 0.3 / sqrt(150) = 0.024 at best
    for factor, within in ((2.0, 25), (0.5, 12), (0.0, 3)):
        took = []
        for _ in range(50):
            p = Predictor()
            for _ in range(100):
                p.update(burst(10.0))
            took.append(next((i for i in range(1, 200) if (p.update(burst(10.0 * factor)) or
                                                            abs(p.mean - 10.0 * factor) < 2.0)), 200))
        assert statistics.median(took) <= within, (factor, took)
    # A start from a noisy near-zero (a link's other traffic: zeros, blips) is followed within a few intervals:
    # judged against the mean the start itself lifts, it crept up by 1/n a round.
    took = []
    for _ in range(50):
        p = Predictor()
        for _ in range(50):
            p.update(rng.choice((0.0, 0.01, 0.02, rng.uniform(0.0, 1.0))))
        took.append(next((i for i in range(1, 200) if (p.update(burst(16.0)) or p.mean > 12.8)), 200))
    assert statistics.median(took) <= 6 and sorted(took)[45] <= 10, took


def triangle():
    g = nx.Graph()
    g.add_edges_from([("a", "b"), ("a", "c"), ("b", "c")])
    cap = {(u, v): 100.0 for u, v in g.edges} | {(v, u): 100.0 for u, v in g.edges}
    return g, cap


def test_candidate_paths_prefer_disjoint_ones():
    g = nx.Graph()
    g.add_edges_from([("s", "x"), ("x", "t"), ("s", "y"), ("y", "t"), ("x", "y"), ("s", "t")])
    paths = candidate_paths(g, "s", "t", k=3)
    assert paths[0] == ("s", "t")
    assert set(paths) == {("s", "t"), ("s", "x", "t"), ("s", "y", "t")}  # no two share a link
    assert all(len(set(p)) == len(p) for p in paths)


def test_split_moves_load_off_the_short_path_when_it_overflows():
    g, cap = triangle()
    demands = {("a", "b"): 150.0}
    paths = {("a", "b"): candidate_paths(g, "a", "b", k=2)}
    split = split_over_paths(demands, paths, cap)
    assert split.mlu == pytest.approx(0.75)  # 75 on each of a-b and a-c-b
    assert split.shares[("a", "b")] == pytest.approx([0.5, 0.5])
    routing = {d: list(zip(paths[d], s, strict=True)) for d, s in split.shares.items()}
    assert mlu(link_loads(routing, demands), cap) == pytest.approx(0.75)


def test_length_breaks_ties_where_the_mlu_is_set_elsewhere():
    g, cap = triangle()
    demands = {("b", "c"): 90.0, ("a", "b"): 10.0}
    paths = {("b", "c"): [("b", "c")], ("a", "b"): candidate_paths(g, "a", "b", k=2)}
    split = split_over_paths(demands, paths, cap)
    assert split.mlu == pytest.approx(0.9)  # b->c alone sets it
    assert split.shares[("a", "b")] == pytest.approx([1.0, 0.0])  # so a->b takes its shortest path


def test_background_traffic_is_a_fixed_load_the_split_plans_around():
    g, cap = triangle()
    demands = {("a", "b"): 100.0}
    paths = {("a", "b"): candidate_paths(g, "a", "b", k=2)}
    blind = split_over_paths(demands, paths, cap)
    assert blind.shares[("a", "b")] == pytest.approx([0.5, 0.5])  # 50 + 60 other on a->b: over capacity
    split = split_over_paths(demands, paths, cap, background={("a", "b"): 60.0, ("c", "a"): 99.0})
    # a->b carries 60 of its own: min max((60 + x) / 100, (100 - x) / 100) at x = 20; c->a is on no path.
    assert split.shares[("a", "b")] == pytest.approx([0.2, 0.8])
    assert split.mlu == pytest.approx(0.8)


def test_optimal_mlu_on_a_triangle():
    g, cap = triangle()
    demands = {("a", "b"): 150.0, ("b", "c"): 60.0}
    # a->b: 150 over a-b and a-c-b; b->c: 60 direct. Optimum: a-b carries x, a-c and c-b carry 150-x, b-c
    # carries 60 in the other direction (b->c), so only a->b shares arcs: x = 75 -> MLU 0.75.
    assert optimal_mlu(list(g.nodes), cap, demands) == pytest.approx(0.75)
    split = split_over_paths(demands, {d: candidate_paths(g, *d, k=2) for d in demands}, cap)
    assert split.mlu == pytest.approx(0.75)


def te_model(tmp_path):
    from cloudweave.config import load_model

    return load_model(os.path.join(ROOT, "topologies", "te.yaml"))[0]


def test_engine_adopts_weights_only_when_they_help_enough(tmp_path):
    from cloudweave.flows.topology import SiteGraph
    from cloudweave.te.engine import TrafficEngineer, capacities

    model = te_model(tmp_path)
    graph = SiteGraph(model).declared
    eng = TrafficEngineer()
    keys = eng.prepare(model, graph)
    assert len(keys) == 6 and eng.paths[("realtime", "onprem", "cloud1")][0] == ("onprem", "cloud1")
    key = ("realtime", "onprem", "cloud1")
    total = 0
    for t in range(10):  # 150 Mbit/s from onprem to cloud1, nothing else
        total += int(150e6 / 8)
        eng.observe(float(t), {k: (total if k == key else 0) for k in keys})
    p = eng.propose(graph, capacities(model))
    assert p.current_mlu == pytest.approx(1.5, rel=0.01)  # the shortest path alone: 150 on a 100 link
    assert p.mlu == pytest.approx(0.75, rel=0.01)
    assert eng.decide(p) == "first weights"
    eng.apply(p)
    assert eng.shares[key] == pytest.approx([0.5, 0.5])
    p2 = eng.propose(graph, capacities(model))
    assert eng.decide(p2) is None  # nothing better to gain: keep the groups as they are
    restored = TrafficEngineer.from_json(json.loads(json.dumps(eng.to_json())))
    assert restored.shares == eng.shares and restored.paths == eng.paths
    assert restored.predictors[key].mean == pytest.approx(eng.predictors[key].mean)


def test_engine_leaves_quiet_links_alone(tmp_path):
    """20 Mbit/s on a 100 Mbit/s link: halving it over a detour would lower the MLU, and help no one. Nothing
    is adopted while every link stays under half full, even at the burst prediction (a new demand's first
    prediction is twice its rate); at 80 Mbit/s the split is."""
    from cloudweave.flows.topology import SiteGraph
    from cloudweave.te.engine import TrafficEngineer, capacities

    model = te_model(tmp_path)
    graph = SiteGraph(model).declared
    eng = TrafficEngineer()
    keys = eng.prepare(model, graph)
    key = ("realtime", "onprem", "cloud1")
    total = 0
    for t, mbps in enumerate([20] * 30 + [80] * 10):
        total += int(mbps * 1e6 / 8)
        eng.observe(float(t), {k: (total if k == key else 0) for k in keys})
        p = eng.propose(graph, capacities(model))
        if p is None:
            continue  # the first counters give no rate yet
        if eng.decide(p):
            eng.apply(p)
        if t < 30:
            assert p.mlu < p.current_mlu and eng.shares == {}, t  # lower over both paths, and not worth it
    assert eng.shares[key] == pytest.approx([0.5, 0.5])


def test_engine_learns_each_links_other_traffic_and_moves_the_split_off_a_busy_link(tmp_path):
    """A link's far end counts everything it received; the pinned-path flows count what the route put on each
    path. The difference is the link's background, and the LP plans around it."""
    from cloudweave.flows.topology import SiteGraph
    from cloudweave.te.engine import TrafficEngineer, capacities

    model = te_model(tmp_path)
    graph = SiteGraph(model).declared
    cap = capacities(model)
    eng = TrafficEngineer()
    keys = eng.prepare(model, graph)
    key = ("realtime", "onprem", "cloud1")
    assert eng.paths[key][:2] == [("onprem", "cloud1"), ("onprem", "cloud2", "cloud1")]
    route, other = int(25e6 / 8), int(60e6 / 8)  # bytes a second: 25 Mbit/s routed, 60 of other traffic
    links = {(a, b): 0 for link in model.links for a, b in (link.sites, link.sites[::-1])}
    for t in range(10):  # the route on its shortest path (bucket 0), beside other traffic on the same link
        at = {s.name: float(t) for s in model.sites}
        eng.observe(float(t), {k: (route * (t + 1) if k == key else 0) for k in keys})
        links[("onprem", "cloud1")] = (route + other) * (t + 1)
        updated = eng.observe_links(at, links, at, {(key, 0): route * (t + 1)}, cap)
        assert len(updated) == (0 if t == 0 else 6)  # no rates from the first counters
    assert eng.background[("onprem", "cloud1")].mean == pytest.approx(60e6)
    assert eng.background_load() == {("onprem", "cloud1"): pytest.approx(60e6)}  # idle links carry nothing
    p = eng.propose(graph, cap)
    assert p.current_mlu == pytest.approx(0.85)  # 25 + 60 on the 100 Mbit/s link
    assert eng.decide(p) == "first weights"
    # Blind to the other traffic the LP would split 12.5/12.5; with it, max((60 + x) / 100, (25 - x) / 100) is
    # least at x = 0: the route leaves the busy link to the other traffic.
    assert p.shares[key][:2] == pytest.approx([0.0, 1.0])
    assert p.mlu == pytest.approx(0.6)
    assert p.utilisation[("onprem", "cloud1")] == pytest.approx(0.6)  # the other traffic included
    assert p.utilisation[("onprem", "cloud2")] == pytest.approx(0.25)
    # A site without an answer (None) or a bucket just added and already busy: the backgrounds stay as they are.
    n = eng.background[("onprem", "cloud1")].n
    at = {s.name: 10.0 for s in model.sites}
    assert eng.observe_links(at, links | {("onprem", "cloud1"): None}, at, {(key, 0): route * 11}, cap) == \
        [a for a in links if a != ("onprem", "cloud1")]  # the links that did answer
    assert eng.observe_links(at, links, at, {(key, 0): route * 12, (key, 1): 5000}, cap) == []
    assert eng.background[("onprem", "cloud1")].n == n
    restored = TrafficEngineer.from_json(json.loads(json.dumps(eng.to_json())))
    assert restored.background_load() == pytest.approx(eng.background_load())


def test_a_saturated_link_gives_a_lower_bound_of_its_background_never_a_lower_mean():
    """Overloaded, a link delivers its capacity and drops the rest, while the routes' share is counted before
    the drop: what it received less that share understates the other traffic."""
    from cloudweave.te.engine import TrafficEngineer

    eng = TrafficEngineer()
    eng.paths[("r", "a", "b")] = [("a", "b")]
    arc, cap = ("a", "b"), {("a", "b"): 100e6}
    received = routed = 0

    def second(t: int, got_mbps: float, routed_mbps: float) -> list:
        nonlocal received, routed
        received += int(got_mbps * 1e6 / 8)
        routed += int(routed_mbps * 1e6 / 8)
        return eng.observe_links({"b": float(t)}, {arc: received}, {"a": float(t)}, {(("r", "a", "b"), 0): routed},
                                 cap)

    for t in range(30):
        second(t, 80, 0)  # 80 Mbit/s of other traffic alone
    assert eng.background[arc].mean == pytest.approx(80e6)
    for t in range(30, 35):
        assert second(t, 99, 40) == []  # 80 + 40 offered, 99 delivered: "59" is no measurement
    assert eng.background[arc].mean == pytest.approx(80e6)
    second(35, 99, 5)  # saturated, and still more than the mean: it raises it
    assert eng.background[arc].mean > 80e6
    for t in range(36, 40):
        second(t, 30, 0)  # unsaturated samples move it as always (a shift down, here)
    assert eng.background[arc].mean == pytest.approx(30e6, rel=0.01)


def test_the_background_gauge_falls_to_zero_when_a_links_other_traffic_stops(tmp_path):
    from cloudweave.te.predict import Predictor
    from controller.metrics import Metrics
    from controller.te_loop import TeLoop

    metrics = Metrics()
    loop = TeLoop(None, metrics)
    loop.engine.background[("onprem", "cloud1")] = Predictor(5e6, 1e5, 30)
    loop.engine.background[("cloud1", "onprem")] = Predictor(0.0, 0.0, 30)
    loop.round(te_model(tmp_path), frozenset(), {})  # no switch connected: nothing measured
    value = lambda link: metrics.registry.get_sample_value("cloudweave_te_background_bps", {"link": link})  # noqa
    assert value("onprem->cloud1") == 5e6 and value("cloud1->onprem") == 0.0


def test_the_controller_state_survives_a_restart(tmp_path):
    from cloudweave.te.engine import TrafficEngineer
    from controller.metrics import Metrics
    from controller.te_loop import TeLoop

    path = str(tmp_path / "te.json")
    loop = TeLoop(path, Metrics())
    loop.engine = TrafficEngineer.from_json({"keys": [{"route": "r", "src": "a", "dst": "b", "paths": [["a", "b"]],
                                                       "shares": [1.0], "predictor": {"mean": 5e6, "dev": 1e6}}]})
    loop.save({"updated": 1.0})
    again = TeLoop(path, Metrics())  # a restarted controller
    assert again.engine.predictors[("r", "a", "b")].mean == 5e6
    assert again.auto_shares() == {("r", "a", "b"): ((("a", "b"),), (1.0,))}  # a snapshot, not the engine's lists
    (tmp_path / "bad.json").write_text("{not json")
    assert TeLoop(str(tmp_path / "bad.json"), Metrics()).engine.predictors == {}  # a broken file: start empty


def test_tm_prints_the_matrix_and_draws_it(tmp_path, capsys):
    from cloudweave.cli import tm

    doc = {"updated": 100.0, "poll_interval_s": 1.0,
           "keys": [{"route": "realtime", "src": "onprem", "dst": "cloud1",
                     "paths": [["onprem", "cloud1"], ["onprem", "cloud2", "cloud1"]], "shares": [0.5, 0.5],
                     "predictor": {"mean": 150e6, "dev": 10e6}, "rate": 151e6, "stale": False},
                    {"route": "realtime", "src": "cloud2", "dst": "onprem", "paths": [["cloud2", "onprem"]],
                     "shares": None, "predictor": None, "rate": None, "stale": True}],
           "capacity_bps": {"onprem->cloud1": 100e6}, "utilisation": {"onprem->cloud1": 0.75,
                                                                      "onprem->cloud2": 0.75},
           "mlu": {"proposed": 0.75, "in_force": 0.75},
           "background": {"onprem->cloud1": {"mean": 20e6, "dev": 1e6, "n": 9, "spread": 0.1, "spread_n": 9,
                                             "rate": 21e6}}}
    state = tmp_path / "te.json"
    state.write_text(json.dumps(doc))
    png = tmp_path / "tm.png"
    assert tm.main(str(state), False, str(png)) == 0
    out = capsys.readouterr().out
    assert "realtime       onprem -> cloud1       151.0 Mbit/s 150.0 Mbit/s 170.0 Mbit/s  onprem -> cloud1 50%, " \
           "onprem -> cloud2 -> cloud1 50%" in out
    assert "STALE: site did not answer" in out
    assert "onprem->cloud1             75.0%  of 100.0 Mbit/s  other traffic 20.0 Mbit/s" in out
    assert "onprem->cloud2             75.0%  of -\n" in out  # no other traffic learned there
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert tm.main(str(tmp_path / "none.json"), False) == 1
