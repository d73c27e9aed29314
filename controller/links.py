"""Which underlay links are down, from the liveness OVS reports for each site's tunnel ports (BFD).

A link is down when a tunnel port on it was live and is not any more. A tunnel that has never been live
(BFD still coming up, a peer that is not running yet, or BFD turned off) is not counted as down: routing
around it would be a guess, and the buckets that watch it are not used by OVS anyway.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class _Port:
    live: bool
    ever_live: bool


@dataclass
class LinkWatch:
    ports: dict[tuple[str, str], _Port] = field(default_factory=dict)  # (site, tunnel port) -> state

    def seen(self, site: str, port: str, live: bool) -> None:
        have = self.ports.get((site, port))
        if have is None:
            self.ports[(site, port)] = _Port(live, live)
        else:
            have.live, have.ever_live = live, have.ever_live or live

    def reconnected(self, site: str) -> None:
        """The site's switch connected again, perhaps a new ovs-vswitchd (an upgrade's restart) whose BFD
        sessions start afresh: its tunnels count as down only once they have been live on this connection.
        A link that is truly down is still reported by its other end."""
        for (s, _), p in self.ports.items():
            if s == site:
                p.ever_live = False

    def forget(self, site: str, port: str) -> None:
        """The port was deleted: a new one of that name starts afresh."""
        self.ports.pop((site, port), None)

    def down(self, peers: dict[tuple[str, str], str]) -> frozenset[tuple[str, str]]:
        """Links (sorted site pairs) that either end reports down. `peers`: (site, tunnel port) -> peer site."""
        out = set()
        for (site, port), peer in peers.items():
            p = self.ports.get((site, port))
            if p is not None and p.ever_live and not p.live:
                out.add(tuple(sorted((site, peer))))
        return frozenset(out)
