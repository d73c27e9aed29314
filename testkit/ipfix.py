"""IPFIX messages laid out as OVS 3.1 sends its flow samples, for the decoder's tests and the collector's
benchmark (and the forger of tests: testkit/ofpeer.py)."""

import socket
import struct

from cloudweave.flowlog.ipfix import VMWARE

# (information element, length, enterprise): a flow-sample template as OVS builds it, interfaceName twice
# (ingress and egress) and variable-length, a VMware tunnel field, and fields the decoder does not name.
TEMPLATE = [(138, 4, 0), (56, 6, 0), (80, 6, 0), (256, 2, 0), (8, 4, 0), (12, 4, 0), (4, 1, 0), (7, 2, 0),
            (11, 2, 0), (82, 0xFFFF, 0), (82, 0xFFFF, 0), (892, 0xFFFF, VMWARE), (136, 1, 0), (2, 8, 0)]


def template_set(tid: int = 256) -> bytes:
    body = struct.pack("!HH", tid, len(TEMPLATE))
    for ie, length, pen in TEMPLATE:
        body += struct.pack("!HH", ie | (0x8000 if pen else 0), length) + (struct.pack("!I", pen) if pen else b"")
    return struct.pack("!HH", 2, 4 + len(body)) + body


def record(point: int, src: str, dst: str, proto: int, sport: int, dport: int, ifname: str = "web1") -> bytes:
    name = ifname.encode()
    return (struct.pack("!I", point) + bytes.fromhex("020000410011") + bytes.fromhex("020000410012")
            + struct.pack("!H", 0x0800) + socket.inet_aton(src) + socket.inet_aton(dst)
            + struct.pack("!BHH", proto, sport, dport) + bytes([len(name)]) + name + bytes([0])
            + bytes([3]) + b"\x00\x10\x05" + bytes([3]) + struct.pack("!Q", 1))


def message(sets: bytes, seq: int = 0, domain: int = 0x41) -> bytes:
    return struct.pack("!HHIII", 10, 16 + len(sets), 1796000000, seq, domain) + sets


def data_set(*records: bytes, tid: int = 256) -> bytes:
    body = b"".join(records)
    return struct.pack("!HH", tid, 4 + len(body)) + body
