"""Candidate paths for a site pair: loop-free, short, and link-disjoint where the graph allows."""

from __future__ import annotations

import itertools
from collections.abc import Hashable

import networkx as nx

Path = tuple[Hashable, ...]
SCAN = 4  # how many more shortest paths than k to look at when choosing disjoint ones


def arcs(path: Path) -> list[tuple[Hashable, Hashable]]:
    return list(zip(path, path[1:], strict=False))


def candidate_paths(graph: nx.Graph, src: Hashable, dst: Hashable, k: int = 4) -> list[Path]:
    """Up to k loop-free paths, shortest first: among the k + SCAN shortest, those that share no link with an
    already chosen one first, then the shortest of the rest."""
    try:
        pool = [tuple(p) for p in itertools.islice(nx.shortest_simple_paths(graph, src, dst), k + SCAN)]
    except nx.NetworkXNoPath:
        return []
    chosen: list[Path] = []
    used: set[frozenset] = set()
    for p in pool:
        links = {frozenset(a) for a in arcs(p)}
        if not links & used:
            chosen.append(p)
            used |= links
        if len(chosen) == k:
            return chosen
    for p in pool:
        if p not in chosen:
            chosen.append(p)
        if len(chosen) == k:
            break
    return sorted(chosen, key=lambda p: (len(p), pool.index(p)))
