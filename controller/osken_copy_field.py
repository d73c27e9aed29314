"""Let os-ken parse OpenFlow 1.5 copy-field actions as OVS sends them.

os-ken 3.1.1's OFPActionCopyField.parser reads its two OXM ids from the rest of the whole action list instead
of from its own action, and the action it returns has the fixed header's length (12) instead of its own
(24), so the next action is read from the middle of this one: a flow-stats reply holding one fails to parse
and the controller would see that switch as empty. This parser reads exactly the action.
"""

from __future__ import annotations

import struct
from typing import Any

from os_ken.ofproto import ofproto_v1_5 as ofp
from os_ken.ofproto import ofproto_v1_5_parser as parser


def _parse(cls: Any, buf: bytes, offset: int) -> Any:
    type_, len_, n_bits, src_offset, dst_offset = struct.unpack_from(ofp.OFP_ACTION_COPY_FIELD_PACK_STR, buf, offset)
    rest = bytes(buf[offset + ofp.OFP_ACTION_COPY_FIELD_SIZE:offset + len_])
    ids = []
    for _ in range(2):
        oxm_id, rest = parser.OFPOxmId.parse(rest)
        oxm_id.type = oxm_id.type.removesuffix("_nxm")  # an NXM header names the same field
        ids.append(oxm_id)
    action = cls(n_bits, src_offset, dst_offset, ids, type_, len_)
    action.len = len_
    return action


def install() -> None:
    parser.OFPActionCopyField.parser = classmethod(_parse)
