"""The quarantine list in the replicated store: one `Quarantine` row per entry (schema 1.2.0), so a quarantine
survives a failover and every replica follows the same list. Replicas read the rows (controller.replica) and
write their automatic entries through it; `cloudweave quarantine --store` uses `StoredList`."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from typing import Any

from cloudweave.secops.quarantine import MAX_REASON, Entry, make
from cloudweave.store import client

TABLE = "Quarantine"
MAX_EVIDENCE = 4096  # characters of an entry's evidence kept in its row


def entry_of(row: Any) -> Entry:
    try:
        evidence = json.loads(row.evidence) if row.evidence else {}
    except ValueError:
        evidence = {}
    until = row.until[0] if row.until else None
    return Entry(row.endpoint, row.reason[:MAX_REASON], row.source, float(row.since),
                 None if until is None else float(until), evidence if isinstance(evidence, dict) else {})


def entries_of(rows: Iterable[Any]) -> tuple[Entry, ...]:
    """The list as the rows hold it, in a stable order (by since, then endpoint)."""
    return tuple(sorted((entry_of(r) for r in rows), key=lambda e: (e.since, e.endpoint)))


def write(txn: Any, tables: Any, adds: Iterable[Entry] = (), releases: Iterable[str] = (), by: str = "",
          now: float | None = None) -> tuple[str, ...]:
    """In one transaction: each entry of `adds` replaces its endpoint's row, each endpoint of `releases` loses
    its row, and rows whose hold time is over go. Returns the endpoints released that were in force."""
    now = time.time() if now is None else now
    adds, releases = {e.endpoint: e for e in adds}, frozenset(releases)
    released = []
    for row in list(tables[TABLE].rows.values()):
        e = entry_of(row)
        if e.endpoint in releases and e.active(now):
            released.append(e.endpoint)
        if e.endpoint in adds or e.endpoint in releases or not e.active(now):
            row.delete()
    for e in adds.values():
        evidence = json.dumps(e.evidence, sort_keys=True, default=str)
        client.StoreIdl.insert(txn, tables, TABLE, endpoint=e.endpoint, reason=e.reason, source=e.source,
                               since=e.since, until=[] if e.until is None else [e.until],
                               evidence=evidence if len(evidence) <= MAX_EVIDENCE else "{}", written_by=by)
    return tuple(sorted(released))


class StoredList:
    """The store's list for a command: read, add, release, each one transaction (retried through a leader
    change)."""

    def __init__(self, remotes: str, by: str, timeout_s: float = 10.0):
        self.idl = client.connect(remotes, (TABLE, "Policy"), timeout_s)  # the policy: names are checked against it
        self.by, self.timeout_s = by, timeout_s

    @property
    def where(self) -> str:
        return f"the store at {self.idl.server()}"

    def load(self) -> tuple[Entry, ...]:
        return entries_of(self.idl.rows(TABLE))

    def add(self, endpoint: str, reason: str, source: str, hold_s: float | None = None) -> Entry:
        entry = make(endpoint, reason, source, hold_s)
        self._commit(lambda txn, tables: write(txn, tables, adds=(entry,), by=self.by))
        return entry

    def release(self, endpoint: str) -> bool:
        return bool(self._commit(lambda txn, tables: write(txn, tables, releases=(endpoint,), by=self.by)))

    def _commit(self, build: Any) -> Any:
        status, result = client.commit_retrying(self.idl, build, self.timeout_s)
        if status not in (client.SUCCESS, client.UNCHANGED):
            raise client.StoreUnavailable(f"the store refused the quarantine change: {status} {result or ''}"
                                          .strip())
        return result

    def close(self) -> None:
        self.idl.close()
