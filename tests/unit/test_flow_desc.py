"""The direct flow-desc decoder gives exactly what os-ken's objects give through codec.canonical_actual, for
every flow of the shipped topologies laid out as a switch's reply (masked fields, registers as OpenFlow 1.5
reports them, NAT, register moves, conjunctions, samples, groups, meters, and a statistics block to skip).
tests/ovs/test_compile_loads.py does the same on the bytes a real ovs-vswitchd sends."""

import os
import struct

import pytest
from os_ken.ofproto import ofproto_parser
from os_ken.ofproto import ofproto_v1_5 as ofp

from cloudweave.config import load_model
from cloudweave.flows.compile import compile_model
from controller.codec import canonical_actual, canonical_desired, flow_add
from controller.flow_desc import MalformedReply, RawFlowDescBody, canonical_flows
from controller.osken_fixes import install as install_osken_fixes
from tests.unit.test_wire import ROOT, FakeDatapath

FLOW_MOD_FIXED = 8 + 40  # header, then the flow-mod's fixed part; the match follows
OXS_PACKET_COUNT = 0x8002 << 16 | 4 << 9 | 8


def reply_entry(dp: FakeDatapath, key, content, xreg: bool = False) -> bytes:
    """One OFPFlowDesc as a switch lays it out: the fixed part, the match, statistics, the instructions."""
    table, priority, match = key
    if xreg:  # OpenFlow 1.5 switches report reg2N/reg2N+1 as one 64-bit xregN
        regs = {k: v for k, v in match if k.startswith("reg")}
        match = tuple(kv for kv in match if not kv[0].startswith("reg")) + tuple(
            (f"xreg{int(k[3:]) // 2}", (v << 32, 0xFFFFFFFF << 32) if int(k[3:]) % 2 == 0 else (v, 0xFFFFFFFF))
            for k, v in regs.items() if not isinstance(v, tuple))
        match += tuple((k, v) for k, v in regs.items() if isinstance(v, tuple))
    msg = flow_add(dp, (table, priority, match), content)
    msg.set_xid(1)
    msg.serialize()
    buf = bytes(msg.buf)
    (_, match_len) = struct.unpack_from("!HH", buf, FLOW_MOD_FIXED)
    match_end = FLOW_MOD_FIXED + ((match_len + 7) & ~7)
    stats = struct.pack("!HHIQ", 0, 16, OXS_PACKET_COUNT, 12345)
    body = buf[FLOW_MOD_FIXED:match_end] + stats + buf[match_end:]
    return struct.pack(ofp.OFP_FLOW_DESC_0_PACK_STR, 24 + len(body), table, priority, 0, 0, 0, 0,
                       content[0]) + body


@pytest.mark.parametrize("topology", ["two-sites.yaml", "three-clouds.yaml", "four-ring.yaml", "nat.yaml",
                                      "te.yaml"])
def test_same_canonical_flows_as_os_ken(topology):
    install_osken_fixes()
    model = load_model(os.path.join(ROOT, "topologies", topology))[0]
    dp = FakeDatapath()
    checked = 0
    for state in compile_model(model, {s.name: "02:00:00:00:ff:01" for s in model.sites}).values():
        ports: dict[str, int] = {}
        raw = b""
        for i, f in enumerate(state.flows):
            for p in sorted(f.ports()):
                ports.setdefault(p, len(ports) + 1)
            key, content = canonical_desired(f, ports)
            raw += reply_entry(dp, key, content, xreg=i % 2 == 1)
        body = RawFlowDescBody(raw)
        theirs = [canonical_actual(s, ofp) for s in body]
        ours = list(canonical_flows(body))
        assert ours == theirs
        assert len(ours) == len(state.flows)
        checked += len(ours)
    assert checked > 40


def test_an_unparsed_body_is_still_os_kens_objects_for_other_readers():
    """The traffic engineer reads counters from the same replies through os-ken's objects."""
    dp = FakeDatapath()
    key = (6, 100, (("eth_type", 0x800), ("reg6", 7101)))
    raw = reply_entry(dp, key, (0xC1 << 56 | 5, (("group", 3),)))
    entries = list(RawFlowDescBody(raw + raw))
    assert len(entries) == 2
    assert entries[0].cookie == 0xC1 << 56 | 5 and dict(entries[0].stats.fields)["packet_count"] == 12345
    assert list(canonical_flows(entries)) == list(canonical_flows(RawFlowDescBody(raw + raw)))


def test_os_ken_leaves_the_body_of_a_flow_desc_reply_as_bytes():
    from controller.flow_desc import install

    install()
    dp = FakeDatapath()
    entry = reply_entry(dp, (0, 10, (("in_port", 1),)), (0, (("goto", 1),)))
    header = struct.pack("!BBHI", ofp.OFP_VERSION, ofp.OFPT_MULTIPART_REPLY, 16 + len(entry), 9)
    buf = header + struct.pack("!HH4x", ofp.OFPMP_FLOW_DESC, 0) + entry
    msg = ofproto_parser.msg(dp, ofp.OFP_VERSION, ofp.OFPT_MULTIPART_REPLY, len(buf), 9, buf)
    assert isinstance(msg.body, RawFlowDescBody) and msg.body.raw == entry
    assert list(canonical_flows(msg.body)) == [((0, 10, (("in_port", 1),)), (0, (("goto", 1),)))]


def test_an_entry_of_impossible_length_is_refused_not_looped_on():
    """A zero length would never advance (os-ken raised OFPMalformedMessage); a long one would read past."""
    dp = FakeDatapath()
    good = reply_entry(dp, (0, 10, (("in_port", 1),)), (0, (("goto", 1),)))
    for bad in (b"\0\0" + good[2:], struct.pack("!H", len(good) + 8) + good[2:]):
        with pytest.raises(MalformedReply):
            list(canonical_flows(RawFlowDescBody(good + bad)))
        with pytest.raises((MalformedReply, struct.error)):  # os-ken's parser itself reads past a long one
            list(RawFlowDescBody(good + bad))
