"""`cloud_policy:` as the article writes it (issue #12): accepted as written, compiled to the same flows and
groups as the equivalent `routes` entries, shown by explain, and warned about (with file:line) when a match
covers no endpoint."""

from __future__ import annotations

import os
import subprocess
import sys

from cloudweave.config import load_model
from cloudweave.flows.compile import compile_site
from cloudweave.flows.ofctl import render_flows, render_groups
from tests.unit.test_config import ROOT
from tests.unit.test_config_robust import rejected

REFERENCE = os.path.join(ROOT, "..", "shared", "examples", "three-clouds.yaml")
ROUTES = os.path.join(ROOT, "topologies", "routes.yaml")
ARTICLE = """\
cloud_policy:
  - match:
      protocol: tcp
      source: 10.0.0.0/8
      destination: 172.16.0.0/12
    action: cloud1
  - match:
      protocol: udp
      source: 192.168.1.0/24
      destination: 10.1.0.0/16
    action: cloud2
"""


def without_routes() -> str:
    with open(ROUTES) as fh:
        text = fh.read()
    return text[:text.index("routes:")]


def compiled(path: str) -> str:
    model, _ = load_model(path)
    return "".join(render_flows(compile_site(model, s.name).flows, s.name)
                   + render_groups(compile_site(model, s.name).groups, s.name) for s in model.sites)


def test_the_articles_policy_is_accepted_as_written_with_warnings(tmp_path):
    with open(REFERENCE) as fh:
        text = fh.read()
    path = tmp_path / "ref.yaml"
    path.write_text(text + "\n" + ARTICLE)
    out = subprocess.run([sys.executable, "-m", "cloudweave", "check", str(path)], capture_output=True, text=True,
                         cwd=ROOT, timeout=60)
    assert out.returncode == 0, out.stderr
    base = text.count("\n") + 2
    warnings = [ln.replace(str(tmp_path) + "/", "") for ln in out.stderr.splitlines() if "cloud_policy" in ln]
    assert warnings == [
        f"ref.yaml:{base + 1}:5: warning: cloud_policy entry 1: no endpoint has a destination address in "
        "172.16.0.0/12; it routes nothing yet",
        f"ref.yaml:{base + 6}:5: warning: cloud_policy entry 2: no endpoint has a destination address in "
        "10.1.0.0/16; it routes nothing yet",
        f"ref.yaml:{base + 6}:5: warning: cloud_policy entry 2: no endpoint has a source address in 192.168.1.0/24; "
        "it routes nothing yet",
    ]


def test_a_weighted_entry_compiles_as_its_routes_entries(tmp_path):
    policy = tmp_path / "policy.yaml"
    policy.write_text(without_routes() + """\
cloud_policy:
  - match: {protocol: tcp, source: 10.61.0.0/24, destination: 10.61.0.0/24, destination_port: 7000-7999}
    action: {cloud2: 30, cloud1: 70}
""")
    m = "proto: tcp, src: 10.61.0.0/24, dst: 10.61.0.0/24, dst_port: 7000-7999"
    pairs = {("onprem", "cloud1"): "{via cloud2: 30, direct: 70}", ("onprem", "cloud2"): "{direct: 30, via cloud1: 70}",
             ("cloud1", "onprem"): "{via cloud2: 30, direct: 70}", ("cloud1", "cloud2"): "{direct: 100}",
             ("cloud2", "onprem"): "{direct: 30, via cloud1: 70}", ("cloud2", "cloud1"): "{direct: 100}"}
    routes = tmp_path / "routes.yaml"
    routes.write_text(without_routes() + "routes:\n" + "".join(
        f"  - {{name: cloud_policy.1.{a}-{b}, priority: 1, match: {{{m}, from_site: {a}, to_site: {b}}}, "
        f"split: {split}}}\n" for (a, b), split in sorted(pairs.items())))
    assert len(load_model(str(policy))[0].routes) == 6
    assert compiled(str(policy)) == compiled(str(routes))


def test_auto_compiles_as_split_auto(tmp_path):
    policy = tmp_path / "policy.yaml"
    policy.write_text(without_routes() + """\
cloud_policy:
  - match: {protocol: udp, source: 10.61.0.0/24, destination: 10.61.0.0/24}
    action: auto
  - match: {protocol: tcp, source: 10.61.0.0/24, destination: 10.61.0.0/24}
    action: cloud2
""")
    routes = tmp_path / "routes.yaml"
    text = without_routes() + "routes:\n  - {name: cloud_policy.1, priority: 2, match: {proto: udp, " \
                              "src: 10.61.0.0/24, dst: 10.61.0.0/24}, split: auto}\n"
    for a, b, split in (("cloud1", "cloud2", "{direct: 1}"), ("cloud1", "onprem", "{via cloud2: 1}"),
                        ("cloud2", "cloud1", "{direct: 1}"), ("cloud2", "onprem", "{direct: 1}"),
                        ("onprem", "cloud1", "{via cloud2: 1}"), ("onprem", "cloud2", "{direct: 1}")):
        text += (f"  - {{name: cloud_policy.2.{a}-{b}, priority: 1, match: {{proto: tcp, src: 10.61.0.0/24, "
                 f"dst: 10.61.0.0/24, from_site: {a}, to_site: {b}}}, split: {split}}}\n")
    routes.write_text(text)
    assert compiled(str(policy)) == compiled(str(routes))


def test_explain_names_the_entry_that_carries_a_packet(tmp_path):
    policy = tmp_path / "policy.yaml"
    policy.write_text(without_routes() + """\
cloud_policy:
  - match: {protocol: tcp, source: 10.61.0.0/24, destination: 10.61.0.0/24}
    action: cloud2
""")
    out = subprocess.run([sys.executable, "-m", "cloudweave", "explain", str(policy), "client", "server", "--port",
                          "80"], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert out.returncode == 0, out.stderr
    line = f"  route cloud_policy.1.onprem-cloud1 ({policy}:{without_routes().count(chr(10)) + 2}:5): onprem -> " \
           "cloud2 -> cloud1 100%"
    assert line in out.stdout.splitlines(), out.stdout


def test_mistakes_in_an_entry_are_located(tmp_path):
    lines = rejected(tmp_path, without_routes() + """\
cloud_policy:
  - match: {protocol: tcp, source: 10.61.0.0/24}
    action: cloud9
  - match: {protocol: gre, destination: 10.61.0.0/24}
    action: cloud1
  - match: {proto: tcp}
    action: cloud1
  - {match: {protocol: tcp}, action: {cloud1: 50%, cloud2: 30}}
""")
    base = without_routes().count("\n") + 2
    assert lines == [
        f"t.yaml:{base + 1}:13: cloud_policy entry 1: action: unknown site 'cloud9'",
        f"t.yaml:{base + 2}:23: cloud_policy entry 2: match: protocol: 'gre' is not a protocol (tcp, udp, icmp, "
        "sctp, any, or a number 0..255)",
        f"t.yaml:{base + 4}:13: unknown key 'proto' in cloud_policy entry 3: match (expected one of: protocol, "
        "source, destination, source_port, destination_port)",
        f"t.yaml:{base + 6}:38: cloud_policy entry 4: action: mix of percentages and plain weights; use one kind",
    ]
