"""The demand to plan for: a long-run mean that follows real shifts fast, and a burst-covering prediction.

`Predictor.mean` is the running average of the rates (each sample weighs 1/n) until it covers `WINDOW`
intervals, then an exponentially weighted average of about that window (weight 1/WINDOW). A long window
matters: the split is solved on the mean, and the LP's answer is only as good as the demands' proportions
(bench/te_eval.py, log-normal bursts of sigma 0.3 per interval: averaged over 30 intervals the MLU came out
up to 18 % above the optimum on small topologies).

A real shift must not wait for that window. Each sample's distance from the mean is taken in log space
(log(rate / mean): halving and doubling alike; a start or a stop infinitely far) and in units of `spread`, the
long-run average of that distance (kept like the mean, over the same window): the traffic's own burstiness.
Two CUSUMs add up the evidence, one per side (each sample adds its distance less SHIFT_SLACK, never below 0);
when one reaches SHIFT_ALARM the average restarts from the samples since that evidence began. While evidence
builds, samples are judged against the mean from before it began (`before`), not the mean they are already
moving. Measured by `bench/te_eval.py --shifts` (log-normal bursts of sigma 0.3, 400 series): no restart in
150 stationary samples; the mean within 20 % of a doubling in a median of 7 samples, of a halving in 5, of a
stop in 3, and of a start from a link's noisy near-zero background in 4. Judged against the moving mean, that
start took 105 (the first samples lifted the mean, the next looked near: CI saw a link's other traffic
learned as 3-8 Mbit/s where 16 ran). The rule before it (three samples in a row beyond three fast
deviations) judged against a deviation that shrank in calm stretches and dropped the samples of every run it
abandoned from the mean: 0.065 false shifts per series, a doubling followed in a median of 175 samples, and
the learned means of bench/te_eval.py's demands 4.7 % off instead of 2.6 %.

`prediction` = mean + K * deviation (the deviation an exponentially weighted mean of |rate - mean|, as TCP
estimates round-trip times) covers the bursts seen: it is what a link is checked against ("would it exceed
its capacity next interval?"). bench/te_eval.py measures how often the next interval exceeds it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

WINDOW = 150  # intervals the mean covers (5 minutes at the default 2 s poll interval)
BETA = 0.25  # weight of the newest sample in the deviation: bursts are noticed sooner than the mean moves
K = 2.0
# A shift: a CUSUM of log distances in spreads, each side: drift SHIFT_SLACK, alarm at SHIFT_ALARM.
SHIFT_SLACK, SHIFT_ALARM = 1.5, 6.0
MAX_STEP = 4.0  # spreads one sample adds at most: a start or a stop (infinitely far) is a shift in three
MIN_SPREAD = 0.1  # a steady stream still shifts only by more than about a sixth (log 0.15)
MIN_N = 20  # samples the spread needs before it judges a shift (a start or a stop is judged at once)
FAR = 2.0  # a log distance counted in the spread at most


def log_distance(rate: float, mean: float) -> float:
    """log(rate / mean), with the zeros: an idle demand that starts, or one that stops, is infinitely far."""
    if rate <= 0 or mean <= 0:
        return 0.0 if rate <= 0 and mean <= 0 else (math.inf if rate > 0 else -math.inf)
    return math.log(rate / mean)


@dataclass
class Predictor:
    mean: float | None = None
    dev: float = 0.0
    n: int = 0
    spread: float = 0.0  # long-run average of |log(rate / mean)|: what a shift is judged against
    spread_n: int = 0  # samples it covers (0 when restored from a state without it: learnt again first)
    up: float = 0.0  # the CUSUMs: evidence of a shift up, and down
    down: float = 0.0
    since: list[float] = field(default_factory=list)  # the samples since the evidence began (one side)
    before: float = 0.0  # the mean when that evidence began

    def update(self, rate: float) -> None:
        if self.mean is None:
            self.mean, self.dev, self.n = rate, rate / 2, 1
            return
        self.dev = (1 - BETA) * self.dev + BETA * abs(rate - self.mean)  # bursts count, shifts or not
        far = log_distance(rate, self.mean)
        was = "up" if self.up > 0 else "down" if self.down > 0 else None
        # While evidence builds, each sample is judged against the mean from before it began: averaged in, the
        # first samples of a shift move the mean toward themselves, and the next ones would look too near to
        # count (a start from a noisy near-zero background stalled at a sixth of its rate, rising by 1/n a round).
        judged = log_distance(rate, self.before) if was else far
        if math.isinf(judged) or self.spread_n >= MIN_N:
            step = max(-MAX_STEP, min(MAX_STEP, judged / max(self.spread, MIN_SPREAD)))
            self.up = max(0.0, self.up + step - SHIFT_SLACK)
            self.down = max(0.0, self.down - step - SHIFT_SLACK)
            now = "up" if self.up > 0 else "down" if self.down > 0 else None
            if now and now != was:
                self.before = self.mean
            self.since = (self.since if now == was else []) + [rate] if now else []
            if max(self.up, self.down) >= SHIFT_ALARM:  # a shift, not bursts: average again from it (the
                self.mean = sum(self.since) / len(self.since)  # spread, the traffic's burstiness, stays)
                self.n, self.up, self.down, self.since = len(self.since), 0.0, 0.0, []
                return
        self.n += 1
        self.spread_n += 1
        self.spread += (min(abs(far), FAR) - self.spread) / min(self.spread_n, WINDOW)
        self.mean += (rate - self.mean) / min(self.n, WINDOW)

    @property
    def prediction(self) -> float:
        return 0.0 if self.mean is None else self.mean + K * self.dev

    def to_json(self) -> dict:
        return {"mean": self.mean, "dev": self.dev, "n": self.n, "spread": self.spread, "spread_n": self.spread_n}

    @staticmethod
    def from_json(data: dict) -> Predictor:
        return Predictor(data.get("mean"), float(data.get("dev", 0.0)), int(data.get("n", 0)),
                         float(data.get("spread", 0.0)), int(data.get("spread_n", 0)))
