"""Set the conntrack zone limits of each site this replica masters (controller.roles) and report the segments
that reach theirs (controller.conn_limits), every poll interval and at once after a reload or a change of
mastership, on a thread of its own (ovs-appctl can be slow)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from os_ken.lib import hub

from controller import conn_limits
from controller.roles import Duty, acts_at

LOG = logging.getLogger("cloudweave")


class ConnLimitService:
    def __init__(self, metrics: Any, published: Callable[[], Any]):
        self.metrics = metrics
        self.published = published
        self.active = True
        self.limited: dict[str, set[int]] = {}  # site -> zones we set limits on
        self.full: set[tuple[str, str]] = set()  # (site, segment) at their connection limit
        self.failing: set[str] = set()  # sites whose ovs-appctl fails (said once)

    def run(self) -> None:
        model, mastered = None, None
        waited = 0.0
        while self.active:
            snap = self.published()
            current = snap.state.model
            if current is not model or snap.mastered != mastered or waited >= current.poll_interval_s:
                model, mastered, waited = current, snap.mastered, 0.0
                try:
                    self.round(model, mastered)
                except Exception:  # noqa: BLE001 - one bad round must not stop the limits
                    LOG.exception("connection limits")
            hub.sleep(0.1)
            waited += 0.1

    def stop(self) -> None:
        self.active = False

    def round(self, model: Any, mastered: frozenset[str] | None = None) -> None:
        """Set and read the limits of the sites this replica masters (`mastered`; None: alone, all of them)."""
        for site in model.sites:
            if not acts_at(Duty.CONN_LIMITS, site.name, mastered):
                self.limited.pop(site.name, None)  # its master sets them now, from what the model wants
                continue
            want = set(conn_limits.wanted(model, site.name))
            had = self.limited.get(site.name, set())
            if not want and not had:
                continue
            try:
                conn_limits.remove(site, had - want)
                uses = conn_limits.apply_and_read(model, site)
            except (conn_limits.LimitsUnavailable, OSError, ValueError) as exc:
                if site.name not in self.failing:  # said once, not every poll interval
                    LOG.warning("%s (retrying quietly)", exc)
                    self.failing.add(site.name)
                continue
            if site.name in self.failing or had != want:
                LOG.info("site %s: connection limits %s", site.name, ", ".join(
                    f"{u.segment} {u.limit}" for u in uses) or "lifted")
            self.failing.discard(site.name)
            self.limited[site.name] = want
            for use in uses:
                self._report(site.name, use)

    def _report(self, site: str, use: conn_limits.ZoneUse) -> None:
        self.metrics.connections.labels(site, use.segment).set(use.count)
        self.metrics.connection_limit.labels(site, use.segment).set(use.limit)
        key = (site, use.segment)
        if use.full and key not in self.full:
            self.full.add(key)
            self.metrics.limit_reached.labels(*key).inc()
            LOG.warning("site %s: segment %s reached its connection limit (%d of %d): new connections are refused",
                        site, use.segment, use.count, use.limit)
        elif not use.full and key in self.full:
            self.full.discard(key)
            LOG.info("site %s: segment %s is below its connection limit again (%d of %d)", site, use.segment,
                     use.count, use.limit)
