"""NAT-mode settings in the file: what `check` must catch, with its exact messages; and the model's NAT
derivations (gateway default, aliases) that the flows rely on."""

from ipaddress import IPv4Address

from cloudweave.config import load_model
from tests.unit.test_config import problems

NAT = """\
version: 1
sites:
  a: {dpid: 1, vtep: 172.31.0.1, ovsdb: "unix:/tmp/a.sock", uplink: up0, nat_ip: 198.51.100.1,
      uplink_gateway: 198.51.100.254, nat_ports: 20000-29999}
  b: {dpid: 2, vtep: 172.31.0.2, ovsdb: "unix:/tmp/b.sock"}
links:
  - {between: [a, b], capacity: 1Gbit}
segments:
  n: {vni: 10, subnet: 10.0.0.0/24, mode: nat, forwards: [{proto: tcp, port: 8080, to: e1, to_port: 80}]}
  m: {vni: 11, subnet: 10.0.0.0/24, mode: nat, max_connections: 100}
endpoints:
  e1: {site: a, port: p1, segment: n, mac: "02:00:00:00:00:01", ip: 10.0.0.5}
  e2: {site: a, port: p2, segment: m, mac: "02:00:00:00:00:02", ip: 10.0.0.5}
"""


def test_a_good_nat_file_and_its_derivations(tmp_path):
    path = tmp_path / "t.yaml"
    path.write_text(NAT)
    model, warnings = load_model(str(path))
    assert warnings == []
    n, m = model.segment("n"), model.segment("m")
    assert n.gateway == IPv4Address("10.0.0.1") and n.gateway_mac == "0a:00:0a:00:00:01"
    assert model.site("a").nat_mac == "0e:00:c6:33:64:01"
    # The same private address in two segments: two aliases.
    assert n.nat_alias(IPv4Address("10.0.0.5")) == IPv4Address("240.10.0.5")
    assert m.nat_alias(IPv4Address("10.0.0.5")) == IPv4Address("240.11.0.5")
    assert [(f.proto, f.port, f.endpoint, f.to_port) for f in n.forwards] == [(6, 8080, "e1", 80)]
    assert m.max_connections == 100 and (model.site("a").nat_ports.lo, model.site("a").nat_ports.hi) == (20000, 29999)


def test_nat_needs_an_uplink_and_a_nat_address(tmp_path):
    text = NAT.replace("e2: {site: a,", "e2: {site: b,")
    assert problems(tmp_path, text) == [
        "t.yaml:13:3: endpoint 'e2': segment 'm' is in nat mode, but site 'b' has no uplink"]


def test_gateway_subnet_size_and_alias_clash(tmp_path):
    text = NAT.replace("n: {vni: 10, subnet: 10.0.0.0/24,", "n: {vni: 10, subnet: 10.0.0.0/24, gateway: 10.0.0.5,") \
        .replace("m: {vni: 11, subnet: 10.0.0.0/24,", "m: {vni: 4106, subnet: 10.0.0.0/8, gateway: 10.0.0.0,")
    assert problems(tmp_path, text) == [
        "t.yaml:10:3: segment 'm': a nat-mode subnet must be /16 or smaller, got 10.0.0.0/8",
        "t.yaml:10:3: segment 'm': gateway 10.0.0.0 is not a host address of 10.0.0.0/8",
        "t.yaml:10:3: segment 'm': nat-mode segments 'n' and 'm' have VNIs (10, 4106) with the same low 12 bits, "
        "which tell their NAT mappings apart; change one",
        "t.yaml:12:3: endpoint 'e1': IP 10.0.0.5 is the gateway of segment 'n'",
    ]


def test_forward_mistakes(tmp_path):
    text = NAT.replace("forwards: [{proto: tcp, port: 8080, to: e1, to_port: 80}]",
                       "forwards: [{proto: tcp, port: 8080, to: e1}, {proto: tcp, port: 8080, to: e1}, "
                       "{proto: udp, port: 25000, to: e1}, {proto: tcp, port: 81, to: e2}, "
                       "{proto: icmp, port: 1, to: e1}, {proto: tcp, port: 82, to: e1, via: x}]")
    assert problems(tmp_path, text) == [
        "t.yaml:9:93: segment 'n': port 8080 of site 'a' is forwarded twice (first at t.yaml:9:59)",
        "t.yaml:9:127: segment 'n': forwarded port 25000 is inside site 'a' source-NAT ports 20000-29999; "
        "use a port outside them or narrow nat_ports",
        "t.yaml:9:162: segment 'n': port forward to 'e2', which is not an endpoint of this segment",
        "t.yaml:9:194: segment 'n': port forward: proto must be tcp or udp, got 'icmp'",
        "t.yaml:9:257: unknown key 'via' in segment 'n': port forward (expected one of: proto, port, to, to_port)",
    ]


def test_modes_that_take_no_nat_settings_and_reserved_zone(tmp_path):
    text = NAT.replace("m: {vni: 11, subnet: 10.0.0.0/24, mode: nat, max_connections: 100}",
                       "m: {vni: 65535, subnet: 10.0.0.0/24, mode: direct, max_connections: 100, gateway: 10.0.0.1}")
    assert problems(tmp_path, text) == [
        "t.yaml:10:3: segment 'm': VNI 65535 maps to conntrack zone 65535, which source NAT uses; choose another VNI",
        "t.yaml:10:3: segment 'm': gateway and forwards apply to mode 'nat' only",
        "t.yaml:10:3: segment 'm': max_connections needs conntrack, which direct mode skips",
    ]


def test_missing_uplink_gateway_is_a_warning(tmp_path):
    path = tmp_path / "t.yaml"
    path.write_text(NAT.replace("\n      uplink_gateway: 198.51.100.254,", "\n     "))
    _, warnings = load_model(str(path))
    assert [str(w).replace(str(tmp_path) + "/", "") for w in warnings] == [
        "t.yaml:9:3: warning: segment 'n': site 'a' has no uplink_gateway, so its endpoints of this segment "
        "reach only the segment itself",
        "t.yaml:10:3: warning: segment 'm': site 'a' has no uplink_gateway, so its endpoints of this segment "
        "reach only the segment itself",
    ]
