"""Bucket weights for OVS's weighted rendezvous hashing: the share formula against a simulation of OVS's
own rule (highest (hash & 0xffff) * weight wins, later bucket on a tie), and the inversion."""

import random

import pytest

from cloudweave.flows.weights import MAX_WEIGHT, shares, weights_for


def simulate(weights, n=200_000, seed=7):
    rng = random.Random(seed)
    wins = [0] * len(weights)
    for _ in range(n):
        scores = [rng.randrange(1 << 16) * w for w in weights]
        best = max(range(len(weights)), key=lambda i: (scores[i], i))
        wins[best] += 1
    return [w / n for w in wins]


@pytest.mark.parametrize("weights", [[70, 30], [65535, 12000, 30000], [5, 5, 5, 1], [1000, 1]])
def test_share_formula_matches_ovs_rule(weights):
    for got, want in zip(shares(weights), simulate(weights), strict=True):
        assert got == pytest.approx(want, abs=0.005)


def test_two_buckets_are_not_proportional():
    assert shares([70, 30]) == pytest.approx([110 / 140, 30 / 140])  # 78.6 / 21.4, not 70 / 30


@pytest.mark.parametrize("targets", [[70, 30], [50, 30, 20], [97, 3], [1, 2, 3, 4], [33, 33, 34], [100, 0, 50],
                                     [0.4996, 0.1373, 0.0964, 0.1158, 0.1508],  # oscillated with a fixed step
                                     [30, 20, 15, 10, 10, 8, 5, 2]])
def test_inverted_weights_give_the_targets(targets):
    w = weights_for(targets)
    assert all(0 <= x <= MAX_WEIGHT for x in w) and max(w) == MAX_WEIGHT
    total = sum(targets)
    for got, want, wi in zip(shares(w), targets, w, strict=True):
        assert got == pytest.approx(want / total, abs=0.0005)
        assert (wi == 0) == (want == 0)


def test_zero_sum_is_refused():
    with pytest.raises(ValueError):
        weights_for([0, 0])
