"""`cloudweave testbed restart-ovs SITE`: restart one site's ovs-vswitchd as an upgrade would.

As `ovs-ctl restart` does, with flow-restore-wait (the default): every bridge's groups and flows are saved,
`other_config:flow-restore-wait=true` is set, ovs-vswitchd stops and starts again on the same database (which
keeps bridges, ports and the controller target), the saved groups and flows go back in, and the flag is
removed: only then does the new ovs-vswitchd process packets and connect to its controller, which finds its
flows as it left them. Without it, the new ovs-vswitchd starts with empty tables and the controller
reprograms br-int when it reconnects. Either way the host's own configuration is restored as a host's
network scripts would: the tunnel endpoint address on br-phy (its device is recreated), br-phy's flows and
the tunnel neighbour entries (ovs-vswitchd keeps them in memory only).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass

from cloudweave.config import load_model
from cloudweave.config.model import Model
from cloudweave.testbed.build import UNDERLAY_BRIDGE, plug_underlay, site_rundir, underlay_mac, vtep_address_command
from cloudweave.testbed.ovs import OvsError, OvsInstance, alive
from cloudweave.testbed.state import State


@dataclass(frozen=True)
class Restarted:
    """What a restart did, with the time each part took (seconds)."""

    site: str
    flow_restore_wait: bool
    saved_flows: int
    down_s: float  # from the old process's stop to the new one running
    total_s: float  # from the first step to the flag removed (or the underlay restored)


def _ns_run(pid: int):
    def run(cmd: str) -> str:
        out = subprocess.run(["mnexec", "-a", str(pid), "sh", "-c", cmd], capture_output=True, text=True)
        return out.stdout + out.stderr
    return run


def _bridges(ovs: OvsInstance) -> list[str]:
    return [b for b in ovs.vsctl("list-br").split() if b]


def _wait_bridges(ovs: OvsInstance, bridges: list[str], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if all(os.path.exists(os.path.join(ovs.rundir, f"{b}.mgmt")) for b in bridges):
            try:
                for b in bridges:
                    ovs.ofctl("show", b)
                return
            except OvsError:
                pass
        time.sleep(0.01)
    raise OvsError(f"bridges {', '.join(bridges)} did not come back within {timeout_s:.0f} s")


def _count_saved(flows: str) -> int:
    return sum(1 for ln in flows.splitlines() if "actions=" in ln)


def _count(ovs: OvsInstance, bridge: str) -> int:
    return _count_saved(ovs.ofctl("dump-flows", bridge, "--no-stats"))


def _restore(ovs: OvsInstance, saved: dict[str, tuple[str, str]], tmp: str, groups_too: bool = True) -> None:
    """Put saved groups and flows back (as ovs-save's restore does: groups first, flows in one bundle)."""
    for b, (groups, flows) in saved.items():
        groups_file, flows_file = os.path.join(tmp, f"{b}.groups"), os.path.join(tmp, f"{b}.flows")
        with open(groups_file, "w") as fh:
            fh.write("\n".join(ln.strip() for ln in groups.splitlines() if "group_id=" in ln) + "\n")
        with open(flows_file, "w") as fh:
            fh.write("\n".join(ln.strip() for ln in flows.splitlines() if "actions=" in ln) + "\n")
        if groups_too and os.path.getsize(groups_file) > 1:
            ovs.ofctl("add-groups", b, groups_file)
        ovs.ofctl("add-flows", b, "--bundle", flows_file)


def _restart(ovs: OvsInstance, bridges: list[str]) -> float:
    """Stop ovs-vswitchd and start it again on the same database; how long the old one was gone."""
    old = ovs.vswitchd_pid()
    stopping = time.monotonic()
    try:
        ovs.appctl("exit")
    except OvsError:
        os.kill(old, 15)
    while alive(old) and time.monotonic() - stopping < 10:
        time.sleep(0.005)
    ovs.start_vswitchd()
    _wait_bridges(ovs, bridges)
    return time.monotonic() - stopping


def _restore_host(ovs: OvsInstance, model: Model, site: str, run: Callable[[str], str],
                  saved: dict[str, tuple[str, str]], tmp: str) -> None:
    """What the host owns and the new process lacks: br-phy's address, the saved flows (if any), the
    underlay's flows (when not saved) and the tunnel neighbours."""
    run(vtep_address_command(model, site))
    if saved:
        _restore(ovs, saved, tmp)
    for link in model.links:
        if site in link.sites:
            peer = link.sites[0] if link.sites[1] == site else link.sites[1]
            if not saved:
                plug_underlay(ovs, peer, str(model.site(peer).vtep))
            else:  # its flows came back with the saved ones; the neighbour entry is the process's memory
                ovs.appctl("tnl/neigh/set", UNDERLAY_BRIDGE, str(model.site(peer).vtep), underlay_mac(peer))


def _refill_flushed(ovs: OvsInstance, saved: dict[str, tuple[str, str]]) -> None:
    """OVS 3.1 ignores a bridge's controllers while flow-restore-wait is set, and flushes its flows when they
    come back with the flag cleared (bridge_configure_remotes: "had a primary controller" changed). Put them
    back at once, before the controller reconnects (it then finds what it left)."""
    controlled = [b for b in saved if ovs.vsctl("get-controller", b).strip()]
    tmp = tempfile.mkdtemp(prefix="cw-refill-")
    try:
        deadline = time.monotonic() + 0.5
        while controlled and time.monotonic() < deadline:
            flushed = [b for b in controlled if _count(ovs, b) < _count_saved(saved[b][1])]
            if flushed:
                try:
                    _restore(ovs, {b: saved[b] for b in flushed}, tmp, groups_too=False)  # the flush keeps groups
                except OvsError:
                    pass  # the controller got there first (its reconcile owns br-int from here)
                controlled = [b for b in controlled if b not in flushed]
            else:
                time.sleep(0.002)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def restart_ovs(workdir: str, site: str, flow_restore_wait: bool = True) -> Restarted:
    state = State.load(workdir)
    if state is None:
        raise LookupError(f"no test bed in {workdir}")
    if site not in state.sites:
        raise LookupError(f"no site named '{site}' (sites: {', '.join(sorted(state.sites))})")
    model = load_model(state.topology)[0]
    run = _ns_run(state.sites[site]["pid"])
    ovs = OvsInstance(site_rundir(model, site, state), run=run)
    started = time.monotonic()
    bridges = _bridges(ovs)
    saved: dict[str, tuple[str, str]] = {}
    if flow_restore_wait:
        for b in bridges:
            saved[b] = (ovs.ofctl("dump-groups", b), ovs.ofctl("dump-flows", b, "--no-stats", "--no-names"))
        ovs.vsctl("set", "open_vswitch", ".", "other_config:flow-restore-wait=true")
    tmp = tempfile.mkdtemp(prefix="cw-restart-")
    try:
        down = _restart(ovs, bridges)
        _restore_host(ovs, model, site, run, saved, tmp)
    finally:
        if flow_restore_wait:
            # Also after a failure: left set, the flag would keep the site from forwarding and from its controller.
            ovs.vsctl("remove", "open_vswitch", ".", "other_config", "flow-restore-wait")
        shutil.rmtree(tmp, ignore_errors=True)
    if flow_restore_wait:
        _refill_flushed(ovs, saved)
    n = sum(_count_saved(f) for _, f in saved.values())
    return Restarted(site, flow_restore_wait, n, down, time.monotonic() - started)

