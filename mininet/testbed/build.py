"""Build a topology file into a live emulation with Mininet nodes and links, one OVS instance per site.

Each site is a Mininet node (its own network namespace) that runs its own ovsdb-server and ovs-vswitchd
(userspace datapath). Underlay links are veth pairs between site namespaces, shaped to the declared
capacity with htb (an OVS linux-htb QoS on each end); the site's tunnel endpoint address sits on a `br-phy`
bridge that holds them.
Endpoints are Mininet hosts wired to their site's integration bridge by a veth named as the config says.
"""

from __future__ import annotations

import hashlib
import logging
import os
import signal
import subprocess
import time

from mininet.link import Link
from mininet.node import Host

from cloudweave import paths
from cloudweave.config.model import Model
from cloudweave.flows.compile import compile_site
from cloudweave.flows.cookies import OWNER, OWNER_MASK
from cloudweave.launch import PYTHON_M
from cloudweave.store.cluster import free_port
from cloudweave.testbed import tls
from cloudweave.testbed.ovs import OvsInstance, alive, kill
from cloudweave.testbed.state import State

LOG = logging.getLogger("cloudweave.testbed")
UNDERLAY_BRIDGE = "br-phy"
HOST_MTU = 1450  # leaves room for the 50-byte VXLAN header on a 1500-byte underlay
MAX_SHAPED_MBPS = 1000
SITE_CONTROLLER_SOCK = "controller.sock"
INTERNET = "internet"  # the namespace every site's uplink reaches
INTERNET_BRIDGE = "ibr"
INTERNET_SERVER = "198.51.100.100"  # documentation range (RFC 5737), as the reference file's NAT addresses
BUFFER_S, MIN_QUEUE = 0.05, 64  # an underlay link's queue: 50 ms at its rate, of 1500-byte packets
INTERNET_PREFIX = 24  # Mininet's htb helper refuses more; faster links run unshaped


def queue_packets(capacity_mbps: float) -> int:
    return max(MIN_QUEUE, int(capacity_mbps * 1e6 * BUFFER_S / (8 * 1500)))


def _last_error(log: str) -> str:
    """The last line of the controller's log that says why it stopped (its own error, not the traceback)."""
    try:
        with open(log, errors="replace") as fh:
            lines = fh.read().splitlines()[-200:]
    except OSError:
        return ""
    said = [ln for ln in lines if " ERROR " in ln or "Error:" in ln or "error:" in ln]
    return said[-1].strip() if said else ""


class TestbedError(RuntimeError):
    pass


def underlay_port(peer: str) -> str:
    name = "ul-" + peer
    return name if len(name) <= 15 else "ul-" + hashlib.blake2b(peer.encode(), digest_size=6).hexdigest()


def underlay_mac(site: str) -> str:
    digest = hashlib.blake2b(site.encode(), digest_size=5).digest()
    return "0e:" + ":".join(f"{b:02x}" for b in digest)


def underlay_prefixlen(model: Model) -> int:
    """The longest prefix length that still covers every site's tunnel endpoint address (at least /8)."""
    addrs = [int(s.vtep) for s in model.sites]
    plen = 32
    while plen > 8 and len({a >> (32 - plen) for a in addrs}) > 1:
        plen -= 1
    return plen


def vtep_address_command(model: Model, site: str) -> str:
    """The shell command that puts the site's tunnel endpoint address on br-phy (the host's own network
    configuration: also after an OVS restart, which recreates br-phy's device without it)."""
    plen = underlay_prefixlen(model)
    return f"ip addr replace {model.site(site).vtep}/{plen} dev {UNDERLAY_BRIDGE}; ip link set {UNDERLAY_BRIDGE} up"


def plug_underlay(ovs: OvsInstance, peer: str, peer_vtep: str) -> None:
    """br-phy's flows toward one peer and its tunnel neighbour entry (the host's, not the controller's)."""
    port = underlay_port(peer)
    # Point-to-point underlay without a learning switch, so that a ring of sites cannot loop: everything
    # from the wire goes up to the tunnel endpoint; what it sends goes to the peer's wire.
    flows = (f"priority=100,in_port={port},actions=LOCAL\n"
             f"priority=100,in_port=LOCAL,ip,nw_dst={peer_vtep},actions=output:{port}\n"
             f"priority=100,in_port=LOCAL,arp,arp_tpa={peer_vtep},actions=output:{port}\n")
    subprocess.run(["ovs-ofctl", "-O", "OpenFlow15", "add-flows", ovs.mgmt(UNDERLAY_BRIDGE), "-"],
                   input=flows, text=True, check=True, capture_output=True)
    ovs.appctl("tnl/neigh/set", UNDERLAY_BRIDGE, peer_vtep, underlay_mac(peer))


def site_rundir(model: Model, site: str, state: State | None = None) -> str:
    rundir = model.site(site).ovsdb_dir
    if rundir is None and state is not None and site in state.sites:  # --tls: the file names its ssl: address
        return state.sites[site]["rundir"]
    if rundir is None:
        raise TestbedError(f"site {site}: the test bed needs 'ovsdb: unix:/path/db.sock', got "
                           f"'{model.site(site).ovsdb}'")
    return rundir


def start_replica(state: State, model: Model, name: str, import_file: bool = False) -> subprocess.Popen:
    """Start (or start again) one replica of a test bed: its socket linked into every site's run directory (or,
    with --tls, an ssl: listener on the management network, on the port it had before), its pid and log in the
    state file (so that `down` stops it whoever started it)."""
    log = os.path.join(state.workdir, f"{name}.log")
    metrics = f"127.0.0.1:{free_port()}"
    if state.tls:
        target = state.replicas.get(name, {}).get("target") or f"ssl:{state.tls['host']}:{free_port(state.tls['host'])}"
        listen = ["--listen", target, *tls.tls_args(tls_bed(state), name)]
    else:
        sock = os.path.join(state.workdir, f"{name}.sock")
        for site in model.sites:
            link = os.path.join(site_rundir(model, site.name, state), f"{name}.sock")
            if os.path.lexists(link):
                os.unlink(link)
            os.symlink(sock, link)
        target = f"unix:{sock}"
        listen = ["--listen", target, "--switch-target", "unix:{ovsdb_dir}/" + f"{name}.sock"]
    argv = [*PYTHON_M, "cloudweave", "run", *([state.topology] if import_file else []),
            "--store", state.store["remotes"], "--replica", name, *listen, "--metrics", metrics]
    env = dict(os.environ, CLOUDWEAVE_POLICY_DIR=os.path.join(state.workdir, f"{name}-policy"))
    with open(log, "ab") as fh:
        proc = subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True, env=env)
    state.replicas[name] = {"pid": proc.pid, "target": target, "log": log, "metrics": metrics}
    state.controller = {"pid": 0, "target": f"{len(state.replicas)} replicas", "log": log}
    state.save()
    return proc


def tls_bed(state: State) -> tls.TlsBed:
    return tls.TlsBed(state.tls["pki"], tuple(sorted(state.tls["addresses"].items())), state.tls["host"])


class Testbed:
    def __init__(self, model: Model, state: State):
        self.model = model
        self.state = state
        self.nodes: dict[str, Host] = {}
        self.ovs: dict[str, OvsInstance] = {}
        self.controller: subprocess.Popen | None = None
        self.replicas: dict[str, subprocess.Popen] = {}

    # ---- build --------------------------------------------------------------------------------------------

    def build(self, controller_target: str | None, metrics: str, replicas: int = 0, with_tls: bool = False) -> None:
        clash = ({s.name for s in self.model.sites} | {INTERNET}) & {e.name for e in self.model.endpoints}
        if clash:
            raise TestbedError(f"names used by both a site and an endpoint: {', '.join(sorted(clash))}")
        for site in self.model.sites:
            self._site(site.name)
        for link in self.model.links:
            self._underlay(*link.sites, link.capacity_mbps)
        if any(site.uplink for site in self.model.sites):
            self._internet()
        for ep in self.model.endpoints:
            self._endpoint(ep)
        if with_tls:
            self._management(replicas)
        if replicas:
            self._start_replicas(replicas)
            return
        target = controller_target or self._start_controller(metrics)
        self.state.controller.setdefault("target", target)
        self.state.save()

    def _site(self, name: str) -> None:
        node = Host(name, inNamespace=True)
        self.nodes[name] = node
        rundir = site_rundir(self.model, name)
        self.state.sites[name] = {"pid": node.pid, "rundir": rundir}
        self.state.save()
        node.cmd("ip link set lo up; sysctl -qw net.ipv6.conf.all.disable_ipv6=1")
        ovs = OvsInstance(rundir, run=node.cmd)
        ovs.start()
        self.ovs[name] = ovs
        site = self.model.site(name)
        ovs.vsctl("add-br", UNDERLAY_BRIDGE, "--", "set", "bridge", UNDERLAY_BRIDGE, "datapath_type=netdev",
                  "fail_mode=secure", f"other-config:hwaddr={underlay_mac(name)}")
        # One prefix that covers every tunnel endpoint: the kernel (and OVS's route table, which copies it)
        # then has a route to each peer through br-phy, with this site's address as the source.
        node.cmd(vtep_address_command(self.model, name))
        # The integration bridge is the hypervisor's, as on a real host: we plug endpoints into it; the
        # controller owns its flows, controller target and tunnel ports.
        ovs.vsctl("--may-exist", "add-br", site.bridge, "--", "set", "bridge", site.bridge,
                  f"datapath_type={site.datapath}", "fail_mode=secure")

    def _underlay(self, a: str, b: str, capacity_mbps: float) -> None:
        Link(self.nodes[a], self.nodes[b], intfName1=underlay_port(b), intfName2=underlay_port(a))
        for me, peer in ((a, b), (b, a)):
            node, ovs, port = self.nodes[me], self.ovs[me], underlay_port(peer)
            peer_vtep = self.model.site(peer).vtep
            node.cmd(f"ethtool -K {port} tx off >/dev/null 2>&1")
            # The htb class's queue takes its length from the device: about BUFFER_S at the link's rate, not
            # veth's 1000 packets (half a second at 20 Mbit/s, longer than BFD's 300 ms detection: a full
            # link would be declared down by its own queue).
            node.cmd(f"ip link set {port} txqueuelen {queue_packets(capacity_mbps)}")
            # OVS owns the root qdisc of its ports (it deletes one set behind its back), so the link's
            # capacity is an OVS linux-htb QoS on the port: htb on the veth, kept by OVS itself.
            rate = int(capacity_mbps * 1e6)
            ovs.vsctl("add-port", UNDERLAY_BRIDGE, port, "--", "set", "port", port, "qos=@q", "--",
                      "--id=@q", "create", "qos", "type=linux-htb", f"other-config:max-rate={rate}")
            plug_underlay(ovs, peer, str(peer_vtep))

    def _internet(self) -> None:
        """A shared namespace with a bridge that each site's uplink port plugs into, and a server address on
        it; direct-mode segments are routed to it on-link."""
        node = Host(INTERNET, inNamespace=True)
        self.nodes[INTERNET] = node
        self.state.others[INTERNET] = node.pid
        self.state.save()
        node.cmd(f"sysctl -qw net.ipv6.conf.all.disable_ipv6=1; ip link set lo up; "
                 f"ip link add {INTERNET_BRIDGE} type bridge; ip link set {INTERNET_BRIDGE} up; "
                 f"ip addr add {INTERNET_SERVER}/{INTERNET_PREFIX} dev {INTERNET_BRIDGE}")
        for seg in self.model.segments:
            if seg.mode == "direct":
                node.cmd(f"ip route add {seg.subnet} dev {INTERNET_BRIDGE}")
        for site in self.model.sites:
            if not site.uplink:
                continue
            outside = ("in-" + site.name)[:15]
            Link(self.nodes[site.name], node, intfName1=site.uplink, intfName2=outside)
            node.cmd(f"ip link set {outside} master {INTERNET_BRIDGE} up; ethtool -K {outside} tx off >/dev/null 2>&1")
            self.nodes[site.name].cmd(f"ip link set {site.uplink} up; ethtool -K {site.uplink} tx off >/dev/null 2>&1")
            self.ovs[site.name].vsctl("--may-exist", "add-port", site.bridge, site.uplink)

    def _endpoint(self, ep) -> None:
        seg = self.model.segment(ep.segment)
        host = Host(ep.name, inNamespace=True)
        self.nodes[ep.name] = host
        self.state.hosts[ep.name] = host.pid
        self.state.save()
        site_node = self.nodes[ep.site]
        Link(host, site_node, intfName1="eth0", intfName2=ep.port)
        host.cmd(f"sysctl -qw net.ipv6.conf.all.disable_ipv6=1; ip link set lo up; "
                 f"ip link set eth0 address {ep.mac} mtu {HOST_MTU}; "
                 f"ip addr flush dev eth0; ip addr add {ep.ip}/{seg.subnet.prefixlen} dev eth0; "
                 f"ip link set eth0 up; ethtool -K eth0 tx off >/dev/null 2>&1")
        site_node.cmd(f"ip link set {ep.port} mtu {HOST_MTU} up; ethtool -K {ep.port} tx off >/dev/null 2>&1")
        if seg.mode == "direct":  # straight onto the uplink network: everything there is on-link
            host.cmd("ip route add default dev eth0")
        elif seg.mode == "nat":  # the site's switch answers as the segment's gateway
            host.cmd(f"ip route add default via {seg.gateway} dev eth0")
        self.ovs[ep.site].vsctl("--may-exist", "add-port", self.model.site(ep.site).bridge, ep.port)

    def _management(self, replicas: int) -> None:
        """--tls: the PKI, the management network, each switch's TLS; the file's ovsdb: become ssl:."""
        from cloudweave.config import load_model

        names = ("operator", *(f"r{i + 1}" for i in range(replicas))) if replicas else ("operator", "controller")
        sites = {s.name: self.nodes[s.name] for s in self.model.sites}
        bed, node = tls.build(self.state.workdir, sites, self.ovs, names, self.state.others)
        self.nodes[tls.MGMT] = node
        self.state.tls = {"pki": bed.pki, "addresses": dict(bed.addresses), "host": bed.host}
        self.state.save()
        tls.point_ovsdb(self.state.topology, bed)
        self.model = load_model(self.state.topology)[0]

    def _start_controller(self, metrics: str) -> str:
        log = os.path.join(self.state.workdir, "controller.log")
        if self.state.tls:
            host = self.state.tls["host"]
            target = f"ssl:{host}:{free_port(host)}"
            argv = [*PYTHON_M, "cloudweave", "run", self.state.topology, "--listen", target,
                    *tls.tls_args(tls_bed(self.state), "controller"), "--metrics", metrics,
                    "--state", os.path.join(self.state.workdir, "te-state.json")]
            with open(log, "wb") as fh:
                self.controller = subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
            self.state.controller = {"pid": self.controller.pid, "target": target, "log": log}
            self.state.save()
            return target
        sock = os.path.join(self.state.workdir, "controller.sock")
        # OVS connects only to unix sockets inside its own run directory: link ours into each site's.
        for site in self.model.sites:
            link = os.path.join(site_rundir(self.model, site.name), SITE_CONTROLLER_SOCK)
            if os.path.lexists(link):
                os.unlink(link)
            os.symlink(sock, link)
        argv = [*PYTHON_M, "cloudweave", "run", self.state.topology, "--listen", f"unix:{sock}",
                "--switch-target", "unix:{ovsdb_dir}/" + SITE_CONTROLLER_SOCK, "--metrics", metrics,
                "--state", os.path.join(self.state.workdir, "te-state.json")]
        with open(log, "wb") as fh:
            self.controller = subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
        self.state.controller = {"pid": self.controller.pid, "target": f"unix:{sock}", "log": log}
        self.state.save()
        return f"unix:{sock}"

    def _start_replicas(self, count: int) -> None:
        """A 3-member store on this host and `count` controller replicas, each on a unix socket of its own
        that every site's bridge lists (docs/replicas.md). The first imports the topology into the store."""
        from cloudweave.store import cluster

        store_dir = os.path.join(self.state.workdir, "store")
        if os.path.exists(store_dir):
            import shutil

            shutil.rmtree(store_dir)  # a new test bed starts with a new store
        self.state.store = {"members": [os.path.join(store_dir, f"s{i + 1}") for i in range(3)], "remotes": ""}
        self.state.save()
        members = cluster.local_cluster(store_dir, 3, pki_dir=self.state.tls.get("pki"),
                                        operators=("operator", "r1") if self.state.tls else ())
        self.state.store["remotes"] = ",".join(m.remote for m in members)
        self.state.save()
        for i in range(count):
            self.start_replica(f"r{i + 1}", import_file=i == 0)

    def start_replica(self, name: str, import_file: bool = False) -> subprocess.Popen:
        proc = start_replica(self.state, self.model, name, import_file)
        self.replicas[name] = proc
        return proc

    def quarantine_list(self) -> tuple:
        """The quarantine list in force: the store's with replicas, else the file beside the topology."""
        from cloudweave.secops import quarantine
        from cloudweave.secops.stored import StoredList

        if not self.state.store:
            return quarantine.load(paths.default_quarantine_path(self.state.topology))
        if self.state.tls:
            from cloudweave.store.client import use_tls

            use_tls(*tls_bed(self.state).files("operator"))
        lst = StoredList(self.state.store["remotes"], "testbed")
        try:
            return lst.load()
        finally:
            lst.close()

    def wait_for_flows(self, timeout_s: float = 90.0) -> None:
        """Return once every site's bridge holds exactly its compiled flows (by count of our cookies)."""
        from cloudweave.secops import quarantine

        cut_off = quarantine.active(self.quarantine_list())
        want = {s.name: len(compile_site(self.model, s.name, quarantined=cut_off).flows) for s in self.model.sites}
        deadline = time.monotonic() + timeout_s
        have: dict[str, int] = {}
        while time.monotonic() < deadline:
            if self.controller is not None and self.controller.poll() is not None:
                said = _last_error(self.state.controller["log"])
                raise TestbedError(f"the controller exited ({self.controller.returncode})"
                                   f"{': ' + said if said else ''}; see {self.state.controller['log']}")
            for name, proc in self.replicas.items():
                if proc.poll() is not None:
                    log = self.state.replicas[name]["log"]
                    said = _last_error(log)
                    raise TestbedError(f"replica {name} exited ({proc.returncode}){': ' + said if said else ''}; "
                                       f"see {log}")
            have = {s: self.flow_count(s) for s in want}
            if have == want:
                return
            time.sleep(0.2)
        raise TestbedError(f"flows not in place after {timeout_s:.0f} s: want {want}, have {have}")

    def flow_count(self, site: str) -> int:
        bridge = self.model.site(site).bridge
        try:
            out = self.ovs[site].ofctl("dump-flows", bridge, f"cookie={OWNER:#x}/{OWNER_MASK:#x}")
        except RuntimeError:
            return -1
        return sum(1 for line in out.splitlines() if "cookie=" in line)

    # ---- tear down ----------------------------------------------------------------------------------------

    def teardown(self) -> None:
        for proc in [self.controller, *self.replicas.values()]:
            if proc is not None and proc.poll() is None:
                kill(proc.pid, signal.SIGCONT)  # a test may have frozen it
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
        own = {p.pid for p in self.replicas.values()}
        for r in self.state.replicas.values():  # replicas that someone else started again (a benchmark, a test)
            if r["pid"] not in own and alive(r["pid"]):
                kill(r["pid"], signal.SIGCONT)
                kill(r["pid"], signal.SIGTERM)
                deadline = time.monotonic() + 10
                while alive(r["pid"]) and time.monotonic() < deadline:
                    time.sleep(0.05)
                kill(r["pid"], signal.SIGKILL)
        if self.state.store:
            from cloudweave.store import cluster

            for d in self.state.store["members"]:
                if os.path.exists(os.path.join(d, "member.json")):
                    cluster.stop(cluster.load(d))
        for ovs in self.ovs.values():
            ovs.stop()
        for node in self.nodes.values():
            try:
                node.terminate()
            except Exception:  # noqa: BLE001 - keep tearing down the rest
                kill(node.pid, 9)
