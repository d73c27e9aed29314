"""Incremental compilation equals compiling from scratch: after every edit of a random sequence (endpoints
added, removed, moved, re-addressed, regrouped; rules, route weights and TE shares changed; links down and
up; next hops learned), on every shipped topology and on generated ones, flow for flow and group for group."""

import dataclasses
import glob
import os
from ipaddress import IPv4Address, IPv4Network

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cloudweave.config import load_model
from cloudweave.config.model import Filter, FilterMatch, Model
from cloudweave.flows.incremental import IncrementalCompiler
from cloudweave.flows.topology import SiteGraph
from cloudweave.te.engine import auto_keys
from cloudweave.te.paths import candidate_paths
from testkit.generate import mesh

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOPOLOGIES = sorted(glob.glob(os.path.join(ROOT, "topologies", "*.yaml")))


def models() -> list[tuple[str, Model]]:
    out = [(os.path.basename(p), load_model(p)[0]) for p in TOPOLOGIES]
    out.append(("mesh-12", mesh(12, 60, 6, sites_per_segment=4, seed=7)))
    return out


MODELS = models()


@dataclasses.dataclass
class World:
    """A model and the controller's other inputs, edited step by step."""

    model: Model
    down: frozenset = frozenset()
    hops: dict = dataclasses.field(default_factory=dict)
    auto: dict = dataclasses.field(default_factory=dict)
    quarantined: frozenset = frozenset()
    serial: int = 0


def _backends(m: Model) -> set[str]:
    return {n for r in m.routes for n, _ in r.backends}


def _free_ip(m: Model, seg: str, draw) -> IPv4Address:
    net = m.segment(seg).subnet
    used = {e.ip for e in m.endpoints if e.segment == seg} | {s.gateway for s in m.segments if s.name == seg}
    used |= {r.service.vip for r in m.routes if r.service is not None}
    start = draw(st.integers(1, min(net.num_addresses - 2, 250)))
    for step in range(net.num_addresses - 2):  # the first free address from there: the file stays valid
        ip = net.network_address + 1 + (start - 1 + step) % (net.num_addresses - 2)
        if ip not in used:
            return ip
    raise AssertionError(f"segment {seg} is full")


def edit(w: World, kind: str, draw) -> None:
    m = w.model
    eps = list(m.endpoints)
    movable = [e for e in eps if e.name not in _backends(m)]
    w.serial += 1
    if kind == "mac" and eps:
        i = draw(st.integers(0, len(eps) - 1))
        eps[i] = dataclasses.replace(eps[i], mac=f"02:aa:00:00:{w.serial // 256:02x}:{w.serial % 256:02x}")
    elif kind == "ip" and eps:
        i = draw(st.integers(0, len(eps) - 1))
        eps[i] = dataclasses.replace(eps[i], ip=_free_ip(m, eps[i].segment, draw))
    elif kind == "move" and movable:
        e = draw(st.sampled_from(movable))
        site = draw(st.sampled_from([s.name for s in m.sites]))
        eps[eps.index(e)] = dataclasses.replace(e, site=site, port=f"mv{w.serial}")
    elif kind == "remove" and (removable := [e for e in movable if f"port:{e.name}" not in
                                             {s for f in m.filters for s in f.sources}]):
        eps.remove(draw(st.sampled_from(removable)))  # not one a filter names: check refuses such a file
    elif kind == "add" and eps:
        e = draw(st.sampled_from(eps))
        eps.append(dataclasses.replace(e, name=f"new{w.serial}", port=f"np{w.serial}", ip=_free_ip(m, e.segment, draw),
                                       mac=f"02:bb:00:00:{w.serial // 256:02x}:{w.serial % 256:02x}"))
    elif kind == "group" and eps and m.security_groups:
        i = draw(st.integers(0, len(eps) - 1))
        g = draw(st.sampled_from([g.name for g in m.security_groups]))
        groups = tuple(sorted(set(eps[i].groups) ^ {g}))
        eps[i] = dataclasses.replace(eps[i], groups=groups)
    elif kind == "rule" and any(g.rules for g in m.security_groups):
        groups = list(m.security_groups)
        gi = draw(st.sampled_from([i for i, g in enumerate(groups) if g.rules]))
        rules = list(groups[gi].rules)
        ri = draw(st.integers(0, len(rules) - 1))
        r = rules[ri]
        rules[ri] = dataclasses.replace(r, action="deny" if r.action == "allow" else "allow",
                                        priority=draw(st.integers(0, 3)))
        groups[gi] = dataclasses.replace(groups[gi], rules=tuple(rules))
        w.model = dataclasses.replace(m, security_groups=tuple(groups))
        return
    elif kind == "weights" and any(r.paths for r in m.routes):
        routes = list(m.routes)
        ri = draw(st.sampled_from([i for i, r in enumerate(routes) if r.paths]))
        paths = tuple(dataclasses.replace(p, weight=float(draw(st.integers(0, 9)))) for p in routes[ri].paths)
        if sum(p.weight for p in paths) == 0:
            paths = (dataclasses.replace(paths[0], weight=1.0),) + paths[1:]
        routes[ri] = dataclasses.replace(routes[ri], paths=paths)
        w.model = dataclasses.replace(m, routes=tuple(routes))
        return
    elif kind == "te" and auto_keys(m):
        graph = SiteGraph(m).declared
        key = draw(st.sampled_from(auto_keys(m)))
        paths = candidate_paths(graph, key[1], key[2], 4)
        raw = [draw(st.integers(0, 5)) for _ in paths]
        total = sum(raw) or 1
        w.auto[key] = (tuple(tuple(p) for p in paths), tuple((x or (total if i == 0 and not sum(raw) else 0)) / total
                                                            for i, x in enumerate(raw)))
        return
    elif kind == "link" and m.links:
        link = draw(st.sampled_from(list(m.links))).sites
        w.down = w.down ^ {link}
        return
    elif kind == "quarantine" and eps:
        w.quarantined = w.quarantined ^ {draw(st.sampled_from(eps)).name}
        return
    elif kind == "filter" and eps:
        e = draw(st.sampled_from(eps))
        sources = draw(st.sampled_from([(), ("local",), ("tunnel",), (f"port:{e.name}",), ("local", "uplink")]))
        f = Filter(f"f{w.serial}", len(m.filters), FilterMatch(proto=17, src=str(e.ip),
                                                               src_nets=(IPv4Network(e.ip),)), sources)
        w.model = dataclasses.replace(m, filters=m.filters + (f,))
        return
    elif kind == "next_hop":
        site = draw(st.sampled_from([s.name for s in m.sites]))
        w.hops[site] = f"02:cc:00:00:00:{w.serial % 256:02x}"
        return
    w.model = dataclasses.replace(m, endpoints=tuple(eps))


EDITS = ("mac", "ip", "move", "remove", "add", "group", "rule", "weights", "te", "link", "next_hop", "quarantine",
         "filter")


def assert_same(inc: dict, fresh: dict) -> None:
    assert inc.keys() == fresh.keys()
    for site in fresh:
        assert inc[site].flows == fresh[site].flows, site
        assert inc[site].groups == fresh[site].groups, site
        assert inc[site].tunnels == fresh[site].tunnels, site
        assert inc[site] == fresh[site], site


@pytest.mark.parametrize("name,model", MODELS, ids=[n for n, _ in MODELS])
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_incremental_equals_from_scratch(name, model, data):
    w = World(model)
    inc = IncrementalCompiler()
    before = inc.compile(w.model)
    for kind in data.draw(st.lists(st.sampled_from(EDITS), min_size=1, max_size=6)):
        edit(w, kind, data.draw)
        got = inc.compile(w.model, w.down, w.hops, w.auto, quarantined=w.quarantined)
        assert_same(got, IncrementalCompiler().compile(w.model, w.down, w.hops, w.auto, quarantined=w.quarantined))
        # What no unit of a site changed in is the very object it was: that site's switch hears nothing.
        for site, state in got.items():
            if site in before and state == before[site]:
                assert state is before[site], (kind, site)
        before = got


@pytest.mark.parametrize("name,model", MODELS, ids=[n for n, _ in MODELS])
@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_compiling_only_some_sites_gives_each_what_a_full_compile_gives(name, model, data):
    """The controller compiles only the sites whose switches are connected; a site that connects later, after
    edits it did not follow, must get exactly what a from-scratch compile gives."""
    w = World(model)
    names = [s.name for s in model.sites]
    inc = IncrementalCompiler()
    for kind in data.draw(st.lists(st.sampled_from(EDITS), min_size=1, max_size=6)):
        connected = data.draw(st.lists(st.sampled_from(names), unique=True, max_size=len(names)))
        got = inc.compile(w.model, w.down, w.hops, w.auto, sites=connected, quarantined=w.quarantined)
        assert set(got) == set(connected)
        fresh = IncrementalCompiler().compile(w.model, w.down, w.hops, w.auto, quarantined=w.quarantined)
        assert_same(got, {s: fresh[s] for s in connected})
        edit(w, kind, data.draw)


def test_one_mac_edit_recomputes_only_its_segment_where_it_reaches():
    model = mesh(40, 400, 20, sites_per_segment=4, seed=3)
    inc = IncrementalCompiler()
    first = inc.compile(model)
    e = model.endpoints[7]
    edited = dataclasses.replace(model, endpoints=tuple(dataclasses.replace(x, mac="02:dd:00:00:00:01") if x is e
                                                        else x for x in model.endpoints))
    second = inc.compile(edited)
    changed = {s for s in second if second[s] is not first[s]}
    assert changed and changed == {s for s in second if second[s] != first[s]}
    homes = {x.site for x in model.endpoints if x.segment == e.segment}
    assert homes <= changed and len(changed) < len(second) / 2, (len(changed), len(second))
    # The segment's overlay unit where it is, and the endpoint's own ACL segment unit: nothing else.
    assert inc.stats.recomputed <= 2 * len(changed), inc.stats


@pytest.mark.parametrize("name,model", MODELS[:4] + MODELS[-1:], ids=[n for n, _ in MODELS[:4] + MODELS[-1:]])
@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_a_session_plans_only_what_changed_and_gets_what_a_full_compare_gets(name, model, data):
    """controller.reconcile.CanonicalDesired (unit by unit) and plan_keys (only the touched keys) against the
    canonical form of every flow and a plan over everything, with what was installed before as the switch."""
    from controller.codec import canonical_desired
    from controller.reconcile import CanonicalDesired, desired_groups, plan, plan_keys

    w = World(model)
    inc = IncrementalCompiler()
    states = inc.compile(w.model)
    ports = {p: i + 1 for i, p in enumerate(sorted({x for st_ in states.values() for f in st_.flows
                                                    for x in f.ports()} | {e.port for e in model.endpoints}))}
    canons = {site: CanonicalDesired() for site in states}
    installed = {}
    for site, state in states.items():
        canons[site].update(state, ports)
        installed[site] = dict(canons[site].flows)
    for kind in data.draw(st.lists(st.sampled_from(EDITS), min_size=1, max_size=5)):
        edit(w, kind, data.draw)
        for site, state in inc.compile(w.model, w.down, w.hops, w.auto, quarantined=w.quarantined).items():
            if site not in canons:
                continue
            for f in state.flows:  # new ports (moved or added endpoints) get numbers: the same dict object
                for x in f.ports():
                    ports.setdefault(x, len(ports) + 1)
            touched = canons[site].update(state, ports)
            groups, _ = desired_groups(state.groups, ports)
            full = dict(canonical_desired(f, ports) for f in state.flows
                        if not any(getattr(a, "group_id", None) not in (None, *groups) for a in f.actions))
            assert canons[site].flows == full, (kind, site)
            want = plan(full, installed[site])
            if touched is not None:
                got = plan_keys(full, installed[site], touched)
                assert (got.add, got.replace, set(got.delete)) == (want.add, want.replace, set(want.delete))
            installed[site] = full
