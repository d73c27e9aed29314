"""`cloudweave testbed up|exec|down|status`."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time

from cloudweave.launch import PYTHON_M
from cloudweave.testbed.cleanup import force_cleanup
from cloudweave.testbed.ovs import alive, kill
from cloudweave.testbed.state import State
from cloudweave.testbed.traffic import ns_argv

UP_TIMEOUT_S = 180.0


def up(topology: str, workdir: str, controller: str | None = None, metrics: str = "127.0.0.1:9108",
       replicas: int = 0, tls: bool = False) -> int:
    existing = State.load(workdir)
    if existing is not None and alive(existing.keeper_pid):
        print(f"cloudweave: a test bed is already running in {workdir} (keeper pid {existing.keeper_pid}); "
              "run `cloudweave testbed down` first", file=sys.stderr)
        return 1
    if existing is not None:
        force_cleanup(existing)
    os.makedirs(workdir, exist_ok=True)
    stale_state = os.path.join(workdir, "te-state.json")
    if os.path.exists(stale_state):  # a new test bed learns its own traffic matrix
        os.unlink(stale_state)
    argv = [*PYTHON_M, "cloudweave.testbed.keeper", os.path.abspath(topology), "--workdir", workdir,
            "--metrics", metrics]
    if controller:
        argv += ["--controller", controller]
    if replicas:
        argv += ["--replicas", str(replicas)]
    if tls:
        argv.append("--tls")
    log = os.path.join(workdir, "testbed.log")
    with open(log, "ab") as fh:
        keeper = subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                  start_new_session=True)
    deadline = time.monotonic() + UP_TIMEOUT_S
    while time.monotonic() < deadline:
        state = State.load(workdir)
        if state is not None and state.keeper_pid == keeper.pid and state.status in ("ready", "failed"):
            if state.status == "failed":
                _tear_down_failed(keeper, workdir)
                print(f"cloudweave: test bed failed: {state.error}\n  everything it started is torn down; "
                      f"the log stays: {log}", file=sys.stderr)
                return 1
            if state.replicas:
                print(f"test bed up: {len(state.sites)} sites, {len(state.hosts)} endpoints, {len(state.replicas)} "
                      f"controller replicas on a 3-member store ({state.store['remotes']}); logs in {workdir}; "
                      f"`cloudweave status --store {state.store['remotes']}`")
            else:
                print(f"test bed up: {len(state.sites)} sites, {len(state.hosts)} endpoints, controller "
                      f"{state.controller.get('target')}; logs in {workdir}")
            return 0
        if keeper.poll() is not None:
            _tear_down_failed(keeper, workdir)
            why = _failure_in(log)
            print(f"cloudweave: {why or f'test bed keeper exited ({keeper.returncode})'}\n  everything it started "
                  f"is torn down; the log stays: {log}", file=sys.stderr)
            return 1
        time.sleep(0.2)
    _tear_down_failed(keeper, workdir)
    print(f"cloudweave: test bed not ready after {UP_TIMEOUT_S:.0f} s; everything it started is torn down; "
          f"see {log}", file=sys.stderr)
    return 1


def _failure_in(log: str) -> str:
    """The keeper's last 'test bed failed: ...' line, if it wrote one (it may finish before `up` looks)."""
    try:
        with open(log, errors="replace") as fh:
            lines = [ln for ln in fh.read().splitlines() if "test bed failed: " in ln]
    except OSError:
        return ""
    return "test bed failed: " + lines[-1].split("test bed failed: ", 1)[1] if lines else ""


def _tear_down_failed(keeper: subprocess.Popen, workdir: str) -> None:
    """After a failed bring-up nothing stays: the keeper tears down what it built (it is given 60 s, then
    stopped), and whatever its state file still lists is removed, so that the next `up` or demo starts clean."""
    try:
        keeper.wait(60)
    except subprocess.TimeoutExpired:
        keeper.terminate()
        try:
            keeper.wait(10)
        except subprocess.TimeoutExpired:
            keeper.kill()
            keeper.wait()
    leftover = State.load(workdir)
    if leftover is not None:
        force_cleanup(leftover)


def exec_in(workdir: str, name: str, cmd: list[str], **popen: object) -> subprocess.CompletedProcess:
    return subprocess.run(ns_argv(workdir, name, *cmd), **popen)


def down(workdir: str, force: bool = False) -> int:
    state = State.load(workdir)
    if state is None:
        print(f"no test bed in {workdir}")
        return 0
    if alive(state.keeper_pid) and not force:
        kill(state.keeper_pid, signal.SIGTERM)
        deadline = time.monotonic() + 60
        while alive(state.keeper_pid) and time.monotonic() < deadline:
            time.sleep(0.1)
    leftover = State.load(workdir)
    if leftover is not None:
        for line in force_cleanup(leftover):
            print(line)
    print("test bed down")
    return 0


def status(workdir: str) -> int:
    state = State.load(workdir)
    if state is None:
        print(f"no test bed in {workdir}")
        return 1
    keeper = "running" if alive(state.keeper_pid) else "DEAD (run `cloudweave testbed down --force`)"
    print(f"test bed in {workdir}: {state.status}, keeper {state.keeper_pid} {keeper}")
    print(f"topology: {state.topology}")
    if state.replicas:
        print(f"store: {state.store.get('remotes')} (members in {', '.join(state.store.get('members', []))})")
        for name, r in sorted(state.replicas.items()):
            print(f"replica {name}: pid {r['pid']} {'running' if alive(r['pid']) else 'DEAD'}, {r['target']}, "
                  f"metrics {r['metrics']}, log {r['log']}")
    else:
        print(f"controller: {state.controller.get('target')} (pid {state.controller.get('pid', 0) or 'attached'})")
    for name, site in sorted(state.sites.items()):
        print(f"site {name}: namespace pid {site['pid']}, OVS in {site['rundir']}")
    for name, pid in sorted(state.hosts.items()):
        print(f"endpoint {name}: namespace pid {pid}")
    return 0


def main(args: argparse.Namespace) -> int:
    workdir = os.path.abspath(args.workdir)
    if args.action == "up":
        if args.replicas < 0:
            print("cloudweave: --replicas N: N is 1 or more", file=sys.stderr)
            return 2
        if args.replicas and args.controller:
            print("cloudweave: --replicas starts its own controllers: not with --controller", file=sys.stderr)
            return 2
        if args.tls and args.controller:
            print("cloudweave: --tls starts its own controller (with the run's certificates): not with "
                  "--controller", file=sys.stderr)
            return 2
        return up(args.topology, workdir, args.controller, replicas=args.replicas, tls=args.tls)
    if args.action == "down":
        return down(workdir, args.force)
    if args.action == "status":
        return status(workdir)
    if args.action == "restart-ovs":
        from cloudweave.testbed.restart import restart_ovs

        try:
            done = restart_ovs(workdir, args.site, not args.no_flow_restore_wait)
        except (LookupError, RuntimeError) as exc:
            print(f"cloudweave: {exc}", file=sys.stderr)
            return 1
        how = (f"with flow-restore-wait, {done.saved_flows} flows saved and restored" if done.flow_restore_wait
               else "without flow-restore-wait (empty tables; the controller reprograms br-int)")
        print(f"site {done.site}: ovs-vswitchd restarted {how}; down {done.down_s * 1000:.0f} ms, "
              f"{done.total_s * 1000:.0f} ms in all")
        return 0
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not cmd:
        print("cloudweave: testbed exec HOST -- COMMAND [ARGS...]", file=sys.stderr)
        return 2
    try:
        return exec_in(workdir, args.host, cmd).returncode
    except LookupError as exc:
        print(f"cloudweave: {exc}", file=sys.stderr)
        return 2
