"""Traffic engineering on the Mininet test bed (topologies/te.yaml: onprem's two links 100 Mbit/s, the clouds'
200 Mbit/s, htb-shaped): fixed-rate UDP that overloads the shortest path, under shortest-path routing and
under `split: auto` in the same run, then the same demand moved to another pair of sites. UDP flows are
renewed every second (weights apply to new flows; existing ones keep their path). Prints delivered/offered
and loss per configuration, and how many seconds the weights took to follow.

Run: .venv/bin/python bench/te_testbed.py [--mbps 150] [--seconds 12]
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import time
from datetime import datetime

from on_testbed import edit_live, running

from cloudweave.testbed.state import State
from cloudweave.testbed.traffic import LOAD, ns_argv

PORT, STREAMS = 5001, 100


def offer(workdir: str, src: str, dst: str, dst_ip: str, mbps: float, seconds: int) -> tuple[int, int, list[float]]:
    sink = subprocess.Popen(ns_argv(workdir, dst, *LOAD, "sink", str(PORT),
                                    "--seconds", str(seconds + 3)), stdout=subprocess.PIPE, text=True)
    assert sink.stdout.readline().strip() == "ready"
    run = subprocess.run(ns_argv(workdir, src, *LOAD, "churn", dst_ip, str(PORT),
                                 "--mbps", str(mbps), "--streams", str(STREAMS), "--seconds", str(seconds)),
                         capture_output=True, text=True, check=True)
    sent = {int(k): v for k, v in json.loads(run.stdout).items()}
    got = {int(k): v for k, v in json.loads(sink.communicate(timeout=30)[0]).items()}
    whole = sorted(sent)[1:-1]
    per_s = [100 * max(0.0, 1 - got.get(t, 0) / sent[t]) for t in whole]
    return sum(sent[t] for t in whole), sum(min(got.get(t, 0), sent[t]) for t in whole), per_s


STAMP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) .*?(traffic engineering: new weights|group \S+ modified)",
                   re.M)


def apply_delays(log: str) -> list[float]:
    """Seconds from each adoption of new weights to the last group modification it caused."""
    out, start, last = [], None, None
    for stamp, what in STAMP.findall(log):
        t = datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()
        if what.startswith("traffic"):
            if start is not None and last is not None:
                out.append(last - start)
            start, last = t, None
        elif start is not None:
            last = t
    if start is not None and last is not None:
        out.append(last - start)
    return out


def set_routes(workdir: str, routes: list | None) -> None:
    def edit(doc: dict) -> None:
        doc.pop("routes", None)
        if routes is not None:
            doc["routes"] = routes
    edit_live(workdir, edit)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mbps", type=float, default=150)
    p.add_argument("--seconds", type=int, default=12)
    args = p.parse_args()
    with running("te") as (workdir, doc):
        time.sleep(3)
        rows = []
        set_routes(workdir, None)
        rows.append(("onprem->cloud1, shortest path", *offer(workdir, "client", "server", "10.71.0.21", args.mbps,
                                                            args.seconds)))
        set_routes(workdir, doc["routes"])
        rows.append(("onprem->cloud1, split: auto", *offer(workdir, "client", "server", "10.71.0.21", args.mbps,
                                                          args.seconds)))
        rows.append(("then cloud2->onprem, split: auto", *offer(workdir, "edge", "client", "10.71.0.11", args.mbps,
                                                               args.seconds)))
        print(f"UDP at {args.mbps:.0f} Mbit/s in {STREAMS} flows renewed every second, {args.seconds} s per run")
        print(f"  {'configuration':<34} {'delivered/offered':>17} {'loss':>6} {'loss after 3 s':>14}  per second")
        for name, sent, got, per_s in rows:
            tail = per_s[3:]
            print(f"  {name:<34} {got / sent:17.3f} {100 * (1 - got / sent):5.1f}% {sum(tail) / len(tail):13.1f}%  "
                  f"{[round(x) for x in per_s]}")
        for name, _, _, per_s in rows[1:]:
            settle = next((i for i, x in enumerate(per_s) if all(y < 1 for y in per_s[i:])), None)
            print(f"  {name}: loss under 1 % from second {settle} on (weights followed the demand)")
        delays = apply_delays(open(State.load(workdir).controller["log"]).read())
        if delays:
            print(f"  new weights to the last switch's group-mod: {', '.join(f'{d * 1000:.0f} ms' for d in delays)} "
                  f"(poll interval 1 s)")
        print(f"reproduce: .venv/bin/python bench/te_testbed.py --mbps {args.mbps:.0f} --seconds {args.seconds}")


if __name__ == "__main__":
    main()
