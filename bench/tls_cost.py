"""What OpenFlow over mutual TLS costs: the controller programs ~100,000 flows into an empty bridge, then
applies a one-endpoint edit, once listening on tcp: and once on ssl: (same switch, same flows, same run,
alternating), and the two are compared. Issue #25's goals: TLS within 1.2x of plain TCP for the 100,000
flows, within 1.1x for the edit.

The switch is a real ovs-vswitchd (userspace datapath) in its own network namespace; the controller runs in
that namespace too and listens on its loopback, so the two modes differ only by TLS. The figures are the
controller's own reconcile times (read the switch, diff, one bundle, commit) and, for the edit, the time from
the file's rename to that reconcile line in the log.

Run: .venv/bin/python bench/tls_cost.py [--endpoints 100000] [--rounds 2]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.program_switch import OURS, count, topology  # noqa: E402
from cloudweave import pki  # noqa: E402
from cloudweave.config import load_model  # noqa: E402
from cloudweave.flows.compile import compile_site  # noqa: E402
from cloudweave.store.cluster import free_port  # noqa: E402
from cloudweave.testbed.ovs import NetnsOvs  # noqa: E402
from testkit.harness import Controller, wait_for  # noqa: E402

RECONCILE_MS = re.compile(r"\((\d+) flow-mods\) in (\d+) ms")


def one_round(ovs: NetnsOvs, config: str, workdir: str, tls: pki.Issued | None, n: int, edit_no: int
              ) -> tuple[float, float, float]:
    """(programming s, edit reconcile s, edit write-to-reconcile s) for one controller start in one mode."""
    ovs.ofctl("del-flows", "br-int", OURS)
    port = free_port()
    listen = f"ssl:127.0.0.1:{port}" if tls else f"tcp:127.0.0.1:{port}"
    argv = ["ip", "netns", "exec", ovs.netns, sys.executable, "-m", "cloudweave", "run", config, "--listen", listen,
            "--metrics", "off"]
    if tls:
        argv += ["--private-key", tls.key, "--certificate", tls.cert, "--ca-cert", tls.ca]
    ctl = Controller(config, workdir, [], argv).start()
    try:
        line = wait_for(lambda: next((ln for ln in ctl.reconcile_lines("hub") if "flow-mods" in ln), None),
                        timeout_s=600, what="the controller's reconcile")
        assert count(ovs) == n, (count(ovs), n, line)
        program_s = int(RECONCILE_MS.search(line).group(2)) / 1000
        seen = len(ctl.reconcile_lines("hub"))
        with open(config) as fh:
            doc = yaml.safe_load(fh)
        doc["endpoints"]["e1"]["mac"] = f"02:ee:00:00:{edit_no // 256:02x}:{edit_no % 256:02x}"
        tmp = config + ".tmp"
        with open(tmp, "w") as fh:
            yaml.safe_dump(doc, fh, sort_keys=False)
        t = time.perf_counter()
        os.replace(tmp, config)
        line = wait_for(lambda: len(ctl.reconcile_lines("hub")) > seen and ctl.reconcile_lines("hub")[seen],
                        timeout_s=120, interval_s=0.005, what="the edit's reconcile")
        wall_s = time.perf_counter() - t
        m = RECONCILE_MS.search(line)
        assert m and int(m.group(1)) > 0, line
        return program_s, int(m.group(2)) / 1000, wall_s
    finally:
        ctl.stop()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--endpoints", type=int, default=100_000)
    p.add_argument("--rounds", type=int, default=2)
    args = p.parse_args()
    workdir = tempfile.mkdtemp(prefix="cw-bench-tls-")
    ovs = NetnsOvs(os.path.join(workdir, "hub"), f"cwb-{uuid.uuid4().hex[:6]}")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a timeout's kill still cleans up (finally)
    try:
        ovs.start()
        subprocess.run(["ip", "netns", "exec", ovs.netns, "ip", "link", "set", "lo", "up"], check=True)
        d = os.path.join(workdir, "pki")
        pki.init(d)
        hub, ctl_files = pki.issue(d, "hub", "site"), pki.issue(d, "ctl", "replica")
        ovs.vsctl("set-ssl", hub.key, hub.cert, hub.ca)
        ovs.vsctl("add-br", "br-int", "--", "set", "bridge", "br-int", "datapath_type=netdev", "fail_mode=secure")
        config = topology(workdir, args.endpoints)
        n = len(compile_site(load_model(config)[0], "hub").flows)
        results: dict[str, list[tuple[float, float, float]]] = {"tcp": [], "ssl": []}
        edits = 0
        for _ in range(args.rounds):
            for mode in ("tcp", "ssl"):
                edits += 1
                results[mode].append(one_round(ovs, config, workdir, ctl_files if mode == "ssl" else None, n, edits))

        def med(mode: str, i: int) -> float:
            return statistics.median(r[i] for r in results[mode])

        print(f"flows programmed into an empty bridge: {n} (hub site, {args.endpoints} endpoints), "
              f"{args.rounds} round(s) per mode, alternating")
        for i, what in ((0, "program from empty (reconcile)"), (1, "one-endpoint edit (reconcile)"),
                        (2, "one-endpoint edit (rename -> reconcile logged)")):
            tcp, ssl = med("tcp", i), med("ssl", i)
            print(f"{what:48s} tcp median {tcp * 1000:7.0f} ms  ssl median {ssl * 1000:7.0f} ms  "
                  f"ratio {ssl / tcp:.2f}  (tcp {', '.join(f'{r[i] * 1000:.0f}' for r in results['tcp'])}; "
                  f"ssl {', '.join(f'{r[i] * 1000:.0f}' for r in results['ssl'])})")
        print(f"reproduce: .venv/bin/python bench/tls_cost.py --endpoints {args.endpoints} --rounds {args.rounds}")
    finally:
        ovs.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
