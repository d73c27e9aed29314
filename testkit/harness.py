"""Real components for tests: OVS instances in their own network namespaces, and the controller process.

Everything started here is stopped by the fixture that started it, also when a test fails.
"""

from __future__ import annotations

import os
import signal
import socket
import struct
import subprocess
import sys
import time

import yaml

from cloudweave.store.cluster import free_port  # noqa: F401 - re-exported for the tests
from cloudweave.testbed.ovs import NetnsOvs  # noqa: F401 - re-exported for the tests

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def wait_for(predicate, timeout_s: float = 30.0, interval_s: float = 0.1, what: str = "condition"):
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what} (last: {last!r})")


class Controller:
    """`cloudweave run` as a child process, its log kept in a file. The OVS instances of tests/ovs have no
    underlay between them, so tunnel BFD could never come up: it is off there (CLOUDWEAVE_BFD_MS=0)."""

    def __init__(self, config: str, workdir: str, rundirs: list[str], argv: list[str] | None = None,
                 env: dict[str, str] | None = None):
        self.config = config
        self.sock = os.path.join(workdir, "ctl.sock")
        self.log_path = os.path.join(workdir, f"controller-{time.monotonic_ns()}.log")
        self.metrics_port = free_port()
        for rundir in rundirs:  # OVS connects only to unix sockets inside its run directory
            link = os.path.join(rundir, "controller.sock")
            if not os.path.lexists(link):
                os.symlink(self.sock, link)
        self.argv = argv or [sys.executable, "-m", "cloudweave", "run", config, "--listen", f"unix:{self.sock}",
                             "--switch-target", "unix:{ovsdb_dir}/controller.sock",
                             "--metrics", f"127.0.0.1:{self.metrics_port}"]
        self.env = dict(os.environ, CLOUDWEAVE_BFD_MS="0", **(env or {}))
        self.proc: subprocess.Popen | None = None

    def start(self) -> Controller:
        self._fh = open(self.log_path, "wb")
        self.proc = subprocess.Popen(self.argv, stdout=self._fh, stderr=subprocess.STDOUT, cwd=ROOT, env=self.env)
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._fh.close()

    def log(self) -> str:
        with open(self.log_path) as fh:
            return fh.read()

    def reconcile_lines(self, site: str) -> list[str]:
        return [line for line in self.log().splitlines() if f"site {site} (dpid" in line]

    def wait_reconciles(self, site: str, count: int, timeout_s: float = 30.0) -> str:
        lines = wait_for(lambda: len(self.reconcile_lines(site)) >= count and self.reconcile_lines(site),
                         timeout_s, what=f"{count} reconcile(s) of {site}\n{self.log()[-3000:]}")
        return lines[count - 1]

    def metric(self, name: str, **labels: str) -> float | None:
        """One sample from the controller's /metrics, by name and labels; None if absent."""
        import urllib.request

        from prometheus_client.parser import text_string_to_metric_families

        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as r:
            text = r.read().decode()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and sample.labels == labels:
                    return sample.value
        return None

    def __enter__(self) -> Controller:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def rewrite_topology(src: str, dst: str, ovsdb_dirs: dict[str, str], edit=None) -> dict:
    """Copy a topology with each site's OVSDB socket moved into a test's own directory."""
    with open(src) as fh:
        doc = yaml.safe_load(fh)
    for inc in doc.pop("include", []):  # flatten, so that one file carries the moved sockets
        with open(os.path.join(os.path.dirname(src), inc)) as fh:
            for section, body in yaml.safe_load(fh).items():
                if isinstance(body, dict):
                    doc.setdefault(section, {}).update(body)
                else:
                    doc.setdefault(section, []).extend(body)
    for name, site in doc["sites"].items():
        site["ovsdb"] = f"unix:{os.path.join(ovsdb_dirs[name], 'db.sock')}"
    if edit:
        edit(doc)
    with open(dst, "w") as fh:
        yaml.safe_dump(doc, fh, sort_keys=False)
    return doc


class OvsSites:
    """One OVS instance per site of a topology, each in its own namespace, with br-int holding the site's
    endpoint and uplink ports (as a hypervisor would plug them), and a copy of the file pointing at their
    sockets."""

    def __init__(self, topology: str, workdir: str):
        import uuid

        from cloudweave.config import load_model

        self.workdir = workdir
        tag = uuid.uuid4().hex[:6]
        self.config = os.path.join(workdir, "topology.yaml")
        sites = load_model(topology)[0].sites
        self.instances: dict[str, NetnsOvs] = {}
        try:
            for site in sites:
                ovs = NetnsOvs(os.path.join(workdir, site.name), f"cwt-{tag}-{site.name}")
                self.instances[site.name] = ovs
                ovs.start()
            rewrite_topology(topology, self.config, {s.name: os.path.join(workdir, s.name) for s in sites})
            self.model = load_model(self.config)[0]
            for site in sites:
                args = ["add-br", "br-int", "--", "set", "bridge", "br-int", "datapath_type=netdev",
                        "fail_mode=secure"]
                ports = [e.port for e in self.model.endpoints if e.site == site.name]
                if site.uplink:
                    ports.append(site.uplink)
                for port in ports:
                    args += ["--", "add-port", "br-int", port, "--", "set", "interface", port, "type=internal"]
                self.instances[site.name].vsctl(*args)
        except BaseException:
            self.stop()
            raise

    def controller(self, **kw) -> Controller:
        return Controller(self.config, self.workdir, [o.rundir for o in self.instances.values()], **kw)

    def stop(self) -> None:
        for ovs in self.instances.values():
            ovs.stop()


class Replica(Controller):
    """`cloudweave run --store ... --replica NAME`: one replica of several, on a socket of its own."""

    def __init__(self, name: str, store: str, workdir: str, rundirs: list[str], config: str | None = None,
                 env: dict[str, str] | None = None, tls: tuple[str, str, str] | None = None):
        self.name = name
        sock = os.path.join(workdir, f"{name}.sock")
        argv = [sys.executable, "-m", "cloudweave", "run", *([config] if config else []), "--store", store,
                "--replica", name, "--listen", f"unix:{sock}", "--switch-target", "unix:{ovsdb_dir}/" + f"{name}.sock"]
        if tls:
            argv += ["--private-key", tls[0], "--certificate", tls[1], "--ca-cert", tls[2]]
        env = dict(env or {}, CLOUDWEAVE_POLICY_DIR=os.path.join(workdir, f"{name}-policy"))
        super().__init__(config or "", workdir, [], argv, env)
        self.sock = sock
        self.argv += ["--metrics", f"127.0.0.1:{self.metrics_port}"]
        for rundir in rundirs:
            link = os.path.join(rundir, f"{name}.sock")
            if not os.path.lexists(link):
                os.symlink(sock, link)
        self.log_path = os.path.join(workdir, f"{name}-{time.monotonic_ns()}.log")

    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, sig)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)  # a frozen replica must be able to end
        super().stop()


class Store:
    """A 3-member store on this host (cloudweave.store.cluster.local_cluster), stopped with the test; with
    `pki_dir`, over TLS with RBAC."""

    def __init__(self, workdir: str, members: int = 3, pki_dir: str | None = None, operators: tuple[str, ...] = ()):
        from cloudweave.store import cluster

        self.cluster = cluster
        self.members = cluster.local_cluster(os.path.join(workdir, "store"), members, pki_dir=pki_dir,
                                             operators=operators)
        self.remotes = ",".join(m.remote for m in self.members)

    def leader(self):
        return self.cluster.leader(self.members)

    def pid(self, member) -> int | None:
        return self.cluster.pid(member)

    def start(self, member) -> None:
        self.cluster.start(member)

    def stop(self) -> None:
        for m in self.members:
            p = self.cluster.pid(m)
            if p is not None:
                os.kill(p, signal.SIGCONT)
                os.kill(p, signal.SIGKILL)

    def query(self, table: str) -> list[dict]:
        return store_rows(self.remotes, table)


def store_rows(remotes: str, table: str) -> list[dict]:
    """Rows of a store's table as its leader has them (a follower may still be catching up)."""
    from cloudweave.store import client

    s = client.connect(remotes, [table], timeout_s=15)
    try:
        return [{c: getattr(r, c) for c in r._table.columns} for r in s.rows(table)]
    finally:
        s.close()


def appctl(workdir: str, site: str, *args: str) -> str:
    """`ovs-appctl` on a test-bed site's ovs-vswitchd."""
    from cloudweave.testbed.state import State

    target = os.path.join(State.load(workdir).sites[site]["rundir"], "ovs-vswitchd.ctl")
    return subprocess.run(["ovs-appctl", "-t", target, *args], capture_output=True, text=True, check=True).stdout


def _recv(sock: socket.socket, n: int) -> bytes:
    out = b""
    while len(out) < n:
        chunk = sock.recv(n - len(out))
        assert chunk, "the switch closed the connection"
        out += chunk
    return out


def flow_desc_body(mgmt: str) -> bytes:
    """Every flow of the bridge as ovs-vswitchd sends it: a flow-desc request on its management socket, the
    bodies of the reply's parts joined."""
    from os_ken.ofproto import ofproto_v1_5 as ofp
    from os_ken.ofproto import ofproto_v1_5_parser as parser

    class _Datapath:
        ofproto, ofproto_parser = ofp, parser

    req = parser.OFPFlowDescStatsRequest(_Datapath(), 0, ofp.OFPTT_ALL, ofp.OFPP_ANY, ofp.OFPG_ANY, 0, 0,
                                         parser.OFPMatch())
    req.set_xid(2)
    req.serialize()
    parts: list[bytes] = []
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(10)
        sock.connect(mgmt.removeprefix("unix:"))
        sock.sendall(struct.pack("!BBHI", ofp.OFP_VERSION, ofp.OFPT_HELLO, 8, 1) + bytes(req.buf))
        while True:
            version, kind, length, xid = struct.unpack("!BBHI", _recv(sock, 8))
            msg = _recv(sock, length - 8)
            assert kind != ofp.OFPT_ERROR, msg
            if kind == ofp.OFPT_ECHO_REQUEST:
                sock.sendall(struct.pack("!BBHI", version, ofp.OFPT_ECHO_REPLY, length, xid) + msg)
            elif kind == ofp.OFPT_MULTIPART_REPLY and xid == 2:
                _, flags = struct.unpack_from("!HH", msg)
                parts.append(msg[8:])
                if not flags & ofp.OFPMPF_REPLY_MORE:
                    return b"".join(parts)
