"""iperf3 throughput between endpoints on two sites through cloudweave's flows — the full pipeline (conntrack
and security-group ACL) and the overlay alone (a segment without a policy) — beside the same pair with each
site's bridge holding only `actions=NORMAL` (tunnel VNI 0), alternated in the same run.

Test bed: two sites (one OVS instance each, userspace datapath), a 10 Gbit/s underlay link (so shaping does
not cap), one segment. Both modes use the same tunnel ports; the controller is stopped after it programmed
the bridges, and each mode's flows are swapped in atomically with `ovs-ofctl --bundle replace-flows`
(the controller's flows are exactly `cloudweave compile`'s, which tests/ovs checks).

Run: .venv/bin/python bench/throughput.py [--rounds 3] [--seconds 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from cloudweave.testbed.cli import down, up  # noqa: E402
from cloudweave.testbed.ovs import kill  # noqa: E402
from cloudweave.testbed.state import State  # noqa: E402
from cloudweave.testbed.traffic import iperf  # noqa: E402


def topology(workdir: str, policy: bool = True, name: str = "throughput.yaml") -> str:
    doc = {
        "version": 1,
        "sites": {s: {"dpid": i + 0x31, "vtep": f"172.31.31.{i + 1}", "ovsdb": f"unix:{workdir}/{s}/db.sock",
                      "datapath": "netdev"} for i, s in enumerate(("left", "right"))},
        "links": [{"between": ["left", "right"], "capacity": "10Gbit"}],
        "segments": {"blue": {"vni": 4001, "subnet": "10.50.0.0/24"}},
        "endpoints": {"a": {"site": "left", "port": "a", "segment": "blue", "mac": "02:00:00:50:00:01",
                            "ip": "10.50.0.1"},
                      "b": {"site": "right", "port": "b", "segment": "blue", "mac": "02:00:00:50:00:02",
                            "ip": "10.50.0.2"}},
    }
    if policy:  # default deny; the client may reach iperf3's port on the server, statefully
        doc["endpoints"]["a"]["groups"] = ["client"]
        doc["endpoints"]["b"]["groups"] = ["server"]
        doc["security_groups"] = {
            "client": {"egress": [{"to": "server", "proto": "tcp", "ports": 5201}]},
            "server": {"ingress": [{"from": "client", "proto": "tcp", "ports": 5201}]},
        }
    else:
        doc["segments"]["blue"]["default"] = "allow"
    path = os.path.join(workdir, name)
    with open(path, "w") as fh:
        yaml.safe_dump(doc, fh)
    return path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=int, default=3)
    args = p.parse_args()
    workdir = tempfile.mkdtemp(prefix="cw-tput-")
    config = topology(workdir)
    if up(config, workdir, metrics="off") != 0:
        sys.exit(f"test bed did not come up; see {workdir}/testbed.log")
    try:
        state = State.load(workdir)
        kill(state.controller["pid"], 15)  # flows stay (fail_mode secure); it must not fight the swaps below
        time.sleep(1)
        overlay_config = topology(workdir, policy=False, name="overlay.yaml")
        files = {}
        for site in ("left", "right"):
            files[site] = {}
            for mode, cfg in (("policy", config), ("overlay", overlay_config)):
                path = os.path.join(workdir, f"{site}.{mode}.flows")
                with open(path, "w") as fh:
                    subprocess.run([sys.executable, "-m", "cloudweave", "compile", cfg, "--site", site], stdout=fh,
                                   check=True, cwd=ROOT)
                files[site][mode] = path
            normal = os.path.join(workdir, f"{site}.normal")
            with open(normal, "w") as fh:
                fh.write("table=0, priority=0, actions=NORMAL\n")
            files[site]["normal"] = normal
        results: dict[str, list[float]] = {"policy": [], "overlay": [], "normal": []}
        for _ in range(args.rounds):
            for mode in results:
                for site in ("left", "right"):
                    mgmt = f"unix:{state.sites[site]['rundir']}/br-int.mgmt"
                    subprocess.run(["ovs-ofctl", "-O", "OpenFlow15", "--bundle", "replace-flows", mgmt,
                                    files[site][mode]], check=True)
                results[mode].append(iperf(workdir, "b", "a", "10.50.0.2", args.seconds)["bits_per_second"] / 1e9)
        med = {mode: statistics.median(rows) for mode, rows in results.items()}
        print("iperf3 TCP, one stream, endpoint on site left -> endpoint on site right, VXLAN between two OVS")
        labels = {"policy": "cloudweave, conntrack + ACL", "overlay": "cloudweave, overlay only",
                  "normal": "actions=NORMAL"}
        for mode, rows in results.items():
            print(f"  {labels[mode]:<28} median {med[mode]:.2f} Gbit/s  rounds {', '.join(f'{r:.2f}' for r in rows)}")
        print(f"  ratios: policy / overlay {med['policy'] / med['overlay']:.2f}, overlay / NORMAL "
              f"{med['overlay'] / med['normal']:.2f}, policy / NORMAL {med['policy'] / med['normal']:.2f}")
        print(f"reproduce: .venv/bin/python bench/throughput.py --rounds {args.rounds} --seconds {args.seconds}")
    finally:
        down(workdir)
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
