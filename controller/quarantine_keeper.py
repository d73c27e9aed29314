"""The quarantine's one home in the controller: the list in force (the file or the store's rows, its
hold times, an automatic entry kept while its endpoint still sends, the budget of automatic entries) and the
log of each change. The core asks it and commits what it returns: the keeper never touches the state.

From alarm to flows: `cloudweave/secops/detect.py` raises an alarm; `cloudweave/secops/decide.py` (on the
collector's thread) says whether to act; the core cuts the endpoint off (`flows/quarantine.py`) and then
`record_auto` writes the list (`cloudweave/secops/quarantine.py`, or with replicas the store's copy,
`cloudweave/secops/stored.py`), which `cloudweave quarantine` edits by hand.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import Any

from cloudweave.flows.quarantine import limit_rate, limited_addresses
from cloudweave.secops import quarantine
from cloudweave.secops.decide import held_name
from controller.guard import Budget, Repeats
from controller.keeper import NOTHING, Reply, change
from controller.messages import QuarantineAlarm

LOG = logging.getLogger("cloudweave")
KEEP_QUIET_S = 10.0  # an automatic quarantine ends once its endpoint has been quiet this long (sFlow-RT, ONOS)
KEEP_AHEAD_S = 1.0  # how long before an automatic quarantine ends it is held longer if still needed
AUTO_PER_MINUTE = int(os.environ.get("CLOUDWEAVE_AUTO_QUARANTINE_PER_MINUTE", "20"))  # new automatic entries
AUTO_MAX = int(os.environ.get("CLOUDWEAVE_AUTO_QUARANTINE_MAX", "1000"))  # automatic entries in force


class StoreFeed:
    """With replicas: the store's list (cloudweave.secops.stored), as the replica service posts it; an entry
    this replica makes is handed to the replica service, which writes it to the store."""

    def __init__(self, entries: tuple[quarantine.Entry, ...], write: Callable[[quarantine.Entry], None]):
        self._entries, self._offered, self._write = entries, None, write

    where = "the store"

    def read(self) -> tuple[quarantine.Entry, ...]:
        return self._entries

    def offer(self, entries: tuple[quarantine.Entry, ...]) -> None:
        self._offered = entries

    def changed(self) -> tuple[quarantine.Entry, ...] | None:
        offered, self._offered = self._offered, None
        return offered

    def write(self, entry: quarantine.Entry, entries: tuple[quarantine.Entry, ...]) -> tuple[quarantine.Entry, ...]:
        self._write(entry)
        return quarantine.with_entry(entries, entry)


class QuarantineKeeper:
    """The list in `source` (None: no list, nothing held), followed each tick. Used on the core's thread."""

    def __init__(self, source: quarantine.FileList | StoreFeed | None, config: str, metrics: Any,
                 per_minute: int = AUTO_PER_MINUTE, most: int = AUTO_MAX):
        self.source, self.config, self.metrics, self.most = source, config, metrics, most
        self.entries: tuple[quarantine.Entry, ...] = source.read() if source is not None else ()
        self.expiry = quarantine.next_expiry(self.entries, time.time())
        self.seen_at: dict[str, float] = {}  # endpoint -> when the quarantine last dropped its traffic
        self._said = Repeats()
        self._budget = Budget(per_minute, 60.0)

    def cut_off(self) -> frozenset[str]:
        return quarantine.active(self.entries)

    # ---- what the core asks (controller.keeper: each returns a Reply) ----------------------------------------

    def tick(self, pub: Any, now: float | None = None) -> Reply:
        """The list followed: a change of it, or of what is in force as entries end."""
        now = time.time() if now is None else now
        cut_off = self.check(now, pub.state.model)
        before = pub.state.quarantined
        if cut_off is None or cut_off == before:
            return NOTHING

        def then(committed: bool) -> None:
            if committed:
                self.log_changes(before, cut_off, pub.state.model, now)

        return change("a quarantine change", then, quarantined=cut_off)

    def alarm(self, msg: QuarantineAlarm, pub: Any) -> Reply:
        """Cut the endpoint off first (the core compiles and hands the flows to its session), then write the
        list, within the budget of automatic entries."""
        before = pub.state.quarantined
        if msg.endpoint in before or self.refusal(msg.endpoint, msg.reason) is not None:
            return NOTHING
        after = before | {msg.endpoint}

        def then(committed: bool) -> None:
            if committed:
                self.metrics.quarantine_seconds.observe(max(0.0, time.time() - msg.raised_at))
                self.record_auto(msg.endpoint, msg.reason, msg.hold_s, dict(msg.evidence))
                self.log_changes(before, after, pub.state.model)

        return change(f"quarantine of {msg.endpoint}", then, quarantined=after)

    def stored(self, entries: tuple[quarantine.Entry, ...]) -> None:
        """The store's list, from the replica service: followed at the next tick, as a file's change is."""
        if isinstance(self.source, StoreFeed):
            self.source.offer(entries)

    def seen(self, endpoint: str, at: float) -> None:
        self.seen_at[endpoint] = at

    def check(self, now: float, model: Any) -> frozenset[str] | None:
        """What is cut off now, when the list changed or an entry is about to end; else None. An automatic
        entry whose endpoint still sends is held longer first (before it ends, so that the list never shows
        it ended while it is still in force)."""
        if self.source is None:
            return None
        try:
            fresh = self.source.changed()
        except quarantine.QuarantineFileError as exc:
            LOG.error("%s; the quarantine in force stays", exc)
            return None
        expiring = self.expiry is not None and now >= self.expiry - KEEP_AHEAD_S
        if fresh is None and not expiring:
            return None
        if fresh is not None:
            self.entries = fresh
        if expiring:
            self._keep_the_active(now, model)
        self.expiry = quarantine.next_expiry(self.entries, now)
        return quarantine.active(self.entries, now)

    def _keep_the_active(self, now: float, model: Any) -> None:
        """An automatic quarantine whose hold time is over ends only once its endpoint has been quiet for
        KEEP_QUIET_S (its traffic is still sampled as the quarantine drops it); else it is held that much
        longer."""
        kept = [e for e in self.entries if e.source == "auto" and e.until is not None and
                e.until <= now + KEEP_AHEAD_S and now - self.seen_at.get(e.endpoint, 0.0) < KEEP_QUIET_S]
        for e in kept:
            LOG.warning("quarantine: %s kept %.0f s more: it still sends (the quarantine saw its traffic %.1f s "
                        "ago)", held_name(e.endpoint, model), KEEP_QUIET_S, now - self.seen_at[e.endpoint])
            self._write(quarantine.make(e.endpoint, e.reason, e.source, KEEP_QUIET_S, e.evidence, now=now))

    def _write(self, entry: quarantine.Entry) -> None:
        """Write `entry`; kept in memory if it cannot be (said), so it is in force all the same."""
        try:
            self.entries = self.source.write(entry, self.entries)
        except (OSError, quarantine.QuarantineFileError) as exc:
            LOG.error("quarantine of %s in force, but not written to %s (it ends with this process): %s",
                      entry.endpoint, self.source.where, exc)
            self.entries = quarantine.with_entry(self.entries, entry)

    def refusal(self, endpoint: str, reason: str) -> str | None:
        """Why a new automatic entry is not made (its cause, counted and said once a minute), or None. At most
        `per_minute` new ones a minute and `most` in force: each one is a flow, and for an outside address
        a meter, at every uplink, and the list's size is capped."""
        cause = quarantine.auto_refusal(self.entries, time.time(), self.most, lambda: self._budget.allow("auto"))
        if cause is not None:
            self.metrics.quarantine_refused.labels(cause).inc()
            if self._said.check(("quarantine budget", cause)) is not None:
                LOG.error("quarantine of %s not made: %s (%s); detection goes on, a quarantine by hand still works",
                          endpoint, f"{self.most} automatic entries are in force" if cause == "total" else
                          f"{self._budget.n} automatic entries were made in the last minute", reason)
        return cause

    def record_auto(self, endpoint: str, reason: str, hold_s: float, evidence: dict) -> None:
        """Write an automatic entry, once its endpoint is cut off."""
        self._write(quarantine.make(endpoint, reason, "auto", hold_s, evidence))
        self.expiry = quarantine.next_expiry(self.entries, time.time())

    def log_changes(self, before: frozenset[str], after: frozenset[str], model: Any, now: float = 0.0) -> None:
        entries = {e.endpoint: e for e in self.entries}
        limited = set(map(str, limited_addresses(model, after)))
        for name in sorted(after - before):
            e = entries[name]
            until = "until released" if e.until is None else f"for {e.until - e.since:.0f} s"
            why = f"({e.source}: {e.reason or 'no reason given'})"
            if name in limited:
                uplinks = ", ".join(s.name for s in model.sites if s.uplink) or "none"
                LOG.warning("quarantine: outside address %s held to %s at every uplink (sites %s), %s %s", name,
                            limit_rate(model), uplinks, until, why)
            elif not model.has_endpoint(name):
                LOG.warning("quarantine: '%s' is neither an endpoint of %s nor an address; nothing to cut off",
                            name, self.config)
                continue
            else:
                LOG.warning("quarantine: endpoint %s at site %s cut off, %s %s", name, model.endpoint(name).site,
                            until, why)
            self.metrics.quarantine_changes.labels("quarantined", e.source).inc()
        for name in sorted(before - after):
            ended = name in entries and not entries[name].active(now)
            LOG.warning("quarantine: %s released (%s)", held_name(name, model), "its hold time is over" if ended
                        else "its entry was removed")
            self.metrics.quarantine_changes.labels("released", "expiry" if ended else "removed").inc()
        self.metrics.quarantined.set(sum(1 for name in after if model.has_endpoint(name)) + len(limited))

