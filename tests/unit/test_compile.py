"""The compiler: deterministic, table-checked, and correct on every pair (checked with a flow interpreter)."""

import os
import random

import pytest
import yaml

from cloudweave.config import load_model
from cloudweave.flows import cookies
from cloudweave.flows.compile import compile_model, compile_site
from cloudweave.flows.ofctl import render_flows
from cloudweave.flows.policy import Policy
from cloudweave.flows.tables import ROUTE, TableViolation, check_flow
from cloudweave.flows.topology import SiteGraph, tunnel_port_name
from cloudweave.flows.values import Goto, Output, flow
from tests.unit.flowsim import Fabric, arp, frame

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOPOLOGIES = [os.path.join(ROOT, "topologies", f)
              for f in ("two-sites.yaml", "three-clouds.yaml", "four-ring.yaml", "matrix.yaml")]
BROADCAST = "ff:ff:ff:ff:ff:ff"


@pytest.fixture(params=TOPOLOGIES, ids=lambda p: os.path.basename(p))
def model(request):
    return load_model(request.param)[0]


def test_render_is_deterministic_whatever_the_file_order(tmp_path):
    path = TOPOLOGIES[1]
    model = load_model(path)[0]
    with open(path) as fh:
        doc = yaml.safe_load(fh)
    shuffled = dict(doc)
    for section in ("sites", "segments", "endpoints"):
        items = list(doc[section].items())
        random.Random(7).shuffle(items)
        shuffled[section] = dict(items)
    shuffled["links"] = list(reversed(doc["links"]))
    other = tmp_path / "shuffled.yaml"
    other.write_text(yaml.safe_dump(shuffled))
    model2 = load_model(str(other))[0]
    for site in ("onprem", "cloud1", "cloud2"):
        a = render_flows(compile_site(model, site).flows, site)
        assert a == render_flows(compile_site(model, site).flows, site)
        assert a == render_flows(compile_site(model2, site).flows, site)


def test_every_flow_is_ours_and_checked_against_its_table(model):
    for st in compile_model(model).values():
        for f in st.flows:
            check_flow(f)
            assert cookies.is_ours(f.cookie)
        assert len({f.key for f in st.flows}) == len(st.flows)


def test_table_declarations_reject_bad_flows():
    with pytest.raises(TableViolation, match="does not match on"):
        check_flow(flow(0, 1, cookies.OWNER, (Goto(1),), ct_mark=1))
    with pytest.raises(TableViolation, match="goto must go forward"):
        check_flow(flow(6, 1, cookies.OWNER, (Goto(2),)))
    with pytest.raises(TableViolation, match="goto must go forward and come last"):
        check_flow(flow(1, 1, cookies.OWNER, (Goto(2), Output("x"))))


PROBES = [(1, None), (6, 80), (6, 443), (6, 8080), (6, 9004), (6, 9005), (6, 5432), (6, 22), (17, 5353),
          (17, 5000)]


def test_every_pair_and_probe_agrees_with_the_policy_and_replies_pass(model):
    """Each ordered pair, each probe: delivered exactly when `explain` says allow; the reply of an allowed
    connection passes; an unsolicited packet back toward the client's port passes only if the policy says."""
    policy = Policy(model)
    fabric = Fabric(model, compile_model(model))
    checked = 0
    for src in model.endpoints:
        for dst in model.endpoints:
            if src is dst:
                continue
            if model.segment(src.segment).mode == "direct":  # straight to the uplink, whatever the destination
                uplink = [(src.site, model.site(src.site).uplink)]
                assert fabric.send(src.site, src.port, frame(src, dst, 6, 80)) == uplink
                continue
            for proto, port in PROBES:
                allowed = policy.decide(src, dst, proto, port).allowed
                got = fabric.send(src.site, src.port, frame(src, dst, proto, port))
                if src.segment != dst.segment:
                    own = {(e.site, e.port) for e in model.endpoints if e.segment == src.segment}
                    assert set(got) <= own and (dst.site, dst.port) not in got, (src.name, dst.name)
                    continue
                assert got == ([(dst.site, dst.port)] if allowed else []), (src.name, dst.name, proto, port)
                checked += 1
                if allowed and proto in (6, 17):
                    reply = frame(dst, src, proto, 40000, sport=port)
                    assert fabric.send(dst.site, dst.port, reply) == [(src.site, src.port)], "reply"
                    unsolicited = frame(dst, src, proto, 40000, sport=port + 1)
                    back = policy.decide(dst, src, proto, 40000).allowed
                    assert (fabric.send(dst.site, dst.port, unsolicited) != []) == back, "unsolicited"
    assert checked > 0


def test_broadcast_reaches_each_segment_member_once_and_terminates(model):
    fabric = Fabric(model, compile_model(model))
    for src in model.endpoints:
        got = sorted(fabric.send(src.site, src.port, arp(src, "10.255.255.254")))
        want = sorted((e.site, e.port) for e in model.endpoints if e.segment == src.segment and e is not src)
        if model.segment(src.segment).mode == "direct":
            want = [(src.site, model.site(src.site).uplink)]
        assert got == want, src.name


def test_spoofed_sources_and_unknown_ports_are_dropped(model):
    fabric = Fabric(model, compile_model(model))
    for src in model.endpoints:
        peer = next((e for e in model.endpoints if e.segment == src.segment and e is not src), None)
        if peer is None:
            continue
        spoof_ip = dict(arp(src, str(peer.ip)), arp_spa="10.99.99.99")
        spoof_mac = dict(arp(src, str(peer.ip)), eth_src="02:99:99:99:99:99")
        spoof_ipv4 = dict(frame(src, peer), ipv4_src="10.99.99.99")
        assert fabric.send(src.site, src.port, spoof_ip) == []
        assert fabric.send(src.site, src.port, spoof_mac) == []
        assert fabric.send(src.site, src.port, spoof_ipv4) == []
        assert fabric.send(src.site, "stranger", arp(src, str(peer.ip))) == []


def test_direct_mode_talks_only_to_the_uplink_with_anti_spoofing():
    model = load_model(TOPOLOGIES[1])[0]
    cdn1 = next(e for e in model.endpoints if e.name == "cdn1")
    fabric = Fabric(model, compile_model(model))
    outside = {"eth_src": "02:aa:00:00:00:01", "eth_type": 0x0800, "ipv4_src": "198.51.100.100",
               "ipv4_dst": str(cdn1.ip), "ip_proto": 1}
    assert fabric.send("cloud1", "up0", dict(outside, eth_dst=cdn1.mac)) == [("cloud1", "cdn1")]
    assert fabric.send("cloud1", "up0", dict(outside, eth_dst="02:00:00:00:01:02")) == []  # web2: not from there
    assert fabric.send("cloud1", "up0", {"eth_src": "02:aa:00:00:00:01", "eth_dst": BROADCAST, "eth_type": 0x0806,
                                         "arp_tpa": str(cdn1.ip)}) == [("cloud1", "cdn1")]
    spoofed = dict(frame(cdn1, cdn1, 1), ipv4_src="10.30.0.99")
    assert fabric.send("cloud1", "cdn1", spoofed) == []


def test_ring_relays_between_sites_without_a_link():
    model = load_model(TOPOLOGIES[2])[0]
    graph = SiteGraph(model)
    assert "south" not in graph.neighbours("north")
    path = graph.path("north", "south")
    assert len(path) == 3 and path[1] in ("east", "west")
    relay = path[1]
    s1 = next(e for e in model.endpoints if e.name == "s1")
    relay_flows = compile_site(model, relay).flows
    assert any(dict(f.match).get("eth_dst") == s1.mac and Output(tunnel_port_name("south")) in f.actions
               for f in relay_flows), "the middle site must forward toward south"
    tree = graph.flood_tree({s.name for s in model.sites})
    edges = {tuple(sorted((a, b))) for a, peers in tree.items() for b in peers}
    assert len(edges) == len(model.sites) - 1  # a tree: the ring's fourth link carries no flood
    assert graph.flood_tree({"north"}) == {"north": []}


def test_tunnel_ports_follow_links(model):
    for site in model.sites:
        st = compile_site(model, site.name)
        peers = sorted(t.peer for t in st.tunnels)
        assert peers == SiteGraph(model).neighbours(site.name)
        for t in st.tunnels:
            assert t.remote_ip == model.site(t.peer).vtep and t.local_ip == site.vtep


def test_a_path_split_delivers_over_every_path_and_relays_by_tunnel():
    """bulk-tcp of topologies/routes.yaml: tcp/7000-7999 from onprem to cloud1, direct or via cloud2. Every
    source port arrives exactly once, whichever bucket it hashes to, and both paths are used."""
    model = load_model(os.path.join(ROOT, "topologies", "routes.yaml"))[0]
    states = compile_model(model)
    fabric = Fabric(model, states)
    eps = {e.name: e for e in model.endpoints}
    client, server = eps["client"], eps["server"]
    via_cloud2 = 0
    for sport in range(40000, 40064):
        got = fabric.send("onprem", client.port, frame(client, server, 6, 7001, sport=sport))
        assert got == [("cloud1", server.port)]
        assert fabric.hops in ([("onprem", "vx-cloud1")], [("onprem", "vx-cloud2"), ("cloud2", "vx-cloud1")])
        via_cloud2 += len(fabric.hops) == 2
    assert 0 < via_cloud2 < 64
    relays = [f for f in states["cloud2"].flows if f.table == ROUTE and dict(f.match).get("in_port") == "vx-onprem"]
    assert relays and all(f.actions[-1] == Output("vx-cloud1") for f in relays)
