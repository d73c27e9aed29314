"""Many short connections of one class from inside an endpoint's namespace, to measure how a split spreads
them: each TCP connection is one SYN (answered or refused, it has taken its path), each UDP one is one
datagram from its own source port. Prints how many were sent and (TCP) how many were accepted.

    python -m cloudweave.testbed.load tcp 10.61.0.21 7000-7999 6000
    python -m cloudweave.testbed.load udp 10.61.0.21 6000-6999 6000 --sport 20000
    python -m cloudweave.testbed.load churn 10.71.0.21 5001 --mbps 150 --streams 30 --seconds 10 --flow-s 1
    python -m cloudweave.testbed.load sink 5001 --seconds 12
    python -m cloudweave.testbed.load stamped 10.41.0.11 7002 --pps 1000 --seconds 8
    python -m cloudweave.testbed.load stampsink 7002 --seconds 9
    python -m cloudweave.testbed.load capture 10.41.0.1 --seconds 6

`churn` offers a steady UDP rate in `streams` flows, each replaced by a new one (a new source port) every
`flow_s` seconds, as real traffic renews its connections; `sink` counts what arrives. Both print datagrams
per wall-clock second as JSON, so that loss can be read second by second. `stamped` sends one flow of
numbered datagrams at `pps`; `stampsink` prints when each arrived (wall clock, which every namespace shares),
so that the moment a change took effect can be read to the millisecond. `capture` timestamps every IPv4
packet from one address that reaches the namespace's eth0 (an attack as its victim sees it).
"""

from __future__ import annotations

import argparse
import errno
import json
import selectors
import socket
import sys
import time


def tcp(host: str, lo: int, hi: int, count: int, window: int = 16, give_up_s: float = 5.0, rate: float = 0.0
        ) -> tuple[int, int]:
    """At most `window` connections in flight, so that a burst of SYNs does not overflow a socket buffer on the
    way (a lost SYN is sent again by the kernel after a second; a connection is given `give_up_s`)."""
    sel = selectors.DefaultSelector()
    started: dict[socket.socket, float] = {}
    accepted = sent = 0

    def finish(sock: socket.socket) -> None:
        nonlocal accepted
        sel.unregister(sock)
        accepted += sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0
        sock.close()
        del started[sock]

    begun = time.monotonic()
    behind_max = max(1.0, rate / 20)  # connections a paced client may owe: after a stall it does not catch up
    while sent < count or started:
        if rate and (time.monotonic() - begun) * rate > sent + behind_max:
            begun = time.monotonic() - (sent + behind_max) / rate  # at `rate` again, not in a burst
        while sent < count and len(started) < window and (not rate or sent < (time.monotonic() - begun) * rate):
            s = socket.socket()
            s.setblocking(False)
            err = s.connect_ex((host, lo + sent % (hi - lo + 1)))
            sent += 1
            if err not in (0, errno.EINPROGRESS):
                s.close()
                continue
            sel.register(s, selectors.EVENT_WRITE)
            started[s] = time.monotonic()
        for key, _ in sel.select(timeout=0.2 if not rate else min(0.2, 1 / rate)):
            finish(key.fileobj)
        now = time.monotonic()
        for sock in [k for k, t in started.items() if now - t > give_up_s]:
            finish(sock)
    return sent, accepted


def udp(host: str, lo: int, hi: int, count: int, sport: int, rate: float = 2000.0) -> tuple[int, int]:
    """One datagram per flow, paced at `rate` per second: each new flow costs the switch an upcall, and a burst
    of them overflows the socket buffer in front of it (a datagram, unlike a SYN, is not sent again)."""
    started = time.monotonic()
    for i in range(count):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("0.0.0.0", sport + i))
            s.sendto(b"x", (host, lo + i % (hi - lo + 1)))
        ahead = started + (i + 1) / rate - time.monotonic()
        if ahead > 0:
            time.sleep(ahead)
    return count, 0


PAYLOAD = 1200


def churn(host: str, port: int, mbps: float, streams: int, seconds: float, flow_s: float, sport: int) -> dict:
    pps = mbps * 1e6 / 8 / PAYLOAD
    data = b"x" * PAYLOAD
    next_port = sport

    def open_flow() -> tuple[socket.socket, float]:
        nonlocal next_port
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("0.0.0.0", next_port))
        s.connect((host, port))
        next_port += 1
        return s, time.monotonic()

    flows = [open_flow() for _ in range(streams)]
    sent: dict[int, int] = {}
    start, n = time.monotonic(), 0
    while (elapsed := time.monotonic() - start) < seconds:
        due = int(elapsed * pps)
        second = int(time.time())
        while n < due:
            try:
                flows[n % streams][0].send(data)
                sent[second] = sent.get(second, 0) + 1
            except OSError:
                pass  # a full socket buffer is loss too
            n += 1
        now = time.monotonic()
        for i, (s, born) in enumerate(flows):
            if now - born >= flow_s:
                s.close()
                flows[i] = open_flow()
        time.sleep(0.001)
    for s, _ in flows:
        s.close()
    return sent


def sink(port: int, seconds: float) -> dict:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    s.bind(("0.0.0.0", port))
    s.settimeout(0.2)
    got: dict[int, int] = {}
    end = time.monotonic() + seconds
    print("ready", flush=True)
    while time.monotonic() < end:
        try:
            s.recv(2048)
        except TimeoutError:
            continue
        second = int(time.time())
        got[second] = got.get(second, 0) + 1
    return got


def stamped(host: str, port: int, pps: float, seconds: float, sport: int) -> dict:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("0.0.0.0", sport))
    s.connect((host, port))
    start, n, errors = time.monotonic(), 0, 0
    while (elapsed := time.monotonic() - start) < seconds:
        while n < int(elapsed * pps):
            try:
                s.send(f"{n} {time.time():.6f}".encode())
            except OSError:
                errors += 1
            n += 1
        time.sleep(0.0005)
    return {"sent": n, "errors": errors}


def stampsink(port: int, seconds: float) -> dict:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    s.bind(("0.0.0.0", port))
    s.settimeout(0.2)
    got: list[tuple[int, float]] = []
    end = time.monotonic() + seconds
    print("ready", flush=True)
    while time.monotonic() < end:
        try:
            data = s.recv(2048)
        except TimeoutError:
            continue
        got.append((int(data.split()[0]), time.time()))
    return {"received": got}


def capture(src: str, seconds: float, ifname: str = "eth0") -> dict:
    want = socket.inet_aton(src)
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0800))
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 << 20)
    s.bind((ifname, 0))
    s.settimeout(0.2)
    times: list[float] = []
    end = time.monotonic() + seconds
    print("ready", flush=True)
    while time.monotonic() < end:
        try:
            frame = s.recv(64)
        except TimeoutError:
            continue
        if frame[26:30] == want:  # the IPv4 source address, behind a 14-byte Ethernet header
            times.append(time.time())
    return {"count": len(times), "times": [round(t, 6) for t in times]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="cloudweave.testbed.load", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("proto", choices=["tcp", "udp", "churn", "sink", "stamped", "stampsink", "capture"])
    p.add_argument("host", help="destination address (sink: the port to listen on)")
    p.add_argument("ports", nargs="?", default="", help="destination port range LO-HI (churn: one port)")
    p.add_argument("count", type=int, nargs="?", default=0)
    p.add_argument("--sport", type=int, default=20000, help="first UDP source port")
    p.add_argument("--mbps", type=float, default=100.0)
    p.add_argument("--streams", type=int, default=30)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--flow-s", type=float, default=1.0)
    p.add_argument("--pps", type=float, default=1000.0, help="stamped: datagrams per second")
    p.add_argument("--rate", type=float, default=0.0, help="tcp: connections per second (0: as fast as it can)")
    args = p.parse_args(argv)
    if args.proto == "stamped":
        print(json.dumps(stamped(args.host, int(args.ports), args.pps, args.seconds, args.sport)))
        return 0
    if args.proto == "capture":
        print(json.dumps(capture(args.host, args.seconds)))
        return 0
    if args.proto == "stampsink":
        print(json.dumps(stampsink(int(args.host), args.seconds)))
        return 0
    if args.proto == "churn":
        print(json.dumps(churn(args.host, int(args.ports), args.mbps, args.streams, args.seconds, args.flow_s,
                               args.sport)))
        return 0
    if args.proto == "sink":
        print(json.dumps(sink(int(args.host), args.seconds)))
        return 0
    lo, _, hi = args.ports.partition("-")
    lo_i, hi_i = int(lo), int(hi or lo)
    sent, accepted = tcp(args.host, lo_i, hi_i, args.count, rate=args.rate) if args.proto == "tcp" else \
        udp(args.host, lo_i, hi_i, args.count, args.sport)
    print(sent, accepted)
    return 0


if __name__ == "__main__":
    sys.exit(main())
