"""Hostile and fake peers for the wire tests: a fake OpenFlow 1.5 switch in raw bytes, seeded generators of
malformed messages, and an IPFIX forger. Stdlib only (what an attacker has); used by tests/ovs/test_wire.py,
tests/ovs/test_openflow_fuzz.py and bench/openflow_fuzz.py.
"""

from __future__ import annotations

import contextlib
import random
import socket
import ssl
import struct
import threading
import time
from collections.abc import Iterable

OFP_VERSION = 6  # OpenFlow 1.5
T = dict(HELLO=0, ERROR=1, ECHO_REQUEST=2, ECHO_REPLY=3, EXPERIMENTER=4, FEATURES_REQUEST=5, FEATURES_REPLY=6,
         PACKET_IN=10, PORT_STATUS=12, PACKET_OUT=13, FLOW_MOD=14, GROUP_MOD=15, MULTIPART_REQUEST=18,
         MULTIPART_REPLY=19, BARRIER_REQUEST=20, BARRIER_REPLY=21, ROLE_REQUEST=24, ROLE_REPLY=25, METER_MOD=29,
         ROLE_STATUS=30, BUNDLE_CONTROL=33, BUNDLE_ADD=34)
NAMES = {v: k for k, v in T.items()}
MP_FLOW_DESC, MP_AGGREGATE, MP_GROUP_DESC, MP_METER_DESC, MP_PORT_DESC = 1, 2, 7, 10, 13
OFPPS_LIVE = 4
OFPMPF_REPLY_MORE = 1


def connect(target: str | tuple[str, int], timeout: float = 5.0, tls: ssl.SSLContext | None = None
            ) -> socket.socket:
    """A unix socket path, or (host, port); over TLS with `tls` (ssl.SSLError: the handshake failed)."""
    if isinstance(target, str):
        # A unix socket's connect fails at once (EAGAIN) while the listener's backlog is full, where TCP would
        # wait: try again until `timeout`.
        deadline = time.monotonic() + timeout
        while True:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(timeout)
            try:
                s.connect(target)
                break
            except BlockingIOError:
                s.close()
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.005)
    else:
        s = socket.create_connection(target, timeout=timeout)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if tls is not None:
        s = tls.wrap_socket(s)
    return s


def header(msg_type: int, length: int, xid: int, version: int = OFP_VERSION) -> bytes:
    return struct.pack("!BBHI", version, msg_type, length, xid)


def message(msg_type: int, body: bytes = b"", xid: int = 0, version: int = OFP_VERSION) -> bytes:
    return header(msg_type, 8 + len(body), xid, version) + body


def port(no: int, name: bytes | str, live: bool = True) -> bytes:
    """struct ofp_port (OF1.4/1.5) without properties: 40 bytes. `name` as raw bytes (up to 15 kept)."""
    raw = name.encode() if isinstance(name, str) else name
    mac = bytes([0x02, 0xAA, 0, 0, (no >> 8) & 0xFF, no & 0xFF])
    return struct.pack("!IH2x6s2x16sII", no, 40, mac, raw[:15], 0, OFPPS_LIVE if live else 0)


def features_reply(dpid: int, xid: int) -> bytes:
    return message(T["FEATURES_REPLY"], struct.pack("!QIBB2xII", dpid, 0, 254, 0, 0x4F, 0), xid)


def multipart_reply(mp_type: int, body: bytes, xid: int, more: bool = False) -> bytes:
    return message(T["MULTIPART_REPLY"], struct.pack("!HH4x", mp_type, OFPMPF_REPLY_MORE if more else 0) + body, xid)


def aggregate_body(flow_count: int) -> bytes:
    """OF1.5 aggregate reply: struct ofp_stats holding OXS flow_count."""
    oxs = struct.pack("!HBBI", 0x8002, 3 << 1, 4, flow_count)
    length = 4 + len(oxs)
    return struct.pack("!HH", 0, length) + oxs + b"\0" * ((8 - length % 8) % 8)


def port_status(reason: int, p: bytes) -> bytes:
    """reason: 0 add, 1 delete, 2 modify."""
    return message(T["PORT_STATUS"], struct.pack("!B7x", reason) + p)


def packet_in(data: bytes, in_port: int, table: int = 0, cookie: int = 0) -> bytes:
    oxm = struct.pack("!HBBI", 0x8000, 0 << 1, 4, in_port)
    match = struct.pack("!HH", 1, 4 + len(oxm)) + oxm
    match += b"\0" * ((8 - len(match) % 8) % 8)
    return message(T["PACKET_IN"], struct.pack("!IHBBQ", 0xFFFFFFFF, len(data), 1, table, cookie) + match + b"\0\0"
                   + data)


def arp_reply(src_mac: str, src_ip: str, dst_mac: str, dst_ip: str) -> bytes:
    mac = lambda m: bytes.fromhex(m.replace(":", ""))  # noqa: E731
    eth = mac(dst_mac) + mac(src_mac) + struct.pack("!H", 0x0806)
    return eth + struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, 2, mac(src_mac), socket.inet_aton(src_ip),
                             mac(dst_mac), socket.inet_aton(dst_ip))


class FakeSwitch:
    """Connects, handshakes as `dpid`, answers what the controller asks (empty tables), records what it sends.
    `endless`: a flow-desc request is answered with parts that all say "more to come", until closed."""

    def __init__(self, target: str | tuple[str, int], dpid: int, ports: Iterable[tuple[int, bytes | str]] = (),
                 endless: bytes | None = None):
        self.dpid, self.ports, self.endless = dpid, list(ports), endless
        self.sock = connect(target, timeout=10)
        self.lock = threading.Lock()
        self.received: list[tuple[float, int, bytes]] = []
        self.in_main = threading.Event()  # the controller asked for something past the handshake
        self.closed = threading.Event()
        self.endless_parts = 0
        self.send(message(T["HELLO"]))
        threading.Thread(target=self._loop, daemon=True).start()

    def send(self, data: bytes) -> None:
        with self.lock:
            self.sock.sendall(data)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self.closed.set()

    def _recv_exact(self, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise EOFError
            buf += chunk
        return buf

    def _loop(self) -> None:
        self.sock.settimeout(None)
        try:
            while True:
                hdr = self._recv_exact(8)
                _, mtype, length, xid = struct.unpack("!BBHI", hdr)
                body = self._recv_exact(length - 8) if length > 8 else b""
                self.received.append((time.time(), mtype, hdr + body))
                self._answer(mtype, xid, body)
        except (EOFError, OSError):
            self.closed.set()

    def _answer(self, mtype: int, xid: int, body: bytes) -> None:
        if mtype == T["FEATURES_REQUEST"]:
            self.send(features_reply(self.dpid, xid))
        elif mtype == T["ECHO_REQUEST"]:
            self.send(message(T["ECHO_REPLY"], body, xid))
        elif mtype == T["MULTIPART_REQUEST"]:
            mp_type = struct.unpack_from("!H", body)[0]
            if mp_type == MP_PORT_DESC:
                self.send(multipart_reply(mp_type, b"".join(port(n, name) for n, name in self.ports), xid))
                return
            self.in_main.set()
            if mp_type == MP_FLOW_DESC and self.endless is not None:
                threading.Thread(target=self._endless, args=(xid,), daemon=True).start()
            elif mp_type == MP_AGGREGATE:
                self.send(multipart_reply(mp_type, aggregate_body(0), xid))
            else:
                self.send(multipart_reply(mp_type, b"", xid))
        elif mtype == T["BARRIER_REQUEST"]:
            self.send(message(T["BARRIER_REPLY"], b"", xid))
        elif mtype == T["ROLE_REQUEST"]:
            self.send(message(T["ROLE_REPLY"], body, xid))
        elif mtype == T["BUNDLE_CONTROL"]:
            bundle_id, ctype, flags = struct.unpack_from("!IHH", body)
            self.send(message(T["BUNDLE_CONTROL"], struct.pack("!IHH", bundle_id, ctype + 1, flags), xid))

    def _endless(self, xid: int) -> None:
        try:
            while not self.closed.is_set():
                self.send(multipart_reply(MP_FLOW_DESC, self.endless or b"", xid, more=True))
                self.endless_parts += 1
        except OSError:
            self.closed.set()

    def count(self, name: str) -> int:
        return sum(1 for _, t, _ in list(self.received) if t == T[name])


def handshake(target: str | tuple[str, int], dpid: int, ports: Iterable[tuple[int, bytes | str]] = (),
              timeout_s: float = 10.0, tls: ssl.SSLContext | None = None) -> socket.socket:
    """A raw connection taken through HELLO, FEATURES and PORT_DESC (in MAIN_DISPATCHER); it then answers
    nothing (drain() reads what comes). A connection the controller refuses at once (a cap on connections
    still in their handshake) is tried again until `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return _handshake(target, dpid, ports, max(0.5, deadline - time.monotonic()), tls)
        except ssl.SSLError:
            raise  # refused by TLS: trying again would be refused again
        except (ConnectionError, OSError):
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.1)


def _handshake(target: str | tuple[str, int], dpid: int, ports: Iterable[tuple[int, bytes | str]],
               timeout_s: float, tls: ssl.SSLContext | None = None) -> socket.socket:
    s = connect(target, tls=tls)
    s.sendall(message(T["HELLO"]))
    buf, deadline = b"", time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        chunk = s.recv(65536)
        if not chunk:
            raise ConnectionError("closed during the handshake")
        buf += chunk
        while len(buf) >= 8:
            _, mtype, length, xid = struct.unpack_from("!BBHI", buf)
            if len(buf) < length:
                break
            body, buf = buf[8:length], buf[length:]
            if mtype == T["FEATURES_REQUEST"]:
                s.sendall(features_reply(dpid, xid))
            elif mtype == T["MULTIPART_REQUEST"] and struct.unpack_from("!H", body)[0] == MP_PORT_DESC:
                s.sendall(multipart_reply(MP_PORT_DESC, b"".join(port(n, nm) for n, nm in ports), xid))
                return s
    raise TimeoutError("no handshake")


def drain(s: socket.socket) -> threading.Event:
    """Read and drop what the controller sends, on a thread; the event is set when the controller closes."""
    closed = threading.Event()
    s.settimeout(None)

    def run() -> None:
        try:
            while s.recv(65536):
                pass
        except OSError:
            pass
        closed.set()
    threading.Thread(target=run, daemon=True).start()
    return closed


# ---- malformed messages ----------------------------------------------------------------------------------

KINDS = ("length<8", "random body", "multipart reply", "error", "port status", "packet-in", "bad version",
         "short role/bundle/experimenter")


def bogus_messages(rng: random.Random, count: int, kinds: tuple[int, ...] = tuple(range(len(KINDS)))) -> list[bytes]:
    """Malformed messages of many types: wrong lengths, truncated and random bodies, bad versions, random
    multipart replies, errors, port status (names not UTF-8 among them) and packet-ins."""
    rand = lambda n: bytes(rng.getrandbits(8) for _ in range(n))  # noqa: E731
    types = list(range(0, 40)) + [255]
    out = []
    for i in range(count):
        kind = kinds[i % len(kinds)]
        mtype = rng.choice(types)
        if kind == 0:
            out.append(struct.pack("!BBHI", OFP_VERSION, mtype, rng.randrange(0, 8), i))
        elif kind == 1:
            out.append(message(mtype, rand(rng.randrange(0, 300)), i))
        elif kind == 2:
            mp = rng.choice([0, 1, 2, 3, 4, 6, 7, 10, 13, 17, 18, 0xFFFF])
            out.append(message(T["MULTIPART_REPLY"], struct.pack("!HH4x", mp, rng.choice([0, 1])) +
                               rand(rng.randrange(0, 400)), i))
        elif kind == 3:
            out.append(message(T["ERROR"], struct.pack("!HH", rng.getrandbits(16), rng.getrandbits(16)) +
                               rand(rng.randrange(0, 64)), i))
        elif kind == 4:
            if rng.random() < 0.5:  # a whole port whose name is not UTF-8
                out.append(port_status(rng.randrange(0, 3), port(rng.randrange(1, 60000), rand(15))))
            else:
                out.append(message(T["PORT_STATUS"], struct.pack("!B7x", rng.randrange(0, 4)) +
                                   rand(rng.choice([0, 8, 39, 40, 41, 100])), i))
        elif kind == 5:
            out.append(message(T["PACKET_IN"], struct.pack("!IHBBQHH", 0xFFFFFFFF, 64, 1, 0, 0, 1,
                                                          rng.choice([0, 3, 4, 8, 200, 65535])) + rand(80), i))
        elif kind == 6:
            out.append(message(mtype, rand(rng.randrange(0, 50)), i, version=rng.choice([0, 1, 4, 7, 0xFF])))
        else:
            out.append(message(rng.choice([T["ROLE_STATUS"], T["BUNDLE_CONTROL"], T["EXPERIMENTER"],
                                           T["BARRIER_REPLY"], T["ECHO_REPLY"]]), rand(rng.randrange(0, 12)), i))
    return out


def mutate(rng: random.Random, msg: bytes) -> bytes:
    """A valid message with a few bytes flipped, cut or repeated (the header's length kept or not)."""
    b = bytearray(msg)
    for _ in range(rng.randrange(1, 4)):
        op = rng.randrange(3)
        if op == 0 and b:
            b[rng.randrange(len(b))] = rng.getrandbits(8)
        elif op == 1 and len(b) > 8:
            del b[rng.randrange(8, len(b)):]
        else:
            b += bytes(rng.getrandbits(8) for _ in range(rng.randrange(1, 40)))
    if rng.random() < 0.7 and len(b) >= 8:
        struct.pack_into("!H", b, 2, min(len(b), 0xFFFF))
    return bytes(b)


def send_stream(target: str | tuple[str, int], dpid: int, msgs: list[bytes], ports=()) -> tuple[int, int]:
    """Send messages after a handshake, reconnecting whenever the controller closes; (sent, reconnects)."""
    sent = reconnects = 0
    s = handshake(target, dpid, ports)
    closed = drain(s)
    for raw in msgs:
        time.sleep(0.001)
        if closed.is_set():
            reconnects += 1
            s.close()
            try:
                s = handshake(target, dpid, ports)
            except (OSError, TimeoutError):
                time.sleep(0.1)
                s = handshake(target, dpid, ports)
            closed = drain(s)
        try:
            s.sendall(raw)
            sent += 1
        except OSError:
            closed.set()
    s.close()
    return sent, reconnects


# ---- IPFIX ---------------------------------------------------------------------------------------------------

IPFIX_TEMPLATE_ID = 0x1F0
_FIELDS = ((56, 6), (80, 6), (256, 2), (4, 1), (8, 4), (12, 4), (7, 2), (11, 2), (138, 4))
_RECORD = struct.Struct("!6s6sHB4s4sHHI")


def ipfix_template(domain: int, seq: int = 0) -> bytes:
    fields = b"".join(struct.pack("!HH", ie, n) for ie, n in _FIELDS)
    body = struct.pack("!HH", IPFIX_TEMPLATE_ID, len(_FIELDS)) + fields
    tset = struct.pack("!HH", 2, 4 + len(body)) + body
    return struct.pack("!HHIII", 10, 16 + len(tset), int(time.time()), seq, domain) + tset


def ipfix_records(domain: int, seq: int, records: list[tuple]) -> bytes:
    body = b"".join(_RECORD.pack(*r) for r in records)
    dset = struct.pack("!HH", IPFIX_TEMPLATE_ID, 4 + len(body)) + body
    return struct.pack("!HHIII", 10, 16 + len(dset), int(time.time()), seq, domain) + dset


def ipfix_record(src_mac: str, src: str, dst: str, dport: int, kind: int = 1, sport: int = 40000) -> tuple:
    mac = lambda m: bytes.fromhex(m.replace(":", ""))  # noqa: E731
    return (mac(src_mac), mac("02:00:00:00:ff:ff"), 0x0800, 6, socket.inet_aton(src), socket.inet_aton(dst),
            sport, dport, kind << 24)


def ipfix_scan(src_mac: str, src: str, count: int, domain: int) -> list[bytes]:
    """A template, then `count` 'new connection' records from one source to distinct (address, port) pairs:
    a scan, as the detector sees one."""
    recs = [ipfix_record(src_mac, src, f"10.99.{i // 250}.{i % 250 + 1}", 1000 + i) for i in range(count)]
    out, seq = [ipfix_template(domain)], 0
    for i in range(0, len(recs), 40):
        out.append(ipfix_records(domain, seq, recs[i:i + 40]))
        seq += len(recs[i:i + 40])
    return out
