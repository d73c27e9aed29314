"""The one module that talks OVSDB to the store (python-ovs). Everything above it sees plain values.

A `StoreIdl` is one client session on the cluster: it follows the leader (python-ovs's `leader_only`, which
checks `_Server.Database`), reaches a new leader within a second of its election (python-ovs's backoff is
capped at 250 ms here; its default, 1-8 s, made a leader loss cost 12 s median: docs/replicas.md), and
may queue on one OVSDB lock. A lock lives in one server process and is not replicated: a grant counts only
once the session has reached the leader and is monitoring (`holds_lock`); even then it is a failure detector
and a queue, never the fence: ownership is a row written by compare-and-set, and the fence is the switch's
OpenFlow role generation (controller.replica, controller.session).
"""

from __future__ import annotations

import re
import time
import warnings
from collections.abc import Callable, Iterable
from typing import Any

with warnings.catch_warnings():  # python-ovs's poller imports eventlet when present, which warns it is deprecated
    warnings.simplefilter("ignore")
    import ovs.poller
import ovs.db.idl as _idl
import ovs.stream

from cloudweave.pki import certificate_name
from cloudweave.store import SCHEMA

LOCK_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")  # an OVSDB <id>: python-ovs waits forever on another name
RECONNECT_MIN_MS, RECONNECT_MAX_MS = 100, 250
Txn = _idl.Transaction
TRY_AGAIN, SUCCESS, UNCHANGED, NOT_LOCKED = Txn.TRY_AGAIN, Txn.SUCCESS, Txn.UNCHANGED, Txn.NOT_LOCKED


class StoreUnavailable(RuntimeError):
    pass


_identity: str | None = None


def use_tls(key: str, cert: str, ca: str) -> str:
    """Give this process's `ssl:` sessions (the store's and any other python-ovs one) their key, certificate
    and CA; the certificate's name, which the store knows this client by (RBAC, `applied_by`). python-ovs
    reads the files at each connection, so a rotated certificate is used from the next reconnect."""
    global _identity
    name = certificate_name(cert)
    ovs.stream.Stream.ssl_set_private_key_file(key)
    ovs.stream.Stream.ssl_set_certificate_file(cert)
    ovs.stream.Stream.ssl_set_ca_cert_file(ca)
    _identity = name
    return name


def identity() -> str | None:
    """The name in this process's certificate (use_tls), or None in cleartext."""
    return _identity


def split_remotes(text: str) -> str:
    """`tcp:a:6641,tcp:b:6641` (commas or spaces) -> python-ovs's remote list; checked, not guessed."""
    parts = [p for p in re.split(r"[,\s]+", text.strip()) if p]
    if not parts:
        raise StoreUnavailable("no store remotes given (tcp:IP:PORT[,tcp:IP:PORT...])")
    for p in parts:
        if not re.match(r"^(tcp|ssl|unix):", p):
            raise StoreUnavailable(f"'{p}' is not an OVSDB remote (tcp:IP:PORT, ssl:IP:PORT or unix:/path)")
        if p.startswith("ssl:") and _identity is None:
            raise StoreUnavailable(f"'{p}' needs this client's --private-key, --certificate and --ca-cert "
                                   "(cloudweave pki issue DIR NAME --kind replica|operator)")
    return ",".join(parts)


class StoreIdl:
    """A session on the store, monitoring `tables` (all rows; the store's tables are small)."""

    def __init__(self, remotes: str, tables: Iterable[str], lock: str | None = None, probe_ms: int = 1000):
        helper = _idl.SchemaHelper(location=SCHEMA)
        for t in tables:
            helper.register_table(t)
        self.idl = _idl.Idl(split_remotes(remotes), helper, probe_interval=probe_ms, leader_only=True)
        reconnect = self.idl._session.reconnect
        # Set directly: set_backoff() clamps the minimum to 1 s (and raises the maximum to it).
        reconnect.min_backoff, reconnect.max_backoff = RECONNECT_MIN_MS, RECONNECT_MAX_MS
        if lock is not None:
            self.set_lock(lock)

    # ---- state -----------------------------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        """Connected to the leader and monitoring: the rows are the cluster's."""
        return self.idl.state == self.idl.IDL_S_MONITORING and self.idl._session.is_connected()

    @property
    def holds_lock(self) -> bool:
        return self.ready and self.idl.has_lock and self.idl.lock_name is not None

    @property
    def lock_name(self) -> str | None:
        return self.idl.lock_name

    @property
    def seqno(self) -> int:
        return self.idl.change_seqno

    def set_lock(self, name: str | None) -> None:
        if name is not None and not LOCK_NAME.match(name):
            raise ValueError(f"lock name '{name}' is not an OVSDB id (letters, digits, '_')")
        self.idl.set_lock(name)

    def rows(self, table: str) -> list[Any]:
        return list(self.idl.tables[table].rows.values())

    def server(self) -> str:
        return self.idl.session_name()

    # ---- the loop ----------------------------------------------------------------------------------------------

    def run(self) -> None:
        self.idl.run()

    def wait(self, poller: Any) -> None:
        self.idl.wait(poller)

    def close(self) -> None:
        self.idl.close()

    # ---- writes ------------------------------------------------------------------------------------------------

    def commit(self, build: Callable[[Any, Any], Any]) -> tuple[str, Any]:
        """One transaction, waited for: `build(txn, tables)` adds its operations (verify, set, insert, delete)
        and returns anything; (status, that). With a lock set, the transaction asserts it."""
        txn = Txn(self.idl)
        try:
            result = build(txn, self.idl.tables)
        except BaseException:
            txn.abort()
            raise
        status = txn.commit_block()
        if status not in (SUCCESS, UNCHANGED):
            result = txn.get_error() if status == Txn.ERROR else result
        return status, result

    @staticmethod
    def insert(txn: Any, tables: Any, table: str, **values: Any) -> Any:
        row = txn.insert(tables[table])
        for k, v in values.items():
            setattr(row, k, v)
        return row


def run_until(idls: Iterable[StoreIdl], done: Callable[[], bool], timeout_s: float, what: str) -> None:
    """Drive the sessions until `done()`; StoreUnavailable after `timeout_s`."""
    idls = list(idls)
    deadline = time.monotonic() + timeout_s
    while True:
        for i in idls:
            i.run()
        if done():
            return
        if time.monotonic() >= deadline:
            names = ", ".join(i.server() for i in idls)
            raise StoreUnavailable(f"{what}: no answer from the store within {timeout_s:.0f} s ({names})")
        poller = ovs.poller.Poller()
        for i in idls:
            i.wait(poller)
        poller.timer_wait(20)
        poller.block()


def connect(remotes: str, tables: Iterable[str], timeout_s: float = 10.0) -> StoreIdl:
    """A session that is monitoring the leader, or StoreUnavailable."""
    s = StoreIdl(remotes, tables)
    try:
        run_until([s], lambda: s.ready, timeout_s, f"connecting to {remotes}")
    except StoreUnavailable:
        s.close()
        raise
    return s


def commit_retrying(s: StoreIdl, build: Callable[[Any, Any], Any], timeout_s: float = 10.0) -> tuple[str, Any]:
    """Commit, retrying through a leader change (`try again`) until `timeout_s`; other outcomes are returned."""
    deadline = time.monotonic() + timeout_s
    while True:
        if s.ready:
            status, result = s.commit(build)
            if status != TRY_AGAIN:
                return status, result
        if time.monotonic() >= deadline:
            raise StoreUnavailable(f"the store did not take the transaction within {timeout_s:.0f} s")
        run_until([s], lambda: s.ready, max(0.1, deadline - time.monotonic()), "reconnecting")
