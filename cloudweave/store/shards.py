"""Which shard each site is in, and which replica should master each shard: pure functions that every
replica computes alike from the same store rows."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

DEFAULT_MAX_SHARDS = 16  # each shard is one OVSDB lock session per replica


def shard_name(i: int) -> str:
    return f"s{i}"


def lock_name(shard: str) -> str:
    """An OVSDB id (letters, digits, '_'): python-ovs waits forever on a name with a hyphen."""
    return f"cloudweave_shard_{shard}"


def default_shards(sites: int) -> int:
    return max(1, min(sites, DEFAULT_MAX_SHARDS))


def site_shards(sites: Iterable[str], shards: int) -> dict[str, str]:
    """Sites in name order, dealt round the shards: site -> shard name."""
    return {s: shard_name(i % shards) for i, s in enumerate(sorted(sites))}


def assignment(shards: Iterable[str], owners: Mapping[str, str], live: Iterable[str]) -> dict[str, str]:
    """Where each shard should be: every live replica gets floor or ceil of its fair share; a shard stays
    with its owner while that owner is live and under its quota, so a join or a loss moves as few as it must.
    Ties go by name, so every replica that sees the same rows computes the same answer."""
    shards, live = sorted(shards), sorted(set(live))
    if not live:
        return {}
    quota = {r: len(shards) // len(live) for r in live}
    for r in live[: len(shards) % len(live)]:
        quota[r] += 1
    # Keep owners' shards up to their quota (the replicas with the most shards already first keep theirs).
    out: dict[str, str] = {}
    held: dict[str, list[str]] = {r: [] for r in live}
    for s in shards:
        if owners.get(s) in held:
            held[owners[s]].append(s)
    # Quotas are by rank: the replicas that own the most keep the larger quotas.
    ranked = sorted(live, key=lambda r: (-len(held[r]), r))
    sizes = sorted(quota.values(), reverse=True)
    quota = dict(zip(ranked, sizes, strict=True))
    for r in live:
        for s in held[r][: quota[r]]:
            out[s] = r
    free = [s for s in shards if s not in out]
    for s in free:
        r = min(live, key=lambda r: (sum(1 for v in out.values() if v == r) - quota[r], r))
        out[s] = r
    return out


def fair_share(shards: int, replicas: int) -> int:
    return math.ceil(shards / max(1, replicas))
