"""The reachability matrix through the real OVS pipeline: every ordered pair of endpoints of
topologies/matrix.yaml, on several protocols and ports, traced with `ovs-appctl ofproto/trace` at the
source's site, must agree with `cloudweave explain` (flows/policy.py)."""

import os
import re

import pytest

from cloudweave.flows.policy import Policy
from cloudweave.flows.tables import L2_FORWARD
from testkit.harness import ROOT, OvsSites

pytestmark = pytest.mark.ovs
MATRIX = os.path.join(ROOT, "topologies", "matrix.yaml")
PROBES = [(1, None), (6, 80), (6, 443), (6, 8080), (6, 9004), (6, 9005), (6, 5432), (6, 22), (17, 5353),
          (17, 5000)]
FORWARDED = re.compile(rf"^\s*{L2_FORWARD}\. .*priority 100", re.M)  # the destination MAC's L2 flow


def flowspec(src, dst, proto: int, port: int | None, sport: int = 40000, reverse: bool = False) -> str:
    kind = {1: "icmp", 6: "tcp", 17: "udp"}[proto]
    spec = (f"in_port={src.port},{kind},dl_src={src.mac},dl_dst={dst.mac},nw_src={src.ip},nw_dst={dst.ip}")
    if port is not None:
        spec += f",{kind}_src={sport},{kind}_dst={port}"
    return spec


@pytest.fixture(scope="module")
def programmed(tmp_path_factory):
    sites = OvsSites(MATRIX, str(tmp_path_factory.mktemp("matrix")))
    ctl = sites.controller().start()
    try:
        for name in sites.instances:
            assert "FAILED" not in ctl.wait_reconciles(name, 1)
        yield sites
    finally:
        ctl.stop()
        sites.stop()


def test_matrix_agrees_with_explain(programmed):
    sites = programmed
    policy = Policy(sites.model)
    disagreements, cells, allowed_cells = [], 0, 0
    for src in sites.model.endpoints:
        ovs = sites.instances[src.site]
        for dst in sites.model.endpoints:
            if dst is src:
                continue
            for proto, port in PROBES:
                trace = ovs.appctl("ofproto/trace", "br-int", flowspec(src, dst, proto, port), "--ct-next", "trk,new")
                got = bool(FORWARDED.search(trace))
                want = src.segment == dst.segment and policy.decide(src, dst, proto, port).allowed
                cells += 1
                allowed_cells += want
                if got != want:
                    verdict = "allow" if want else "deny"
                    disagreements.append(f"{src.name}->{dst.name} proto {proto} port {port}: trace "
                                         f"{'forwards' if got else 'drops'}, explain says {verdict}")
    assert disagreements == []
    assert cells == 12 * 11 * len(PROBES) and 0 < allowed_cells < cells


def test_established_replies_pass_and_invalid_is_dropped(programmed):
    sites = programmed
    by = {e.name: e for e in sites.model.endpoints}
    web2, api1 = by["web2"], by["api1"]  # web -> api tcp 9004 is allowed; api -> web tcp is not
    ovs = sites.instances[api1.site]
    reply = ovs.appctl("ofproto/trace", "br-int", flowspec(api1, web2, 6, 40000, sport=9004),
                       "--ct-next", "trk,est,rpl")
    assert FORWARDED.search(reply)
    fresh = ovs.appctl("ofproto/trace", "br-int", flowspec(api1, web2, 6, 40000, sport=9004), "--ct-next", "trk,new")
    assert not FORWARDED.search(fresh)
    invalid = ovs.appctl("ofproto/trace", "br-int", flowspec(web2, api1, 6, 9004), "--ct-next", "trk,inv")
    assert not FORWARDED.search(invalid)
