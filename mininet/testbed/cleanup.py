"""Remove everything a test bed started, from its state file alone (works after the keeper crashed)."""

from __future__ import annotations

import os
import signal
import time

from cloudweave.testbed.ovs import alive, kill, stop_daemons
from cloudweave.testbed.state import STATE_FILE, State


def _netns(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/net")
    except OSError:
        return None


def processes_in_namespaces(pids: list[int]) -> list[int]:
    """Every process whose network namespace is one of these pids' (and is not ours)."""
    own = _netns(os.getpid())
    wanted = {ns for ns in (_netns(p) for p in pids) if ns and ns != own}
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and _netns(int(entry)) in wanted:
            found.append(int(entry))
    return found


def force_cleanup(state: State) -> list[str]:
    """Kill, stop and remove; returns what it did, for the user."""
    done = []
    if state.keeper_pid and state.keeper_pid != os.getpid() and alive(state.keeper_pid):
        kill(state.keeper_pid, signal.SIGKILL)
        done.append(f"killed keeper {state.keeper_pid}")
    pid = state.controller.get("pid", 0)
    if pid and alive(pid):
        kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 5
        while alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        kill(pid, signal.SIGKILL)
        done.append(f"stopped controller {pid}")
    for name, r in state.replicas.items():
        if r.get("pid") and alive(r["pid"]):
            kill(r["pid"], signal.SIGCONT)
            kill(r["pid"], signal.SIGKILL)
            done.append(f"stopped replica {name} ({r['pid']})")
    for d in state.store.get("members", []):
        from cloudweave.store import cluster

        try:
            member = cluster.load(d)
        except cluster.StoreError:
            continue
        if cluster.pid(member) is not None:
            cluster.stop(member, timeout_s=2)
            done.append(f"stopped store member {d}")
    for name, site in state.sites.items():
        stop_daemons(site["rundir"])
        done.append(f"stopped OVS of site {name}")
    shells = list(state.hosts.values()) + [s["pid"] for s in state.sites.values()] + list(state.others.values())
    inside = processes_in_namespaces(shells)
    for p in set(inside) | set(shells):
        kill(p, signal.SIGKILL)
    if inside:
        done.append(f"killed {len(inside)} processes in {len(shells)} namespaces")
    for name in ("controller.sock", STATE_FILE):
        path = os.path.join(state.workdir, name)
        if os.path.exists(path):
            os.unlink(path)
    for site in state.sites.values():
        for name in ("db.sock", "controller.sock", *(f"{r}.sock" for r in state.replicas)):
            path = os.path.join(site["rundir"], name)
            if os.path.lexists(path):
                os.unlink(path)
    return done
