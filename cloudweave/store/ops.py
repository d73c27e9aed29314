"""What the `cloudweave apply` and `cloudweave status` commands do with the store."""

from __future__ import annotations

import getpass
import socket
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from cloudweave.flowlog.key import new_key
from cloudweave.store import client
from cloudweave.store.policy import PolicyFiles, from_chunks
from cloudweave.store.shards import default_shards, shard_name

TABLES = ("Cluster", "Operator", "Policy", "Shard", "Replica", "NextHop")
PUBLISH_TRIES = 5  # two applies at once: one takes the version, the other's insert breaks the index and retries


class NotOperator(client.StoreUnavailable):
    """The store refused the policy: this client's certificate is not an operator's."""


@dataclass(frozen=True)
class Applied:
    version: int
    digest: str
    changed: bool  # False: the store already held exactly these files (no new version)


def latest_policy(rows: Iterable[Any]) -> Any:
    """The policy in force: the newest of the rows (one per operator, each the last it applied)."""
    return max(rows, key=lambda r: r.version, default=None)


def applier() -> str:
    """Who this client is to the store: its certificate's name over TLS (the store checks it), else
    user@host (cleartext, on one host: nobody checks it)."""
    return client.identity() or f"{getpass.getuser()}@{socket.gethostname()}"


def publish(s: client.StoreIdl, policy: PolicyFiles, sites: int, shards: int | None = None) -> Applied:
    """Write the policy as version+1 in one transaction, with the cluster row and the shard rows it needs.
    The row goes in under this client's name and is kept by pointing this client's `Operator` row at it:
    over TLS the store lets a certificate do that only for an Operator row of its own name (cloudweave.store.
    rbac); in cleartext the row is made on first use. Two applies at once: the version index takes one."""
    digest = policy.digest
    chunks = policy.chunks()
    who = applier()

    def build(txn, tables):
        pol = latest_policy(tables["Policy"].rows.values())
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
        me = next((r for r in tables["Operator"].rows.values() if r.name == who), None)
        if me is None:
            me = client.StoreIdl.insert(txn, tables, "Operator", name=who)
        version = (pol.version if pol is not None else 0) + 1
        new = client.StoreIdl.insert(txn, tables, "Policy", version=version, digest=digest, main=policy.main,
                                     chunks=chunks, applied_by=who, applied_at=time.time())
        me.policy = [new]
        return Applied(version, digest, True)

    for _ in range(PUBLISH_TRIES):
        status, result = client.commit_retrying(s, build)
        if status in (client.SUCCESS, client.UNCHANGED):
            return result
        text = str(result or "")
        if "permission error" in text:
            raise NotOperator(
                f"the store refused the policy: '{who}' is not one of its operators (on a store host, as root: "
                f"`cloudweave store operator add {who} DIR`)")
        if "constraint violation" not in text:
            break
    raise client.StoreUnavailable(f"the store refused the policy: {status} {result or ''}".strip())


def stored_policy(s: client.StoreIdl) -> tuple[int, PolicyFiles] | None:
    pol = latest_policy(s.rows("Policy"))
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
