"""Time to program a switch from empty with ~100,000 compiled flows: through the controller (one OpenFlow
bundle) beside `ovs-ofctl --bundle add-flows` of the same flows into the same bridge, same run; and the time
a restarted controller takes to confirm that all of them are right (zero flow-mods).

The switch is a real ovs-vswitchd (userspace datapath) in its own network namespace. The measured site
("hub") relays two sites' segments, so it holds one L2 flow per remote endpoint.

Run: .venv/bin/python bench/program_switch.py [--endpoints 100000] [--rounds 2]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from cloudweave.flows.cookies import OWNER, OWNER_MASK  # noqa: E402
from cloudweave.testbed.ovs import NetnsOvs  # noqa: E402
from controller.codec import canonical_actual  # noqa: E402
from controller.flow_desc import RawFlowDescBody, canonical_flows  # noqa: E402
from controller.osken_fixes import install as install_osken_fixes  # noqa: E402
from testkit.harness import Controller, flow_desc_body, wait_for  # noqa: E402

OURS = f"cookie={OWNER:#x}/{OWNER_MASK:#x}"


def topology(workdir: str, n_endpoints: int, n_segments: int = 100) -> str:
    sites = {name: {"dpid": i + 1, "vtep": f"172.31.9.{i + 1}", "ovsdb": f"unix:{workdir}/{name}/db.sock",
                    "datapath": "netdev"} for i, name in enumerate(("a", "hub", "b"))}
    segments = {f"g{k}": {"vni": 5000 + k, "subnet": f"10.{k}.0.0/16"} for k in range(n_segments)}
    endpoints = {}
    for n in range(n_endpoints):
        k = n % n_segments
        idx = n // n_segments + 1
        endpoints[f"e{n}"] = {"site": "a" if idx % 2 else "b", "port": f"p{n}", "segment": f"g{k}",
                              "mac": "02:" + ":".join(f"{(n >> s) & 0xFF:02x}" for s in (32, 24, 16, 8, 0)),
                              "ip": f"10.{k}.{idx // 256}.{idx % 256}"}
    doc = {"version": 1, "sites": sites, "links": [{"between": ["a", "hub"], "capacity": "1Gbit"},
                                                    {"between": ["hub", "b"], "capacity": "1Gbit"}],
           "segments": segments, "endpoints": endpoints}
    path = os.path.join(workdir, "bench.yaml")
    with open(path, "w") as fh:
        yaml.safe_dump(doc, fh, sort_keys=False)
    return path


def count(ovs: NetnsOvs) -> int:
    out = ovs.ofctl("dump-flows", "br-int", OURS)
    return sum(1 for line in out.splitlines() if "cookie=" in line)


def decode_times(ovs: NetnsOvs) -> tuple[int, float, float]:
    """The bridge's flows as the switch sends them, decoded to canonical flows by os-ken's objects (the
    controller before controller/flow_desc.py) and by the direct decoder: (flows, os-ken s, direct s)."""
    from os_ken.ofproto import ofproto_v1_5 as ofp

    install_osken_fixes()
    body = RawFlowDescBody(flow_desc_body(ovs.mgmt("br-int")))
    t = time.perf_counter()
    theirs = dict(canonical_actual(e, ofp) for e in body)
    osken_s = time.perf_counter() - t
    t = time.perf_counter()
    ours = dict(canonical_flows(body))
    direct_s = time.perf_counter() - t
    assert ours == theirs
    return len(ours), osken_s, direct_s


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--endpoints", type=int, default=100_000)
    p.add_argument("--rounds", type=int, default=2)
    args = p.parse_args()
    workdir = tempfile.mkdtemp(prefix="cw-bench-")
    ovs = NetnsOvs(os.path.join(workdir, "hub"), f"cwb-{uuid.uuid4().hex[:6]}")
    try:
        ovs.start()
        ovs.vsctl("add-br", "br-int", "--", "set", "bridge", "br-int", "datapath_type=netdev", "fail_mode=secure")
        config = topology(workdir, args.endpoints)
        flows_file = os.path.join(workdir, "hub.flows")
        t = time.perf_counter()
        with open(flows_file, "w") as fh:
            subprocess.run([sys.executable, "-m", "cloudweave", "compile", config, "--site", "hub"], stdout=fh,
                           check=True, cwd=ROOT)
        load_and_compile_s = time.perf_counter() - t
        n = sum(1 for line in open(flows_file) if line.startswith("table="))
        ctl_times, ofctl_times, reconnect_times, decodes = [], [], [], []
        for _ in range(args.rounds):
            # The controller, into an empty bridge (it also creates the tunnel ports the flows name).
            ovs.ofctl("del-flows", "br-int", OURS)
            ctl = Controller(config, workdir, [ovs.rundir]).start()
            try:
                line = wait_for(lambda c=ctl: next((ln for ln in c.reconcile_lines("hub") if "flow-mods" in ln), None),
                                timeout_s=600, what="the controller's reconcile")
                assert count(ovs) == n, (count(ovs), n, line)
                ctl_times.append(float(re.search(r"in (\d+) ms", line).group(1)) / 1000)
            finally:
                ctl.stop()
            # A restart with every flow already right: read them all, diff, send nothing.
            ctl = Controller(config, workdir, [ovs.rundir]).start()
            try:
                line = wait_for(lambda c=ctl: next((ln for ln in c.reconcile_lines("hub") if "flow-mods" in ln), None),
                                timeout_s=600, what="the controller's reconcile after a restart")
                assert "(0 flow-mods)" in line, line
                reconnect_times.append(float(re.search(r"in (\d+) ms", line).group(1)) / 1000)
            finally:
                ctl.stop()
            # ovs-ofctl, the same flows into the same, emptied bridge.
            ovs.ofctl("del-flows", "br-int", OURS)
            t = time.perf_counter()
            subprocess.run(["ovs-ofctl", "-O", "OpenFlow15", "--bundle", "add-flows", ovs.mgmt("br-int"), flows_file],
                           check=True)
            ofctl_times.append(time.perf_counter() - t)
            assert count(ovs) == n
            decodes.append(decode_times(ovs))
        c, o = statistics.median(ctl_times), statistics.median(ofctl_times)
        print(f"flows programmed into an empty bridge: {n} (hub site, {args.endpoints} endpoints)")
        print(f"controller (read switch, diff, one bundle, commit): median {c:.2f} s  "
              f"rounds {', '.join(f'{x:.2f}' for x in ctl_times)}")
        print(f"ovs-ofctl --bundle add-flows:                        median {o:.2f} s  "
              f"rounds {', '.join(f'{x:.2f}' for x in ofctl_times)}")
        print(f"ratio controller / ovs-ofctl: {c / o:.2f}")
        print(f"controller restart with all flows in place (read, diff, 0 flow-mods): median "
              f"{statistics.median(reconnect_times):.2f} s  rounds {', '.join(f'{x:.2f}' for x in reconnect_times)}")
        print(f"decoding the switch's reply of {decodes[0][0]} flows to canonical flows: os-ken's objects median "
              f"{statistics.median(d[1] for d in decodes):.2f} s, direct decoder (controller/flow_desc.py) median "
              f"{statistics.median(d[2] for d in decodes):.2f} s (same reply, same run)")
        print(f"(load + compile of the {args.endpoints}-endpoint file, for reference: {load_and_compile_s:.2f} s)")
        print(f"reproduce: .venv/bin/python bench/program_switch.py --endpoints {args.endpoints} "
              f"--rounds {args.rounds}")
    finally:
        ovs.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
