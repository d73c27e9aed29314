"""The OpenFlow fuzzer, a short seeded run (bench/openflow_fuzz.py runs it long): after every phase the
controller is alive, a real edit reaches the real switch east within 1 s, RSS and threads are within bounds,
and no traceback is logged but the handler guard's own."""

from __future__ import annotations

import os
import random
import signal
import time

import pytest

from cloudweave.config import load_model
from cloudweave.flows.compile import compile_site
from testkit.harness import OvsSites, wait_for
from testkit.openflow_fuzz import (
    EDIT_BOUND_S,
    NAT,
    RSS_BOUND_MB,
    THREAD_BOUND,
    EditProbe,
    Fuzzer,
    proc_status,
    stray_tracebacks,
)

pytestmark = pytest.mark.ovs
SEED = int(os.environ.get("CLOUDWEAVE_FUZZ_SEED", "20261207"))


def test_openflow_fuzz_short(tmp_path):
    sites = OvsSites(NAT, str(tmp_path))
    ctl = sites.controller(env={"CLOUDWEAVE_HANDSHAKE_S": "2"}).start()
    try:
        for s in ("east", "west"):
            wait_for(lambda s=s: len(sites.instances[s].flows()) == len(compile_site(load_model(sites.config)[0],
                                                                                       s).flows), 30.0,
                     what=f"{s} programmed")
        model = load_model(sites.config)[0]
        west_ports = list(enumerate([e.port for e in model.endpoints if e.site == "west"] + ["up0", "vx-east"], 1))
        west = sites.instances["west"]
        os.kill(west.vswitchd_pid(), signal.SIGKILL)  # the fuzzer plays west
        os.unlink(os.path.join(west.rundir, "ovs-vswitchd.pid"))
        probe = EditProbe(sites.config, {s: os.path.join(sites.workdir, s) for s in ("east", "west")},
                          sites.instances["east"].flows)
        probe()
        time.sleep(1.0)
        base = proc_status(ctl.proc.pid)
        fuzz = Fuzzer(ctl.sock, random.Random(SEED), 40, (0x52, west_ports))
        for phase in Fuzzer.PHASES:
            sent = getattr(fuzz, phase)()
            assert ctl.proc.poll() is None, f"{phase}: the controller died\n{ctl.log()[-3000:]}"
            took = probe()
            wait_for(lambda: proc_status(ctl.proc.pid)["threads"] <= base["threads"] + THREAD_BOUND, 10.0,
                     interval_s=0.2, what=f"{phase}: threads settle")
            now = proc_status(ctl.proc.pid)
            print(f"{phase}: {sent}; edit {took * 1000:.0f} ms; {now}")
            assert took < EDIT_BOUND_S, f"{phase}: edit took {took:.2f} s"
            assert now["rss_mb"] - base["rss_mb"] < RSS_BOUND_MB, f"{phase}: {base} -> {now}"
            assert not stray_tracebacks(ctl.log()), f"{phase}:\n" + "\n--\n".join(stray_tracebacks(ctl.log()))
        log = ctl.log()
        said = [ln for ln in log.splitlines() if " ERROR " in ln and "OpenFlow error" in ln]
        assert len(said) <= 25, f"{len(said)} error lines: one per switch error kind, at most 20 a minute"
        assert log.count("not valid UTF-8") <= 5, "a name that is not UTF-8 is said once a minute per switch"
        west.start_vswitchd()  # the real west comes back and is served
        wait_for(lambda: len(west.flows()) == len(compile_site(load_model(sites.config)[0], "west").flows), 30.0,
                 what="the real west programmed after the fuzzer left")
    finally:
        ctl.stop()
        sites.stop()
