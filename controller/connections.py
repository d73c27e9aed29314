"""The OpenFlow listener with limits: os-ken's accept loop and connections, hardened against any peer.

os-ken 3.1.1 under the native hub trusts whoever connects (research: security findings 4b, 4c):
- its accept loop has no `try`: one `accept()` failing with EMFILE ends the listener thread silently and
  closes the listening socket, so no switch can connect again until a restart;
- there is no handshake or idle deadline, and its echo loop is off (`maximum-unreplied-echo-requests` 0);
- a connection that ends before anything is sent leaves its send thread (and so the receive thread, which
  joins it) waiting for ever: `hub.kill` does nothing under the native hub.

This module replaces those three places (`install()`, at import of controller.app) and adds what ONOS's
channel pipeline has (`IdleStateHandler`, `HandshakeTimeoutHandler`): an accept loop that logs, backs off and
keeps its socket; a cap on connections in total, and on connections still in their handshake per source
address and in total (the cheap attack); a handshake deadline; echo liveness; and a receive loop whose end
wakes the send and echo threads, so a closed connection leaves no thread behind. Every limit is a number in
`Limits`, from the environment, and said in docs/controller.md.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import logging
import os
import resource
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from os_ken.controller import controller as osken_controller
from os_ken.controller.handler import MAIN_DISPATCHER
from os_ken.lib import hub

from controller import liveness
from controller.unix_socket import UnixStream

LOG = logging.getLogger("cloudweave")
# accept() errors that mean "out of something for now": back off and try again, keeping the socket.
RESOURCE_ERRORS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)
SAY_EVERY_S = 60.0


def _env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, str(default)))


def _env_float(name: str, default: float) -> float:
    return float(os.environ.get(name, str(default)))


@dataclass(frozen=True)
class Limits:
    handshake_s: float = 5.0  # a connection not past FEATURES and PORT_DESC by then is closed
    echo_s: float = 5.0  # an echo request this often once connected...
    echo_misses: int = 3  # ...and the connection closed after this many unanswered in a row
    max_connections: int = 1024  # in total (lowered to fit the open-file limit)
    max_pending: int = 256  # still in their handshake, in total
    max_pending_per_source: int = 32  # still in their handshake, from one address (unix sockets: one source)

    @staticmethod
    def from_env() -> Limits:
        return Limits(_env_float("CLOUDWEAVE_HANDSHAKE_S", 5.0), _env_float("CLOUDWEAVE_ECHO_S", 5.0),
                      _env_int("CLOUDWEAVE_ECHO_MISSES", 3), _env_int("CLOUDWEAVE_MAX_CONNECTIONS", 1024),
                      _env_int("CLOUDWEAVE_MAX_PENDING", 256), _env_int("CLOUDWEAVE_MAX_PENDING_PER_SOURCE", 32))

    def fitted(self, nofile: int) -> Limits:
        """Within the open-file limit, leaving room for OVSDB, the store, sockets and files (128)."""
        total = max(8, min(self.max_connections, nofile - 128))
        pending = max(4, min(self.max_pending, total))
        return Limits(self.handshake_s, self.echo_s, self.echo_misses, total, pending,
                      max(1, min(self.max_pending_per_source, pending)))


def raise_nofile() -> int:
    """Raise the soft open-file limit to the hard one (as OVS does); the soft limit in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
    if want > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
            soft = want
        except (ValueError, OSError):
            pass
    return soft


@dataclass
class _Conn:
    sock: Any
    source: str
    started: float
    dp: Any = None
    established: bool = False
    reaped: bool = False  # closed at the handshake deadline (once)


@dataclass
class ConnectionTable:
    """Every OpenFlow connection alive, and what the limits allow. Written under its lock from the accept
    loop, the connections' threads and the reaper."""

    limits: Limits
    conns: dict[int, _Conn] = field(default_factory=dict)
    refused: dict[str, int] = field(default_factory=dict)  # cause -> count (metrics read it)
    closed: dict[str, int] = field(default_factory=dict)  # cause -> count
    _ids: Any = field(default_factory=itertools.count)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _said: dict[str, float] = field(default_factory=dict)

    def admit(self, sock: Any, source: str) -> int | None:
        """A new connection's id, or None when a limit refuses it (the caller closes it)."""
        with self._lock:
            pending = [c for c in self.conns.values() if not c.established]
            cause = None
            if len(self.conns) >= self.limits.max_connections:
                cause = "connections"
            elif len(pending) >= self.limits.max_pending:
                cause = "pending"
            elif sum(1 for c in pending if c.source == source) >= self.limits.max_pending_per_source:
                cause = "pending_per_source"
            if cause is not None:
                self.refused[cause] = self.refused.get(cause, 0) + 1
            else:
                cid = next(self._ids)
                self.conns[cid] = _Conn(sock, source, time.monotonic())
                return cid
        self._say(cause, f"OpenFlow connection from {source or 'a unix socket'} refused: {_WHY[cause]}")
        return None

    def attach(self, cid: int, dp: Any) -> None:
        with self._lock:
            if cid in self.conns:
                self.conns[cid].dp = dp

    def established(self, dp: Any) -> None:
        """The connection reached MAIN_DISPATCHER (its switch is known): it no longer counts as pending."""
        with self._lock:
            for c in self.conns.values():
                if c.dp is dp:
                    c.established = True

    def remove(self, cid: int) -> None:
        with self._lock:
            self.conns.pop(cid, None)

    def counts(self) -> tuple[int, int]:
        """(connections, of which still in their handshake)."""
        with self._lock:
            return len(self.conns), sum(1 for c in self.conns.values() if not c.established)

    def reap(self, now: float) -> int:
        """Close the connections past their handshake deadline; how many."""
        with self._lock:
            late = [c for c in self.conns.values() if not c.established and not c.reaped
                    and now - c.started > self.limits.handshake_s]
            for c in late:
                c.reaped = True
            if late:
                self.closed["handshake"] = self.closed.get("handshake", 0) + len(late)
        for c in late:
            _shut(c.sock)
        if late:
            self._say("handshake", f"{len(late)} OpenFlow connection(s) closed: no handshake within "
                                   f"{self.limits.handshake_s:g} s (from {late[0].source or 'a unix socket'}"
                                   f"{' and others' if len(late) > 1 else ''})")
        return len(late)

    def _say(self, cause: str, text: str) -> None:
        """One line per cause a minute; the counts are in the metrics."""
        now = time.monotonic()
        if now - self._said.get(cause, -SAY_EVERY_S) >= SAY_EVERY_S:
            self._said[cause] = now
            LOG.warning("%s (said at most once a minute; cloudweave_openflow_connections_refused_total and "
                        "..._closed_total count them)", text)


_WHY = {"connections": "at the cap on connections (CLOUDWEAVE_MAX_CONNECTIONS)",
        "pending": "at the cap on connections still in their handshake (CLOUDWEAVE_MAX_PENDING)",
        "pending_per_source": "at the cap on connections in their handshake from one address "
                              "(CLOUDWEAVE_MAX_PENDING_PER_SOURCE)"}

TABLE = ConnectionTable(Limits())


def _shut(sock: Any) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


def _source(address: Any) -> str:
    if isinstance(address, tuple) and address:
        return str(address[0])
    return ""  # a unix socket's peer has no address


# ---- the replaced os-ken parts -----------------------------------------------------------------------------


def _serve_forever(server: Any) -> None:
    """os-ken's StreamServer.serve_forever, that survives any accept() error and applies the limits."""
    liveness.register("OpenFlow listener", threading.current_thread())
    failures = 0
    said = -SAY_EVERY_S
    while True:
        try:
            sock, address = server.server.accept()
        except OSError as exc:
            failures += 1
            if time.monotonic() - said >= SAY_EVERY_S:
                said = time.monotonic()
                hint = " (raise LimitNOFILE: docs/controller.md)" if exc.errno in RESOURCE_ERRORS else ""
                LOG.error("OpenFlow listener: accept failed: %s%s; backing off, the socket stays open", exc, hint)
            time.sleep(min(1.0, 0.01 * 2 ** min(failures, 7)))
            continue
        failures = 0
        source = _source(address)
        cid = TABLE.admit(sock, source)
        if cid is None:
            with contextlib.suppress(OSError):
                sock.close()
            continue
        # A deadline on the very first bytes too (a TLS handshake happens in server.handle); Datapath sets its
        # own socket timeout once it exists.
        with contextlib.suppress(OSError):
            sock.settimeout(TABLE.limits.handshake_s)
        try:
            hub.spawn(_connection, server.handle, sock, address, cid)
        except RuntimeError as exc:  # can't start new thread
            TABLE.remove(cid)
            LOG.error("OpenFlow listener: no thread for a new connection (%s); closed", exc)
            with contextlib.suppress(OSError):
                sock.close()


def _connection(handle: Any, sock: Any, address: Any, cid: int) -> None:
    try:
        _CURRENT.cid = cid
        handle(sock, address)
    except Exception as exc:  # noqa: BLE001 - a peer's failure ends its own connection, quietly
        LOG.debug("OpenFlow connection from %s ended: %s: %s", _source(address) or "a unix socket",
                  type(exc).__name__, exc)
    finally:
        TABLE.remove(cid)
        with contextlib.suppress(OSError):
            sock.close()


_CURRENT = threading.local()


def _factory(sock: Any, address: Any) -> None:
    """os-ken's datapath_connection_factory: the Datapath registered in the table, a parser's error said
    once a minute (the logging filter) instead of a traceback per message."""
    if getattr(sock, "family", None) == socket.AF_UNIX:
        sock = UnixStream(sock)
    with contextlib.closing(osken_controller.Datapath(sock, address)) as dp:
        cid = getattr(_CURRENT, "cid", None)
        if cid is not None:
            TABLE.attach(cid, dp)
        dp.serve()


def _serve(dp: Any) -> None:
    """Datapath.serve, whose receive loop's end wakes the send and echo threads (none is left behind)."""
    dp.cw_ended = threading.Event()
    send_thr = hub.spawn(dp._send_loop)
    dp.send_msg(dp.ofproto_parser.OFPHello(dp))
    echo_thr = hub.spawn(_echo_loop, dp)
    try:
        dp._recv_loop()
    finally:
        dp.cw_ended.set()
        q = dp.send_q
        if q is not None:
            with contextlib.suppress(Exception):
                q.put_nowait((b"", True))  # the send loop ends on this; a full queue ends on the closed socket
        _join(send_thr, TABLE.limits.handshake_s)
        _join(echo_thr, 1.0)
        dp.is_active = False


def _join(thread: Any, timeout_s: float) -> None:
    if hasattr(thread, "join"):
        thread.join(timeout_s)  # the native hub's threads
    else:
        thread.wait()  # eventlet's green threads (they end at once: both loops were woken)


def _echo_loop(dp: Any) -> None:
    """os-ken's echo loop, that stops as soon as the connection ends (os-ken's sleeps out its interval)."""
    limits = TABLE.limits
    if limits.echo_misses <= 0:
        return
    dp.max_unreplied_echo_requests = limits.echo_misses
    while not dp.cw_ended.wait(limits.echo_s):
        if dp.send_q is None:
            return
        if dp.state != MAIN_DISPATCHER:
            continue  # the handshake deadline covers the time before
        if len(dp.unreplied_echo_requests) >= limits.echo_misses:
            LOG.warning("switch %s: %d echo requests unanswered (%g s apart): closing its connection",
                        f"{dp.id:#x}" if dp.id is not None else "(unknown)", limits.echo_misses, limits.echo_s)
            dp.close()
            _shut(dp.socket)
            return
        req = dp.ofproto_parser.OFPEchoRequest(dp)
        dp.unreplied_echo_requests.append(dp.set_xid(req))
        dp.send_msg(req)


def _reaper() -> None:
    liveness.register("OpenFlow handshake reaper", threading.current_thread())
    while True:
        time.sleep(min(0.5, TABLE.limits.handshake_s / 4))
        TABLE.reap(time.monotonic())


def _server_loop(original: Any) -> Any:
    def server_loop(self: Any, tcp_port: Any, ssl_port: Any) -> None:
        try:
            original(self, tcp_port, ssl_port)
        except BaseException as exc:
            liveness.die(f"the OpenFlow listener could not start or ended: {type(exc).__name__}: {exc}")
    return server_loop


_installed = False


def install(limits: Limits | None = None) -> ConnectionTable:
    """Patch os-ken (once) and start the reaper; the table in force."""
    global _installed
    TABLE.limits = (limits or Limits.from_env()).fitted(raise_nofile())
    if not _installed:
        _installed = True
        hub.StreamServer.serve_forever = _serve_forever
        osken_controller.datapath_connection_factory = _factory
        osken_controller.Datapath.serve = _serve
        osken_controller.OpenFlowController.server_loop = _server_loop(
            osken_controller.OpenFlowController.server_loop)
        threading.Thread(target=_reaper, name="cloudweave-reaper", daemon=True).start()
    return TABLE
