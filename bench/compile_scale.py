"""Compile time and flow count for generated topologies of 10, 100 and 1,000 sites with 10,000 endpoints.

Run: .venv/bin/python bench/compile_scale.py [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cloudweave.flows.compile import compile_model  # noqa: E402
from testkit.generate import mesh  # noqa: E402

CASES = [(10, 10_000, 100), (100, 10_000, 500), (1_000, 10_000, 1_000)]


def run(n_sites: int, n_endpoints: int, n_segments: int) -> dict:
    model = mesh(n_sites, n_endpoints, n_segments)
    started = time.perf_counter()
    states = compile_model(model)
    elapsed = time.perf_counter() - started
    counts = [len(st.flows) for st in states.values()]
    return {"sites": n_sites, "endpoints": n_endpoints, "segments": n_segments, "links": len(model.links),
            "compile_s": round(elapsed, 3), "flows_total": sum(counts), "flows_max_site": max(counts),
            "flows_mean_site": round(sum(counts) / len(counts), 1),
            "us_per_flow": round(elapsed / sum(counts) * 1e6, 2)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    rows = [run(*case) for case in CASES]
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print(f"{'sites':>6} {'endpoints':>9} {'segments':>8} {'links':>6} {'compile s':>9} {'flows':>9} "
          f"{'max/site':>8} {'mean/site':>9} {'us/flow':>7}")
    for r in rows:
        print(f"{r['sites']:>6} {r['endpoints']:>9} {r['segments']:>8} {r['links']:>6} {r['compile_s']:>9} "
              f"{r['flows_total']:>9} {r['flows_max_site']:>8} {r['flows_mean_site']:>9} {r['us_per_flow']:>7}")
    print("reproduce: .venv/bin/python bench/compile_scale.py")


if __name__ == "__main__":
    main()
