"""`testbed up --tls`: the sites as if on other hosts. A PKI made for the run; a management network (a bridge
in a namespace of its own, joining every site's namespace and this host's, where the controllers run); each
site's switch connects to the controllers over `ssl:` on it and serves its OVSDB on `pssl:` there; the
topology file's `ovsdb:` of each site becomes that TLS address (the test bed itself keeps using each
instance's unix socket, from the state file). With replicas the store runs with TLS and RBAC too.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from dataclasses import dataclass
from typing import Any

import yaml
from mininet.link import Link
from mininet.node import Host

from cloudweave import pki
from cloudweave.testbed.ovs import OvsInstance

MGMT = "mgmt"  # the management network's namespace (in the state file's `others`)
MGMT_BRIDGE = "mbr"
MGMT_NETS = "10.253."  # each test bed takes a free 10.253.X.0/24: sites .1 up, this host .254
OVSDB_PORT = 6640


@dataclass(frozen=True)
class TlsBed:
    pki: str  # the run's CA and every certificate
    addresses: tuple[tuple[str, str], ...]  # site -> its management address
    host: str  # this host's management address, where the controllers listen

    def files(self, name: str) -> tuple[str, str, str]:
        return (os.path.join(self.pki, f"{name}-key.pem"), os.path.join(self.pki, f"{name}-cert.pem"),
                pki.ca_paths(self.pki)[1])

    def ovsdb(self, site: str) -> str:
        return f"ssl:{dict(self.addresses)[site]}:{OVSDB_PORT}"


def host_link_name(workdir: str) -> str:
    """This host's end of the management link: unique per test bed (several may run on one host)."""
    return "cwmg" + hashlib.blake2b(os.path.abspath(workdir).encode(), digest_size=5).hexdigest()


def free_network() -> str:
    """`10.253.X.` of a /24 that no interface of this host is on (two test beds may run at once)."""
    used = subprocess.run(["ip", "-o", "-4", "addr"], capture_output=True, text=True).stdout
    for x in range(256):
        if f" {MGMT_NETS}{x}." not in used:
            return f"{MGMT_NETS}{x}."
    raise RuntimeError(f"no free {MGMT_NETS}X.0/24 for a management network")


def build(workdir: str, sites: dict[str, Host], ovs: dict[str, OvsInstance], names: tuple[str, ...],
          others: dict[str, int]) -> tuple[TlsBed, Host]:
    """The PKI (a site certificate per site, one per name in `names`: the controllers and an operator), the
    management network, each switch's TLS files and OVSDB listener."""
    d = os.path.join(workdir, "pki")
    if not os.path.exists(pki.ca_paths(d)[0]):
        pki.init(d)
    for site in sites:
        pki.issue(d, site, "site")
    for name in names:
        pki.issue(d, name, "operator" if name == "operator" else "replica")
    node = Host(MGMT, inNamespace=True)
    others[MGMT] = node.pid
    node.cmd(f"sysctl -qw net.ipv6.conf.all.disable_ipv6=1; ip link set lo up; ip link add {MGMT_BRIDGE} type bridge; "
             f"ip link set {MGMT_BRIDGE} up")
    net = free_network()
    addresses = []
    for i, (site, site_node) in enumerate(sorted(sites.items()), start=1):
        ip = f"{net}{i}"
        there = ("mg-" + site)[:15]
        Link(site_node, node, intfName1="mg0", intfName2=there)
        node.cmd(f"ip link set {there} master {MGMT_BRIDGE} up")
        site_node.cmd(f"ip addr add {ip}/24 dev mg0; ip link set mg0 up")
        addresses.append((site, ip))
    here = host_link_name(workdir)
    os.system(f"ip link del {here} 2>/dev/null")  # a crashed earlier bed's end
    if os.system(f"ip link add {here} type veth peer name mg-host netns {node.pid}") != 0:
        raise RuntimeError(f"cannot create the management link {here}")
    node.cmd(f"ip link set mg-host master {MGMT_BRIDGE} up")
    os.system(f"ip addr add {net}254/24 dev {here}; ip link set {here} up")
    bed = TlsBed(d, tuple(addresses), f"{net}254")
    for site in sites:
        key, cert, ca = bed.files(site)
        ovs[site].vsctl("set-ssl", key, cert, ca)
        ovs[site].vsctl("set-manager", f"pssl:{OVSDB_PORT}:{dict(addresses)[site]}")
    return bed, node


def point_ovsdb(topology: str, bed: TlsBed) -> None:
    """Each site's `ovsdb:` in the topology file becomes its TLS address on the management network."""
    with open(topology) as fh:
        doc: dict[str, Any] = yaml.safe_load(fh)
    for name, _ in bed.addresses:
        if name not in doc.get("sites", {}):
            raise RuntimeError(f"site {name} is defined in an included file: --tls rewrites only {topology}")
        doc["sites"][name]["ovsdb"] = bed.ovsdb(name)
    tmp = topology + ".tmp"
    with open(tmp, "w") as fh:
        yaml.safe_dump(doc, fh, sort_keys=False)
    os.replace(tmp, topology)


def tls_args(bed: TlsBed, name: str) -> list[str]:
    key, cert, ca = bed.files(name)
    return ["--private-key", key, "--certificate", cert, "--ca-cert", ca]
