"""The OpenFlow fuzzer, long (issue #24; tests/ovs/test_openflow_fuzz.py is its short run in CI).

A controller on topologies/nat.yaml with its two sites on real ovs-vswitchd instances; the fuzzer connects to
its socket as switches of its own and runs each phase of testkit/openflow_fuzz.py (garbage before HELLO, stalled
64 KiB messages, malformed messages of eight kinds as unknown dpids, malformed and mutated messages and
replies as the known dpid of site west, error and port-status floods, connect-and-close churn, idle
connections). During each phase and after it, a real edit is timed on the real switch east (a same-run
baseline first, with no fuzzing); RSS and threads are read; the log is checked for tracebacks other than the
handler guard's. Every phase must pass: the edit within 1 s, RSS within +150 MB and threads within +20 of
the baseline, no stray traceback, the controller alive. It exits 1 if any phase fails.

Run: .venv/bin/python bench/openflow_fuzz.py [--scale 150] [--seed 20261207] [--rounds 1]
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import statistics
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from cloudweave.config import load_model  # noqa: E402
from cloudweave.flows.compile import compile_site  # noqa: E402
from testkit.harness import OvsSites, wait_for  # noqa: E402
from testkit.openflow_fuzz import (  # noqa: E402
    EDIT_BOUND_S,
    NAT,
    RSS_BOUND_MB,
    THREAD_BOUND,
    EditProbe,
    Fuzzer,
    proc_status,
    stray_tracebacks,
)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scale", type=int, default=150, help="messages per kind (and per phase unit)")
    ap.add_argument("--seed", type=int, default=20261207)
    ap.add_argument("--rounds", type=int, default=1, help="times to run every phase")
    a = ap.parse_args()
    cmd = f".venv/bin/python bench/openflow_fuzz.py --scale {a.scale} --seed {a.seed} --rounds {a.rounds}"
    work = tempfile.mkdtemp(prefix="cw-ofuzz-")
    sites = OvsSites(NAT, work)
    ctl = sites.controller().start()
    failed = []
    try:
        for s in ("east", "west"):
            wait_for(lambda s=s: len(sites.instances[s].flows()) == len(compile_site(load_model(sites.config)[0],
                                                                                       s).flows), 60.0)
        model = load_model(sites.config)[0]
        west_ports = list(enumerate([e.port for e in model.endpoints if e.site == "west"] + ["up0", "vx-east"], 1))
        west = sites.instances["west"]
        os.kill(west.vswitchd_pid(), signal.SIGKILL)
        os.unlink(os.path.join(west.rundir, "ovs-vswitchd.pid"))
        probe = EditProbe(sites.config, {s: os.path.join(work, s) for s in ("east", "west")},
                          sites.instances["east"].flows)
        probe()
        baseline_edits = [probe() for _ in range(10)]
        time.sleep(1.0)
        base = proc_status(ctl.proc.pid)
        print(f"baseline: edit median {statistics.median(baseline_edits) * 1000:.0f} ms, max "
              f"{max(baseline_edits) * 1000:.0f} ms (10 edits, no fuzzing); {base}")
        print(f"{'phase':<12} {'during ms':>10} {'after ms':>9} {'rss MB':>7} {'threads':>8} {'fds':>5}  verdict  sent")
        fuzz = Fuzzer(ctl.sock, random.Random(a.seed), a.scale, (0x52, west_ports))
        for r in range(a.rounds):
            for phase in Fuzzer.PHASES:
                during: list[float] = []
                sent: list[str] = []
                t = threading.Thread(target=lambda p=phase, out=sent: out.append(getattr(fuzz, p)()))
                t.start()
                while t.is_alive():
                    during.append(probe())
                    time.sleep(0.1)
                t.join()
                after = probe()
                try:
                    wait_for(lambda: proc_status(ctl.proc.pid)["threads"] <= base["threads"] + THREAD_BOUND, 10.0,
                             interval_s=0.2)
                except AssertionError:
                    pass
                now = proc_status(ctl.proc.pid)
                stray = stray_tracebacks(ctl.log())
                ok = (ctl.proc.poll() is None and after < EDIT_BOUND_S and max(during, default=0) < EDIT_BOUND_S
                      and now["rss_mb"] - base["rss_mb"] < RSS_BOUND_MB
                      and now["threads"] <= base["threads"] + THREAD_BOUND and not stray)
                if not ok:
                    failed.append(phase)
                name = phase if a.rounds == 1 else f"{phase}#{r + 1}"
                print(f"{name:<12} {max(during, default=0) * 1000:>10.0f} {after * 1000:>9.0f} {now['rss_mb']:>7} "
                      f"{now['threads']:>8} {now['fds']:>5}  {'pass' if ok else 'FAIL':<7}  {sent[0] if sent else ''}",
                      flush=True)
                if stray:
                    print("   stray traceback:\n" + stray[0])
        west.start_vswitchd()
        wait_for(lambda: len(west.flows()) == len(compile_site(load_model(sites.config)[0], "west").flows), 30.0)
        print("the real west, back after the fuzzer, is programmed again")
    finally:
        ctl.stop()
        sites.stop()
    print(f"{'every phase passed' if not failed else 'FAILED: ' + ', '.join(failed)}; reproduce: {cmd}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
