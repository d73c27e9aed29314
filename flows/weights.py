"""Bucket weights for OVS select groups, so that the split OVS realises is the split asked for.

With `selection_method=hash`, OVS (ofproto-dpif-xlate.c, group_best_live_bucket) hashes the listed fields,
gives every live bucket the score (hash(bucket_id, basis) & 0xffff) * weight and takes the highest. That is
weighted rendezvous hashing with a *multiplied* uniform: the share of a bucket is not proportional to its
weight. Two buckets weighted 70 and 30 take 78.6 % and 21.4 % (measured on OVS 3.1: 79.7 / 20.3 over 3,029
UDP flows, 78.1 / 21.9 over 4,000 TCP flows). With U_j uniform on [0, 1]:

    share_i(w) = 1/w_i * integral_0^w_i  prod_{j != i} min(x / w_j, 1) dx

computed exactly below (a piecewise polynomial), and inverted by a fixed-point iteration. The other two
methods were measured and not chosen: the default (OF1.4 and 1.5 without a method) is dp_hash over 16 hash
slots with OVS's sym_l4 hash, which leaves UDP ports out (every UDP flow between two hosts took one bucket)
and quantises shares to 1/16; `dp_hash` with the L4 hash splits UDP but still in sixteenths (70/30 became
68.75/31.25).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

MAX_WEIGHT = 0xFFFF  # OpenFlow bucket weights are 16 bits
ITERATIONS = 2000
TOLERANCE = 1e-6


def shares(weights: Sequence[float]) -> list[float]:
    """The share of flows each bucket takes under OVS's weighted rendezvous hashing (0 for weight 0)."""
    out = []
    for i, wi in enumerate(weights):
        if wi <= 0:
            out.append(0.0)
            continue
        others = sorted(w for j, w in enumerate(weights) if j != i and w > 0)
        # On [a, b] the buckets heavier than b contribute x/w_j each; lighter ones are certainly beaten.
        points = [0.0] + [w for w in others if w < wi] + [wi]
        total = 0.0
        for a, b in zip(points, points[1:], strict=False):
            if b <= a:
                continue
            above = [w for w in others if w >= b]
            m = len(above)
            denom = 1.0
            for w in above:
                denom *= w
            total += (b ** (m + 1) - a ** (m + 1)) / ((m + 1) * denom)
        out.append(total / wi)
    return out


def weights_for(targets: Sequence[float]) -> list[int]:
    """Integer bucket weights (1..65535, or 0 for a zero target) whose OVS shares are the targets."""
    return list(_weights_for(tuple(targets)))


@functools.lru_cache(maxsize=4096)
def _weights_for(targets: tuple[float, ...]) -> tuple[int, ...]:
    # A pure function of the targets, and thousands of routes share the same few splits (10,000 routes of
    # {direct: 1, via X: 1}: one solve instead of 10,000).
    return tuple(_solve(targets))


def _solve(targets: Sequence[float]) -> list[int]:
    total = sum(targets)
    if total <= 0:
        raise ValueError("targets sum to zero")
    want = [t / total for t in targets]
    live = [i for i, t in enumerate(want) if t > 0]
    if len(live) == 1:
        return [MAX_WEIGHT if t > 0 else 0 for t in want]
    w = [t if t > 0 else 0.0 for t in want]
    # A bucket's share grows about as its weight to the power (live buckets - 1): a step of that inverse
    # power converges where a larger one oscillates (5 buckets at 0.5 did).
    step = 1 / max(2, len(live) - 1)
    for _ in range(ITERATIONS):
        got = shares(w)
        if max(abs(got[i] - want[i]) for i in live) < TOLERANCE:
            break
        w = [w[i] * (want[i] / got[i]) ** step if i in live else 0.0 for i in range(len(w))]
        top = max(w)
        w = [x / top for x in w]
    top = max(w)
    return [max(1, round(x / top * MAX_WEIGHT)) if i in live else 0 for i, x in enumerate(w)]
