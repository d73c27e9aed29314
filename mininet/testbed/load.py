"""Many short connections of one class from inside an endpoint's namespace, to measure how a split spreads
them: each TCP connection is one SYN (answered or refused, it has taken its path), each UDP one is one
datagram from its own source port. Prints how many were sent and (TCP) how many were accepted.

    python -m testbed.load tcp 10.61.0.21 7000-7999 6000
    python -m testbed.load udp 10.61.0.21 6000-6999 6000 --sport 20000
"""

from __future__ import annotations

import argparse
import errno
import selectors
import socket
import sys
import time


def tcp(host: str, lo: int, hi: int, count: int, window: int = 16, give_up_s: float = 5.0) -> tuple[int, int]:
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

    while sent < count or started:
        while sent < count and len(started) < window:
            s = socket.socket()
            s.setblocking(False)
            err = s.connect_ex((host, lo + sent % (hi - lo + 1)))
            sent += 1
            if err not in (0, errno.EINPROGRESS):
                s.close()
                continue
            sel.register(s, selectors.EVENT_WRITE)
            started[s] = time.monotonic()
        for key, _ in sel.select(timeout=0.2):
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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="testbed.load", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("proto", choices=["tcp", "udp"])
    p.add_argument("host")
    p.add_argument("ports", help="destination port range LO-HI")
    p.add_argument("count", type=int)
    p.add_argument("--sport", type=int, default=20000, help="first UDP source port")
    args = p.parse_args(argv)
    lo, _, hi = args.ports.partition("-")
    lo_i, hi_i = int(lo), int(hi or lo)
    sent, accepted = tcp(args.host, lo_i, hi_i, args.count) if args.proto == "tcp" else \
        udp(args.host, lo_i, hi_i, args.count, args.sport)
    print(sent, accepted)
    return 0


if __name__ == "__main__":
    sys.exit(main())
