"""The chaos run (bench/chaos.py) for two minutes: replicas killed and frozen, the store's leader killed, flows
deleted and rewritten by hand, bad and good edits, an OVS restart, a link cut, a quarantine through the store,
each under traffic; every invariant must hold after each (the bench's exit code). A fixed seed, so that a
failure replays; the full run is ten minutes (docs/benchmarks.md)."""

import subprocess
import sys

import pytest

from testkit.harness import ROOT

pytestmark = pytest.mark.testbed
SEED, SECONDS = 23, 120


def test_two_minutes_of_faults_break_no_invariant():
    run = subprocess.run([sys.executable, "bench/chaos.py", "--seconds", str(SECONDS), "--seed", str(SEED)],
                         cwd=ROOT, capture_output=True, text=True, timeout=SECONDS + 600)
    print(run.stdout)
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-4000:]
    faults = [ln for ln in run.stdout.splitlines() if ln[:4].strip().isdigit()]
    assert len(faults) >= 4, run.stdout  # two minutes hold at least four faults and their settles
    assert "0 broke an invariant" in run.stdout
