"""Fixes to os-ken 3.1.1's OpenFlow 1.5 parsers, for what OVS sends us (tests/unit/test_wire.py checks them).

Each broken parser reads past the object it parses; a reply holding one fails to parse, and the controller
would see that switch as empty. Copy-field (our register moves): OFPActionCopyField.parser reads its two OXM
ids from the rest of the whole action list, and returns an action with the fixed header's length (12)
instead of its own (24), so the next action is read from the middle of this one.
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


def _parse_bucket(cls: Any, buf: bytes, offset: int) -> Any:
    """Group buckets: os-ken reads a bucket's properties up to `len` bytes past the end of its actions, that
    is into the next bucket, and fails on it."""
    start = offset
    msg = cls()
    msg.len, msg.action_array_len, msg.bucket_id = struct.unpack_from(ofp.OFP_BUCKET_PACK_STR, buf, offset)
    offset += ofp.OFP_BUCKET_SIZE
    action_buf = buf[offset:offset + msg.action_array_len]
    msg.actions = []
    while action_buf:
        action = parser.OFPAction.parser(action_buf, 0)
        msg.actions.append(action)
        action_buf = action_buf[action.len:]
    rest = buf[offset + msg.action_array_len:start + msg.len]
    msg.properties = []
    while rest:
        prop, rest = parser.OFPGroupBucketProp.parse(rest)
        msg.properties.append(prop)
    return msg


def _parse_group_desc(cls: Any, buf: bytes, offset: int) -> Any:
    """Group descriptions: os-ken reads a group's properties up to `length` bytes past its buckets, that is
    into the next group of the reply."""
    start = offset
    stats = cls()
    stats.length, stats.type, stats.group_id, stats.bucket_array_len = struct.unpack_from(
        ofp.OFP_GROUP_DESC_STATS_PACK_STR, buf, offset)
    offset += ofp.OFP_GROUP_DESC_STATS_SIZE
    bucket_buf = buf[offset:offset + stats.bucket_array_len]
    stats.buckets = []
    while bucket_buf:
        bucket = parser.OFPBucket.parser(bucket_buf, 0)
        stats.buckets.append(bucket)
        bucket_buf = bucket_buf[bucket.len:]
    rest = buf[offset + stats.bucket_array_len:start + stats.length]
    stats.properties = []
    while rest:
        prop, rest = parser.OFPGroupProp.parse(rest)
        stats.properties.append(prop)
    return stats


def install() -> None:
    parser.OFPActionCopyField.parser = classmethod(_parse)
    parser.OFPBucket.parser = classmethod(_parse_bucket)
    parser.OFPGroupDescStats.parser = classmethod(_parse_group_desc)
