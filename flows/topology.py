"""The site graph: next hops for unicast, a loop-free tree for flooding, and tunnel port names."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cached_property

import networkx as nx

from cloudweave.config.model import Model

TUNNEL_PREFIX = "vx-"


def tunnel_port_name(peer: str) -> str:
    """The name of the VXLAN port toward a peer site (an interface name: 15 characters at most)."""
    name = TUNNEL_PREFIX + peer
    if len(name) <= 15:
        return name
    return TUNNEL_PREFIX + hashlib.blake2b(peer.encode(), digest_size=6).hexdigest()


@dataclass(frozen=True)
class SiteGraph:
    model: Model

    @cached_property
    def graph(self) -> nx.Graph:
        g = nx.Graph()
        g.add_nodes_from(sorted(s.name for s in self.model.sites))
        for link in self.model.links:
            g.add_edge(*link.sites, capacity=link.capacity_mbps)
        return g

    def neighbours(self, site: str) -> list[str]:
        return sorted(self.graph.neighbors(site))

    @cached_property
    def _distances(self) -> dict[str, dict[str, int]]:
        return dict(nx.all_pairs_shortest_path_length(self.graph))

    def next_hop(self, src: str, dst: str) -> str | None:
        """The neighbour of src on a shortest path to dst (ties: the smallest name), or None if unreachable.

        Every hop strictly lowers the distance to dst, so hop-by-hop relaying cannot loop
        whatever tie each site picks.
        """
        dist = self._distances.get(dst, {})
        if src == dst or src not in dist:
            return None
        return min(n for n in self.neighbours(src) if dist.get(n, -1) == dist[src] - 1)

    def path(self, src: str, dst: str) -> list[str]:
        hops = [src]
        while hops[-1] != dst:
            nxt = self.next_hop(hops[-1], dst)
            if nxt is None:
                return []
            hops.append(nxt)
        return hops

    @cached_property
    def spanning_tree(self) -> nx.Graph:
        """One spanning forest for all segments, the same at every site (deterministic by name)."""
        g = nx.Graph()
        g.add_nodes_from(self.graph.nodes)
        for edge in sorted(tuple(sorted(e)) for e in self.graph.edges):
            g.add_edge(*edge, weight=1)
        return nx.minimum_spanning_tree(g, algorithm="kruskal")

    def flood_tree(self, sites: set[str]) -> nx.Graph:
        """The smallest subtree of the spanning tree that joins the given sites."""
        tree = self.spanning_tree.copy()
        leaves = [n for n in tree.nodes if tree.degree(n) <= 1 and n not in sites]
        while leaves:
            tree.remove_nodes_from(leaves)
            leaves = [n for n in tree.nodes if tree.degree(n) <= 1 and n not in sites]
        if not sites:
            tree.clear()
        return tree
