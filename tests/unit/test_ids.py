"""Ids of groups and conjunctions: hashed, probed on collision, and never taken from a position."""

import random

import networkx as nx

from cloudweave.config import load_model
from cloudweave.flows import ids
from cloudweave.flows.compile import compile_model
from cloudweave.flows.routing import route_cookie, route_group_id, route_group_purpose
from cloudweave.te.engine import TrafficEngineer
from cloudweave.te.paths import candidate_paths
from cloudweave.te.predict import Predictor


def test_allocate_probes_past_a_taken_id_and_depends_only_on_the_names():
    got = ids.allocate({"a": 5, "b": 5, "c": 6, "d": 9}, 16)
    assert got == {"a": 5, "b": 6, "c": 7, "d": 9}
    assert ids.allocate({"d": 9, "c": 6, "b": 5, "a": 5}, 16) == got  # order of the input does not matter
    assert ids.allocate({"x": 15, "y": 15}, 16, valid=lambda v: v != 0) == {"x": 15, "y": 1}


def colliding_route_names(src: str, dst: str) -> tuple[str, str]:
    seen: dict[int, str] = {}
    i = 0
    while True:
        name = f"r{i}"
        gid = route_group_id(name, src, dst)
        if gid in seen:
            return seen[gid], name
        seen[gid] = name
        i += 1


def test_two_routes_whose_group_ids_collide_get_two_groups(tmp_path):
    """D2: the preferred ids are a 24-bit hash; two route names with the same one used to make compile raise."""
    x, y = colliding_route_names("a", "b")
    assert route_group_id(x, "a", "b") == route_group_id(y, "a", "b")
    path = tmp_path / "t.yaml"
    path.write_text(f"""\
version: 1
sites:
  a: {{dpid: 1, vtep: 172.31.0.1, ovsdb: "unix:/tmp/a.sock"}}
  b: {{dpid: 2, vtep: 172.31.0.2, ovsdb: "unix:/tmp/b.sock"}}
  c: {{dpid: 3, vtep: 172.31.0.3, ovsdb: "unix:/tmp/c.sock"}}
links:
  - {{between: [a, b], capacity: 1Gbit}}
  - {{between: [a, c], capacity: 1Gbit}}
  - {{between: [b, c], capacity: 1Gbit}}
segments:
  s: {{vni: 10, subnet: 10.0.0.0/24}}
endpoints:
  e1: {{site: a, port: p1, segment: s, mac: "02:00:00:00:00:01", ip: 10.0.0.1}}
  e2: {{site: b, port: p2, segment: s, mac: "02:00:00:00:00:02", ip: 10.0.0.2}}
routes:
  - {{name: {x}, match: {{proto: tcp, dst_port: 1000, from_site: a, to_site: b}}, split: {{direct: 70, via c: 30}}}}
  - {{name: {y}, match: {{proto: tcp, dst_port: 2000, from_site: a, to_site: b}}, split: {{direct: 20, via c: 80}}}}
""")
    model, _ = load_model(str(path))
    site = compile_model(model)["a"]
    by_purpose = {g.purpose: g.group_id for g in site.groups}
    assert len(site.groups) == 2 and len(set(by_purpose.values())) == 2
    for name in (x, y):
        targets = {a.group_id for f in site.flows if f.cookie == route_cookie(name, "a", "b")
                   for a in f.actions if hasattr(a, "purpose")}
        assert targets == {by_purpose[route_group_purpose(name, "a", "b")]}
    # The same names give the same ids again: stable across a restart.
    assert compile_model(model)["a"].groups == site.groups


def test_a_rejected_te_round_leaves_paths_and_shares_in_step():
    """D1: column generation used to extend the engine's own path lists, so a rejected proposal left a key
    with more paths than shares, and the next compile raised. A 5x5 grid with 40 demands found it."""
    random.seed(3)
    g = nx.relabel_nodes(nx.grid_2d_graph(5, 5), lambda n: f"s{n[0]}{n[1]}")
    cap = {}
    for a, b in g.edges:
        cap[(a, b)] = cap[(b, a)] = random.choice([100e6, 200e6, 400e6])
    nodes = sorted(g.nodes)
    pairs = random.sample([(a, b) for a in nodes for b in nodes if a != b], 40)
    rejected_with_new_paths = 0
    for _trial in range(12):
        eng = TrafficEngineer()
        base = {}
        for a, b in pairs:
            key = ("r", a, b)
            eng.paths[key] = candidate_paths(g, a, b, 4)
            base[key] = random.uniform(5e6, 60e6)
        for _round in range(6):
            for key, d in base.items():
                eng.predictors.setdefault(key, Predictor()).update(d * random.uniform(0.9, 1.1))
            before = {k: list(v) for k, v in eng.paths.items()}
            prop = eng.propose(g, cap)
            if prop is None:
                continue
            if eng.decide(prop):
                eng.apply(prop)
            else:
                assert eng.paths == before  # a rejected proposal changes nothing
                rejected_with_new_paths += any(len(prop.paths[k]) > len(before[k]) for k in prop.paths)
            for key, (paths, shares) in eng.in_force().items():
                assert len(paths) == len(shares), key
            assert set(eng.in_force()) == set(eng.shares)
            restored = TrafficEngineer.from_json(eng.to_json())
            assert restored.in_force() == eng.in_force()
    assert rejected_with_new_paths > 0  # the case that broke the engine did occur


def test_a_rule_inserted_above_others_re_keys_none_of_their_flows():
    """Rule cookies and conjunction ids come from what a rule says, not from its position."""
    import dataclasses
    import os
    from ipaddress import IPv4Network

    from cloudweave.flows import cookies

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    model, _ = load_model(os.path.join(root, "topologies", "matrix.yaml"))
    groups = list(model.security_groups)
    gi = next(i for i, g in enumerate(groups) if len([r for r in g.rules if r.direction == "ingress"]) >= 2)
    g = groups[gi]
    first = next(r for r in g.rules if r.direction == "ingress")
    # Its own priority: no flow of it merges with another rule's (that would change them by merging, not
    # by position, which is what this is about).
    new = dataclasses.replace(first, peer="203.0.113.0/24", peer_net=IPv4Network("203.0.113.0/24"), proto=6,
                              priority=7,
                              ports=(dataclasses.replace(first.ports[0], lo=4711, hi=4711),) if first.ports else ())
    shifted = tuple(dataclasses.replace(r, index=r.index + 1) if r.direction == "ingress" else r for r in g.rules)
    groups[gi] = dataclasses.replace(g, rules=(dataclasses.replace(new, index=0),) + shifted)
    edited = dataclasses.replace(model, security_groups=tuple(groups))
    rule_kind = cookies.KINDS["acl_rule"]
    for site, before in compile_model(model).items():
        after = set(compile_model(edited)[site].flows)
        kept = [f for f in before.flows if (f.cookie >> cookies.KIND_SHIFT) & 0xFF == rule_kind]
        assert all(f in after for f in kept), site
    assert any((f.cookie >> cookies.KIND_SHIFT) & 0xFF == rule_kind and f.cookie == cookies.cookie("acl_rule",
               new.identity) for st in compile_model(edited).values() for f in st.flows)
