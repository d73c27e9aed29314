"""One switch's session: the only code that sends to that switch, on a worker of its own.

It owns what it knows to be installed on the switch (the canonical flows and groups it last confirmed), the
requests in flight (by xid, each with a timeout), and the bundles it sends. It plans the difference between
the desired state the core hands it and what is installed, and sends only that. It reads the switch back
only when it must (OVN's ofctrl: by compare, not on every change):
- on connect, and after any failure (a rejected or discarded bundle, a timeout, an error);
- when the audit finds the switch holding something other than what it installed.

The audit (every AUDIT_S) asks the switch two cheap questions: how many flows carry our cookie (one aggregate
request, answered from a count) and which groups are ours (a group-desc request; there are few). A flow
deleted, added or replaced under another cookie behind our back changes the count; a group changed or
deleted changes the groups. Then the session reads everything back and repairs what differs. A flow whose
actions were rewritten in place under our cookie keeps the count: the switch's flow monitor reports it at once
(controller.flow_monitor), and the full audit every FULL_AUDIT_S is the backstop (docs/controller.md).

A slow or frozen switch delays only its own session: every request has a timeout, a failure is retried
with exponential backoff, and its log line is written once per change of state, not once per try.

With replicas (controller.replica), the session also holds this controller's OpenFlow role on the switch: it
sends `OFPCR_ROLE_MASTER` with the generation its replica committed in the store, or `OFPCR_ROLE_SLAVE` with
the generation the store shows, and it writes only as master. A switch that answers a stale generation, or
that demotes it (role status: a newer master), is never written to again until a newer generation is
committed for it. Alone (no store) it sends no role request: OVS's default, EQUAL, as before.
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from os_ken.lib import hub

from cloudweave.flows.compile import SwitchState
from cloudweave.flows.cookies import OWNER, OWNER_MASK, is_our_group, is_our_meter
from controller import flow_monitor, wire
from controller.codec import (
    CanonContent,
    CanonGroup,
    CanonKey,
    CanonMeter,
    canonical_group_actual,
    canonical_meter_actual,
    canonical_meter_desired,
    flow_add,
    flow_delete,
    group_mod,
    meter_mod,
)
from controller.flow_desc import MalformedReply, canonical_flows
from controller.reconcile import CanonicalDesired, Plan, plan, plan_groups, plan_keys, plan_meters

LOG = logging.getLogger("cloudweave")

AUDIT_S = float(os.environ.get("CLOUDWEAVE_AUDIT_S", "1.0"))
FULL_AUDIT_S = float(os.environ.get("CLOUDWEAVE_FULL_AUDIT_S", "300"))
REQUEST_TIMEOUT_S = float(os.environ.get("CLOUDWEAVE_REQUEST_TIMEOUT_S", "5.0"))  # without progress
# One multipart reply, whatever the switch (or an impostor) says about "more to come": its bytes, its parts and
# its whole time are bounded (a reply of 100,000 flows is about 25 MB in 400 parts, read in about a second).
REPLY_MAX_BYTES = int(os.environ.get("CLOUDWEAVE_REPLY_MAX_BYTES", str(512 << 20)))
REPLY_MAX_PARTS = int(os.environ.get("CLOUDWEAVE_REPLY_MAX_PARTS", "65536"))
REPLY_MAX_S = float(os.environ.get("CLOUDWEAVE_REPLY_MAX_S", "120"))
PART_POLL_S = 0.02  # how often a reader looks for the next part of a multipart reply
RETRY_MIN_S, RETRY_MAX_S = 0.25, 8.0
SEND_CHUNK_BYTES = 1 << 20
RECENT_ERRORS = 1024  # errors kept for correlation with the bundle that caused them

# OpenFlow 1.5 error types and the prefix of their codes' names in os-ken's ofproto_v1_5.
ERROR_CODE_PREFIX = {0: "OFPHFC_", 1: "OFPBRC_", 2: "OFPBAC_", 3: "OFPBIC_", 4: "OFPBMC_", 5: "OFPFMFC_",
                     6: "OFPGMFC_", 7: "OFPPMFC_", 8: "OFPTMFC_", 9: "OFPQOFC_", 10: "OFPSCFC_", 11: "OFPRRFC_",
                     12: "OFPMMFC_", 13: "OFPTFFC_", 14: "OFPBPC_", 15: "OFPACFC_", 16: "OFPMOFC_", 17: "OFPBFC_"}


def error_name(ofp: Any, type_: int, code: int) -> str:
    """`OFPET_BAD_MATCH/OFPBMC_BAD_FIELD`, as OpenFlow names them; numbers where os-ken has no name."""
    types = {v: k for k, v in vars(ofp).items() if k.startswith("OFPET_") and isinstance(v, int)}
    prefix = ERROR_CODE_PREFIX.get(type_)
    codes = {v: k for k, v in vars(ofp).items() if prefix and k.startswith(prefix) and isinstance(v, int)}
    return f"{types.get(type_, f'type {type_}')}/{codes.get(code, f'code {code}')}"


class Wakeup:
    """Set by anyone, waited for with a timeout by one worker. os-ken's hub.Event ignores the timeout under
    the native hub (its Timeout cannot interrupt a blocked thread); a hub queue honours it under both hubs."""

    def __init__(self) -> None:
        self._q: Any = hub.Queue()

    def set(self) -> None:
        self._q.put(None)

    def wait(self, timeout: float) -> bool:
        """True when set since the last wait (and clears it), False after `timeout` seconds."""
        try:
            self._q.get(timeout=timeout)
        except hub.QueueEmpty:
            return False
        while True:
            try:
                self._q.get(block=False)
            except hub.QueueEmpty:
                return True


def _named(rejected: list[tuple[int, Any]], sent: dict[int, str], ofp: Any) -> str:
    """The first rejected messages and why, the same text for the same rejection (so said once, not at every
    retry)."""
    out = "; ".join(f"{sent[xid]}: {error_name(ofp, err.type, err.code)}" for xid, err in rejected[:3])
    return out + ("; ..." if len(rejected) > 3 else "")


class RequestFailed(Exception):
    """A request to the switch was not answered in time, was refused, or the switch went away."""


@dataclass
class _Pending:
    multi: bool
    xid: int
    what: str  # the request's name, for messages
    done: Wakeup = field(default_factory=Wakeup)
    replies: list[Any] = field(default_factory=list)
    error: Any = None
    progress_at: float = field(default_factory=time.monotonic)
    started_at: float = field(default_factory=time.monotonic)
    size: int = 0  # bytes received so far
    answered_at: float | None = None  # when its last part came


class Asked:
    """A request another thread asked of a session (`SwitchSession.ask`): its reply, once, by a deadline."""

    def __init__(self, session: SwitchSession, pending: _Pending | None):
        self._session, self._pending = session, pending

    def wait(self, deadline: float) -> tuple[tuple[Any, ...], float] | None:
        """(the reply's parts, when its last part came), or None: no whole answer by `deadline` (monotonic), an
        error from the switch, a reply cut off at its bound, or a session that ended."""
        p = self._pending
        if p is None:
            return None
        try:
            while not p.error and p.answered_at is None:
                left = deadline - time.monotonic()
                if left <= 0 or not p.done.wait(timeout=left):
                    return None
            return None if p.error else (tuple(p.replies), p.answered_at)
        finally:
            self._session._forget(p)


@dataclass(frozen=True)
class SessionStatus:
    """What other threads may know of a session: a value (`SwitchSession.status`), each field as last set."""

    dpid: int
    site: str
    role: Role
    in_step: SwitchState | None  # the desired state last found in force on the switch (compared by identity)
    switch_generation: int  # the role generation the switch said it holds, when it refused ours
    ports: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))  # name -> number, as last read


class SwitchHandle:
    """What other threads may do with a session, and nothing more: read its status, ask it something, hand it
    what the switch sent. The core publishes these (controller.core.Published.switches), never the session."""

    __slots__ = ("_session", "dpid", "site")

    def __init__(self, session: SwitchSession):
        self._session = session
        self.dpid: int = session.dpid
        self.site: str = session.site

    def status(self) -> SessionStatus:
        return self._session.status()

    def ask(self, build: Callable[[Any], Any], multi: bool = False) -> Asked:
        return self._session.ask(build, multi)

    def speaks_for(self, dp: Any) -> bool:
        """Whether `dp` is this session's connection (a reply of an older one is not its)."""
        return self._session.dp is dp

    def deliver(self, msg: Any) -> bool:
        return self._session.deliver(msg)

    def monitored(self, msg: Any) -> None:
        self._session.monitored(msg)

    def demoted(self, generation: int) -> None:
        self._session.demoted(generation)


@dataclass(frozen=True)
class Role:
    """`equal`: no replicas, nothing is sent (OVS's default role); `none`: replicas, but no word from the store
    yet (write nothing, ask nothing); `master` / `slave`: the role to hold, with its generation_id."""

    kind: str
    generation: int = 0

    @property
    def writes(self) -> bool:
        return self.kind in ("equal", "master")


EQUAL = Role("equal")
NO_ROLE = Role("none")


@dataclass
class Installed:
    """What the session knows is on the switch: canonical flows, groups and meters (ours only)."""

    flows: dict[CanonKey, CanonContent]
    groups: dict[int, CanonGroup]
    meters: dict[int, CanonMeter] = field(default_factory=dict)


class SwitchSession:
    """`post_ports(dpid, ports)` tells the core what ports the switch has; `metrics` is controller.metrics."""

    def __init__(self, dp: Any, site: str, metrics: Any, post_ports: Callable[[Any], None]):
        self.dp = dp
        self.dpid: int = dp.id
        self.site = site
        self.metrics = metrics
        self._post_ports = post_ports
        self.ports: Mapping[str, int] = MappingProxyType({})  # name -> number, as last read (replaced whole)
        self.installed: Installed | None = None  # None: unknown, read it back
        self.active = True
        self._lock = threading.Lock()
        self._wake = Wakeup()
        self._desired: SwitchState | None = None
        self._ports_stale = True
        self._outbox: list[Any] = []
        self._pending: dict[int, _Pending] = {}
        self._errors: OrderedDict[int, Any] = OrderedDict()
        self._bundle_ids = itertools.count(1)
        self._canon = CanonicalDesired()
        self._failures = 0
        self._failure_said: str | None = None
        self._foreign_said: tuple[int, float] = (0, -60.0)  # flows not ours, as last said, and when
        self._retry_at = 0.0
        self._audit_at = 0.0
        self._full_audit_at = time.monotonic() + FULL_AUDIT_S
        self._thread: Any = None
        self._role = EQUAL  # the role the core wants (set_role)
        self._role_held = EQUAL  # the role the switch last confirmed for this connection (EQUAL on connect)
        self._fenced_at: int | None = None  # a newer master's generation this switch told us about
        self._monitoring = False  # a flow monitor asked for on this connection (controller.flow_monitor)
        self.in_step: SwitchState | None = None  # the desired state last found in force on the switch
        self.switch_generation = 0  # the role generation the switch said it holds, when it refused ours

    # ---- called from other threads (the core, the shim, services) ---------------------------------------

    def start(self) -> None:
        self._thread = hub.spawn(self._run)

    def stop(self) -> None:
        self.active = False
        with self._lock:
            pending, self._pending = self._pending, {}
        for p in pending.values():
            p.error = "the switch disconnected"
            p.done.set()
        self._wake.set()

    def set_desired(self, state: SwitchState | None) -> None:
        with self._lock:
            self._desired = state
        self._wake.set()

    def set_role(self, role: Role) -> None:
        with self._lock:
            changed, self._role = role != self._role, role
        if changed:
            self._wake.set()

    def demoted(self, generation: int) -> None:
        """The switch says another controller became its master with `generation` (OFPT_ROLE_STATUS)."""
        with self._lock:
            self._role_held = Role("slave", generation)
            self._fenced_at = generation if self._fenced_at is None else max(self._fenced_at, generation)
        LOG.warning("site %s (dpid %#x): demoted to slave: another replica is master with generation %d; no "
                    "more writes from here", self.site, self.dpid, generation)
        self.in_step = None
        self._wake.set()

    @property
    def role(self) -> Role:
        """The role the switch confirmed for this connection."""
        return self._role_held

    def status(self) -> SessionStatus:
        """For other threads: what they may know of this session, as a frozen value."""
        with self._lock:
            return SessionStatus(self.dpid, self.site, self._role_held, self.in_step, self.switch_generation,
                                 self.ports)

    def ports_changed(self) -> None:
        """A port came or went: read the port list again (flows may be waiting for it)."""
        self._ports_stale = True
        self._wake.set()

    def resync(self) -> None:
        """Forget what is installed: read the switch back and repair what differs."""
        self.installed = None
        self._wake.set()

    def send_soon(self, msg: Any) -> None:
        """A message without a reply (a packet-out), sent by the worker."""
        with self._lock:
            self._outbox.append(msg)
        self._wake.set()

    def ask(self, build: Callable[[Any], Any], multi: bool = False) -> Asked:
        """A request from another thread: `build(datapath)` makes it, the session's worker sends it (a frozen
        switch stalls no caller), the reply collects in the returned `Asked`. Nothing is asked of a session
        that has ended."""
        if not self.active:
            return Asked(self, None)
        msg = build(self.dp)
        msg.set_xid(self.new_xid())
        p = _Pending(multi, msg.xid, type(msg).__name__)
        with self._lock:
            self._pending[msg.xid] = p
            self._outbox.append(msg)
        self._wake.set()
        return Asked(self, p)

    def new_xid(self) -> int:
        with self._lock:
            self.dp.xid = (self.dp.xid + 1) & self.dp.ofproto.MAX_XID  # as Datapath.set_xid does
            return self.dp.xid

    def monitored(self, msg: Any) -> None:
        """A flow-monitor update from the switch (the shim's thread): someone else changed a flow of ours, or
        the monitor paused: read the switch back and repair, now rather than at the next full audit."""
        why = flow_monitor.changed_behind_our_back(msg.body, lambda c: c & OWNER_MASK == OWNER)
        if why is None or not self._role_held.writes or self.installed is None:
            return
        LOG.warning("site %s (dpid %#x): %s; reading it back to repair it", self.site, self.dpid, why)
        self.metrics.drift.labels(self.site).inc()
        self.installed = None
        self._wake.set()

    def deliver(self, msg: Any) -> bool:
        """A reply or an error from the switch, from the shim; True when it answers one of our requests."""
        with self._lock:
            p = self._pending.get(msg.xid)
            if p is None:
                if msg.msg_type == self.dp.ofproto.OFPT_ERROR:
                    self._errors[msg.xid] = msg
                    while len(self._errors) > RECENT_ERRORS:
                        self._errors.popitem(last=False)
                return False
        p.progress_at = time.monotonic()
        if msg.msg_type == self.dp.ofproto.OFPT_ERROR:
            p.error = f"error {error_name(self.dp.ofproto, msg.type, msg.code)}"
            p.done.set()
            return True
        p.size += int(getattr(msg, "msg_len", 0) or 0)
        over = _over_bound(p)
        if over is not None:
            with self._lock:
                self._pending.pop(p.xid, None)  # the rest of this reply is dropped as it comes
            self.metrics.reply_refused.labels(self.site, over[0]).inc()
            p.error = over[1]
            p.done.set()
            return True
        p.replies.append(msg)
        if not p.multi or not msg.flags & self.dp.ofproto.OFPMPF_REPLY_MORE:
            p.answered_at = time.monotonic()
            p.done.set()
        return True

    # ---- the worker ----------------------------------------------------------------------------------------

    def _run(self) -> None:
        while self.active:
            now = time.monotonic()
            due = self._retry_at if self._failures else self._audit_at
            self._wake.wait(timeout=max(0.0, min(due - now, AUDIT_S)))
            if not self.active:
                break
            try:
                self._flush_outbox()
                now = time.monotonic()
                if self._failures and now < self._retry_at:
                    continue
                self._step()
                if time.monotonic() >= self._audit_at and self._failures == 0:
                    if self._role_held.writes:
                        self._audit()
                    else:
                        self._audit_at = time.monotonic() + AUDIT_S  # a slave audits nothing: sleep until woken
            except RequestFailed as exc:
                if not self.active:
                    # The switch went away mid-reconcile: nothing to retry on this connection; the next one is
                    # read back in full. One line, not an error and not a traceback.
                    LOG.warning("site %s (dpid %#x): the switch disconnected mid-request (%s); it is read back "
                                "when it reconnects", self.site, self.dpid, exc)
                    break
                self._failed(str(exc))
            except MalformedReply as exc:  # the switch's bytes, not our bug: one line, no traceback
                if not self.active:
                    break
                self._failed(f"{exc}")
            except Exception as exc:  # noqa: BLE001 - one bad round must not end the session
                if not self.active:
                    LOG.warning("site %s (dpid %#x): the switch disconnected mid-request (%s: %s); it is read "
                                "back when it reconnects", self.site, self.dpid, type(exc).__name__, exc)
                    break
                # Not the switch's doing: counted apart, so that a bug cannot pass for a flaky switch (the full
                # audit once raised TypeError on every switch, and it was counted as the switches' failures).
                self.metrics.session_errors.labels(self.site).inc()
                LOG.exception("site %s (dpid %#x): a bug in cloudweave's session, not the switch; retrying",
                              self.site, self.dpid)
                self._failed(f"{type(exc).__name__}: {exc}")

    def _failed(self, why: str) -> None:
        self._failures += 1
        self.in_step = None
        delay = min(RETRY_MAX_S, RETRY_MIN_S * 2 ** (self._failures - 1))
        self._retry_at = time.monotonic() + delay
        self.installed = None  # after a failure, read the switch back (Neutron's rule: full sync next)
        self._ports_stale = True
        self.metrics.reconcile_failures.labels(self.site).inc()
        if why != self._failure_said:
            LOG.error("site %s (dpid %#x): %s; retrying with backoff (next in %.2f s, at most every %.0f s)",
                      self.site, self.dpid, why, delay, RETRY_MAX_S)
            self._failure_said = why

    def _recovered(self) -> None:
        if self._failures:
            LOG.info("site %s (dpid %#x): in step with the switch again after %d failed attempt(s)", self.site,
                     self.dpid, self._failures)
        self._failures, self._failure_said = 0, None

    def _flush_outbox(self) -> None:
        with self._lock:
            out, self._outbox = self._outbox, []
        for msg in out:
            self.dp.send_msg(msg)

    # ---- requests ----------------------------------------------------------------------------------------

    def _request(self, msg: Any, multi: bool = False, timeout_s: float = REQUEST_TIMEOUT_S) -> list[Any]:
        """Send and wait for the reply (every part of a multipart one); no progress for `timeout_s` fails."""
        return self._finish(self._start(msg, multi), timeout_s)

    def _start(self, msg: Any, multi: bool = False) -> _Pending:
        """Send a request whose reply `_finish` waits for."""
        msg.set_xid(self.new_xid())
        p = _Pending(multi, msg.xid, type(msg).__name__)
        with self._lock:
            self._pending[msg.xid] = p
        if not self.dp.send_msg(msg):
            self._forget(p)
            raise RequestFailed("the connection is closing")
        return p

    def _forget(self, *pending: _Pending) -> None:
        with self._lock:
            for p in pending:
                self._pending.pop(p.xid, None)

    def _finish(self, p: _Pending, timeout_s: float = REQUEST_TIMEOUT_S,
                on_part: Callable[[Any], None] | None = None) -> list[Any]:
        """Wait for a started request's reply; `on_part` sees each part of it as it arrives (while the switch
        is still writing the next ones)."""
        seen = 0
        p.progress_at = max(p.progress_at, time.monotonic())  # time spent before waiting is not the switch's
        try:
            while True:
                done = p.done.wait(timeout=PART_POLL_S if on_part else timeout_s)
                if on_part is not None:
                    while seen < len(p.replies):
                        on_part(p.replies[seen])
                        p.replies[seen] = None  # decoded: its memory goes now, not with the whole reply
                        seen += 1
                if done:
                    break
                if time.monotonic() - p.progress_at >= timeout_s:
                    raise RequestFailed(f"no answer to {p.what} within {timeout_s:.1f} s")
                over = _over_bound(p)
                if over is not None:  # a slow trickle of parts: the whole reply's time is bounded too
                    self.metrics.reply_refused.labels(self.site, over[0]).inc()
                    raise RequestFailed(f"{p.what}: {over[1]}")
        finally:
            self._forget(p)
        if p.error:
            raise RequestFailed(f"{p.what}: {p.error}")
        return p.replies

    def _read_ports(self) -> None:
        ofp, parser = self.dp.ofproto, self.dp.ofproto_parser
        self._ports_stale = False  # before the request: a port change during it asks for another read
        try:
            replies = self._request(parser.OFPPortDescStatsRequest(self.dp, 0), multi=True)
        except RequestFailed:
            self._ports_stale = True
            raise
        seen = tuple((_name(p.name), p.port_no, bool(p.state & ofp.OFPPS_LIVE)) for r in replies for p in r.body)
        for name, no, _ in seen:
            if "\ufffd" in name and name not in self.ports:
                LOG.warning("site %s (dpid %#x): port %d's name is not valid UTF-8 (OVS cuts names to 15 bytes, "
                            "also mid-character); it is called %r here", self.site, self.dpid, no, name)
        self.ports = MappingProxyType({name: no for name, no, _ in seen})
        self._post_ports(seen)

    def _read_installed(self, meanwhile: Callable[[], Any]) -> tuple[Installed, Any]:
        """Read our flows, groups and meters back, and what `meanwhile()` returns: it runs while ovs-vswitchd
        writes its reply (100,000 flows take it about a second), and each part of the reply is decoded as it
        arrives."""
        ofp, parser = self.dp.ofproto, self.dp.ofproto_parser
        started = [self._start(parser.OFPFlowDescStatsRequest(
            self.dp, 0, ofp.OFPTT_ALL, ofp.OFPP_ANY, ofp.OFPG_ANY, OWNER, OWNER_MASK, parser.OFPMatch()), multi=True)]
        try:
            started.append(self._start(parser.OFPGroupDescStatsRequest(self.dp, 0), multi=True))
            started.append(self._start(parser.OFPMeterDescStatsRequest(self.dp, 0, ofp.OFPM_ALL), multi=True))
            result = meanwhile()
            flows: dict = {}
            self._finish(started[0], on_part=lambda r: flows.update(canonical_flows(r.body)))
            groups, meters = self._finish(started[1]), self._finish(started[2])
        finally:
            self._forget(*started)
        return Installed(flows, dict(canonical_group_actual(g, ofp) for r in groups for g in r.body
                                     if is_our_group(g.group_id)),
                         dict(canonical_meter_actual(m, ofp) for r in meters for m in r.body
                              if is_our_meter(m.meter_id))), result

    # ---- reconcile -----------------------------------------------------------------------------------------

    def _hold_role(self) -> bool:
        """Ask the switch for the role the core wants, if it differs; True when this session may write."""
        with self._lock:
            want, held, fenced = self._role, self._role_held, self._fenced_at
        if want.kind in ("equal", "none") or want == held:
            return held.writes and want.writes
        if want.kind == "master" and fenced is not None and want.generation <= fenced:
            return False  # a newer master holds the switch: asking would be refused as stale
        ofp, parser = self.dp.ofproto, self.dp.ofproto_parser
        kind = ofp.OFPCR_ROLE_MASTER if want.kind == "master" else ofp.OFPCR_ROLE_SLAVE
        try:
            self._request(parser.OFPRoleRequest(self.dp, kind, 0, want.generation))
        except RequestFailed as exc:
            if "OFPRRFC_STALE" not in str(exc):
                raise
            # What generation does the switch hold? (A role request that changes nothing answers it.) A store
            # made anew starts counting from 0 below what its switches remember: the replica then claims above.
            reply = self._request(parser.OFPRoleRequest(self.dp, ofp.OFPCR_ROLE_NOCHANGE, 0, 0))
            held = int(reply[0].generation_id) if reply else want.generation
            with self._lock:
                self._fenced_at = max(self._fenced_at or 0, want.generation)
                self._role_held = Role("stale", want.generation)
            self.switch_generation = max(self.switch_generation, held)
            LOG.warning("site %s (dpid %#x): the switch refused %s with generation %d as stale (it holds "
                        "generation %d); writing nothing", self.site, self.dpid, want.kind.upper(), want.generation,
                        held)
            return False
        with self._lock:
            self._role_held = want
        if want.kind == "master":
            # What another master did meanwhile is unknown here: read everything back before the first plan.
            self.installed = None
            LOG.info("site %s (dpid %#x): master, generation %d", self.site, self.dpid, want.generation)
        else:
            self.in_step = None
            self._monitor(False)
            LOG.info("site %s (dpid %#x): slave, generation %d", self.site, self.dpid, want.generation)
        return True if want.kind == "master" else False

    def _step(self) -> None:
        with self._lock:
            desired = self._desired
        if self._ports_stale:
            self._read_ports()
        if not self._hold_role():
            return
        read_back = self.installed is None
        if desired is None:
            return
        started = time.monotonic()
        if read_back:  # the desired flows' canonical form is made while the switch writes its reply
            self.installed, touched = self._read_installed(lambda: self._canon.update(desired, self.ports))
            self.metrics.reads.labels(self.site).inc()
        else:
            touched = self._canon.update(desired, self.ports)
        installed = self.installed
        flows, groups, missing = self._canon.flows, self._canon.groups, self._canon.missing
        # After a read-back (or new ports) compare everything; else only the keys of the units that changed,
        # since everything else is as it was installed.
        p = plan(flows, installed.flows) if read_back or touched is None else plan_keys(flows, installed.flows, touched)
        p = plan_groups(p, groups, installed.groups)
        p = plan_meters(p, dict(canonical_meter_desired(m) for m in desired.meters), installed.meters)
        p.missing_ports = missing
        if not p.size and not read_back:
            self._recovered()
            self.in_step = desired
            return  # nothing to send and nothing new learned: no line in the log
        if LOG.isEnabledFor(logging.DEBUG):  # what differed, for whoever debugs a flow that keeps changing
            for key in p.replace:
                LOG.debug("site %s: replace %s: have %s, want %s", self.site, key, installed.flows[key], flows[key])
            for key in p.add:
                LOG.debug("site %s: add %s", self.site, key)
            for key in p.delete:
                LOG.debug("site %s: delete %s", self.site, key)
        had = len(installed.flows)
        if p.size:
            self._send_meters(p, p.meter_add, p.meter_modify, ())  # before the flows that name them
            if p.size > p.meter_size:
                self._send_bundle(p)
            self._send_meters(p, {}, {}, p.meter_delete)  # after the flows that named them are gone
            installed.meters = {m.meter_id: canonical_meter_desired(m)[1] for m in desired.meters}
            self.metrics.flow_mods.labels(self.site).inc(p.size - p.group_size - p.meter_size)
            self.metrics.group_mods.labels(self.site).inc(p.group_size)
            names = {g.group_id: g.name for g in desired.groups}
            for gid in list(p.group_add) + list(p.group_modify):
                LOG.info("site %s: group %#x %s: %s", self.site, gid,
                         "added" if gid in p.group_add else "modified", names.get(gid, ""))
            for key in p.delete:
                installed.flows.pop(key, None)
            installed.flows.update(p.add)
            installed.flows.update(p.replace)
            installed.groups = dict(groups)
        elapsed = time.monotonic() - started
        self.metrics.flows.labels(self.site).set(len(flows))
        self.metrics.groups.labels(self.site).set(len(groups))
        self.metrics.reconcile_seconds.labels(self.site).set(elapsed)
        wait = f"; waiting for ports: {', '.join(sorted(missing))}" if missing else ""
        LOG.info("site %s (dpid %#x): %d flows desired, %d were on the switch: %s (%d flow-mods) in %.0f ms%s",
                 self.site, self.dpid, len(flows), had, p.summary(), p.size, elapsed * 1000, wait)
        self._recovered()
        self.in_step = None if missing else desired
        self._audit_at = time.monotonic() + AUDIT_S
        self._monitor(True)

    def _monitor(self, on: bool) -> None:
        """Ask the switch for a flow monitor while this session writes; cancel it when it no longer does (a
        slave would be told every change its master makes). A switch that refuses it leaves the audits."""
        if on == self._monitoring:
            return
        self._monitoring = on
        cmd = self.dp.ofproto.OFPFMC_ADD if on else self.dp.ofproto.OFPFMC_DELETE
        self.dp.send(flow_monitor.request(self.new_xid(), cmd))

    def _audit(self) -> None:
        """Is the switch still holding what we installed? Cheap questions every AUDIT_S, everything now and
        then; on a difference, read it back and repair (the next step)."""
        installed = self.installed
        self._audit_at = time.monotonic() + AUDIT_S
        if installed is None:
            return
        ofp, parser = self.dp.ofproto, self.dp.ofproto_parser
        self.metrics.audits.labels(self.site).inc()
        if time.monotonic() >= self._full_audit_at:
            self._full_audit_at = time.monotonic() + FULL_AUDIT_S
            now, _ = self._read_installed(lambda: None)
            differs = now != installed
            found = "flows or groups that differ from what it installed"
        else:
            reply = self._request(parser.OFPAggregateStatsRequest(
                self.dp, 0, ofp.OFPTT_ALL, ofp.OFPP_ANY, ofp.OFPG_ANY, OWNER, OWNER_MASK, parser.OFPMatch()))
            count = dict(reply[0].body.stats.fields).get("flow_count")
            groups = self._request(parser.OFPGroupDescStatsRequest(self.dp, 0), multi=True)
            have_groups = dict(canonical_group_actual(g, ofp) for r in groups for g in r.body
                               if is_our_group(g.group_id))
            differs = count != len(installed.flows) or have_groups != installed.groups
            found = (f"{count} of our flows (installed {len(installed.flows)}) and {len(have_groups)} of our "
                     f"groups (installed {len(installed.groups)})")
            self._count_foreign(count)
        if differs:
            LOG.warning("site %s (dpid %#x): the switch holds %s: changed behind the controller's back; "
                        "reading it back to repair it", self.site, self.dpid, found)
            self.metrics.drift.labels(self.site).inc()
            self.installed = None
            self._wake.set()

    def _count_foreign(self, ours: int | None) -> None:
        """Flows of any other cookie: another controller on the bridge, or a hand edit. They are not ours to
        remove (an operator's flow, a monitoring tool's), but one at a high priority could divert traffic
        before our pipeline sees it: counted, and said when their number changes (at most once a minute)."""
        ofp, parser = self.dp.ofproto, self.dp.ofproto_parser
        reply = self._request(parser.OFPAggregateStatsRequest(
            self.dp, 0, ofp.OFPTT_ALL, ofp.OFPP_ANY, ofp.OFPG_ANY, 0, 0, parser.OFPMatch()))
        total = dict(reply[0].body.stats.fields).get("flow_count")
        if total is None or ours is None:
            return
        foreign = max(0, total - ours)
        self.metrics.foreign_flows.labels(self.site).set(foreign)
        now = time.monotonic()
        if foreign != self._foreign_said[0] and (foreign == 0 or now - self._foreign_said[1] >= 60.0):
            if foreign:
                LOG.warning("site %s (dpid %#x): %d flow(s) on the switch are not ours (another cookie): another "
                            "controller, or a hand edit; left alone (ovs-ofctl dump-flows shows them)", self.site,
                            self.dpid, foreign)
            else:
                LOG.info("site %s (dpid %#x): no flow but ours on the switch again", self.site, self.dpid)
            self._foreign_said = (foreign, now)

    def _send_meters(self, p: Plan, add: dict[int, CanonMeter], modify: dict[int, CanonMeter],
                     delete: list[int] | tuple[int, ...]) -> None:
        """Meter-mods, which OVS does not take in a bundle: sent on their own, then a barrier; any refused fails
        the round (nothing of the bundle is sent after a refused add)."""
        msgs = [(meter_mod(self.dp, "add", mid, c), f"meter add {mid:#x}") for mid, c in add.items()]
        msgs += [(meter_mod(self.dp, "modify", mid, c), f"meter modify {mid:#x}") for mid, c in modify.items()]
        msgs += [(meter_mod(self.dp, "delete", mid, None), f"meter delete {mid:#x}") for mid in delete]
        if not msgs:
            return
        sent = {}
        for msg, what in msgs:
            msg.set_xid(self.new_xid())
            sent[msg.xid] = what
            if not self.dp.send_msg(msg):
                raise RequestFailed("the connection is closing")
        self._request(self.dp.ofproto_parser.OFPBarrierRequest(self.dp))
        with self._lock:
            rejected = [(xid, self._errors.pop(xid)) for xid in sent if xid in self._errors]
        if rejected:
            raise RequestFailed(f"the switch rejected {len(rejected)} of {len(msgs)} meter-mods "
                                f"({_named(rejected, sent, self.dp.ofproto)})")
        for mid in add:
            LOG.info("site %s: meter %#x added: %s %s", self.site, mid, add[mid][1], add[mid][0])

    def _send_bundle(self, p: Plan) -> None:
        """The plan's messages in one atomic, ordered bundle, committed only if the switch took every one."""
        ofp, parser = self.dp.ofproto, self.dp.ofproto_parser
        bundle_id = next(self._bundle_ids)
        flags = ofp.OFPBF_ATOMIC | ofp.OFPBF_ORDERED
        self._request(parser.OFPBundleCtrlMsg(self.dp, bundle_id, ofp.OFPBCT_OPEN_REQUEST, flags, []))
        sent: dict[int, str] = {}  # xid -> what it was, to name what the switch rejects
        chunk: list[bytes] = []
        size = 0
        for xid, what, raw in self._bundle_adds(p, bundle_id, flags):
            sent[xid] = what
            chunk.append(raw)
            size += len(raw)
            if size >= SEND_CHUNK_BYTES:  # a byte stream: many messages per send, not one hand-off each
                self.dp.send(b"".join(chunk))
                chunk, size = [], 0
        if chunk:
            self.dp.send(b"".join(chunk))
        # The switch answers a rejected message at once; after this barrier every such answer is in, and a
        # bundle with one is discarded rather than committed without it.
        self._request(parser.OFPBarrierRequest(self.dp))
        with self._lock:
            rejected = [(xid, self._errors.pop(xid)) for xid in sent if xid in self._errors]
        if rejected:
            try:
                self._request(parser.OFPBundleCtrlMsg(self.dp, bundle_id, ofp.OFPBCT_DISCARD_REQUEST, flags, []))
            except RequestFailed:
                pass  # OVS fails the whole bundle at the first rejected message: nothing is left to discard
            # One message, the same for the same rejection: _failed says it once, not at every retry.
            raise RequestFailed(f"the switch rejected {len(rejected)} of {p.size} messages "
                                f"({_named(rejected, sent, ofp)}); the bundle was discarded, the switch's flows "
                                "stay as they were")
        try:
            self._request(parser.OFPBundleCtrlMsg(self.dp, bundle_id, ofp.OFPBCT_COMMIT_REQUEST, flags, []))
        except RequestFailed:
            # What only the commit finds (a full table) fails the bundle there; the switch names the message
            # it refused just before its answer to the commit.
            with self._lock:
                rejected = [(xid, self._errors.pop(xid)) for xid in sent if xid in self._errors]
            if not rejected:
                raise
            raise RequestFailed(f"the switch refused to commit {p.size} messages ({_named(rejected, sent, ofp)}); "
                                "the switch's flows stay as they were") from None

    def _wrap(self, msg: Any, bundle_id: int, flags: int) -> tuple[int, bytes]:
        wrapped = self.dp.ofproto_parser.OFPBundleAddMsg(self.dp, bundle_id, flags, msg, [])
        xid = self.new_xid()
        wrapped.set_xid(xid)
        wrapped.serialize()
        return xid, bytes(wrapped.buf)

    def _bundle_adds(self, p: Plan, bundle_id: int, flags: int) -> Iterator[tuple[int, str, bytes]]:
        """The plan as bundle-add messages, in an order that never refers to a missing group: groups added and
        modified, flows deleted, flows added, groups deleted. Flow-mods by our direct encoder (os-ken's for what
        it lacks), group-mods by os-ken's."""
        dp = self.dp
        for gid, content in itertools.chain(p.group_add.items(), p.group_modify.items()):
            verb = "add" if gid in p.group_add else "modify"
            yield self._tagged(group_mod(dp, verb, gid, content), f"group {verb} {gid:#x}", bundle_id, flags)
        items = [(k, None) for k in p.delete] + list(itertools.chain(p.add.items(), p.replace.items()))
        for key, content in items:
            what = f"flow {'delete' if content is None else 'add'} table={key[0]} priority={key[1]} {dict(key[2])}"
            xid = self.new_xid()
            try:
                if content is None:
                    inner = wire.flow_mod(xid, wire.OFPFC_DELETE_STRICT, key, None, OWNER, OWNER_MASK)
                else:
                    inner = wire.flow_mod(xid, wire.OFPFC_ADD, key, content)
                yield xid, what, wire.bundle_add(xid, bundle_id, flags, inner)
            except wire.Unsupported:
                msg = flow_delete(dp, key) if content is None else flow_add(dp, key, content)
                yield self._tagged(msg, what, bundle_id, flags)
        for gid in p.group_delete:
            yield self._tagged(group_mod(dp, "delete", gid, None), f"group delete {gid:#x}", bundle_id, flags)

    def _tagged(self, msg: Any, what: str, bundle_id: int, flags: int) -> tuple[int, str, bytes]:
        xid, raw = self._wrap(msg, bundle_id, flags)
        return xid, what, raw


def _name(name: Any) -> str:
    """A port name, never failing on what the switch sent (OVS cuts names to 15 bytes, mid-character too)."""
    if isinstance(name, bytes):
        return name.split(b"\0", 1)[0].decode("utf-8", "replace")
    return str(name)


def _over_bound(p: _Pending) -> tuple[str, str] | None:
    """(cause, message) when a reply has gone past its bound of bytes, parts or time."""
    if p.size > REPLY_MAX_BYTES:
        return "bytes", f"the reply passed {REPLY_MAX_BYTES >> 20} MiB (CLOUDWEAVE_REPLY_MAX_BYTES); cut off"
    if len(p.replies) >= REPLY_MAX_PARTS:
        return "parts", f"the reply passed {REPLY_MAX_PARTS} parts (CLOUDWEAVE_REPLY_MAX_PARTS); cut off"
    if p.multi and time.monotonic() - p.started_at > REPLY_MAX_S:
        return "time", f"the reply took over {REPLY_MAX_S:g} s (CLOUDWEAVE_REPLY_MAX_S); cut off"
    return None
