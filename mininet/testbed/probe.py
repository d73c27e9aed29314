"""Reachability probes inside endpoint namespaces: TCP listeners and UDP echo (`serve`), and concurrent
TCP connects, UDP echoes and pings (`check`), printed as JSON. Used by the matrix tests and the demo.

    python -m cloudweave.testbed.probe serve --tcp 80,443 --udp 5353
    python -m cloudweave.testbed.probe check tcp:10.0.0.2:80 udp:10.0.0.2:5353 icmp:10.0.0.2
    python -m cloudweave.testbed.probe check seen-tcp:198.51.100.100:80 seen-udp:198.51.100.100:5353

Servers tell each client the address they see it from (TCP: on connect; UDP: in answer to "who"): the
`seen-` probes return that "IP:PORT", or null when there was no answer.
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor


def serve(tcp: list[int], udp: list[int]) -> None:
    def tcp_loop(port: int) -> None:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("0.0.0.0", port))
        s.listen(256)
        while True:
            conn, addr = s.accept()
            try:
                conn.sendall(f"{addr[0]}:{addr[1]}".encode())
            except OSError:
                pass
            conn.close()

    def udp_loop(port: int) -> None:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("0.0.0.0", port))
        while True:
            data, addr = s.recvfrom(2048)
            s.sendto(f"{addr[0]}:{addr[1]}".encode() if data == b"who" else data, addr)

    threads = [threading.Thread(target=tcp_loop, args=(p,), daemon=True) for p in tcp]
    threads += [threading.Thread(target=udp_loop, args=(p,), daemon=True) for p in udp]
    for t in threads:
        t.start()
    print("ready", flush=True)
    threading.Event().wait()


def seen(proto: str, host: str, port: int, timeout: float) -> str | None:
    """The address the server saw this client come from."""
    try:
        if proto == "tcp":
            with socket.create_connection((host, port), timeout=timeout) as c:
                return c.recv(64).decode() or None
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            u.settimeout(timeout)
            for _ in range(2):
                u.sendto(b"who", (host, port))
                try:
                    return u.recvfrom(64)[0].decode()
                except TimeoutError:
                    continue
    except OSError:
        return None
    return None


def check_one(target: str, timeout: float) -> bool | str | None:
    proto, _, rest = target.partition(":")
    if proto.startswith("seen-"):
        host, _, port = rest.rpartition(":")
        return seen(proto[5:], host, int(port), timeout)
    if proto == "icmp":
        run = subprocess.run(["ping", "-c", "1", "-W", str(max(1, int(timeout))), rest], capture_output=True)
        return run.returncode == 0
    host, _, port = rest.rpartition(":")
    if proto == "tcp":
        try:
            with socket.create_connection((host, int(port)), timeout=timeout):
                return True
        except OSError:
            return False
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(timeout)
    try:
        for _ in range(2):  # the first datagram may wait on ARP
            s.sendto(b"probe", (host, int(port)))
            try:
                return s.recvfrom(2048)[0] == b"probe"
            except TimeoutError:
                continue
        return False
    finally:
        s.close()


def check(targets: list[str], timeout: float) -> dict[str, bool | str | None]:
    with ThreadPoolExecutor(max_workers=64) as pool:
        return dict(zip(targets, pool.map(lambda t: check_one(t, timeout), targets), strict=True))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="cloudweave.testbed.probe", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--tcp", default="")
    s.add_argument("--udp", default="")
    c = sub.add_parser("check")
    c.add_argument("targets", nargs="+", help="tcp:IP:PORT, udp:IP:PORT, icmp:IP, seen-tcp:IP:PORT or seen-udp:IP:PORT")
    c.add_argument("--timeout", type=float, default=1.0)
    args = p.parse_args(argv)
    if args.cmd == "serve":
        serve([int(x) for x in args.tcp.split(",") if x], [int(x) for x in args.udp.split(",") if x])
        return 0
    print(json.dumps(check(args.targets, args.timeout)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
