"""Our direct encoder writes exactly the bytes os-ken's serializer writes, for every flow we compile."""

import os

import pytest
from os_ken.ofproto import ofproto_v1_5 as ofp
from os_ken.ofproto import ofproto_v1_5_parser as parser

from cloudweave.config import load_model
from cloudweave.flows.compile import compile_model
from cloudweave.flows.cookies import OWNER, OWNER_MASK
from controller import wire
from controller.codec import canonical_desired, flow_add, flow_delete
from controller.osken_fixes import install as install_osken_fixes

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class FakeDatapath:
    ofproto, ofproto_parser = ofp, parser

    def __init__(self):
        self.xid = 0

    def set_xid(self, msg):
        self.xid += 1
        msg.set_xid(self.xid)


def _encode_or_none(key, content):
    try:
        return wire.flow_mod(0, wire.OFPFC_ADD, key, content)
    except wire.Unsupported:
        return None


@pytest.mark.parametrize("topology", ["two-sites.yaml", "three-clouds.yaml", "four-ring.yaml", "nat.yaml"])
def test_same_bytes_as_os_ken(topology):
    model = load_model(os.path.join(ROOT, "topologies", topology))[0]
    dp = FakeDatapath()
    checked = fallbacks = 0
    for state in compile_model(model, {s.name: "02:00:00:00:ff:01" for s in model.sites}).values():
        ports: dict[str, int] = {}
        for f in state.flows:
            for p in sorted(f.ports()):
                ports.setdefault(p, len(ports) + 1)
            key, content = canonical_desired(f, ports)
            add = _encode_or_none(key, content)
            if add is None:  # the app sends os-ken's encoding of these (NAT, register moves)
                assert any(a[0] == "move" or (a[0] == "ct" and a[4] is not None) for a in content[1]), f
                fallbacks += 1
            for ours, make in (
                (add, lambda k=key, c=content: flow_add(dp, k, c)),
                (wire.flow_mod(0, wire.OFPFC_DELETE_STRICT, key, None, OWNER, OWNER_MASK),
                 lambda k=key: flow_delete(dp, k)),
            ):
                if ours is None:
                    continue
                theirs = make()
                theirs.set_xid(0)
                theirs.serialize()
                assert ours == bytes(theirs.buf), f
                bundled = parser.OFPBundleAddMsg(dp, 7, 3, make(), [])
                bundled.set_xid(99)
                bundled.serialize()
                assert wire.bundle_add(99, 7, 3, ours) == bytes(bundled.buf)
                checked += 1
    assert checked > 0
    assert fallbacks < checked / 10  # the fast path stays the common one


def test_unknown_fields_are_refused():
    with pytest.raises(wire.Unsupported):
        wire.match((("ipv6_src", "::1"),))


def test_every_compiled_action_parses_back_as_the_switch_would_send_it():
    """os-ken 3.1.1 misparses OF1.5 copy-field (our register moves); controller/osken_copy_field.py fixes it."""
    install_osken_fixes()
    model = load_model(os.path.join(ROOT, "topologies", "nat.yaml"))[0]
    dp = FakeDatapath()
    moves = 0
    for state in compile_model(model).values():
        ports: dict[str, int] = {}
        for f in state.flows:
            for p in sorted(f.ports()):
                ports.setdefault(p, len(ports) + 1)
            key, content = canonical_desired(f, ports)
            msg = flow_add(dp, key, content)
            msg.set_xid(1)
            msg.serialize()
            back = parser.OFPFlowMod.parser(dp, ofp.OFP_VERSION, ofp.OFPT_FLOW_MOD, len(msg.buf), 1, bytes(msg.buf))
            apply = [i for i in back.instructions if i.type == ofp.OFPIT_APPLY_ACTIONS]
            got = [a for i in apply for a in i.actions]
            assert len(got) == sum(1 for a in content[1] if a[0] != "goto"), f
            moves += sum(1 for a in got if a.type == ofp.OFPAT_COPY_FIELD)
    assert moves > 0
