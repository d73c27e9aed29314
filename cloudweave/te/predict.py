"""The demand to plan for: a long-run mean that follows real shifts fast, and a burst-covering prediction.

`Predictor.mean` is the running average of the rates (each sample weighs 1/n) until it covers `WINDOW`
intervals, then an exponentially weighted average of about that window (weight 1/WINDOW). A long window
matters: the split is solved on the mean, and the LP's answer is only as good as the demands' proportions
(bench/te_eval.py, log-normal bursts of sigma 0.3 per interval: averaged over 30 intervals the MLU came out
up to 18 % above the optimum on small topologies, over 150 intervals within 5 % on all 26). A real shift
must not wait for that window, so when `SHIFT_RUN` samples in a row fall more than `SHIFT_DEVS` deviations
away from the mean on the same side, the average restarts from them: the weights follow within a few
intervals.

`prediction` = mean + K * deviation (the deviation an exponentially weighted mean of |rate - mean|, as TCP
estimates round-trip times) covers the bursts seen: it is what a link is checked against ("would it exceed
its capacity next interval?"). bench/te_eval.py measures how often the next interval exceeds it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

WINDOW = 150  # intervals the mean covers (5 minutes at the default 2 s poll interval)
BETA = 0.25  # weight of the newest sample in the deviation: bursts are noticed sooner than the mean moves
K = 2.0
SHIFT_RUN, SHIFT_DEVS = 3, 3.0


@dataclass
class Predictor:
    mean: float | None = None
    dev: float = 0.0
    n: int = 0
    recent: list[float] = field(default_factory=list)  # the last samples that lay beyond SHIFT_DEVS, one side
    run_dev: float = 0.0  # the deviation when that run began: the run is judged against it

    def update(self, rate: float) -> None:
        if self.mean is None:
            self.mean, self.dev, self.n = rate, rate / 2, 1
            return
        off = rate - self.mean
        limit = SHIFT_DEVS * (self.run_dev if self.recent else self.dev)
        same_side = not self.recent or (self.recent[-1] > self.mean) == (off > 0)
        if abs(off) > limit and same_side:
            if not self.recent:
                self.run_dev = self.dev
            self.recent.append(rate)
        else:
            self.recent = []
        self.dev = (1 - BETA) * self.dev + BETA * abs(off)  # bursts count in the deviation, shifts or not
        if len(self.recent) >= SHIFT_RUN:  # a shift, not a burst: start averaging again from it
            self.mean = sum(self.recent) / len(self.recent)
            self.n, self.recent = len(self.recent), []
            return
        if self.recent:
            return  # maybe the start of a shift: it does not drag the mean yet
        self.n += 1
        self.mean += off / min(self.n, WINDOW)

    @property
    def prediction(self) -> float:
        return 0.0 if self.mean is None else self.mean + K * self.dev

    def to_json(self) -> dict:
        return {"mean": self.mean, "dev": self.dev, "n": self.n}

    @staticmethod
    def from_json(data: dict) -> Predictor:
        return Predictor(data.get("mean"), float(data.get("dev", 0.0)), int(data.get("n", 0)))
