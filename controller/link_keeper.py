"""Link liveness: the tunnel ports' BFD state, as each switch reports its ports, becomes the set of links
seen down, which the compiler routes around (controller.links has the rule)."""

from __future__ import annotations

import logging
from typing import Any

from cloudweave.flows.topology import TUNNEL_PREFIX
from controller.keeper import NOTHING, Reply, change
from controller.links import LinkWatch
from controller.messages import PortsSeen

LOG = logging.getLogger("cloudweave")


class LinkKeeper:
    def __init__(self, metrics: Any):
        self.metrics = metrics
        self.watch = LinkWatch()

    def switch_up(self, site: str) -> None:
        self.watch.reconnected(site)

    def ports_seen(self, msg: PortsSeen, pub: Any) -> Reply:
        site = pub.state.model.site_by_dpid(msg.dpid)
        if site is None:
            return NOTHING
        for name in msg.removed:
            self.watch.forget(site.name, name)
        ours = {t.name for t in pub.tunnels.get(site.name, ())}  # a peer may name any port vx-...
        for name, _, live in msg.ports:
            if name.startswith(TUNNEL_PREFIX) and name in ours and name not in msg.removed:
                self.watch.seen(site.name, name, live)
        return self._down(pub)

    def _down(self, pub: Any) -> Reply:
        """Recompile around links whose tunnels went down, and back when they return."""
        peers = {(s, t.name): t.peer for s, tunnels in pub.tunnels.items() for t in tunnels}
        down, before = self.watch.down(peers), pub.state.down
        if down == before:
            return NOTHING
        for a, b in sorted(down - before):
            LOG.warning("link %s-%s is down (BFD): traffic moves to the remaining paths", a, b)
            self.metrics.link_changes.labels(f"{a}-{b}", "down").inc()
        for a, b in sorted(before - down):
            LOG.info("link %s-%s is up again: its paths and weights return", a, b)
            self.metrics.link_changes.labels(f"{a}-{b}", "up").inc()
        return change("a link change", down=down)
