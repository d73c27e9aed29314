"""Traffic engineering on the test bed (topologies/te.yaml, its links' capacities divided by SCALE): UDP at
1.5 times the direct link's capacity from onprem to cloud1. With shortest-path routing a third is lost; with
`split: auto` the controller learns the demand from the switches' counters and splits it over the detour
within a few intervals, and the loss goes away. Then the demand moves to another pair of sites and the
weights follow. The learned matrix is in the state file that `cloudweave tm` reads. Last, other traffic on
the direct link that no route moves: the controller measures it and splits around it.

The file's 100 Mbit/s links are divided by 5 here: the traffic engineer is the same at any rate (it plans in
proportions of capacity), and at 150 Mbit/s three userspace datapaths on 2 cores are CPU-bound, so a second of
loss measures the machine, not the split (a CI run lost 10-48 % per second after the detour was in force)."""

import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time

import pytest
import yaml

from cloudweave.testbed.cli import down
from cloudweave.testbed.state import State
from cloudweave.testbed.traffic import LOAD, ns_argv
from testkit.harness import ROOT, wait_for
from tests.e2e.test_testbed import bring_up

pytestmark = pytest.mark.testbed
SCALE = 5
OFFERED_MBPS, STREAMS, PORT = 150 / SCALE, 100, 5001  # many flows: hashing 30 would often put 2/3 on one path
SHIFT_S, JUDGED_S = 14, 6  # the shifted demand runs 14 s; its last 6 whole seconds are judged
ADOPTED = re.compile(r"^(\S+ \S+) INFO cloudweave.te:   route realtime (\S+)->(\S+): (.*)$", re.M)


def scaled(doc: dict) -> None:
    for link in doc["links"]:
        link["capacity"] = f"{int(link['capacity'].removesuffix('Mbit')) // SCALE}Mbit"


@pytest.fixture(scope="module")
def te(tmp_path_factory):
    workdir, model = bring_up(tmp_path_factory, "te", scaled)
    try:
        yield workdir, model
    finally:
        down(workdir)


def log(workdir: str) -> str:
    return open(State.load(workdir).controller["log"]).read()


def udp(workdir: str, src: str, dst: str, dst_ip: str, seconds: int, mbps: float = OFFERED_MBPS,
        port: int = PORT, sport: int = 20000) -> list[float]:
    """Offer `mbps` of UDP in STREAMS flows, each renewed every second (new 5-tuples, as connections come and
    go: weights apply to new ones), for `seconds`; the loss in percent, second by second."""
    sink = subprocess.Popen(ns_argv(workdir, dst, *LOAD, "sink", str(port),
                                    "--seconds", str(seconds + 3)), stdout=subprocess.PIPE, text=True)
    try:
        assert sink.stdout.readline().strip() == "ready"
        run = subprocess.run(ns_argv(workdir, src, *LOAD, "churn", dst_ip, str(port), "--sport", str(sport),
                                     "--mbps", str(mbps), "--streams", str(STREAMS), "--seconds",
                                     str(seconds), "--flow-s", "1"), capture_output=True, text=True,
                             timeout=seconds + 60)
        assert run.returncode == 0, run.stderr
        sent = {int(k): v for k, v in json.loads(run.stdout).items()}
        got = {int(k): v for k, v in json.loads(sink.communicate(timeout=30)[0]).items()}
    finally:
        if sink.poll() is None:
            sink.kill()
    seconds_sent = sorted(sent)[1:-1]  # whole seconds only
    return [100.0 * max(0.0, 1 - got.get(t, 0) / sent[t]) for t in seconds_sent]


def settled(losses: list[float], seconds: int) -> tuple[float, float]:
    """The median and the mean loss of the last `seconds`. The median is what must be low: on 2 shared cores
    one second can lose several percent to whatever else runs (it did in CI); the mean bounds the rest."""
    last = sorted(losses[-seconds:])
    return last[seconds // 2], sum(last) / seconds


def set_routes(workdir: str, routes: list | None) -> None:
    path = State.load(workdir).topology
    doc = yaml.safe_load(open(path))
    if routes is None:
        doc.pop("routes", None)
    else:
        doc["routes"] = routes
    with open(path + ".tmp", "w") as fh:
        yaml.safe_dump(doc, fh, sort_keys=False)
    os.replace(path + ".tmp", path)


def test_auto_weights_beat_shortest_path_and_follow_a_shift(te):
    workdir, _ = te
    routes = yaml.safe_load(open(os.path.join(ROOT, "topologies", "te.yaml")))["routes"]
    reloads = log(workdir).count("reload:")
    set_routes(workdir, None)  # shortest-path routing for the same traffic, same run
    wait_for(lambda: log(workdir).count("reload:") > reloads, timeout_s=20, what="the reload without routes")
    time.sleep(2)
    sp = udp(workdir, "client", "server", "10.71.0.21", 6)
    sp_loss = sum(sp) / len(sp)
    assert sp_loss > 20, sp  # 150 Mbit/s into 100 Mbit/s

    set_routes(workdir, routes)
    wait_for(lambda: log(workdir).count("reload:") > reloads + 1, timeout_s=20, what="the reload with routes")
    before = len(ADOPTED.findall(log(workdir)))
    auto = udp(workdir, "client", "server", "10.71.0.21", 12)
    adopted = [m for m in ADOPTED.findall(log(workdir))[before:] if m[1:3] == ("onprem", "cloud1")]
    assert adopted and "onprem -> cloud2 -> cloud1" in adopted[-1][3], adopted
    auto_median, auto_loss = settled(auto, 6)
    assert auto_median < 3 and auto_loss < sp_loss / 5, [round(x, 1) for x in auto]  # the detour carries the rest
    print(f"onprem->cloud1 at {OFFERED_MBPS} Mbit/s: shortest path loses {sp_loss:.1f} %, auto weights "
          f"{auto_loss:.1f} % (last 6 s); per second: {[round(x) for x in auto]}")

    # The matrix is taken while the shifted demand still runs: once it stops, the next rounds learn that it did
    # (the mean falls to 0 and the shares go back), which is right but not what this checks. Only a copy of the
    # state file is taken then: starting `cloudweave tm` (a Python process) during the traffic costs the
    # userspace datapaths on 2 cores enough to lose packets and, once, BFD on a tunnel. It reads the copy after.
    during = os.path.join(workdir, "te-state-during-shift.json")
    shifted_before = len([m for m in ADOPTED.findall(log(workdir)) if m[1:3] == ("cloud2", "onprem")])
    started = time.monotonic()
    copied: dict = {}

    def split_in_state() -> bool:
        """The state file holds the shifted demand split over both paths: copied then. Not at a fixed time: a
        link saturated for the second before the split can lose BFD for a second (its capacity is 0 then)."""
        shutil.copyfile(os.path.join(workdir, "te-state.json"), during)
        keys = {(k["src"], k["dst"]): k for k in json.load(open(during))["keys"]}
        key = keys.get(("cloud2", "onprem"), {})
        return (key.get("predictor") or {}).get("mean", 0) > 0 and \
            len([s for s in key.get("shares") or () if s > 0.05]) == 2

    def copy_state() -> None:
        wait_for(lambda: len([m for m in ADOPTED.findall(log(workdir)) if m[1:3] == ("cloud2", "onprem")])
                 > shifted_before, timeout_s=10, what="the shares for cloud2->onprem")
        wait_for(split_in_state, timeout_s=SHIFT_S, what="the split of cloud2->onprem in the state file")
        copied["at_s"] = time.monotonic() - started

    reader = threading.Thread(target=copy_state)
    reader.start()
    shift = udp(workdir, "edge", "client", "10.71.0.11", SHIFT_S)  # the demand moves: cloud2 -> onprem
    reader.join()
    moved = [m for m in ADOPTED.findall(log(workdir)) if m[1:3] == ("cloud2", "onprem")]
    assert moved and "cloud2 -> cloud1 -> onprem" in moved[-1][3], moved
    assert copied.get("at_s", SHIFT_S) < SHIFT_S - JUDGED_S - 1, copied  # the judged seconds come after it
    shift_median, shift_loss = settled(shift, JUDGED_S)
    assert shift_median < 3 and shift_loss < sp_loss / 5, [round(x, 1) for x in shift]
    print(f"cloud2->onprem after the shift: per-second loss {[round(x) for x in shift]}")

    tm = subprocess.run([sys.executable, "-m", "cloudweave", "tm", State.load(workdir).topology, "--state", during,
                         "--json"], capture_output=True, text=True, cwd=ROOT)
    assert tm.returncode == 0, tm.stderr
    doc = json.loads(tm.stdout)
    keys = {(k["src"], k["dst"]): k for k in doc["keys"]}
    assert len(keys) == 6  # every ordered pair of the three sites
    shift_key = keys[("cloud2", "onprem")]
    assert shift_key["predictor"]["mean"] > 0 and len([s for s in shift_key["shares"] if s > 0.05]) == 2


def test_other_traffic_on_a_link_is_measured_and_the_split_goes_around_it(te):
    """UDP outside the route's ports (no split moves it) at 0.8 of onprem->cloud1's capacity, then the route's
    own traffic at 0.7 of it. Blind to the other traffic, the LP would halve the route's traffic over the two
    paths and put 0.8 + 0.35 on the direct link; measuring it (the tunnel port's counter less the route's
    pinned-path flows), it sends the route around: neither stream loses packets once the split is in force."""
    workdir, model = te
    capacity = next(link.capacity_mbps for link in model.links if set(link.sites) == {"onprem", "cloud1"})
    before = len(ADOPTED.findall(log(workdir)))
    other: list[list[float]] = []
    other_s, routed_s, lead_s = 22, 14, 5  # the other traffic leads by lead_s and ends with the routed stream
    background = threading.Thread(target=lambda: other.append(
        udp(workdir, "client", "server", "10.71.0.21", other_s, mbps=0.8 * capacity, port=7001, sport=40000)))
    got: list[list[float]] = []
    routed_stream = threading.Thread(target=lambda: got.append(
        udp(workdir, "client", "server", "10.71.0.21", routed_s, mbps=0.7 * capacity)))
    background.start()
    try:
        time.sleep(lead_s)
        routed_stream.start()
        time.sleep(routed_s - 2)
        during = log(workdir)  # the weights in force while both streams run (after them, the demand falls to 0)
    finally:
        routed_stream.join()
        background.join()
    assert got and other, "a stream failed (its error is above)"
    routed = got[0]
    adopted = [m for m in ADOPTED.findall(during)[before:] if m[1:3] == ("onprem", "cloud1")]
    assert adopted, "no new weights for onprem->cloud1"
    shares = dict(re.findall(r"(\S+(?: -> \S+)+) (\d+)%", adopted[-1][3]))
    assert int(shares.get("onprem -> cloud2 -> cloud1", 0)) >= 90, adopted[-1]  # around the busy link
    routed_median, routed_loss = settled(routed, JUDGED_S)
    other_median, other_loss = settled(other[0][:-2], JUDGED_S)  # the seconds beside the routed stream's last
    assert routed_median < 3 and routed_loss < 5, [round(x, 1) for x in routed]
    assert other_median < 3 and other_loss < 5, [round(x, 1) for x in other[0]]
    # What the controller planned around when it adopted those weights.
    said = re.findall(r"other traffic planned around: .*?onprem->cloud1 ([\d.]+) Mbit/s", during)
    assert said, "no other traffic named in the log"
    learned = float(said[-1])
    assert 0.6 * capacity < learned < capacity, said  # 0.8 of it offered
    print(f"other traffic {0.8 * capacity:.0f} Mbit/s on onprem->cloud1 (learned {learned:.1f}); the route's "
          f"weights: {adopted[-1][3]}; per-second loss routed {[round(x) for x in routed]}, other "
          f"{[round(x) for x in other[0]]}")
