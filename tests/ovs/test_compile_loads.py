"""`compile` output of any accepted file loads into a real ovs-vswitchd with ovs-ofctl exactly as printed
(issue #13): mutated files that `check` accepts are compiled, every site's groups and flows are loaded with
`ovs-ofctl --bundle` into a bridge holding the site's ports, and the switch then holds exactly as many flows
and groups as were printed: no user text split a line, added one, or was refused by ovs-ofctl. The same flows,
read back as the switch sends them, decode to the same canonical flows through controller/flow_desc.py as
through os-ken's objects."""

from __future__ import annotations

import os
import random

import pytest
from os_ken.ofproto import ofproto_v1_5 as ofp

from cloudweave.flows.compile import compile_site
from cloudweave.flows.ofctl import render_flows, render_groups
from cloudweave.flows.topology import tunnel_port_name
from cloudweave.testbed.ovs import NetnsOvs
from controller.codec import canonical_actual
from controller.flow_desc import RawFlowDescBody, canonical_flows
from controller.osken_fixes import install as install_osken_fixes
from testkit.config_fuzz import dump, mutate_doc, seed_docs
from testkit.harness import flow_desc_body

pytestmark = pytest.mark.ovs
CASES = 12


def accepted_cases(tmp_path) -> list[str]:
    """Mutated files that check accepts (unchanged seeds too: they must load as well)."""
    from cloudweave.config import ConfigError, load_model

    rng = random.Random(13)
    out = []
    seeds = seed_docs()
    for i in range(2000):
        path = os.path.join(tmp_path, f"case{i}.yaml")
        _, text, doc = seeds[i % len(seeds)]
        with open(path, "w") as fh:
            fh.write(text if i < len(seeds) else dump(mutate_doc(doc, rng, 1)))
        try:
            load_model(path)
        except ConfigError:
            continue
        out.append(path)
        if len(out) >= CASES:
            break
    return out


@pytest.fixture(scope="module")
def ovs(tmp_path_factory):
    inst = NetnsOvs(str(tmp_path_factory.mktemp("loads")), f"cwt-load-{os.getpid() % 10000}")
    inst.start()
    try:
        yield inst
    finally:
        inst.stop()


def test_compiled_output_of_accepted_files_loads_as_printed(ovs, tmp_path):
    from cloudweave.config import load_model

    install_osken_fixes()  # os-ken's side of the comparison needs its register-move parser fixed
    cases = accepted_cases(str(tmp_path))
    assert len(cases) == CASES
    loaded = 0
    for path in cases:
        model, _ = load_model(path)
        for site in model.sites:
            ports = {e.port for e in model.endpoints_at(site.name)} | ({site.uplink} if site.uplink else set())
            ports |= {tunnel_port_name(s.name) for s in model.sites if s.name != site.name}
            args = ["--if-exists", "del-br", "br-fz", "--", "add-br", "br-fz", "--", "set", "bridge", "br-fz",
                    "datapath_type=netdev", "fail_mode=secure", "protocols=OpenFlow15"]
            for port in sorted(ports):
                args += ["--", "add-port", "br-fz", port, "--", "set", "interface", port, "type=internal"]
            ovs.vsctl(*args)
            flows = tmp_path / "flows.txt"
            groups = tmp_path / "groups.txt"
            state = compile_site(model, site.name)  # what `cloudweave compile` prints, without a process per site
            flows.write_text(render_flows(state.flows, site.name))
            groups.write_text(render_groups(state.groups, site.name))
            want_flows = [ln for ln in flows.read_text().splitlines() if ln and not ln.startswith("#")]
            want_groups = [ln for ln in groups.read_text().splitlines() if ln and not ln.startswith("#")]
            ovs.ofctl("del-flows", "br-fz")  # a bridge deleted and added in one transaction keeps its tables
            ovs.ofctl("del-groups", "br-fz")
            if want_groups:
                ovs.ofctl("add-groups", "br-fz", str(groups))
            ovs.ofctl("add-flows", "br-fz", "--bundle", str(flows))
            got_flows = [ln for ln in ovs.ofctl("dump-flows", "br-fz", "--no-stats").splitlines()
                         if ln.strip() and "NXST_FLOW" not in ln and "OFPST_FLOW" not in ln]
            got_groups = [ln for ln in ovs.ofctl("dump-groups", "br-fz").splitlines() if "group_id=" in ln]
            assert (len(got_flows), len(got_groups)) == (len(want_flows), len(want_groups)), (path, site.name)
            body = RawFlowDescBody(flow_desc_body(ovs.mgmt("br-fz")))
            decoded = list(canonical_flows(body))
            assert decoded == [canonical_actual(e, ofp) for e in body], (path, site.name)
            assert len(decoded) == len(want_flows)
            loaded += 1
    assert loaded >= CASES
