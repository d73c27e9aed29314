"""The replicated test bed's traffic and checks, shared by tests/e2e/test_replicas.py, bench/chaos.py and
bench/failover_ha.py: a 5 ms ping, a sequenced UDP stream through a weighted route, an open TCP connection and
NAT egress (`Traffic`), the store's owners, each site's flows, the roles OVS reports (`RoleWatch`)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time

from cloudweave.flows import cookies
from cloudweave.store.shards import site_shards
from cloudweave.testbed.build import INTERNET, INTERNET_SERVER
from cloudweave.testbed.state import State
from cloudweave.testbed.traffic import LOAD, ns_argv, stop
from testkit.harness import store_rows, wait_for

SITES = ("cloud1", "cloud2", "onprem")
LAB2 = "10.10.0.12"  # lab2 at cloud2; lab1 is at onprem (segment lab: NAT mode, default allow)
TCP_PORT, UDP_PORT, NAT_PORT = 7000, 5001, 6001  # 5001: route `realtime`, split: auto (a select group)
SECONDS = 9.0
ECHO_SERVER = """
import socket, threading
srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("0.0.0.0", %d)); srv.listen(4); print("ready", flush=True)
def echo(c):
    while (data := c.recv(4096)):
        c.sendall(data)
while True:
    threading.Thread(target=echo, args=(srv.accept()[0],), daemon=True).start()
"""
TCP_CLIENT = """
import socket, sys, time
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
sent = got = 0; end = time.monotonic() + float(sys.argv[3]); buf = b""
while time.monotonic() < end:
    s.sendall(b"%06d\\n" % sent); sent += 1
    while got < sent:
        buf += s.recv(4096); got = buf.count(b"\\n")
    time.sleep(0.02)
print(sent, got)
"""


def with_gateways(doc: dict) -> None:
    """NAT egress needs a gateway: the test bed's internet server is every uplink's."""
    for site in doc["sites"].values():
        site["uplink_gateway"] = INTERNET_SERVER


def rows(workdir: str, table: str) -> list[dict]:
    return store_rows(State.load(workdir).store["remotes"], table)


def owners(workdir: str) -> dict[str, tuple[str, int]]:
    shards = {r["name"]: r for r in rows(workdir, "Shard")}
    return {site: (shards[sh]["owner"], shards[sh]["generation"])
            for site, sh in site_shards(SITES, len(shards)).items()}


def replica_log(workdir: str, name: str) -> str:
    with open(State.load(workdir).replicas[name]["log"], errors="replace") as fh:
        return fh.read()


TE_KINDS = {cookies.KINDS[k] for k in ("route", "route_relay", "transit")}


def flows(workdir: str, site: str) -> list[str]:
    """The site's flows but those of traffic-engineered paths, which follow the learned matrix (the UDP stream
    itself moves them): a failover must change none of the others."""
    rundir = State.load(workdir).sites[site]["rundir"]
    out = subprocess.run(["ovs-ofctl", "-O", "OpenFlow15", "dump-flows", f"unix:{rundir}/br-int.mgmt", "--no-stats",
                          "cookie=0xc10d000000000000/0xffff000000000000"], capture_output=True, text=True).stdout
    kept = []
    for ln in out.splitlines():
        m = re.search(r"cookie=(0x[0-9a-f]+)", ln)
        if m and (int(m.group(1), 16) >> cookies.KIND_SHIFT) & 0xFF not in TE_KINDS:
            kept.append(ln.strip())
    return sorted(kept)


class RoleWatch(threading.Thread):
    """Samples every bridge's Controller.role (OVS's own view) until stopped; the most masters seen at once."""

    def __init__(self, workdir: str):
        super().__init__(daemon=True)
        self.rundirs = {s: State.load(workdir).sites[s]["rundir"] for s in SITES}
        self.most = {s: 0 for s in SITES}
        self.samples = 0
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            for site, rundir in self.rundirs.items():
                out = subprocess.run(["ovs-vsctl", f"--db=unix:{rundir}/db.sock", "--data=bare", "--no-headings",
                                      "--columns=role", "list", "Controller"], capture_output=True, text=True).stdout
                self.most[site] = max(self.most[site], out.split().count("master"))
            self.samples += 1
            time.sleep(0.1)


class Traffic:
    """A 5 ms ping lab1 -> lab2, a UDP stream with sequence numbers through a weighted route, an open TCP
    connection lab1 -> lab2 and NAT egress lab1 -> the internet server, for SECONDS."""

    def __init__(self, workdir: str):
        self.workdir = workdir
        self.servers = [
            self._ready("lab2", [sys.executable, "-c", ECHO_SERVER % TCP_PORT]),
            self._ready("lab2", [*LOAD, "stampsink", str(UDP_PORT), "--seconds", str(SECONDS + 4)]),
            self._ready(INTERNET, [*LOAD, "stampsink", str(NAT_PORT), "--seconds", str(SECONDS + 4)]),
        ]
        run = lambda *argv: subprocess.Popen(ns_argv(workdir, "lab1", *argv), stdout=subprocess.PIPE,  # noqa: E731
                                             stderr=subprocess.STDOUT, text=True)
        # Neighbours resolved first: a new stream's first packets wait in the kernel's ARP queue, which drops
        # the oldest past its size: a 500 pps stream started cold lost its first 46-348 packets (0.1-0.7 s of
        # resolution) in about one run in four, seconds before the kill this test is about.
        for dst in (LAB2, INTERNET_SERVER):
            subprocess.run(ns_argv(workdir, "lab1", "ping", "-c", "3", "-i", "0.2", "-W", "2", dst),
                           capture_output=True, timeout=30)
        count = int(SECONDS / 0.005)
        self.ping = run("ping", "-D", "-i", "0.005", "-c", str(count), "-W", "1", LAB2)
        self.udp = run(*LOAD, "stamped", LAB2, str(UDP_PORT), "--pps", "500", "--seconds", str(SECONDS),
                       "--sport", "40500")
        self.nat = run(*LOAD, "stamped", INTERNET_SERVER, str(NAT_PORT), "--pps", "200", "--seconds", str(SECONDS),
                       "--sport", "40600")
        self.tcp = run(sys.executable, "-c", TCP_CLIENT, LAB2, str(TCP_PORT), str(SECONDS))

    def _ready(self, host: str, argv: list[str]) -> subprocess.Popen:
        p = subprocess.Popen(ns_argv(self.workdir, host, *argv), stdout=subprocess.PIPE, text=True)
        assert p.stdout.readline().strip() == "ready", f"server in {host} did not start"
        return p

    def results(self) -> dict[str, str]:
        """Wait for every stream; what each lost, as text for the assertion message."""
        ping = self.ping.communicate(timeout=SECONDS + 20)[0]
        m = re.search(r"(\d+) packets transmitted, (\d+) received", ping)
        out = {"ping": f"{int(m.group(1)) - int(m.group(2))} of {m.group(1)} lost" if m else ping[-300:]}
        tcp = self.tcp.communicate(timeout=SECONDS + 20)[0].split()
        out["tcp"] = f"{int(tcp[0]) - int(tcp[1])} of {tcp[0]} lost" if len(tcp) == 2 and tcp[0].isdigit() else \
            f"connection failed: {' '.join(tcp)[-300:]}"
        for name, sender, sink in (("udp", self.udp, self.servers[1]), ("nat", self.nat, self.servers[2])):
            sent = json.loads(sender.communicate(timeout=SECONDS + 20)[0])["sent"]
            got = {seq for seq, _ in json.loads(sink.communicate(timeout=20)[0])["received"]}
            out[name] = f"{len(set(range(sent)) - got)} of {sent} lost"
        stop(self.servers)
        return out


def same_flows(before: dict[str, list[str]], after: dict[str, list[str]]) -> dict[str, tuple]:
    """What differs, site by site: (only before, only after)."""
    return {s: (sorted(set(before[s]) - set(after[s])), sorted(set(after[s]) - set(before[s])))
            for s in before if before[s] != after[s]}


def lossless(results: dict[str, str]) -> bool:
    return all(v.startswith("0 of ") for v in results.values())


def nat_ready(workdir: str) -> None:
    """NAT egress needs every master to have learned (or read from the store) its gateway's MAC."""
    wait_for(lambda: {r["site"] for r in rows(workdir, "NextHop")} >= {"onprem", "cloud2"}, 30,
             what="next hops of the NAT sites in the store")
