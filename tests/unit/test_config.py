"""The loader: the reference file loads as written; every kind of mistake is reported with file:line:col."""

import os
import subprocess
import sys
import textwrap

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cloudweave.config import ConfigError, load_model
from testkit.config_fuzz import GOOD  # noqa: F401 - the tests beside this one import it from here too

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
REFERENCE = os.path.join(ROOT, "..", "shared", "examples", "three-clouds.yaml")

def problems(tmp_path, text: str, name: str = "t.yaml") -> list[str]:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    with pytest.raises(ConfigError) as info:
        load_model(str(path))
    return [str(p).replace(str(tmp_path) + "/", "") for p in info.value.problems]


def test_reference_file_loads_as_written():
    model, warnings = load_model(REFERENCE)
    assert [s.name for s in model.sites] == ["onprem", "cloud1", "cloud2"]
    assert model.site("onprem").dpid == 1 and str(model.site("cloud2").vtep) == "172.31.3.1"
    assert {link.sites: link.capacity_mbps for link in model.links} == {
        ("cloud1", "onprem"): 100.0, ("cloud2", "onprem"): 100.0, ("cloud1", "cloud2"): 200.0}
    assert [(s.name, s.vni, s.mode) for s in model.segments] == [
        ("prod", 1001, "bridge"), ("lab", 1002, "nat"), ("edge", 1003, "direct")]
    assert len(model.endpoints) == 8 and model.poll_interval_s == 2.0
    http, realtime, shop = model.routes
    assert [(p.label, p.sites, p.weight) for p in http.paths] == [
        ("direct", ("onprem", "cloud1"), 70.0), ("via cloud2", ("onprem", "cloud2", "cloud1"), 30.0)]
    assert (http.match.proto, [str(r) for r in http.match.dst_ports]) == (6, ["80"])
    assert realtime.auto and [str(r) for r in realtime.match.dst_ports] == ["5000-6000"]
    assert (str(shop.service.vip), shop.service.port, shop.backends) == ("10.10.0.100", 80,
                                                                          (("web1", 70.0), ("web2", 30.0)))


def test_shipped_copy_matches_reference():
    with open(REFERENCE) as a, open(os.path.join(ROOT, "topologies", "three-clouds.yaml")) as b:
        assert a.read() == b.read()


def test_good_file(tmp_path):
    path = tmp_path / "good.yaml"
    path.write_text(GOOD)
    model, warnings = load_model(str(path))
    assert warnings == [] and len(model.endpoints) == 2 and model.links[0].capacity_mbps == 1000.0


def test_unknown_key_and_section(tmp_path):
    text = GOOD.replace("bridge_typo", "x") + "colour: red\n"
    text = text.replace('ovsdb: "unix:/tmp/a.sock"}', 'ovsdb: "unix:/tmp/a.sock", brige: br0}')
    assert problems(tmp_path, text) == [
        "t.yaml:3:61: unknown key 'brige' in site 'a' (expected one of: dpid, vtep, ovsdb, bridge, datapath, "
        "uplink, nat_ip, uplink_gateway, nat_ports)",
        "t.yaml:12:1: unknown section 'colour' (expected one of: version, include, sites, links, segments, "
        "endpoints, security_groups, routes, cloud_policy, filters, flow_logs, detection, traffic, replicas)",
    ]


def test_wrong_types_and_malformed_addresses(tmp_path):
    text = (GOOD.replace("dpid: 2,", "dpid: two,")
            .replace("vtep: 172.31.0.1", "vtep: 172.31.0.300")
            .replace('"02:00:00:00:00:02"', '"02:00:00:00:00"')
            .replace("subnet: 10.0.0.0/24", "subnet: 10.0.0.1/24")
            .replace("capacity: 1Gbit", "capacity: fast"))
    assert problems(tmp_path, text) == [
        "t.yaml:3:22: site 'a': vtep: '172.31.0.300' is not an IP address",
        "t.yaml:4:13: site 'b': dpid: expected an integer, got 'two'",
        "t.yaml:6:33: link: capacity: 'fast' is not a rate (examples: 100Mbit, 1Gbit, 500)",
        "t.yaml:8:24: segment 's': subnet: '10.0.0.1/24' is not a valid IPv4 subnet "
        "(10.0.0.1/24 has host bits set)",
        "t.yaml:11:44: endpoint 'e2': mac: '02:00:00:00:00' is not a MAC address "
        "(write it quoted, as \"02:00:00:00:00:01\")",
    ]


def test_duplicates(tmp_path):
    text = GOOD.replace("dpid: 2,", "dpid: 1,").replace("vtep: 172.31.0.2", "vtep: 172.31.0.1") + (
        "  e3: {site: a, port: p3, segment: s, mac: \"02:00:00:00:00:01\", ip: 10.0.0.2}\n"
        "  e1: {site: a, port: p4, segment: s, mac: \"02:00:00:00:00:04\", ip: 10.0.0.4}\n")
    assert problems(tmp_path, text) == [
        "t.yaml:4:3: dpid 0x1 is used twice: by 'a' (t.yaml:3:3) and 'b'",
        "t.yaml:4:3: vtep address 172.31.0.1 is used twice: by 'a' (t.yaml:3:3) and 'b'",
        "t.yaml:12:3: IP 10.0.0.2 in segment 's' is used twice: by 'e2' (t.yaml:11:3) and 'e3'",
        "t.yaml:12:3: MAC 02:00:00:00:00:01 in segment 's' is used twice: by 'e1' (t.yaml:10:3) and 'e3'",
        "t.yaml:13:3: duplicate key 'e1' (first at line 10)",
    ]


def test_duplicate_vni(tmp_path):
    text = GOOD.replace("  s: {vni: 10, subnet: 10.0.0.0/24}", "  s: {vni: 10, subnet: 10.0.0.0/24}\n"
                                                                   "  t: {vni: 10, subnet: 10.1.0.0/24}")
    assert problems(tmp_path, text) == ["t.yaml:9:3: VNI 10 is used twice: by 's' (t.yaml:8:3) and 't'"]


def test_conntrack_zone_collision(tmp_path):
    text = GOOD.replace("  s: {vni: 10, subnet: 10.0.0.0/24}", "  s: {vni: 10, subnet: 10.0.0.0/24}\n"
                                                                   "  t: {vni: 65546, subnet: 10.1.0.0/24}")
    assert problems(tmp_path, text) == [
        "t.yaml:9:3: conntrack zone 10 (the low 16 bits of VNI 65546) is used twice: by 's' (t.yaml:8:3) and 't'"]


def test_references_and_subnets(tmp_path):
    text = (GOOD.replace("segment: s, mac: \"02:00:00:00:00:02\", ip: 10.0.0.2",
                         "segment: nope, mac: \"02:00:00:00:00:02\", ip: 10.0.0.2")
            .replace("ip: 10.0.0.1}", "ip: 10.9.0.1}")
            .replace("between: [a, b]", "between: [a, c]")
            .replace("{site: a, port: p1", "{site: z, port: p1"))
    assert problems(tmp_path, text) == [
        "t.yaml:6:5: link: unknown site 'c'",
        "t.yaml:10:3: endpoint 'e1': IP 10.9.0.1 is outside segment 's' subnet 10.0.0.0/24",
        "t.yaml:10:3: endpoint 'e1': unknown site 'z'",
        "t.yaml:11:3: endpoint 'e2': unknown segment 'nope'",
    ]


def test_missing_key_and_unjoined_sites(tmp_path):
    text = GOOD.replace("links:\n  - {between: [a, b], capacity: 1Gbit}\n", "").replace(", vtep: 172.31.0.2", "")
    assert problems(tmp_path, text) == ["t.yaml:4:6: site 'b': missing required key 'vtep'"]
    text = GOOD.replace("links:\n  - {between: [a, b], capacity: 1Gbit}\n", "")
    assert problems(tmp_path, text) == [
        "t.yaml:6:3: segment 's' spans sites 'a' and 'b' that no chain of links joins"]


def test_yaml_syntax_error(tmp_path):
    (only,) = problems(tmp_path, "sites:\n  a: {dpid: 1\n")
    # libyaml and pure-Python PyYAML word it differently; both point at the end and name the missing '}'.
    assert only.startswith("t.yaml:3:1: YAML syntax: ") and "',' or '}'" in only


def test_include_reports_the_included_file(tmp_path):
    (tmp_path / "more.yaml").write_text("sites:\n  a: {dpid: 9, vtep: 172.31.0.9, ovsdb: x}\n")
    text = "include: [more.yaml, missing.yaml]\n" + GOOD
    assert problems(tmp_path, text) == [
        "more.yaml:2:3: site 'a' is defined twice (first at t.yaml:4:3)",
        "t.yaml:1:22: include: no such file 'missing.yaml'",
    ]


def test_check_command_exit_codes_and_no_traceback(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(GOOD.replace("vni: 10", "vni: 99999999"))
    run = subprocess.run([sys.executable, "-m", "cloudweave", "check", str(bad)], capture_output=True, text=True,
                         cwd=ROOT)
    assert run.returncode == 1
    assert f"{bad}:8:12: segment 's': vni: 99999999 is out of range 1..16777215" in run.stderr
    assert "Traceback" not in run.stderr
    good = subprocess.run([sys.executable, "-m", "cloudweave", "check", REFERENCE], capture_output=True, text=True,
                          cwd=ROOT)
    assert good.returncode == 0, good.stderr
    assert "3 sites, 3 links, 3 segments, 8 endpoints" in good.stdout
    garbage = tmp_path / "garbage.yaml"
    garbage.write_bytes(b"\xff\xfe\x00not yaml: [")
    run = subprocess.run([sys.executable, "-m", "cloudweave", "check", str(garbage)], capture_output=True,
                         text=True, cwd=ROOT)
    assert run.returncode == 1 and "Traceback" not in run.stderr and str(garbage) in run.stderr


@settings(max_examples=3000, deadline=None)
@given(st.text(alphabet="0123456789.: x\u0661\x00", max_size=17) | st.ip_addresses(v=4).map(str))
def test_an_address_reads_as_ipaddress_reads_it(text):
    """values.ipv4's fast path (the C parser) takes exactly what ipaddress takes, to the same value."""
    import ipaddress

    from cloudweave.config import values
    from cloudweave.config.errors import Invalid

    try:
        want = ipaddress.ip_address(text)
    except ValueError:
        want = None
    try:
        got = values.ipv4(text)
    except Invalid:
        got = None
    assert got == (want if isinstance(want, ipaddress.IPv4Address) else None)


def test_the_replicas_list_names_each_replica_and_its_target(tmp_path):
    path = tmp_path / "listed.yaml"
    path.write_text(GOOD + "replicas:\n  r2: ssl:10.0.0.12:6653\n  r1: 'unix:/run/cw/r1.sock'\n")
    assert load_model(str(path))[0].replicas == (("r1", "unix:/run/cw/r1.sock"), ("r2", "ssl:10.0.0.12:6653"))
    lines = GOOD.count("\n")
    got = problems(tmp_path, GOOD + "replicas:\n  r1: ssl:10.0.0.11\n  'r 2': ssl:10.0.0.12:6653\n")
    assert got == [f"t.yaml:{lines + 2}:7: replicas: r1: 'ssl:10.0.0.11' is not a controller target "
                   "(ssl:HOST:PORT, tcp:HOST:PORT or unix:/path)",
                   f"t.yaml:{lines + 3}:3: replicas: 'r 2' is not a replica name (letters, digits, '_', '.', '-'; "
                   "its certificate's name)"]
    assert problems(tmp_path, GOOD + "replicas: []\n")[0].endswith("replicas must be a mapping of replica name to "
                                                                   "its controller target (ssl:HOST:PORT)")
