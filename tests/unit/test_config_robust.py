"""Bad input never crashes, hangs or half-applies (issue #13): one case per class of input that broke the
promise, each checked as `cloudweave check` answers it: exit 1, one FILE:LINE:COL: message line per problem,
the expected message at the expected place; and valid inputs that must stay valid."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time

import pytest

from testkit.config_fuzz import broken_promises
from tests.unit.test_config import GOOD, ROOT

ROUTES = os.path.join(ROOT, "topologies", "routes.yaml")
PROBLEM = re.compile(r"^.+:\d+:\d+: \S")


def check(path: str, *extra: str, timeout: float = 30) -> tuple[int, str, str]:
    """`cloudweave check` as a user runs it, in its own process (a crash or a hang shows as one)."""
    out = subprocess.run([sys.executable, "-m", "cloudweave", "check", path, *extra], capture_output=True,
                         text=True, timeout=timeout, cwd=ROOT)
    return out.returncode, out.stdout, out.stderr


def problem_lines(err: str) -> list[str]:
    lines = err.splitlines()
    assert lines and re.match(r"^.+: \d+ problem\(s\)$", lines[-1]), err
    for line in lines[:-1]:
        assert PROBLEM.match(line), f"not FILE:LINE:COL: message: {line!r}"
    return lines[:-1]


def rejected(tmp_path, text: str, name: str = "t.yaml") -> list[str]:
    path = tmp_path / name
    path.write_text(text)
    rc, _, err = check(str(path))
    assert rc == 1, err
    assert "Traceback" not in err
    return [ln.replace(str(tmp_path) + "/", "") for ln in problem_lines(err)]


def with_routes(routes: str) -> str:
    with open(ROUTES) as fh:
        text = fh.read()
    return text[:text.index("routes:")] + "routes:\n" + routes


# ---- unbounded reads ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("target", ["/dev/zero", "/dev/urandom", "/proc/self/status", "../outside.yaml"])
def test_includes_outside_the_files_directory_are_refused(tmp_path, target):
    (tmp_path / "outside.yaml").write_text("version: 1\n")
    d = tmp_path / "conf"
    d.mkdir()
    lines = rejected(d, GOOD + f"include: {target}\n")
    assert len(lines) == 1 and lines[0].startswith("t.yaml:12:10: include: ")
    assert "absolute path" in lines[0] or "is outside" in lines[0]


def test_an_include_that_is_a_fifo_or_a_device_is_refused_without_blocking(tmp_path):
    os.mkfifo(tmp_path / "pipe.yaml")
    os.symlink("/dev/zero", tmp_path / "zero.yaml")  # a link inside the directory to a device outside it
    (tmp_path / "sub").mkdir()
    t0 = time.monotonic()
    lines = rejected(tmp_path, GOOD + "include: [pipe.yaml, zero.yaml, sub]\n")
    assert time.monotonic() - t0 < 10
    assert any(ln.startswith("pipe.yaml:1:1: cannot read file: it is a FIFO") for ln in lines), lines
    assert any("'zero.yaml' is outside" in ln for ln in lines), lines
    assert any(ln.startswith("sub:1:1: cannot read file: it is a directory") for ln in lines), lines


def test_check_of_a_fifo_returns_at_once(tmp_path):
    os.mkfifo(tmp_path / "f.yaml")
    rc, _, err = check(str(tmp_path / "f.yaml"), timeout=10)
    assert rc == 1 and problem_lines(err) == [f"{tmp_path}/f.yaml:1:1: cannot read file: it is a FIFO, not a "
                                              "regular file"]


def test_a_file_over_the_size_bound_is_refused_before_parsing(tmp_path):
    path = tmp_path / "big.yaml"
    with open(path, "w") as fh:
        fh.truncate(33 << 20)
    rc, _, err = check(str(path), timeout=10)
    assert rc == 1 and "more than the 32 MiB" in err


def test_alias_bomb_is_refused_at_the_alias(tmp_path):
    bomb = "".join(f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9 if i else ['x'] * 9)}]\n" for i in range(9))
    t0 = time.monotonic()
    lines = rejected(tmp_path, bomb)
    assert time.monotonic() - t0 < 10
    assert len(lines) == 1 and re.match(r"t\.yaml:\d+:\d+: aliases expand to more than 100000 values", lines[0])


@pytest.mark.parametrize("depth", [100, 500, 100_000])
def test_deep_nesting_is_a_located_problem_not_a_crash(tmp_path, depth):
    lines = rejected(tmp_path, "version: 1\nsites: " + "[" * depth + "]" * depth + "\n")
    assert lines == ["t.yaml:2:71: nested more than 64 levels deep"]


def test_a_self_referencing_alias_is_a_located_problem(tmp_path):
    lines = rejected(tmp_path, "version: 1\nsites: &a\n  x: *a\n")
    assert lines == ["t.yaml:3:6: alias '*a' names no anchor before it (an alias cannot refer to the value that "
                     "contains it)"]


def test_many_routes_check_in_linear_time(tmp_path):
    routes = "".join(f"  - {{name: r{i}, match: {{proto: tcp, dst_port: {1 + i}, from_site: onprem, to_site: cloud1}},"
                     f" split: {{direct: 1, via cloud2: 1}}}}\n" for i in range(10_000))
    path = tmp_path / "r.yaml"
    path.write_text(with_routes(routes))
    t0 = time.monotonic()
    rc, out, err = check(str(path), timeout=60)
    assert rc == 0, err
    assert time.monotonic() - t0 < 20  # was 54 s; the bound is loose for a loaded CI machine


def test_junk_keys_stay_within_time_and_memory(tmp_path):
    """10 MB of unknown keys: one line each, within 10 s and 500 MB (address space limited, as the issue asks)."""
    path = tmp_path / "junk.yaml"
    with open(path, "w") as fh:
        fh.write("version: 1\n")
        i = 0
        while fh.tell() < 10 << 20:
            fh.write("".join(f"k{i + j}: {j}\n" for j in range(10_000)))
            i += 10_000
    code = ("import atexit,resource,sys; resource.setrlimit(resource.RLIMIT_AS, (1500 << 20, 1500 << 20));"
            # VmHWM is this process's own peak: ru_maxrss would carry the parent's across the exec (Linux keeps
            # the larger), and the parent is this test run, which grows.
            "atexit.register(lambda: print(next(l.split()[1] for l in open('/proc/self/status') "
            "if l.startswith('VmHWM'))));"
            "from cloudweave.cli import main; sys.exit(main(['check', sys.argv[1]]))")
    t0 = time.monotonic()
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=60,
                         cwd=ROOT)
    elapsed = time.monotonic() - t0
    rss_mb = int(out.stdout.split()[-1]) / 1024
    assert out.returncode == 1 and "Traceback" not in out.stderr
    lines = problem_lines(out.stderr)
    assert len(lines) == 1001 and out.stderr.splitlines()[-1].endswith(f": {i} problem(s)")
    assert lines[-1].endswith(f"and {i - 1000} more problems from here on, not shown (the first 1000 are)")
    assert rss_mb < 500, rss_mb
    assert elapsed < 30, elapsed  # 10 s is the promise on an idle machine (bench/fuzz_config.py measures it)


# ---- values -----------------------------------------------------------------------------------------------------

VALUE_CASES = [
    ("a huge capacity", ("capacity: 1Gbit", "capacity: " + "9" * 401), "is not a rate"),
    ("an infinite capacity", ("capacity: 1Gbit", "capacity: .inf"), "finite"),
    ("a NaN capacity", ("capacity: 1Gbit", "capacity: .nan"), "finite"),
    ("a 5,000-digit dpid", ("dpid: 1,", "dpid: " + "9" * 5000 + ","), "expected an integer"),
    ("Arabic digits in a dpid", ("dpid: 1,", "dpid: '١٢',"), "only the digits 0-9 count"),
    ("a YAML 1.1 octal VNI", ("vni: 10,", "vni: 010,"), "a leading zero"),
    ("a YAML 1.1 base-60 VNI", ("vni: 10,", "vni: 1:30,"), "base-60"),
    ("version: true", ("version: 1", "version: true"), "unsupported version"),
    ("a MAC ending in a newline", ('mac: "02:00:00:00:00:01"', 'mac: "02:00:00:00:00:01\\n"'), "is not a MAC"),
    ("an all-zero MAC", ('mac: "02:00:00:00:00:01"', 'mac: "00:00:00:00:00:00"'), "all-zero MAC"),
    ("a quote in an interface name", ("port: p1,", "port: 'p\"1',"), "not a valid interface name"),
    ("an interface name of 16 bytes", ("port: p1,", "port: ééééééé1,"), "not a valid interface name"),
    ("a colon in an interface name", ("port: p1,", "port: 'eth0:1',"), "not a valid interface name"),
    ("'..' as an interface name", ("port: p1,", "port: '..',"), "not a valid interface name"),
    ("a port that is the bridge", ("port: p1,", "port: br-int,"), "is the bridge itself"),
    ("a port named like a tunnel", ("port: p1,", "port: vx-b,"), "tunnel ports"),
    ("an ovsdb that listens", ('ovsdb: "unix:/tmp/a.sock"', 'ovsdb: "punix:/tmp/a.sock"'), "not an OVSDB remote"),
    ("a relative ovsdb path", ('ovsdb: "unix:/tmp/a.sock"', 'ovsdb: "unix:a.sock"'), "not an OVSDB remote"),
    ("one OVSDB for two sites", ('ovsdb: "unix:/tmp/b.sock"', 'ovsdb: "unix:/tmp/a.sock"'), "is used twice"),
    ("an unspecified vtep", ("vtep: 172.31.0.1", "vtep: 0.0.0.0"), "unspecified"),
    ("a broadcast vtep", ("vtep: 172.31.0.1", "vtep: 255.255.255.255"), "broadcast"),
    ("a multicast vtep", ("vtep: 172.31.0.1", "vtep: 224.0.0.5"), "multicast"),
    ("a class E vtep", ("vtep: 172.31.0.1", "vtep: 240.0.0.9"), "class E"),
    ("a /0 subnet", ("subnet: 10.0.0.0/24", "subnet: 0.0.0.0/0"), "wider than a /8"),
    ("an endpoint named like an address", ("  e1: {", "  10.0.0.9: {"), "a name that is an IP address"),
    ("a poll interval of 100 ns", ("endpoints:", "traffic: {poll_interval: 0.0000001s}\nendpoints:"), "out of range"),
    ("a name ending in a newline", ("  e1: {", '  "e1\\n": {'), "not a valid name"),
]


@pytest.mark.parametrize("what,edit,message", VALUE_CASES, ids=[c[0] for c in VALUE_CASES])
def test_bad_values_are_located_problems(tmp_path, what, edit, message):
    text = GOOD.replace(*edit, 1)
    assert text != GOOD, what
    lines = rejected(tmp_path, text)
    assert any(message in ln for ln in lines), lines
    assert all(len(ln) < 400 for ln in lines), "a value echoed at full length"


def test_unicode_digits_in_ports_are_refused(tmp_path):
    text = with_groups_rule("{from: any, proto: tcp, ports: '²-3'}")
    assert any("is not a port or a port range" in ln for ln in rejected(tmp_path, text))


def test_an_empty_port_list_is_refused_not_read_as_every_port(tmp_path):
    text = with_groups_rule("{from: any, proto: tcp, ports: []}")
    assert any("an empty list of ports would match no port" in ln for ln in rejected(tmp_path, text))


def test_a_group_named_any_is_refused(tmp_path):
    text = GOOD + "security_groups:\n  any: {ingress: [{from: any}]}\n"
    assert any("security group 'any'" in ln for ln in rejected(tmp_path, text))


def with_groups_rule(rule: str) -> str:
    return GOOD.replace("ip: 10.0.0.1}", "ip: 10.0.0.1, groups: [web]}") + \
        f"security_groups:\n  web:\n    ingress:\n      - {rule}\n"


def test_user_text_with_line_breaks_is_escaped_on_one_line(tmp_path):
    text = GOOD.replace("  e1: {", '  "e\\u2028x\\ny": {', 1)
    lines = rejected(tmp_path, text)
    assert any("e\\u2028x\\ny" in ln for ln in lines), lines


def test_a_reader_error_is_one_line_at_its_place(tmp_path):
    lines = rejected(tmp_path, GOOD.replace("endpoints:", "endpoints:\x01", 1))
    assert lines == ["t.yaml:9:11: YAML: control characters are not allowed (character #x01)"]


def test_a_route_name_with_a_newline_is_refused(tmp_path):
    text = with_routes('  - {name: "a\\nb", match: {proto: tcp, from_site: onprem, to_site: cloud1}, split: auto}\n')
    assert any("route: name:" in ln and "not a valid name" in ln for ln in rejected(tmp_path, text))


# ---- what compile used to crash on ---------------------------------------------------------------------------

COMPILE_CASES = [
    ("an infinite split weight", "  - {name: r, match: {proto: tcp, from_site: onprem, to_site: cloud1}, "
     "split: {direct: .inf, via cloud2: 1}}\n", "finite"),
    ("split: auto with no path", None, "no chain of links joins"),
    ("a VIP equal to the NAT gateway", None, "is the gateway of segment"),
    ("one service twice", "  - {name: a, service: {vip: 10.61.0.100, port: 80, segment: app}, split: {web1: 1}}\n"
     "  - {name: b, service: {vip: 10.61.0.100, port: 80, segment: app}, split: {web2: 1}}\n", "one service per VIP"),
]


@pytest.mark.parametrize("what,routes,message", COMPILE_CASES, ids=[c[0] for c in COMPILE_CASES])
def test_models_that_crashed_compile_are_rejected_with_a_location(tmp_path, what, routes, message):
    if what == "split: auto with no path":
        text = with_routes("  - {name: r, match: {proto: tcp, from_site: onprem, to_site: cloud1}, split: auto}\n")
        text = text.replace("  - {between: [onprem, cloud1], capacity: 100Mbit}\n", "").replace(
            "  - {between: [onprem, cloud2], capacity: 100Mbit}\n", "").replace(
            "client: {site: onprem", "client: {site: cloud2")
    elif what == "a VIP equal to the NAT gateway":
        text = with_routes("  - {name: w, service: {vip: 10.61.0.1, port: 80, segment: app}, split: {web1: 1}}\n")
        text = text.replace("app: {vni: 6101, subnet: 10.61.0.0/24, default: allow}",
                            "app: {vni: 6101, subnet: 10.61.0.0/24, default: allow, mode: nat}")
        text = text.replace("datapath: netdev}", "datapath: netdev, uplink: up0, nat_ip: 192.0.2.9}")
    else:
        text = with_routes(routes)
    lines = rejected(tmp_path, text)
    assert any(message in ln for ln in lines), lines


@pytest.mark.parametrize("routes", [
    "  - {name: a, service: {vip: 10.61.0.100, port: 80, segment: app}, split: {web1: 1, web2: 1}}\n"
    "  - {name: b, service: {vip: 10.61.0.100, port: 81, segment: app}, split: {web1: 1}}\n",
    "  - {name: a, service: {vip: 10.61.0.100, port: 80, segment: app}, split: {web1: 0, web2: 30}}\n",
], ids=["one VIP, two ports", "a drained backend (weight 0)"])
def test_services_that_crashed_compile_now_compile(tmp_path, routes):
    path = tmp_path / "s.yaml"
    path.write_text(with_routes(routes))
    assert broken_promises(str(path)) == []
    rc, _, err = check(str(path))
    assert rc == 0, err


# ---- valid inputs that must stay valid --------------------------------------------------------------------------

def test_merge_keys_with_overrides_are_valid(tmp_path):
    e1 = '  e1: {site: a, port: p1, segment: s, mac: "02:00:00:00:00:01", ip: 10.0.0.1}'
    e2 = '  e2: {site: b, port: p2, segment: s, mac: "02:00:00:00:00:02", ip: 10.0.0.2}'
    text = GOOD.replace(e1, e1.replace("e1: {", "e1: &e1 {")).replace(
        e2, '  e2: {<<: *e1, site: b, port: p2, mac: "02:00:00:00:00:02", ip: 10.0.0.2}')
    path = tmp_path / "m.yaml"
    path.write_text(text)
    rc, out, err = check(str(path))
    assert rc == 0, err
    from cloudweave.config import load_model

    e2 = load_model(str(path))[0].endpoint("e2")
    assert (e2.site, e2.port, e2.segment, e2.mac) == ("b", "p2", "s", "02:00:00:00:00:02")


# ---- explain and tm -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("args,message", [
    (["e1", "e2", "--port", "99999"], "out of range 1..65535"),
    (["e1", "e2", "--port", "٣"], "expected an integer"),
    (["e1", "::1"], "IPv6"),
    (["e1", "e2", "--proto", "²"], "is not a protocol"),
])
def test_explain_refuses_bad_arguments(tmp_path, args, message):
    path = tmp_path / "g.yaml"
    path.write_text(GOOD)
    out = subprocess.run([sys.executable, "-m", "cloudweave", "explain", str(path), *args], capture_output=True,
                         text=True, timeout=30, cwd=ROOT)
    assert out.returncode == 2 and message in out.stderr and "Traceback" not in out.stderr, out.stderr


@pytest.mark.parametrize("content", ["[1, 2]", '{"keys": [{"route": 1}]}', '{"keys": "x"}', "[" * 100_000,
                                     '{"keys": [{"route": "r", "src": "a", "dst": "b", "paths": [["a", "b"]], '
                                     '"shares": [0.5, 0.5]}]}', "\x00\x01", '{"mlu": {"proposed": "x"}}',
                                     '{"background": {"ab": {"mean": 1}}}', '{"background": {"a->b": {"n": -1}}}',
                                     '{"background": {"a->b": {"mean": "1"}}}', '{"background": [1]}',
                                     '{"keys": [{"route": "r", "src": "a", "dst": "b", "predictor": {"spread_n": '
                                     'true}}]}'])
def test_tm_refuses_a_state_file_the_controller_did_not_write(tmp_path, content):
    path = tmp_path / "g.yaml"
    path.write_text(GOOD)
    state = tmp_path / "state.json"
    state.write_text(content)
    out = subprocess.run([sys.executable, "-m", "cloudweave", "tm", str(path), "--state", str(state)],
                         capture_output=True, text=True, timeout=30, cwd=ROOT)
    assert out.returncode == 1 and "not a state file the controller wrote" in out.stderr, out.stderr
    assert "Traceback" not in out.stderr


def test_tm_reads_what_the_controller_writes(tmp_path):
    path = tmp_path / "g.yaml"
    path.write_text(GOOD)
    state = tmp_path / "state.json"
    state.write_text(json.dumps({"updated": 1.0, "poll_interval_s": 1.0, "keys": [
        {"route": "r", "src": "a", "dst": "b", "paths": [["a", "b"]], "shares": [1.0],
         "predictor": {"mean": 1e6, "dev": 0.0, "n": 3}, "rate": 1e6, "stale": False}],
        "capacity_bps": {"a->b": 1e9}, "utilisation": {"a->b": 0.001}, "mlu": {"proposed": 0.1, "in_force": 0.1}}))
    out = subprocess.run([sys.executable, "-m", "cloudweave", "tm", str(path), "--state", str(state)],
                         capture_output=True, text=True, timeout=30, cwd=ROOT)
    assert out.returncode == 0 and "a -> b 100%" in out.stdout, out.stderr
