"""What the `cloudweave apply` and `cloudweave status` commands do with the store."""

from __future__ import annotations

import getpass
import socket
import time
from dataclasses import dataclass

from cloudweave.flowlog.key import new_key
from cloudweave.store import client
from cloudweave.store.policy import PolicyFiles, from_chunks
from cloudweave.store.shards import default_shards, shard_name

TABLES = ("Cluster", "Policy", "Shard", "Replica", "NextHop")


@dataclass(frozen=True)
class Applied:
    version: int
    digest: str
    changed: bool  # False: the store already held exactly these files (no new version)


def publish(s: client.StoreIdl, policy: PolicyFiles, sites: int, shards: int | None = None) -> Applied:
    """Write the policy as version+1 in one transaction, compare-and-set on the version (two applies cannot
    interleave), with the cluster row and the shard rows it needs."""
    digest = policy.digest
    chunks = policy.chunks()
    who = f"{getpass.getuser()}@{socket.gethostname()}"

    def build(txn, tables):
        pol = next(iter(tables["Policy"].rows.values()), None)
        cluster = next(iter(tables["Cluster"].rows.values()), None)
        if cluster is None:
            cluster = client.StoreIdl.insert(txn, tables, "Cluster", generation=0,
                                             shards=shards or default_shards(sites), flowlog_key=new_key())
        elif shards is not None and cluster.shards != shards:
            cluster.verify("shards")
            cluster.shards = shards
        k = shards or (cluster.shards if isinstance(cluster.shards, int) else default_shards(sites))
        have = {r.name for r in tables["Shard"].rows.values()}
        for i in range(k):
            if shard_name(i) not in have:
                client.StoreIdl.insert(txn, tables, "Shard", name=shard_name(i), owner="", generation=0,
                                       handoff="", handoff_at=0.0, policy_applied=0)
        if pol is not None and pol.digest == digest and len(have) >= k:
            return Applied(pol.version, digest, False)
        if pol is None:
            pol = client.StoreIdl.insert(txn, tables, "Policy", version=0)
            version = 1
        else:
            pol.verify("version")
            version = pol.version + 1
        pol.version, pol.digest, pol.main, pol.chunks = version, digest, policy.main, chunks
        pol.applied_by, pol.applied_at = who, time.time()
        return Applied(version, digest, True)

    while True:
        status, result = client.commit_retrying(s, build)
        if status in (client.SUCCESS, client.UNCHANGED):
            return result
        raise client.StoreUnavailable(f"the store refused the policy: {status} {result or ''}".strip())


def stored_policy(s: client.StoreIdl) -> tuple[int, PolicyFiles] | None:
    pol = next(iter(s.rows("Policy")), None)
    if pol is None or not pol.chunks:
        return None
    return pol.version, from_chunks(dict(pol.chunks))


def wait_applied(s: client.StoreIdl, version: int, timeout_s: float) -> list[str]:
    """Wait until every shard's master reports `version` on all its switches; the shards still behind."""
    def behind() -> list[str]:
        return sorted(r.name for r in s.rows("Shard") if r.policy_applied < version)

    try:
        client.run_until([s], lambda: not behind(), timeout_s, "waiting for the shards")
    except client.StoreUnavailable:
        pass
    return behind()
