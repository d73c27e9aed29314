"""`cloudweave tm`: the traffic matrix the controller learned, its predictions, the weights in force and the
links' utilisation, from the controller's state file (the same numbers its metrics export)."""

from __future__ import annotations

import json
import sys
import time
from typing import Any

from cloudweave.te.predict import Predictor
from cloudweave.te.statefile import BadState, load_state


def _rate(bps: float | None) -> str:
    if bps is None:
        return "-"
    for unit, scale in (("Gbit/s", 1e9), ("Mbit/s", 1e6), ("kbit/s", 1e3)):
        if bps >= scale:
            return f"{bps / scale:.1f} {unit}"
    return f"{bps:.0f} bit/s"


def render(doc: dict[str, Any], now: float | None = None) -> str:
    lines = []
    updated = doc.get("updated")
    age = f"{(now or time.time()) - updated:.0f} s ago" if updated else "never"
    lines.append(f"traffic matrix of split: auto routes (updated {age}, poll interval "
                 f"{doc.get('poll_interval_s', '?')} s)")
    lines.append(f"  {'route':<14} {'src -> dst':<22} {'last':>12} {'mean':>12} {'prediction':>12}  weights")
    for k in doc.get("keys", []):
        pred = Predictor.from_json(k.get("predictor") or {})
        mean = pred.mean
        prediction = None if mean is None else pred.prediction
        shares = k.get("shares") or []
        weights = ", ".join(f"{' -> '.join(p)} {s:.0%}" for p, s in zip(k.get("paths", []), shares, strict=False)
                            if s > 0.005) or "shortest path (nothing learned yet)"
        stale = "  STALE: site did not answer" if k.get("stale") else ""
        lines.append(f"  {k['route']:<14} {k['src'] + ' -> ' + k['dst']:<22} {_rate(k.get('rate')):>12} "
                     f"{_rate(mean):>12} {_rate(prediction):>12}  {weights}{stale}")
    util = doc.get("utilisation") or {}
    background = doc.get("background") or {}
    if util:
        lines.append("link utilisation at the proposed weights and the learned means (other traffic included):")
        cap = doc.get("capacity_bps", {})
        for link, u in sorted(util.items(), key=lambda kv: -kv[1]):
            other = (background.get(link) or {}).get("mean")
            other_text = f"  other traffic {_rate(other)}" if other else ""
            lines.append(f"  {link:<24} {u:7.1%}  of {_rate(cap.get(link))}{other_text}")
    mlu = doc.get("mlu")
    if mlu:
        lines.append(f"maximum link utilisation: {mlu['proposed']:.1%} proposed, {mlu['in_force']:.1%} with the "
                     "weights in force")
    return "\n".join(lines) + "\n"


def plot(doc: dict[str, Any], path: str) -> None:
    """The matrix as a heat map (learned means, Mbit/s) beside the site graph, links coloured by utilisation."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import networkx as nx

    demand: dict[tuple[str, str], float] = {}
    for k in doc.get("keys", []):
        mean = (k.get("predictor") or {}).get("mean") or 0.0
        demand[(k["src"], k["dst"])] = demand.get((k["src"], k["dst"]), 0.0) + mean / 1e6
    util: dict[tuple[str, str], float] = {}
    for link, u in (doc.get("utilisation") or {}).items():
        a, b = link.split("->")
        key = tuple(sorted((a, b)))
        util[key] = max(util.get(key, 0.0), u)
    sites = sorted({s for pair in list(demand) + list(util) for s in pair})
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 5))
    grid = [[demand.get((a, b), 0.0) for b in sites] for a in sites]
    image = left.imshow(grid, cmap="viridis")
    left.set_xticks(range(len(sites)), sites, rotation=45, ha="right")
    left.set_yticks(range(len(sites)), sites)
    left.set_xlabel("destination")
    left.set_ylabel("source")
    left.set_title("learned demand (Mbit/s)")
    fig.colorbar(image, ax=left)
    g = nx.Graph()
    g.add_nodes_from(sites)
    g.add_edges_from(util)
    pos = nx.spring_layout(g, seed=1)
    colours = [util[tuple(sorted(e))] for e in g.edges]
    nx.draw_networkx_nodes(g, pos, ax=right, node_color="#dddddd")
    nx.draw_networkx_labels(g, pos, ax=right, font_size=9)
    edges = nx.draw_networkx_edges(g, pos, ax=right, edge_color=colours, edge_cmap=plt.cm.RdYlGn_r, edge_vmin=0,
                                   edge_vmax=1, width=4)
    nx.draw_networkx_edge_labels(g, pos, ax=right, font_size=8,
                                 edge_labels={e: f"{util[tuple(sorted(e))]:.0%}" for e in g.edges})
    fig.colorbar(edges, ax=right, label="utilisation (busier direction)")
    right.set_title("links at the proposed weights")
    right.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(state_path: str, as_json: bool, plot_path: str | None = None) -> int:
    try:
        doc = load_state(state_path)
    except FileNotFoundError:
        print(f"cloudweave: no traffic-engineering state at {state_path} (is the controller running with "
              "split: auto routes? --state names another file)", file=sys.stderr)
        return 1
    except BadState as exc:
        print(f"cloudweave: {state_path}: not a state file the controller wrote: {exc}", file=sys.stderr)
        return 1
    sys.stdout.write(json.dumps(doc, indent=1) + "\n" if as_json else render(doc))
    if plot_path:
        try:
            plot(doc, plot_path)
        except ImportError:
            print("cloudweave: --plot needs matplotlib (pip install 'cloudweave[plot]')", file=sys.stderr)
            return 1
        print(f"plot written to {plot_path}", file=sys.stderr)
    return 0
