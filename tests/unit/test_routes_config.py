"""The routes section: every mistake `check` must catch, with its exact message; and what a good one reads as."""

from controller.links import LinkWatch
from tests.unit.test_config import problems

BASE = """\
version: 1
sites:
  a: {dpid: 1, vtep: 172.31.0.1, ovsdb: "unix:/tmp/a.sock"}
  b: {dpid: 2, vtep: 172.31.0.2, ovsdb: "unix:/tmp/b.sock"}
  c: {dpid: 3, vtep: 172.31.0.3, ovsdb: "unix:/tmp/c.sock"}
links:
  - {between: [a, b], capacity: 1Gbit}
  - {between: [a, c], capacity: 1Gbit}
segments:
  s: {vni: 10, subnet: 10.0.0.0/24}
endpoints:
  e1: {site: a, port: p1, segment: s, mac: "02:00:00:00:00:01", ip: 10.0.0.1, groups: [web]}
  e2: {site: b, port: p2, segment: s, mac: "02:00:00:00:00:02", ip: 10.0.0.2}
security_groups:
  web: {}
routes:
"""


def test_weights_and_paths(tmp_path):
    text = BASE + """\
  - {name: zero, match: {proto: tcp, from_site: a, to_site: b}, split: {direct: 0, via c: 0}}
  - {name: pct, match: {proto: udp, from_site: a, to_site: b}, split: {direct: 70%, via c: 20%}}
  - {name: nolink, match: {proto: icmp, from_site: a, to_site: b}, split: {direct: 1, via c: 1}}
  - {name: nosite, match: {proto: 50, from_site: a, to_site: b}, split: {via d: 1}}
  - {name: noends, match: {proto: 51}, split: {direct: 1}}
  - {name: bad, match: {proto: 52, from_site: a, to_site: b}, split: {sideways: 1}}
"""
    assert problems(tmp_path, text) == [
        "t.yaml:17:72: route 'zero': split: the weights sum to zero",
        "t.yaml:18:71: route 'pct': split: percentages sum to 90, not 100",
        "t.yaml:19:5: route 'nolink': path 'via c' (a -> c -> b) needs a link between c and b, which the file "
        "does not declare",
        "t.yaml:20:5: route 'nosite': path 'via d': unknown site 'd'",
        "t.yaml:21:5: route 'noends': a split over explicit paths needs match.from_site and match.to_site",
        "t.yaml:22:71: route 'bad': split: 'sideways' is not a path (direct, via SITE, via SITE SITE ...)",
    ]


def test_references_and_overlaps(tmp_path):
    text = BASE + """\
  - {name: r1, match: {proto: tcp, dst_port: 80-90, segment: t, src: nogroup}, split: auto}
  - {name: r2, match: {proto: tcp, dst_port: 85, from_site: a, to_site: b}, split: {k_shortest: 2}}
  - {name: r3, match: {proto: tcp, dst_port: 80-85, from_site: a, to_site: b}, split: {k_shortest: 2}}
  - {name: r4, priority: 5, match: {proto: tcp, dst_port: 80, from_site: a, to_site: a}, split: auto}
  - {name: r2, match: {proto: udp}, split: auto}
"""
    assert problems(tmp_path, text) == [
        "t.yaml:17:5: route 'r1': match: src: unknown group 'nogroup'",
        "t.yaml:17:5: route 'r1': match: unknown segment 't'",
        "t.yaml:19:5: route 'r3' and route 'r2' (t.yaml:18:5) can match the same traffic at the same priority "
        "(0); give one a higher priority or narrow a match",
        "t.yaml:20:5: route 'r4': from_site and to_site are both 'a'",
        "t.yaml:21:5: route 'r2' is defined twice (first at t.yaml:18:5)",
    ]


def test_service_mistakes(tmp_path):
    text = BASE + """\
  - {name: v1, service: {vip: 10.9.0.1, port: 80, segment: s}, split: {e1: 1}}
  - {name: v2, service: {vip: 10.0.0.2, port: 80, segment: s}, split: {e1: 1}}
  - {name: v3, service: {vip: 10.0.0.9, port: 80, segment: s}, split: {e1: 1, nobody: 1}}
  - {name: v4, service: {vip: 10.0.0.9, port: 80, segment: s, proto: icmp}, split: {e1: 1}}
  - {name: v5, service: {vip: 10.0.0.9, port: 80, segment: s}, match: {proto: tcp}, split: {e1: 1}}
"""
    assert problems(tmp_path, text) == [
        "t.yaml:17:5: route 'v1': service: VIP 10.9.0.1 is not a host address of segment 's' (10.0.0.0/24)",
        "t.yaml:18:5: route 'v2': service: VIP 10.0.0.2 is endpoint 'e2's address",
        "t.yaml:19:5: route 'v3': backend 'nobody' is neither an endpoint nor a site",
        "t.yaml:20:25: route 'v4': service: proto must be tcp or udp, got 'icmp'",
        "t.yaml:21:5: route 'v5': give either 'match' (a path split) or 'service' (a service split)",
    ]


def test_a_site_as_backend_shares_its_weight_among_its_endpoints(tmp_path):
    from cloudweave.config import load_model

    path = tmp_path / "t.yaml"
    path.write_text(BASE + "  - {name: v, service: {vip: 10.0.0.9, port: 80, segment: s}, split: {a: 3, e2: 1}}\n")
    model, _ = load_model(str(path))
    assert model.routes[0].backends == (("e1", 3.0), ("e2", 1.0))


def test_link_watch_counts_a_tunnel_down_once_it_was_up():
    watch = LinkWatch()
    peers = {("a", "vx-b"): "b", ("b", "vx-a"): "a"}
    watch.seen("a", "vx-b", False)
    assert watch.down(peers) == frozenset()  # never up yet (BFD coming up, or off): not a failure
    watch.seen("a", "vx-b", True)
    watch.seen("b", "vx-a", True)
    assert watch.down(peers) == frozenset()
    watch.seen("b", "vx-a", False)
    assert watch.down(peers) == {("a", "b")}  # either end is enough
    watch.forget("b", "vx-a")  # the port was deleted; a new one starts afresh
    watch.seen("b", "vx-a", False)
    assert watch.down(peers) == frozenset()
