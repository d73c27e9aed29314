"""The filters section: what it accepts (mappings, expressions, the seed's one-line form), every mistake
with file:line:col, what it compiles to, and the oracle `explain` uses."""

from ipaddress import IPv4Address

import pytest

from cloudweave.config import load_model
from cloudweave.config.errors import Invalid
from cloudweave.config.filters import parse_expression
from cloudweave.flows.compile import compile_site
from cloudweave.flows.filters import FILTER_TOP, deciding_filter
from cloudweave.flows.ofctl import render_flow, render_meters
from tests.unit.test_config import GOOD, problems

WITH_GROUP = GOOD.replace('ip: 10.0.0.2}', 'ip: 10.0.0.2, groups: [web]}') + (
    "security_groups:\n  web: {ingress: [{from: any, proto: icmp}]}\n")


def load(tmp_path, filters: str, base: str = WITH_GROUP):
    path = tmp_path / "f.yaml"
    path.write_text(base + "filters:\n" + filters)
    return load_model(str(path))


def test_the_seeds_example_is_a_filter(tmp_path):
    model, warnings = load(tmp_path, '  - "drop ip protocol == 17 and ip.src == 192.168.1.100"\n')
    (f,) = model.filters
    assert (f.action, f.match.proto, [str(n) for n in f.match.src_nets]) == ("drop", 17, ["192.168.1.100/32"])
    assert warnings == []
    flows = [render_flow(x) for x in compile_site(model, "a").flows if x.priority == FILTER_TOP]
    assert flows == [f"table=0, priority={FILTER_TOP}, cookie={f'{flows_cookie(model):#x}'}, dl_type=0x800, "
                     "nw_proto=17, nw_src=192.168.1.100, reg5=0, actions=drop"]


def flows_cookie(model) -> int:
    from cloudweave.flows import cookies

    return cookies.cookie("filter", model.filters[0].name)


def test_expressions():
    assert parse_expression("tcp.dst == 22 and ip.dst == web") == {"dst_port": 22, "dst": "web", "proto": 6}
    assert parse_expression("ip.proto == udp") == {"proto": "udp"}
    with pytest.raises(Invalid, match=r"'ip.ttl == 3' \(at character 1\) is not FIELD == VALUE"):
        parse_expression("ip.ttl == 3")
    with pytest.raises(Invalid, match="at character 17"):
        parse_expression("ip.src == x and ip.src = 1")
    with pytest.raises(Invalid, match="ports of two protocols"):
        parse_expression("tcp.dst == 1 and udp.src == 2")
    with pytest.raises(Invalid, match="contradicts"):
        parse_expression("ip protocol == 17 and tcp.dst == 80")


def test_mistakes_point_at_file_line_col(tmp_path):
    text = WITH_GROUP + """\
filters:
  - {name: a, match: {proto: udp, src: nogroup}}
  - {name: b, match: {dst_port: 53}}
  - {name: c, match: "ip.ttl == 4"}
  - {name: d, match: {proto: udp}, action: rate_limit}
  - {name: e, match: {proto: udp}, action: rate_limit, rate: 5 bananas}
  - {name: f, match: {proto: udp}, sites: [nowhere]}
  - {name: g, match: {proto: udp}, from: [port:ghost]}
  - {name: h, match: {proto: udp}, from: [sideways]}
  - {name: i, match: {proto: udp}, action: reject}
  - {name: ok, match: {proto: tcp}}
  - {name: ok, match: {proto: sctp}}
  - {name: j, match: {proto: udp}, colour: red}
  - "allow ip.src == 10.0.0.1"
  - {name: k, match: {proto: udp}, from: [port:e2], sites: [a]}
  - {name: l, match: {proto: tcp, dst_port: [PORTS], src_port: [PORTS]}}
  - {name: m, match: {proto: udp, src: any}}
""".replace("PORTS", ", ".join(str(p) for p in range(1, 202, 2)))
    got = problems(tmp_path, text)
    assert got == [
        "t.yaml:15:40: filter 'a': match: src: unknown group 'nogroup' (a group name or a CIDR)",
        "t.yaml:16:22: filter 'b': match: ports need proto tcp, udp or sctp",
        "t.yaml:17:22: filter 'c': match: 'ip.ttl == 4' (at character 1) is not FIELD == VALUE with a FIELD of: "
        "ip protocol, ip.dst, ip.proto, ip.protocol, ip.src, sctp.dst, sctp.src, tcp.dst, tcp.src, udp.dst, "
        "udp.src; terms are joined by 'and'",
        "t.yaml:18:5: filter 'd': a rate_limit needs 'rate' (examples: 2000pps, 10Mbit)",
        "t.yaml:19:5: filter 'e': '5 bananas' is not a rate (examples: 2000pps, 500kbit, 10Mbit)",
        "t.yaml:20:43: filter 'f': sites: unknown site 'nowhere'",
        "t.yaml:21:42: filter 'g': from: unknown endpoint 'ghost' (expected local, tunnel, uplink, port:ENDPOINT or "
        "tunnel:SITE)",
        "t.yaml:22:42: filter 'h': from: 'sideways' is not a place a packet comes in (expected local, tunnel, "
        "uplink, port:ENDPOINT or tunnel:SITE)",
        "t.yaml:23:5: filter 'i': action: 'reject' is not one of: drop, rate_limit",
        "t.yaml:25:5: filter 'ok' is defined twice (first at t.yaml:24:5)",
        "t.yaml:26:36: unknown key 'colour' in filter 'j' (expected one of: name, match, from, sites, action, rate, "
        "burst)",
        "t.yaml:27:5: filter 'allow ip.src == 10.0.0.1': a one-line filter is 'drop EXPRESSION' (example: drop ip "
        "protocol == 17 and ip.src == 192.168.1.100); write a mapping for a rate limit",
        "t.yaml:28:5: filter 'k': none of its ports is at one of its sites: it would filter nothing",
        "t.yaml:29:5: filter 'l': it would take 10,201 flows at a site (at most 10,000); use CIDRs or port ranges "
        "that align, or split it",
        "t.yaml:30:40: filter 'm': match: src: 'any' is every address: leave the key out",
    ]


def test_warnings_shadowed_and_shared_addresses(tmp_path):
    base = WITH_GROUP.replace("  s: {vni: 10, subnet: 10.0.0.0/24}", "  s: {vni: 10, subnet: 10.0.0.0/24}\n"
                              "  t: {vni: 11, subnet: 10.0.0.0/24}").replace(
        "security_groups:", '  e3: {site: a, port: p3, segment: t, mac: "02:00:00:00:00:03", ip: 10.0.0.2}\n'
                            "security_groups:")
    model, warnings = load(tmp_path, """\
  - {name: wide, match: {proto: udp, src: 10.0.0.0/24}}
  - {name: narrow, match: {proto: udp, src: 10.0.0.1, dst_port: 53}, sites: [a]}
  - {name: to-web, match: {dst: web}}
""", base)
    said = [str(w).split(": warning: ")[1] for w in warnings]
    assert said == [
        "filter 'narrow' never decides a packet: filter 'wide' above it (" + str(model.filters[0].loc) +
        ") matches all of its traffic first",
        "filter 'to-web': dst: group 'web' stands for its members' addresses, and 1 endpoint(s) outside it share "
        "one (e3): the filter matches them too",
    ]


def test_from_expands_into_ports_and_tunnels(tmp_path):
    model, _ = load(tmp_path, """\
  - {name: ssh, match: "tcp.dst == 22", from: [tunnel, port:e1]}
  - {name: dns, match: "udp.dst == 53", from: [uplink]}
  - {name: cap, match: "udp.dst == 5000", action: rate_limit, rate: 10Mbit, burst: 1000}
""")
    lines = [render_flow(f) for f in compile_site(model, "a").flows if f.table == 0 and f.priority > 30000]
    assert [line.split("dl_type=0x800, ")[1] for line in lines] == [
        'in_port="p1", nw_proto=6, reg5=0, tcp_dst=0x16, actions=drop',
        'in_port="vx-b", nw_proto=6, reg5=0, tcp_dst=0x16, actions=drop',
        f"nw_proto=17, reg5=0, udp_dst=0x1388, actions=meter:{model_meter(model)},set_field:1->reg5,resubmit(,0)",
    ]  # no uplink at a: 'dns' has no flow there
    meters = compile_site(model, "a").meters
    assert render_meters(meters).splitlines()[1] == (f"meter={model_meter(model)},kbps,burst,stats,band=type=drop,"
                                                     "rate=10000,burst_size=1000")
    assert [render_flow(f) for f in compile_site(model, "b").flows if f.table == 0 and f.priority == FILTER_TOP] == [
        render_flow(f) for f in compile_site(model, "b").flows if f.table == 0 and f.priority == FILTER_TOP
        and "vx-a" in render_flow(f)]  # at b only the tunnel from a: e1 is not there


def model_meter(model) -> int:
    from cloudweave.flows import cookies

    return cookies.meter_id("filter/cap")


def test_deciding_filter_follows_the_packet(tmp_path):
    model, _ = load(tmp_path, """\
  - {name: ssh-from-afar, match: "tcp.dst == 22", from: [tunnel]}
  - {name: udp-at-b, match: {proto: udp}, sites: [b]}
""")
    e1, e2 = model.endpoint("e1"), model.endpoint("e2")
    assert deciding_filter(model, e1, e2, 6, 22)[0].name == "ssh-from-afar"  # comes into b by the tunnel
    assert deciding_filter(model, e1, e2, 6, 80) is None
    f, site = deciding_filter(model, e2, e1, 17, 53)
    assert (f.name, site) == ("udp-at-b", "b")  # at e2's own site, as it leaves its port
    assert deciding_filter(model, e1, IPv4Address("8.8.8.8"), 17, 53) is None
