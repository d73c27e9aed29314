"""Security-group rules in the file: every mistake `check` must catch, with its exact message."""

import os
import subprocess
import sys
import time

from cloudweave.config import load_model
from tests.unit.test_config import GOOD, problems

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
REFERENCE = os.path.join(ROOT, "topologies", "three-clouds.yaml")

BASE = GOOD.replace('ip: 10.0.0.1}', 'ip: 10.0.0.1, groups: [web]}').replace(
    'ip: 10.0.0.2}', 'ip: 10.0.0.2, groups: [db]}')


def with_groups(rules: str) -> str:
    return BASE + "security_groups:\n" + rules


def test_reference_rules_load():
    model, warnings = load_model(REFERENCE)
    by_name = {g.name: g for g in model.security_groups}
    assert sorted(by_name) == ["app", "db", "web"]
    deny = by_name["web"].rules[2]
    assert (deny.direction, deny.peer, deny.proto, [str(p) for p in deny.ports], deny.action) == (
        "ingress", "10.10.0.22/32", 6, ["80", "443"], "deny")
    assert by_name["app"].rules[2].peer == "any" and by_name["app"].rules[2].direction == "egress"


def test_unknown_group_in_rule_and_in_endpoint(tmp_path):
    text = with_groups("""\
  web:
    egress:
      - {to: dbs, proto: tcp, ports: 5432}
  db: {}
""").replace("groups: [db]", "groups: [db, cache]")
    assert problems(tmp_path, text) == [
        "t.yaml:11:3: endpoint 'e2': unknown security group 'cache'",
        "t.yaml:15:9: web egress rule 1: allow to dbs tcp/5432: unknown group 'dbs'",
    ]


def test_bad_cidr_reversed_range_and_ports_without_ports(tmp_path):
    text = with_groups("""\
  web:
    ingress:
      - {from: 10.0.0.300/32, proto: tcp, ports: 80}
      - {from: any, proto: udp, ports: 6000-5000}
      - {from: any, proto: icmp, ports: 8}
      - {from: 10.0.0.1/24, proto: tcp, ports: 22}
  db: {}
""")
    assert problems(tmp_path, text) == [
        "t.yaml:15:16: security group 'web' ingress rule 1: from: '10.0.0.300/32' is not a valid CIDR "
        "('10.0.0.300/32' does not appear to be an IPv4 or IPv6 network)",
        "t.yaml:16:40: security group 'web' ingress rule 2: ports: port range 6000-5000 is reversed "
        "(write 5000-6000)",
        "t.yaml:17:41: security group 'web' ingress rule 3: protocol icmp has no ports; remove 'ports' or use "
        "tcp, udp or sctp",
        "t.yaml:18:16: security group 'web' ingress rule 4: from: '10.0.0.1/24' is not a valid CIDR "
        "(10.0.0.1/24 has host bits set)",
    ]


def test_peer_key_must_fit_the_direction(tmp_path):
    text = with_groups("""\
  web:
    ingress:
      - {to: any, proto: tcp, ports: 80}
  db: {}
""")
    assert problems(tmp_path, text) == [
        "t.yaml:15:9: security group 'web' ingress rule 1: missing required key 'from'",
        "t.yaml:15:10: unknown key 'to' in security group 'web' ingress rule 1 "
        "(ingress rules name their peer with 'from')",
    ]


def test_shadowed_rule_is_a_warning_with_both_places(tmp_path):
    """Deny wins, so the policy means something; the file is accepted and the shadowed allow is pointed out."""
    path = tmp_path / "t.yaml"
    path.write_text(with_groups("""\
  web:
    ingress:
      - {from: 10.0.0.0/16, proto: tcp, ports: 1000-2000, action: deny}
      - {from: db, proto: tcp, ports: [1500, 1600]}
      - {from: db, proto: tcp, ports: 1500, priority: 10}
  db: {}
"""))
    _, warnings = load_model(str(path))
    assert [str(w).replace(str(tmp_path) + "/", "") for w in warnings if "never" in str(w)] == [
        "t.yaml:16:9: warning: web ingress rule 2: allow from db tcp/1500,1600: can never match: the deny rule at "
        "t.yaml:15:9 covers it",
    ]


def test_a_group_that_shrinks_under_a_deny_keeps_the_file_valid(tmp_path):
    """The members of 'ops' shrink to the one address a deny names: the allow is shadowed, the file valid."""
    text = with_groups("""\
  web:
    ingress:
      - {from: 10.0.0.2/32, action: deny}
      - {from: db, proto: tcp, ports: 22}
  db: {}
""")
    path = tmp_path / "t.yaml"
    path.write_text(text)
    _, warnings = load_model(str(path))
    assert any("can never match: the deny rule at" in str(w) for w in warnings), warnings


def test_many_rules_in_one_group_check_in_linear_time(tmp_path):
    rules = "".join(f"      - {{from: 10.{i // 250}.{i % 250}.0/24, proto: tcp, ports: {1000 + i}, "
                    f"action: {'deny' if i % 2 else 'allow'}}}\n" for i in range(4000))
    path = tmp_path / "t.yaml"
    path.write_text(with_groups("  web:\n    ingress:\n" + rules + "  db: {}\n"))
    model, _ = load_model(str(path))
    assert len(model.security_groups[0].rules) == 4000
    t0 = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "cloudweave", "check", str(path)], capture_output=True, text=True,
                         timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert time.monotonic() - t0 < 15  # loading and compiling both: 31 s before the conjunctions merged once


def test_wide_rules_warn(tmp_path):
    path = tmp_path / "w.yaml"
    path.write_text(with_groups("""\
  web:
    ingress:
      - {from: any, proto: tcp, ports: [22, 80]}
      - {from: any}
  db: {}
"""))
    _, warnings = load_model(str(path))
    texts = [str(w).replace(str(tmp_path) + "/", "") for w in warnings if "opens" in str(w)]
    assert texts == [
        "w.yaml:15:9: warning: web ingress rule 1: allow from any tcp/22,80: opens 22/ssh to any; name a group or a "
        "CIDR",
        "w.yaml:16:9: warning: web ingress rule 2: allow from any any: opens every port to any; name a group, a "
        "CIDR or ports",
    ]


def explain(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cloudweave", "explain", REFERENCE, *args], capture_output=True,
                          text=True, cwd=ROOT)


def test_explain_reads_the_reference_as_intended():
    out = explain("app2", "web1", "--port", "80")
    assert out.returncode == 0
    lines = out.stdout.splitlines()
    assert lines[0] == "deny"  # app2 may not: deny wins over allow
    assert any("ingress of web1 [web]: deny by web ingress rule 3: deny from 10.10.0.22/32 tcp/80,443 "
               "(" in line and "three-clouds.yaml:56:9)" in line for line in lines)
    assert explain("app1", "web1", "--port", "80").stdout.splitlines()[0] == "allow"
    assert explain("web1", "app1", "--port", "8080").stdout.splitlines()[0] == "allow"
    assert explain("web1", "app1", "--port", "8081").stdout.splitlines()[0] == "deny"
    assert explain("app1", "db1", "--port", "5432").stdout.splitlines()[0] == "allow"
    assert explain("lab1", "lab2").stdout.splitlines()[0] == "allow"  # lab: default allow
    iso = explain("web1", "lab1")
    assert iso.stdout.splitlines()[0] == "deny" and "segments are isolated" in iso.stdout


def test_explain_by_address_and_ambiguity():
    assert explain("10.10.0.21", "10.10.0.31", "--port", "5432").stdout.splitlines()[0] == "allow"
    amb = explain("10.10.0.11", "app1")
    assert amb.returncode == 2 and "10.10.0.11 is the address of web1 (prod) and lab1 (lab)" in amb.stderr


def test_explain_refuses_a_protocol_a_packet_cannot_have():
    bad = explain("web1", "app1", "--proto", "bogus")
    assert bad.returncode == 2 and "--proto: 'bogus' is not a protocol" in bad.stderr
    wide = explain("web1", "app1", "--proto", "any")
    assert wide.returncode == 2 and "a packet has one protocol" in wide.stderr
    assert explain("web1", "app1", "--proto", "6", "--port", "8080").stdout.splitlines()[0] == "allow"
