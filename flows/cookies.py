"""Cookies say who owns a flow and which part of the policy made it.

Layout (64 bits): 16-bit owner tag | 8-bit kind | 40-bit object id (a stable hash of the object's name).
The controller reads and deletes only flows whose top 16 bits carry the owner tag.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache

OWNER = 0xC10D << 48
OWNER_MASK = 0xFFFF << 48
KIND_SHIFT = 40
ID_MASK = (1 << KIND_SHIFT) - 1

KINDS = {
    "table_miss": 1,
    "classify_port": 2,
    "classify_tunnel": 3,
    "port_security": 4,
    "l2_local": 5,
    "l2_remote": 6,
    "flood": 7,
    "conntrack": 8,
    "acl_state": 9,
    "acl_rule": 10,
    "acl_default": 11,
    "direct": 12,
    "nat_uplink": 13,
    "nat_gateway": 14,
    "nat_endpoint": 15,
    "nat_forward": 16,
    "conn_limit": 17,
    "route": 18,
    "route_relay": 19,
    "service": 20,
    "transit": 21,
    "filter": 22,
    "quarantine": 23,
    "flowlog": 24,
    "limit": 25,
}
KIND_NAMES = {v: k for k, v in KINDS.items()}


@lru_cache(maxsize=1 << 20)
def object_id(name: str) -> int:
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=5).digest(), "big")


def cookie(kind: str, name: str) -> int:
    return OWNER | (KINDS[kind] << KIND_SHIFT) | object_id(name)


GROUP_OWNER, GROUP_OWNER_MASK = 0xC1 << 24, 0xFF << 24  # group ids are 32 bits: ours start with 0xc1


GROUP_ID_BITS = 24


def group_id(name: str) -> int:
    """The preferred group id for a named purpose (e.g. route/site pair); flows.compile probes past another
    group of the same site that has it (flows.ids)."""
    return GROUP_OWNER | (object_id(name) & ((1 << GROUP_ID_BITS) - 1))


def meter_id(name: str) -> int:
    """A meter's id at a site, from its purpose (meter ids are 32 bits, as group ids: ours start with 0xc1)."""
    return group_id(name)


def is_our_meter(value: int) -> bool:
    return value & GROUP_OWNER_MASK == GROUP_OWNER


def is_our_group(value: int) -> bool:
    return value & GROUP_OWNER_MASK == GROUP_OWNER


def is_ours(value: int) -> bool:
    return value & OWNER_MASK == OWNER


def kind_of(value: int) -> str:
    return KIND_NAMES.get((value >> KIND_SHIFT) & 0xFF, "unknown")
