"""Peers for the TLS tests, run inside a test's network namespace (`ip netns exec NS python -m
testkit.tls_peer ...`), each printing one word for the test to assert on:

    plain HOST PORT                         a cleartext OpenFlow HELLO to a TLS listener
    tls HOST PORT KEY CERT CA DPID          a TLS client with these files, then the handshake as DPID
    sniff IFACE SECONDS FILE                every frame seen on IFACE for SECONDS, written to FILE

Words: `openflow` (the controller spoke OpenFlow to it and kept the connection), `closed` (it closed the
connection before or after the OpenFlow handshake, without serving it), `tls-refused` (the TLS handshake
failed), `captured N`.
"""

from __future__ import annotations

import socket
import ssl
import sys
import time

from testkit import ofpeer


def plain(host: str, port: int) -> str:
    s = socket.create_connection((host, port), timeout=5)
    s.sendall(ofpeer.message(ofpeer.T["HELLO"]))
    try:
        data = s.recv(8)
    except OSError:
        return "closed"
    # A TLS server answers cleartext with an alert record (0x15) or nothing; OpenFlow would start 0x06, type 0.
    return "openflow" if data[:2] == bytes([ofpeer.OFP_VERSION, 0]) else "closed"


def tls(host: str, port: int, key: str, cert: str, ca: str, dpid: int) -> str:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.load_verify_locations(ca)
    ctx.load_cert_chain(cert, key)
    try:
        s = ofpeer.handshake((host, port), dpid, tls=ctx, timeout_s=5.0)
    except ssl.SSLError:
        return "tls-refused"
    except (ConnectionError, TimeoutError, OSError):
        return "closed"
    closed = ofpeer.drain(s)
    return "closed" if closed.wait(5.0) else "openflow"


def sniff(iface: str, seconds: float, path: str) -> str:
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
    s.bind((iface, 0))
    s.settimeout(0.2)
    frames, end = [], time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            frames.append(s.recv(65535))
        except TimeoutError:
            pass
    with open(path, "wb") as fh:
        for f in frames:
            fh.write(len(f).to_bytes(4, "big") + f)
    return f"captured {len(frames)}"


def main(argv: list[str]) -> None:
    mode, *rest = argv
    if mode == "plain":
        print(plain(rest[0], int(rest[1])))
    elif mode == "tls":
        print(tls(rest[0], int(rest[1]), rest[2], rest[3], rest[4], int(rest[5], 0)))
    elif mode == "sniff":
        print(sniff(rest[0], float(rest[1]), rest[2]))
    else:
        raise SystemExit(f"unknown mode {mode}")
    sys.stdout.flush()


if __name__ == "__main__":
    main(sys.argv[1:])
