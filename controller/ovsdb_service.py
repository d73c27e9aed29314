"""Keep every site's bridge as the file says (controller.ovsdb), on a thread of its own: a slow or absent
OVSDB delays only this loop. It reads the core's published snapshot and writes nothing the core owns."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import Any

from os_ken.lib import hub

from cloudweave.config.model import Site
from controller.ovsdb import SiteOvsdb
from controller.roles import Duty, acts_at
from controller.settings import Settings, switch_target_for

LOG = logging.getLogger("cloudweave")
RETRY_S, RETRY_MAX_S = 3.0, 60.0  # an unreachable OVSDB is tried again with backoff, said once per change
RESYNC_S = float(os.environ.get("CLOUDWEAVE_OVSDB_RESYNC_S", "10"))  # a port deleted by hand comes back
TICK_S = 0.1


class OvsdbService:
    def __init__(self, settings: Settings, metrics: Any, published: Callable[[], Any],
                 targets: Callable[[], tuple[str, ...]] | None = None):
        """`targets`: with replicas, every replica's switch target template; alone, only this one's."""
        self.settings = settings
        self.targets = targets or (lambda: (settings.switch_target,))
        self.mastered: frozenset[str] | None = None
        self.synced_targets: dict[str, tuple[str, ...]] = {}
        self.metrics = metrics
        self.published = published
        self.active = True
        self.conns: dict[str, SiteOvsdb] = {}
        self.sites: dict[str, Site] = {}  # the Site each connection (and due time) was made for
        self.due: dict[str, float] = {}
        self.tunnels: dict[str, Any] = {}  # the tunnel ports each site was last synced for
        self.failing: dict[str, tuple[int, str]] = {}  # site -> (failures in a row, what was said)

    def run(self) -> None:
        while self.active:
            try:
                self.round()
            except Exception:  # noqa: BLE001 - one bad round must not stop OVSDB syncing
                LOG.exception("OVSDB loop")
            hub.sleep(TICK_S)

    def stop(self) -> None:
        self.active = False
        for conn in self.conns.values():
            conn.close()

    def round(self) -> None:
        snap = self.published()
        model = snap.state.model
        now = time.monotonic()
        wanted = {s.name: s for s in model.sites}
        for name in set(self.sites) - set(wanted):
            self._drop(name)
            self.sites.pop(name)
            self.due.pop(name, None)
        for name, site in wanted.items():
            if self.sites.get(name) != site:  # new, or its OVSDB, bridge or addresses changed: start afresh
                self._drop(name)
                self.sites[name] = site
                self.due[name] = 0.0
        for name, tunnels in snap.tunnels.items():
            if self.tunnels.get(name) != tunnels:  # a link came or went: now, not at the next resync
                self.due[name] = 0.0
        self.tunnels = dict(snap.tunnels)
        if snap.mastered != self.mastered:  # with replicas: a site this replica now masters is synced at once
            for name in (snap.mastered or frozenset()) - (self.mastered or frozenset()):
                self.due[name] = 0.0
            self.mastered = snap.mastered
        targets = tuple(sorted(self.targets()))
        for name in wanted:
            if self.synced_targets.get(name, targets) != targets:
                self.due[name] = 0.0  # a replica came or went
        for name, when in sorted(self.due.items()):
            if when <= now and name in snap.tunnels and acts_at(Duty.OVSDB, name, snap.mastered):
                self._sync(wanted[name], snap.tunnels[name], targets)

    def _drop(self, name: str) -> None:
        conn = self.conns.pop(name, None)
        if conn is not None:
            conn.close()

    def _sync(self, site: Site, tunnels: Any, targets: tuple[str, ...]) -> None:
        name = site.name
        try:
            if name not in self.conns:
                self.conns[name] = SiteOvsdb(site)
            filled = tuple(switch_target_for(t, site) for t in targets)
            report = self.conns[name].sync(site, tunnels, filled, self.settings.bfd_ms)
            self.synced_targets[name] = targets
        except Exception as exc:  # noqa: BLE001 - an unreachable OVSDB is retried, not fatal
            count, said = self.failing.get(name, (0, ""))
            delay = min(RETRY_MAX_S, RETRY_S * 2 ** count)
            if str(exc) != said:
                LOG.warning("site %s: OVSDB %s: %s; retrying with backoff (next in %.0f s, at most every %.0f s)",
                            name, site.ovsdb, exc, delay, RETRY_MAX_S)
            self.failing[name] = (count + 1, str(exc))
            self._drop(name)
            self.due[name] = time.monotonic() + delay
            self.metrics.ovsdb_syncs.labels(name, "failed").inc()
            return
        if self.failing.pop(name, None) is not None:
            LOG.info("site %s: OVSDB %s answers again", name, site.ovsdb)
        self.due[name] = time.monotonic() + RESYNC_S
        self.metrics.ovsdb_syncs.labels(name, "ok").inc()
        level = logging.INFO if report.changed else logging.DEBUG
        LOG.log(level, "site %s: OVSDB bridge %s: %s", name, site.bridge, report)
