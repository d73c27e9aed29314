"""OpenFlow over mutual TLS (#25) against real ovs-vswitchd instances: the controller runs in east's network
namespace and listens on ssl: on a management link (a veth between east's and west's namespaces); each
switch has its site's key and certificate (`cloudweave pki`, set with ovs-vsctl set-ssl). Both switches are
programmed over TLS and an edit reaches them; what crosses the management link carries no flow in cleartext;
a cleartext client, a client whose certificate another CA signed, and a switch with west's certificate that
announces east's dpid are each refused, the last with a line naming both."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid

import pytest
import yaml

from cloudweave import pki
from cloudweave.config import load_model
from cloudweave.store.cluster import free_port
from testkit.harness import ROOT, Controller, OvsSites, wait_for
from tests.ovs.test_wire import NAT, edit_reaches, programmed

pytestmark = pytest.mark.ovs
EAST_IP, WEST_IP = "10.254.0.1", "10.254.0.2"
OVSDB_PORT = 6640


@pytest.fixture
def tls_sites(tmp_path):
    sites = OvsSites(NAT, str(tmp_path))
    east, west = sites.instances["east"].netns, sites.instances["west"].netns
    tag = uuid.uuid4().hex[:6]
    try:
        subprocess.run(["ip", "link", "add", f"cwm{tag}e", "type", "veth", "peer", "name", f"cwm{tag}w"], check=True)
        for ns, dev, ip in ((east, f"cwm{tag}e", EAST_IP), (west, f"cwm{tag}w", WEST_IP)):
            subprocess.run(["ip", "link", "set", dev, "netns", ns], check=True)
            subprocess.run(["ip", "netns", "exec", ns, "sh", "-c", f"ip link set lo up; ip addr add {ip}/30 dev {dev}; "
                            f"ip link set {dev} up"], check=True)
        d = str(tmp_path / "pki")
        pki.init(d)
        for site in ("east", "west"):
            issued = pki.issue(d, site, "site")
            sites.instances[site].vsctl("set-ssl", issued.key, issued.cert, issued.ca)
        # west's OVSDB too is reached across the management link, over TLS with the same certificate
        sites.instances["west"].vsctl("set-manager", f"pssl:{OVSDB_PORT}:{WEST_IP}")
        with open(sites.config) as fh:
            doc = yaml.safe_load(fh)
        doc["sites"]["west"]["ovsdb"] = f"ssl:{WEST_IP}:{OVSDB_PORT}"
        with open(sites.config, "w") as fh:
            yaml.safe_dump(doc, fh, sort_keys=False)
        yield sites, d, f"cwm{tag}w"
    finally:
        sites.stop()  # the namespaces go, and the veth with them


def in_ns(ns: str, *argv: str, timeout: float = 30) -> str:
    out = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-m", "testkit.tls_peer", *argv],
                         capture_output=True, text=True, cwd=ROOT, timeout=timeout)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.strip()


def test_openflow_over_mutual_tls_serves_the_sites_and_refuses_everyone_else(tls_sites, tmp_path):
    sites, d, mgmt_west = tls_sites
    east_ns, west_ns = sites.instances["east"].netns, sites.instances["west"].netns
    ctl_files = pki.issue(d, "ctl", "replica")
    port = free_port()
    listen = f"ssl:{EAST_IP}:{port}"
    argv = ["ip", "netns", "exec", east_ns, sys.executable, "-m", "cloudweave", "run", sites.config,
            "--listen", listen, "--private-key", ctl_files.key, "--certificate", ctl_files.cert,
            "--ca-cert", ctl_files.ca, "--metrics", "off"]
    # What crosses the management link while the controller starts: west's OVSDB session (the bridge, its
    # ports, the tunnel) and its OpenFlow session, both in TLS records; never a name in clear.
    start_capture = str(tmp_path / "start.frames")
    sniffer = subprocess.Popen(["ip", "netns", "exec", west_ns, sys.executable, "-m", "testkit.tls_peer",
                                "sniff", mgmt_west, "8", start_capture], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    time.sleep(1.0)  # the sniffer is listening
    ctl = Controller(sites.config, sites.workdir, [], argv).start()
    try:
        programmed(sites, ctl)  # both switches, over TLS (west's across the management link)
        said = sniffer.communicate(timeout=30)[0].strip()
        frames = open(start_capture, "rb").read()
        assert int(said.split()[1]) > 0 and b"\x17\x03\x03" in frames, said
        assert b"br-int" not in frames and b"Open_vSwitch" not in frames and b"monitor" not in frames
        assert "ovsdb ssl:" not in ctl.log() and "Traceback" not in ctl.log()
        wait_for(lambda: sites.instances["west"].vsctl("--bare", "--columns=is_connected", "list",
                                                       "manager").strip() == "true", 10,
                 what="the controller's OVSDB session at west's manager")
        targets = {s: o.vsctl("get", "controller", "br-int", "target").strip() for s, o in sites.instances.items()}
        assert set(targets.values()) == {f'"{listen}"'}, targets
        assert "Traceback" not in ctl.log()

        # What crosses the management link while an edit reaches west: TLS records, never the flow in clear.
        capture = str(tmp_path / "mgmt.frames")
        sniffer = subprocess.Popen(["ip", "netns", "exec", west_ns, sys.executable, "-m", "testkit.tls_peer",
                                    "sniff", mgmt_west, "4", capture], cwd=ROOT, stdout=subprocess.PIPE, text=True)
        time.sleep(1.0)  # the sniffer is listening
        took = edit_reaches(sites, "02:00:00:51:0a:7b")
        said = sniffer.communicate(timeout=30)[0].strip()
        frames = open(capture, "rb").read()
        assert int(said.split()[1]) > 0 and b"\x17\x03\x03" in frames, said  # TLS application data went by
        assert bytes.fromhex("060000510a7b") not in frames  # blue2's new MAC, in west's flow-mods: never in clear
        print(f"edit over TLS reached both sites in {took * 1000:.0f} ms; {said} on the management link")

        # Refused: cleartext; a certificate from another CA; west's certificate announcing east's dpid.
        assert in_ns(east_ns, "plain", EAST_IP, str(port)) == "closed"
        other = str(tmp_path / "other-ca")
        pki.init(other)
        stranger = pki.issue(other, "east", "site")
        assert in_ns(east_ns, "tls", EAST_IP, str(port), stranger.key, stranger.cert, ctl_files.ca,
                     hex(sites.model.site("east").dpid)) in ("tls-refused", "closed")
        # west's own key and certificate (valid, of this CA), announcing east's dpid
        west_key, west_cert = os.path.join(d, "west-key.pem"), os.path.join(d, "west-cert.pem")
        dpid = load_model(sites.config)[0].site("east").dpid
        assert in_ns(east_ns, "tls", EAST_IP, str(port), west_key, west_cert, ctl_files.ca, hex(dpid)) == "closed"
        wait_for(lambda: f"switch {dpid:#x}: it announces site east's dpid but presents a site certificate for "
                 "west; refused" in ctl.log(), 5, what="the impostor's refusal, naming both")
        took = edit_reaches(sites, "02:00:00:51:0a:7c")  # the real switches still hold their sessions
        assert took < 2.0, f"{took:.2f} s"
    finally:
        ctl.stop()
