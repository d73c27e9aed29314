"""An IPFIX (RFC 7011) decoder for what OVS 3.1 exports from `sample` actions.

No well-kept Python library decodes OVS's IPFIX (measured when this was written: scapy refuses its
templates, which carry interfaceName twice; `netflow` fails on nearly every datagram), so this is small and
ours. Templates are kept per (observation domain, template id); a data set whose template has not been seen
is counted, not guessed at (OVS re-sends templates only every 600 s: the collector re-creates the bridge's
IPFIX row when it starts, so that they come at once).
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass, field

VMWARE = 6876  # OVS's enterprise number for its tunnel fields
# (information element, enterprise) -> the name a record carries it under; others are left out.
NAMES = {
    (1, 0): "octets", (2, 0): "packets", (4, 0): "proto", (7, 0): "sport", (8, 0): "src", (10, 0): "in_ifindex",
    (11, 0): "dport", (12, 0): "dst", (56, 0): "src_mac", (80, 0): "dst_mac", (82, 0): "ifname",
    (133, 0): "dropped_packets", (138, 0): "obs_point", (256, 0): "eth_type", (892, VMWARE): "tunnel_key",
    (176, 0): "icmp_type", (177, 0): "icmp_code",
}
ADDRESSES = {"src", "dst"}
MACS = {"src_mac", "dst_mac"}
_HEADER = struct.Struct("!HHIII")
_SET = struct.Struct("!HH")


class NotIpfix(ValueError):
    """A datagram that is not an IPFIX message."""


_INT_CODES = {1: "B", 2: "H", 4: "I", 8: "Q"}


class _Plan:
    """How to read one template's records: runs of fixed-length fields with one struct each, and the
    variable-length fields between them (OVS's interface names)."""

    def __init__(self, fields: tuple[tuple[str | None, int], ...]):
        self.steps: list[tuple[struct.Struct, tuple[tuple[str, str], ...]] | tuple[None, str | None]] = []
        codes: list[str] = []
        names: list[tuple[str, str]] = []
        seen: set[str] = set()

        def close() -> None:
            if codes:
                self.steps.append((struct.Struct("!" + "".join(codes)), tuple(names)))
                codes.clear()
                names.clear()

        for name, length in fields:
            keep = name is not None and name not in seen  # OVS sends interfaceName twice (in, out): the first
            if keep:
                seen.add(name)
            if length == 0xFFFF:
                close()
                self.steps.append((None, name if keep else None))
            elif not keep:
                codes.append(f"{length}x")
            elif name in ADDRESSES and length == 4 or name in MACS:
                codes.append(f"{length}s")
                names.append((name, "addr" if name in ADDRESSES else "mac"))
            elif length in _INT_CODES:
                codes.append(_INT_CODES[length])
                names.append((name, "int"))
            else:
                codes.append(f"{length}s")
                names.append((name, "bigint"))
        close()

    def read(self, data: bytes, p: int, end: int) -> tuple[dict | None, int]:
        rec: dict = {}
        for st, what in self.steps:
            if st is None:  # variable length: one byte, or 255 and two more
                if p >= end:
                    return None, p
                length = data[p]
                p += 1
                if length == 255:
                    if p + 2 > end:
                        return None, p
                    (length,) = struct.unpack_from("!H", data, p)
                    p += 2
                if p + length > end:
                    return None, p
                if what == "ifname":
                    rec[what] = data[p:p + length].split(b"\0", 1)[0].decode("ascii", "replace")
                elif what is not None:
                    rec[what] = int.from_bytes(data[p:p + length], "big")
                p += length
                continue
            if p + st.size > end:
                return None, p
            for (name, kind), value in zip(what, st.unpack_from(data, p), strict=True):
                if kind == "int":
                    rec[name] = value
                elif kind == "addr":
                    rec[name] = socket.inet_ntoa(value)
                elif kind == "mac":
                    rec[name] = value.hex(":")
                else:
                    rec[name] = int.from_bytes(value, "big")
            p += st.size
        return rec, p


@dataclass
class Decoder:
    templates: dict[tuple[int, int], _Plan] = field(default_factory=dict)
    unknown_template: int = 0  # data sets that came before their template
    malformed: int = 0  # messages or records cut short
    last_seq: dict[int, int] = field(default_factory=dict)  # observation domain -> the next sequence number
    lost: int = 0  # records the sequence numbers say were sent and never came

    def decode(self, data: bytes) -> list[dict]:
        """The data records of one message; each has its observation domain and export time."""
        if len(data) < _HEADER.size:
            raise NotIpfix(f"{len(data)} bytes")
        version, length, export_time, seq, domain = _HEADER.unpack_from(data)
        if version != 10:
            raise NotIpfix(f"version {version}")
        end = min(length, len(data))
        out: list[dict] = []
        off = _HEADER.size
        while off + 4 <= end:
            set_id, set_len = _SET.unpack_from(data, off)
            if set_len < 4 or off + set_len > end:
                self.malformed += 1
                break
            body, body_end = off + 4, off + set_len
            if set_id == 2:
                self._templates(data, body, body_end, domain)
            elif set_id >= 256:
                plan = self.templates.get((domain, set_id))
                if plan is None:
                    self.unknown_template += 1
                else:
                    p = body
                    while body_end - p >= 4:  # what is left is padding
                        rec, p = plan.read(data, p, body_end)
                        if rec is None:
                            self.malformed += 1
                            break
                        rec["domain"], rec["export_time"] = domain, export_time
                        out.append(rec)
            off = body_end
        # The sequence number counts data records sent before this message, per domain (RFC 7011 3.1).
        expected = self.last_seq.get(domain)
        if expected is not None and seq > expected:
            self.lost += seq - expected
        self.last_seq[domain] = seq + len(out)
        return out

    def _templates(self, data: bytes, p: int, end: int, domain: int) -> None:
        while p + 4 <= end:
            tid, count = _SET.unpack_from(data, p)
            p += 4
            if tid < 256:
                return
            fields = []
            for _ in range(count):
                if p + 4 > end:
                    self.malformed += 1
                    return
                ie, length = _SET.unpack_from(data, p)
                p += 4
                pen = 0
                if ie & 0x8000:
                    (pen,) = struct.unpack_from("!I", data, p)
                    p += 4
                    ie &= 0x7FFF
                fields.append((NAMES.get((ie, pen)), length))
            self.templates[(domain, tid)] = _Plan(tuple(fields))
