"""The OpenFlow fuzzer's phases and invariants, shared by tests/ovs/test_openflow_fuzz.py (a short run in CI)
and bench/openflow_fuzz.py (a long one). The controller runs on nat.yaml's two real sites; the fuzzer connects
to its socket as switches of its own: before any HELLO, after the handshake as an unknown dpid, and as a known
one (site west, whose real ovs-vswitchd is stopped meanwhile). After each phase the invariants: the process
alive, a real edit on the real switch east within 1 s, RSS and threads within bounds, and no traceback in the
log but the handler guard's own.
"""

from __future__ import annotations

import os
import random
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from testkit import ofpeer
from testkit.harness import rewrite_topology, wait_for

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAT = os.path.join(ROOT, "topologies", "nat.yaml")
RSS_BOUND_MB = 150  # above the baseline after a phase
THREAD_BOUND = 20  # above the baseline after a phase (settled)
EDIT_BOUND_S = 1.0


def proc_status(pid: int) -> dict[str, int]:
    with open(f"/proc/{pid}/status") as fh:
        kv = dict(ln.split(":", 1) for ln in fh if ":" in ln)
    return {"rss_mb": int(kv["VmRSS"].split()[0]) // 1024, "threads": int(kv["Threads"]),
            "fds": len(os.listdir(f"/proc/{pid}/fd"))}


def stray_tracebacks(log: str) -> list[str]:
    """Tracebacks not preceded by the handler guard's own line (a bug of ours, not a peer's doing)."""
    lines = log.splitlines()
    return ["\n".join(lines[max(0, i - 2):i + 12]) for i, line in enumerate(lines) if line.startswith("Traceback")
            and "raised; it is dropped and the controller goes on" not in (lines[i - 1] if i else "")]


class EditProbe:
    """Edits of the NAT topology's red1 MAC (at east): seconds until east's switch holds the new one."""

    def __init__(self, config: str, rundirs: dict[str, str], east_flows: Callable[[], list[str]]):
        self.config, self.rundirs, self.east_flows = config, rundirs, east_flows
        self.n = 0

    def __call__(self, timeout_s: float = 10.0) -> float:
        self.n += 1
        mac = f"02:00:00:51:{(self.n >> 8) & 0xFF:02x}:{self.n & 0xFF:02x}"
        rewrite_topology(NAT, self.config, self.rundirs, edit=lambda doc: doc["endpoints"]["red1"].update(mac=mac))
        t0 = time.monotonic()
        wait_for(lambda: mac in "\n".join(self.east_flows()), timeout_s, interval_s=0.01, what=f"edit {mac} at east")
        return time.monotonic() - t0


@dataclass
class Fuzzer:
    target: str | tuple[str, int]  # the controller's socket
    rng: random.Random
    scale: int  # messages per kind of a phase
    known: tuple[int, list[tuple[int, str]]]  # (dpid, ports) of the site the fuzzer may play
    results: list[dict] = field(default_factory=list)

    # ---- phases: each returns what it sent ----

    def garbage(self) -> str:
        n = self.scale
        for i in range(n):
            try:
                s = ofpeer.connect(self.target)
                s.sendall(bytes(self.rng.getrandbits(8) for _ in range(self.rng.randrange(1, 200))) if i % 3 else
                          struct.pack("!BBHI", self.rng.choice([0, 6, 0xFF]), self.rng.randrange(256),
                                      self.rng.randrange(0, 8), i))
                s.close()
            except OSError:
                pass
        return f"{n} connections: random bytes, or a header with length < 8, before any HELLO"

    def huge(self) -> str:
        socks = []
        for i in range(min(50, self.scale)):
            try:
                s = ofpeer.connect(self.target)
                s.sendall(ofpeer.header(ofpeer.T["HELLO"], 65535, i) + b"\0" * 100)  # claims 64 KiB, stalls
                socks.append(s)
            except OSError:
                pass
        s = ofpeer.handshake(self.target, 0xB16)
        ofpeer.drain(s)
        s.sendall(ofpeer.header(ofpeer.T["PACKET_IN"], 65535, 1) + os.urandom(65535 - 8))
        time.sleep(1.0)
        for x in socks:
            x.close()
        s.close()
        return f"{len(socks)} stalled 64 KiB HELLOs, one 64 KiB garbage packet-in"

    def unknown(self) -> str:
        sent = reconnects = 0
        for k in range(len(ofpeer.KINDS)):
            a, b = ofpeer.send_stream(self.target, 0xBAD0 + k, ofpeer.bogus_messages(self.rng, self.scale, (k,)))
            sent, reconnects = sent + a, reconnects + b
        return f"{sent} malformed messages of {len(ofpeer.KINDS)} kinds as unknown dpids ({reconnects} reconnects)"

    def known_dpid(self) -> str:
        """As the known site: a real session is made for it; malformed and mutated messages, and mutated
        answers to the session's own requests; a connection the controller closes is made again."""
        dpid, ports = self.known
        valid = [ofpeer.port_status(2, ofpeer.port(1, ports[0][1])), ofpeer.multipart_reply(1, b"", 7),
                 ofpeer.packet_in(b"\0" * 60, 1), ofpeer.message(ofpeer.T["BARRIER_REPLY"], b"", 9)]
        msgs = ofpeer.bogus_messages(self.rng, self.scale * 2)
        msgs += [ofpeer.mutate(self.rng, self.rng.choice(valid)) for _ in range(self.scale)]
        self.rng.shuffle(msgs)
        sent = reconnects = mutated = 0
        fake = None
        try:
            for raw in msgs:
                if fake is None or fake.closed.is_set():
                    if fake is not None:
                        mutated += fake.mutated
                        fake.close()
                        reconnects += 1
                    fake = _MutatingSwitch(self.target, dpid, ports, self.rng)
                    wait_for(lambda f=fake: f.in_main.is_set() or f.closed.is_set(), 10.0,
                             what="the session's first request")
                try:
                    fake.send(raw)
                    sent += 1
                except OSError:
                    fake.closed.set()
                time.sleep(0.002)
            time.sleep(1.0)
        finally:
            if fake is not None:
                mutated += fake.mutated
                fake.close()
        return (f"as known dpid {dpid:#x}: {sent} malformed or mutated messages ({reconnects} reconnects), "
                f"{mutated} mutated replies")

    def _as_known(self, msgs: list[bytes]) -> int:
        """Send `msgs` as the known site (an unknown dpid is closed at once); how many went."""
        dpid, ports = self.known
        fake = ofpeer.FakeSwitch(self.target, dpid, ports)
        sent = 0
        try:
            wait_for(lambda: fake.in_main.is_set() or fake.closed.is_set(), 10.0, what="the session's first request")
            for raw in msgs:
                try:
                    fake.send(raw)
                    sent += 1
                except OSError:
                    break
            time.sleep(0.5)
        finally:
            fake.close()
        return sent

    def errors(self) -> str:
        n = self.scale * 20
        sent = self._as_known([ofpeer.message(ofpeer.T["ERROR"], struct.pack("!HH", i % 18, i) + b"x" * 8,
                                              0x7000_0000 + i) for i in range(n)])
        return f"{sent} OpenFlow errors of distinct (type, code), as the known dpid"

    def portstatus(self) -> str:
        n = self.scale * 20
        sent = self._as_known([ofpeer.port_status(0, ofpeer.port(1000 + i, os.urandom(15))) for i in range(n)])
        return f"{sent} port-status adds with names not UTF-8, as the known dpid"

    def churn(self) -> str:
        n = self.scale * 4
        for i in range(n):
            try:
                s = ofpeer.connect(self.target)
                s.recv(8)
                if i % 2:
                    s.sendall(os.urandom(8))
                s.close()
            except OSError:
                pass
            if i % 25 == 24:
                time.sleep(0.02)
        return f"{n} connect, read HELLO, close (half with 8 garbage bytes)"

    def idle(self) -> str:
        socks = []
        for _ in range(self.scale * 2):
            try:
                socks.append(ofpeer.connect(self.target))
            except OSError:
                pass
        time.sleep(1.0)
        for s in socks:
            s.close()
        return f"{len(socks)} connections that never send a byte"

    PHASES = ("garbage", "huge", "unknown", "known_dpid", "errors", "portstatus", "churn", "idle")


class _MutatingSwitch(ofpeer.FakeSwitch):
    """A fake of the known site that now and then answers the session's requests with a mutated reply."""

    def __init__(self, target, dpid, ports, rng: random.Random):
        self.rng, self.mutated = rng, 0
        super().__init__(target, dpid, ports)

    def send(self, data: bytes) -> None:
        t = data[1] if len(data) > 1 else -1
        if t in (ofpeer.T["MULTIPART_REPLY"], ofpeer.T["BARRIER_REPLY"], ofpeer.T["BUNDLE_CONTROL"]) and \
                self.in_main.is_set() and self.rng.random() < 0.3:
            data = ofpeer.mutate(self.rng, data)
            self.mutated += 1
        super().send(data)
