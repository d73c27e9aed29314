"""The site graph: next hops for unicast, a loop-free tree for flooding, and tunnel port names."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cached_property

import networkx as nx

from cloudweave.config.model import TUNNEL_PREFIX, Model


def tunnel_port_name(peer: str) -> str:
    """The name of the VXLAN port toward a peer site (an interface name: 15 characters at most)."""
    name = TUNNEL_PREFIX + peer
    if len(name) <= 15:
        return name
    return TUNNEL_PREFIX + hashlib.blake2b(peer.encode(), digest_size=6).hexdigest()


@dataclass(frozen=True)
class SiteGraph:
    """`down`: links (sorted site pairs) seen dead; forwarding avoids them, their tunnels stay."""

    model: Model
    down: frozenset[tuple[str, str]] = frozenset()

    @cached_property
    def declared(self) -> nx.Graph:
        """Every declared link: one tunnel each, whether it is up or not."""
        g = nx.Graph()
        g.add_nodes_from(sorted(s.name for s in self.model.sites))
        for link in self.model.links:
            g.add_edge(*link.sites, capacity=link.capacity_mbps)
        return g

    @cached_property
    def graph(self) -> nx.Graph:
        """The links that forward: the declared ones less those that are down."""
        g = self.declared.copy()
        g.remove_edges_from(self.down)
        return g

    @cached_property
    def _neighbours(self) -> dict[str, list[str]]:
        return {n: sorted(self.declared.neighbors(n)) for n in self.declared.nodes}

    def neighbours(self, site: str) -> list[str]:
        """The sites this one has a tunnel to."""
        return self._neighbours[site]

    def live_neighbours(self, site: str) -> list[str]:
        return sorted(self.graph.neighbors(site))

    @cached_property
    def _distances(self) -> dict[str, dict[str, int]]:
        return dict(nx.all_pairs_shortest_path_length(self.graph))

    @cached_property
    def _next_hops(self) -> dict[str, dict[str, str]]:
        return {}

    @cached_property
    def _declared_distances(self) -> dict[str, dict[str, int]]:
        return dict(nx.all_pairs_shortest_path_length(self.declared))

    def next_hop(self, src: str, dst: str) -> str | None:
        """The neighbour of src on a shortest path to dst (ties: the smallest name), or None if unreachable.

        Every hop strictly lowers the distance to dst, so hop-by-hop relaying cannot loop
        whatever tie each site picks. A site that no live link reaches (its links all down: a restarting
        ovs-vswitchd, whose BFD comes back up a second after it does) keeps its declared shortest path: sending
        there loses nothing that dropping would save, and traffic flows again the moment it can. That cannot
        loop either: a site on the fallback has no live path, so neither has any site its declared hop leads
        to (else it would have one through it), and declared distances fall hop by hop.
        """
        table = self._next_hops.get(src)
        if table is None:
            table = self._next_hops[src] = self._next_hop_table(src)
        return table.get(dst)

    def _next_hop_table(self, src: str) -> dict[str, str]:
        dist = self._distances
        table = {}
        for dst, d in dist[src].items():
            if dst != src:
                table[dst] = min(n for n in self.live_neighbours(src) if dist[n].get(dst, -1) == d - 1)
        if self.down:
            declared = self._declared_distances
            for dst, d in declared[src].items():
                if dst != src and dst not in table:
                    table[dst] = min(n for n in self.neighbours(src) if declared[n].get(dst, -1) == d - 1)
        return table

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

    @cached_property
    def _tree_parents(self) -> tuple[dict[str, str | None], dict[str, int]]:
        """Parent and depth of every site in the spanning forest, rooted at each component's smallest name."""
        parent: dict[str, str | None] = {}
        depth: dict[str, int] = {}
        tree = self.spanning_tree
        for root in sorted(tree.nodes):
            if root in parent:
                continue
            parent[root], depth[root] = None, 0
            for u, v in nx.bfs_edges(tree, root, sort_neighbors=sorted):
                parent[v], depth[v] = u, depth[u] + 1
        return parent, depth

    def flood_tree(self, sites: set[str]) -> dict[str, list[str]]:
        """The smallest subtree of the spanning tree that joins the given sites, as site -> tree neighbours."""
        parent, depth = self._tree_parents
        edges: set[tuple[str, str]] = set()
        ordered = sorted(sites)
        for other in ordered[1:]:
            a, b = ordered[0], other
            while a != b:  # climb from the deeper end until the two paths meet
                if depth[a] < depth[b]:
                    a, b = b, a
                up = parent[a]
                if up is None:
                    break  # different components: the loader reports that
                edges.add((a, up) if a < up else (up, a))
                a = up
        adjacency: dict[str, list[str]] = {s: [] for s in sites}
        for a, b in sorted(edges):
            adjacency.setdefault(a, []).append(b)
            adjacency.setdefault(b, []).append(a)
        return {s: sorted(n) for s, n in adjacency.items()}
