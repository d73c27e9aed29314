"""A private Open vSwitch instance (its own ovsdb-server and ovs-vswitchd, own run directory).

Commands run through `run`, which is plain subprocess in the current namespace, or a Mininet node's shell
for an instance that lives inside a site's namespace. Control sockets are files, so ovs-vsctl, ovs-ofctl
and ovs-appctl reach every instance from anywhere.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from collections.abc import Callable

SCHEMA = "/usr/share/openvswitch/vswitch.ovsschema"
DAEMONS = ("ovs-vswitchd", "ovsdb-server")


def local_run(cmd: str) -> str:
    out = subprocess.run(cmd, shell=True, capture_output=True, text=True)
    return out.stdout + out.stderr


# What ovs-ofctl says when a bridge being reconfigured (protocols, controller) drops its management connection.
RECONFIGURING = ("Broken pipe", "Connection refused", "Connection reset by peer", "connection dropped",
                 "receive failed (End of file)")


class OvsError(RuntimeError):
    pass


class OvsInstance:
    def __init__(self, rundir: str, run: Callable[[str], str] = local_run):
        self.rundir = os.path.abspath(rundir)
        self.run = run
        self.db_sock = os.path.join(self.rundir, "db.sock")

    @property
    def db(self) -> str:
        return f"unix:{self.db_sock}"

    def start(self) -> None:
        os.makedirs(self.rundir, exist_ok=True)
        db = os.path.join(self.rundir, "conf.db")
        if os.path.exists(db):
            os.unlink(db)
        self._check(["ovsdb-tool", "create", db, SCHEMA])
        r = self.rundir
        # As ovs-ctl starts it: managers and SSL files from the database, so `ovs-vsctl set-ssl` and
        # `set-manager pssl:...` serve OVSDB over TLS to a controller on another host.
        self.run(f"ovsdb-server {db} --remote=punix:{self.db_sock} --pidfile={r}/ovsdb-server.pid "
                 "--remote=db:Open_vSwitch,Open_vSwitch,manager_options --private-key=db:Open_vSwitch,SSL,private_key "
                 "--certificate=db:Open_vSwitch,SSL,certificate --ca-cert=db:Open_vSwitch,SSL,ca_cert "
                 f"--unixctl={r}/ovsdb-server.ctl --log-file={r}/ovsdb-server.log --detach")
        self.vsctl("--no-wait", "init")
        self.start_vswitchd()

    def start_vswitchd(self) -> None:
        """ovs-vswitchd on this instance's database (also again, after it stopped: an upgrade's restart)."""
        r = self.rundir
        self.run(f"OVS_RUNDIR={r} ovs-vswitchd {self.db} --pidfile={r}/ovs-vswitchd.pid "
                 f"--unixctl={r}/ovs-vswitchd.ctl --log-file={r}/ovs-vswitchd.log --detach")
        if not os.path.exists(f"{r}/ovs-vswitchd.pid"):
            raise OvsError(f"ovs-vswitchd did not start; see {r}/ovs-vswitchd.log")

    @staticmethod
    def _check(argv: list[str]) -> str:
        out = subprocess.run(argv, capture_output=True, text=True)
        if out.returncode != 0:
            raise OvsError(f"{' '.join(argv)}: {out.stderr.strip() or out.stdout.strip()}")
        return out.stdout

    def vsctl(self, *args: str) -> str:
        return self._check(["ovs-vsctl", f"--db={self.db}", "--timeout=20", *args])

    def ofctl(self, command: str, bridge: str, *args: str) -> str:
        argv = ["ovs-ofctl", "-O", "OpenFlow15", command, self.mgmt(bridge), *args]
        for _ in range(3):  # a bridge being reconfigured (protocols, controller) may drop one management connection
            try:
                return self._check(argv)
            except OvsError as exc:
                if not any(m in str(exc) for m in RECONFIGURING):
                    raise
                time.sleep(0.2)
        return self._check(argv)

    def appctl(self, *args: str) -> str:
        return self._check(["ovs-appctl", "-t", os.path.join(self.rundir, "ovs-vswitchd.ctl"), *args])

    def mgmt(self, bridge: str) -> str:
        return f"unix:{os.path.join(self.rundir, bridge + '.mgmt')}"

    def pids(self) -> list[int]:
        return pids_in(self.rundir)

    def vswitchd_pid(self) -> int:
        with open(os.path.join(self.rundir, "ovs-vswitchd.pid")) as fh:
            return int(fh.read().strip())

    def stop(self) -> None:
        stop_daemons(self.rundir)


def pids_in(rundir: str) -> list[int]:
    out = []
    for daemon in DAEMONS:
        try:
            with open(os.path.join(rundir, f"{daemon}.pid")) as fh:
                out.append(int(fh.read().strip()))
        except (OSError, ValueError):
            continue
    return out


def stop_daemons(rundir: str, grace_s: float = 5.0) -> None:
    """Stop an instance from its pidfiles alone (also after the process that started it died)."""
    pids = pids_in(rundir)
    for pid in pids:
        kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    for pid in pids:
        kill(pid, signal.SIGKILL)
    for daemon in DAEMONS:
        for suffix in (".pid", ".ctl"):
            path = os.path.join(rundir, daemon + suffix)
            if os.path.exists(path):
                os.unlink(path)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def kill(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except OSError:
        pass


class NetnsOvs(OvsInstance):
    """An OVS instance inside a network namespace of its own (userspace bridges make kernel tap devices,
    so two instances with a bridge of the same name cannot share a namespace)."""

    def __init__(self, rundir: str, netns: str):
        subprocess.run(["ip", "netns", "add", netns], check=True)
        self.netns = netns
        super().__init__(rundir, run=lambda cmd: subprocess.run(
            ["ip", "netns", "exec", netns, "sh", "-c", cmd], capture_output=True, text=True).stdout)

    def stop(self) -> None:
        super().stop()
        subprocess.run(["ip", "netns", "del", self.netns], capture_output=True)

    def flows(self, bridge: str = "br-int") -> list[str]:
        """Our flows, without statistics, sorted: what the controller programmed."""
        out = self.ofctl("dump-flows", bridge, "--no-stats", "--names", "cookie=0xc10d000000000000/0xffff000000000000")
        return sorted(line.strip() for line in out.splitlines() if "cookie=" in line or "priority" in line)

    def flow_durations(self, bridge: str = "br-int") -> dict[str, float]:
        out = self.ofctl("dump-flows", bridge, "cookie=0xc10d000000000000/0xffff000000000000")
        durations = {}
        for line in out.splitlines():
            m = re.search(r"duration=([0-9.]+)s", line)
            if m:
                key = re.sub(r"(duration|n_packets|n_bytes|idle_age|hard_age)=[^,]*, ?", "", line).strip()
                durations[key] = float(m.group(1))
        return durations
