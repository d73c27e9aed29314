"""Security operations on the test bed (issue #11), topologies/matrix.yaml with flow_logs and detection on
(defaults), attacker dev1 at east and victim dev2 at west:

- attack -> isolation: for each attack of the labelled set, the first attack packet and the last one that
  reached the victim (a capture in its namespace), and those that reached it after the quarantine flows were
  in place (the controller's reconcile line); nmap SYN scan and a one-flow UDP flood repeated for a p95;
- false positives: a benign mix (iperf3 bulk, short connections, pings, a one-way stream) on many endpoints
  for a while; endpoint-windows = (source, second) pairs with records; alarms and quarantines counted;
- the collector: real OVS-shaped IPFIX datagrams sent to the controller's decode path at rising rates,
  records decoded per second and losses counted;
- throughput of a conntracked pair (web2 -> api1) with flow logs on and off, alternated in one run;
- release -> traffic back, from the quarantine list written to the first packet through;
- an outside flood (topologies/nat.yaml: hping3 from the internet namespace, a spoofed source, through east's
  port forward to blue1): first packet at the victim -> the limit in force at the uplinks, and what the
  victim still receives from it once limited, against what was sent.

Run: .venv/bin/python bench/secops.py [--rounds 20] [--benign-s 120] [--skip collector,benign,...]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Iterable

from on_testbed import ROOT, edit_live, running

from cloudweave import paths
from cloudweave.secops import quarantine
from cloudweave.testbed.state import State
from cloudweave.testbed.traffic import API_SERVICE, BENIGN_SOURCES, LOAD, benign_mix, log_times, ns_argv, stop
from testkit.harness import appctl

ATTACKER, VICTIM, VICTIM_IP, ATTACKER_SITE = "dev1", "dev2", "10.41.0.11", "east"
ATTACKS = {
    "nmap -sS": ["nmap", "-sS", "-T4", "-n", "-Pn", "-p", "1-1000", VICTIM_IP],
    "nmap -sU": ["nmap", "-sU", "-T5", "-n", "-Pn", "--max-retries", "0", "-p", "1-400", VICTIM_IP],
    "hping3 UDP flood, one flow": ["hping3", "--udp", "--flood", "-k", "-s", "4000", "-p", "5000", VICTIM_IP],
    "hping3 UDP flood, changing ports": ["hping3", "--udp", "--flood", "-p", "5000", VICTIM_IP],
    "hping3 SYN flood": ["hping3", "-S", "--flood", "-p", "80", VICTIM_IP],
    "hping3 ICMP flood": ["hping3", "-1", "--flood", VICTIM_IP],
}
REPEATED = ("nmap -sS", "hping3 UDP flood, one flow")


def with_security_ops(doc: dict) -> None:
    doc["flow_logs"] = {"new": 1, "unreplied": "1/16", "drops": "1/16"}
    doc["detection"] = {}
    doc["routes"] = [API_SERVICE]


def p95(values: list[float]) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(0.95 * (len(values) - 1))))]


def spread_ms(seconds: Iterable[float]) -> str:
    ms = [x * 1000 for x in seconds]
    return f"median {statistics.median(ms):.0f} ms, p95 {p95(ms):.0f} ms, max {max(ms):.0f} ms"


def quarantined(topology: str) -> dict:
    return {e.endpoint: e for e in quarantine.load(paths.default_quarantine_path(topology))
            if e.active(time.time())}


def release(topology: str, name: str) -> None:
    subprocess.run([sys.executable, "-m", "cloudweave", "quarantine", "release", topology, name], cwd=ROOT,
                   capture_output=True, timeout=60)


def attack_once(workdir: str, topology: str, name: str) -> dict:
    cap = subprocess.Popen(ns_argv(workdir, VICTIM, *LOAD, "capture", "10.41.0.1", "--seconds", "8"),
                           stdout=subprocess.PIPE, text=True)
    assert cap.stdout.readline().strip() == "ready"
    started = time.time()
    attack = subprocess.Popen(ns_argv(workdir, ATTACKER, "timeout", "5", *ATTACKS[name]), stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    entry = None
    deadline = time.time() + 7
    while time.time() < deadline and entry is None:
        entry = quarantined(topology).get(ATTACKER)
        time.sleep(0.05)
    attack.wait(30)
    times = json.loads(cap.communicate(timeout=30)[0])["times"]
    result = {"attack": name, "detected": entry is not None, "packets": len(times)}
    if entry is not None:
        alarm = entry.evidence.get("alarm", entry.since)
        committed = log_times(workdir, f"site {ATTACKER_SITE} (dpid", alarm - 0.002)
        cut = committed[0] if committed else entry.since
        first = times[0] if times else started
        last = max((t for t in times if t <= cut + 0.05), default=first)
        result.update(signal=entry.evidence.get("signal"), first_to_isolation=last - first,
                      first_to_alarm=alarm - first, alarm_to_flows=cut - alarm,
                      after=sum(1 for t in times if t > cut))
        release(topology, ATTACKER)
    time.sleep(6.5)  # the detector's longest window passes quietly: armed again for the next run
    return result


def bench_attacks(workdir: str, topology: str, rounds: int) -> None:
    results: dict[str, list[dict]] = {}
    for name in ATTACKS:
        for _ in range(rounds if name in REPEATED else 2):
            r = attack_once(workdir, topology, name)
            results.setdefault(name, []).append(r)
            said = (f"{r['signal']}: first packet -> isolated {r['first_to_isolation'] * 1000:.0f} ms (alarm after "
                    f"{r['first_to_alarm'] * 1000:.0f} ms, flows {r['alarm_to_flows'] * 1000:.0f} ms later), "
                    f"{r['after']} packets after" if r["detected"] else "NOT DETECTED")
            print(f"  {name}: {said} ({r['packets']} packets reached the victim)", flush=True)
    print("attack -> isolation (first attack packet at the victim -> the last one that reached it):")
    detected = 0
    for name, rs in results.items():
        got = [r for r in rs if r["detected"]]
        detected += len(got)
        if got:
            print(f"  {name}: {len(got)}/{len(rs)} detected; {spread_ms(r['first_to_isolation'] for r in got)}; "
                  f"packets after isolation: max {max(r['after'] for r in got)}")
        else:
            print(f"  {name}: 0/{len(rs)} detected")
    total = sum(len(rs) for rs in results.values())
    print(f"  recall: {detected}/{total} = {100 * detected / total:.1f} %")


def bench_benign(workdir: str, topology: str, seconds: int) -> None:
    """The benign mix of cloudweave.testbed.traffic on its sources at once; every alarm is a false positive."""
    since = time.time()
    procs = benign_mix(workdir, seconds)
    try:
        time.sleep(seconds + 2)
    finally:
        stop(procs)
    path = os.path.join(workdir, f".{os.path.basename(topology)}.flowlog.jsonl")
    windows: set[tuple[str, int]] = set()
    with open(path) as fh:
        for raw in fh:
            line = json.loads(raw)
            if line["time"] >= since and line["kind"] in ("new", "unreplied", "icmp"):
                windows.add((line["src"], int(line["time"])))
    active = len(BENIGN_SOURCES) * seconds
    alarms = len(log_times(workdir, "detection: ", since))
    cut_off = quarantined(topology)
    print(f"benign: {seconds} s on {len(BENIGN_SOURCES)} sources: {active} endpoint-windows of 1 s ({len(windows)} "
          f"with records), {alarms} alarms = {100 * alarms / active:.2f} % false positives, {len(cut_off)} "
          f"quarantined {sorted(cut_off)}")
    for name in cut_off:
        release(topology, name)


FILTER = {"name": "drop-udp-7100-from-dev1", "match": {"proto": "udp", "dst_port": 7100}, "from": ["port:dev1"]}


def _without_security_ops(doc: dict) -> None:
    doc.pop("flow_logs", None)
    doc.pop("detection", None)


def _cpu_s(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _table0_packets(workdir: str, site: str, text: str) -> int:
    out = subprocess.run(["ovs-ofctl", "-O", "OpenFlow15", "--names", "dump-flows",
                          f"unix:{workdir}/{site}/br-int.mgmt", "table=0"], capture_output=True, text=True,
                         check=True).stdout
    return sum(int(m.group(1)) for line in out.splitlines() if text in line
               for m in [re.search(r"n_packets=(\d+)", line)] if m)


def bench_filters(workdir: str, rounds: int = 10) -> None:
    """A drop filter's cost per packet at the switch against forwarding it, and how soon it takes effect."""
    edit_live(workdir, _without_security_ops)  # the plain pipeline; no detector to quarantine the flood
    pid = int(open(f"{workdir}/{ATTACKER_SITE}/ovs-vswitchd.pid").read())
    flood = ["timeout", "3", "hping3", "--udp", "--flood", "-k", "-s", "4100", "-p", "7100", VICTIM_IP]
    cost = {}
    for dropped in (False, True):
        edit_live(workdir, (lambda doc: doc.__setitem__("filters", [FILTER])) if dropped else
                  (lambda doc: doc.pop("filters", None)))
        text = "priority=39000" if dropped else "priority=100,in_port=dev1"
        n0, c0 = _table0_packets(workdir, ATTACKER_SITE, text), _cpu_s(pid)
        subprocess.run(ns_argv(workdir, ATTACKER, *flood), capture_output=True, timeout=60)
        time.sleep(1.5)  # the datapath's counters reach OpenFlow about twice a second
        n, c = _table0_packets(workdir, ATTACKER_SITE, text) - n0, _cpu_s(pid) - c0
        cost[dropped] = (n, c)
        print(f"  {'dropped by the filter' if dropped else 'forwarded'}: {n:,} packets in 3 s "
              f"({n / 3:,.0f}/s), ovs-vswitchd at {ATTACKER_SITE} {c:.2f} CPU-s: {c / max(1, n) * 1e6:.2f} us a packet")
    (nf, cf), (nd, cd) = cost[False], cost[True]
    print(f"filter: a dropped packet costs {cd / max(1, nd) * 1e6:.2f} us of switch CPU, a forwarded one "
          f"{cf / max(1, nf) * 1e6:.2f} us ({(cd / max(1, nd)) / (cf / max(1, nf)):.2f}x)")
    lat = []
    for _ in range(rounds):
        edit_live(workdir, lambda doc: doc.pop("filters", None), settle_s=1.0)
        sink = subprocess.Popen(ns_argv(workdir, VICTIM, *LOAD, "stampsink", "7100", "--seconds", "3.5"),
                                stdout=subprocess.PIPE, text=True)
        assert sink.stdout.readline().strip() == "ready"
        sender = subprocess.Popen(ns_argv(workdir, ATTACKER, *LOAD, "stamped", VICTIM_IP, "7100", "--pps", "2000",
                                          "--seconds", "3", "--sport", "4100"), stdout=subprocess.DEVNULL)
        time.sleep(1.0)
        edited = time.time()
        edit_live(workdir, lambda doc: doc.__setitem__("filters", [FILTER]), settle_s=0)
        sender.wait(30)
        got = [t for _, t in json.loads(sink.communicate(timeout=30)[0])["received"]]
        applied = log_times(workdir, "reload applied", edited)
        if applied and got:
            lat.append((max(got) - applied[0]) * 1000)
    print(f"filter in force: the last packet {statistics.median(lat):.0f} ms (median), {max(lat):.0f} ms (max) after "
          f"the reload was applied, over {len(lat)} reloads")
    edit_live(workdir, lambda doc: (doc.pop("filters", None), with_security_ops(doc)))


def bench_collector(rates: tuple[int, ...] = (10_000, 20_000, 30_000, 40_000), seconds: float = 3.0) -> None:
    """The controller's decode path (FlowLogService._drain: decode, name, write, detect) on one socket, fed
    datagrams laid out as OVS sends them (one record each) at a steady rate by another thread."""
    from dataclasses import replace

    from cloudweave.config import load_model
    from cloudweave.config.model import Detection, FlowLogs

    model = replace(load_model(os.path.join(ROOT, "topologies", "matrix.yaml"))[0], flow_logs=FlowLogs(),
                    detection=Detection())
    for rate in rates:
        decoded, sent, lost, cpu = _collector_at(model, rate, seconds)
        print(f"collector at {rate:,} records/s offered ({sent:,} sent in {seconds:g} s): {decoded:,.0f} decoded, "
              f"{sent - decoded:,.0f} not, {lost:,.0f} of them counted lost (sequence gaps); collector "
              f"CPU {cpu / seconds:.0%} of a core", flush=True)


SENDER = """
import socket, struct, sys, time
sys.path.insert(0, sys.argv[4])
from testkit.ipfix import data_set, message, record, template_set
port, rate, seconds = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3])
tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
tx.sendto(message(template_set(), domain=0x42), ("127.0.0.1", port))
grams = [bytearray(message(data_set(record(1 << 24, "10.41.0.12", "10.41.0.21", 6, 20000 + i, 9004, "web2")),
                           domain=0x42)) for i in range(1000)]
start, n = time.monotonic(), 0
while (elapsed := time.monotonic() - start) < seconds:
    while n < int(elapsed * rate):
        g = grams[n % 1000]
        struct.pack_into("!I", g, 8, n)  # the sequence number: records sent before this one
        tx.sendto(g, ("127.0.0.1", port))
        n += 1
    time.sleep(0.0002)
print(n)
"""


def _collector_at(model: object, rate: int, seconds: float) -> tuple[float, int, float, float]:
    """Records decoded, sent and counted lost, and the collector's CPU seconds; the sender is another process."""
    import selectors
    import tempfile

    from cloudweave.flowlog.records import Annotator
    from cloudweave.secops.detect import Detector
    from controller.flowlog_service import FlowLogService, _Collector
    from controller.metrics import Metrics
    from controller.netns import udp_socket

    with tempfile.TemporaryDirectory() as d:
        settings = type("S", (), {"config": os.path.join(d, "m.yaml"), "flowlog": os.path.join(d, "log")})()
        metrics = Metrics()
        svc = FlowLogService(settings, metrics, lambda: None, lambda _m: None)
        svc.annotator, svc.detector, svc._model = Annotator(model), Detector(model.detection), model
        sock = udp_socket("127.0.0.1", 0)
        c = _Collector("east", sock, ())
        sender = subprocess.Popen([sys.executable, "-c", SENDER, str(sock.getsockname()[1]), str(rate), str(seconds),
                                   ROOT], stdout=subprocess.PIPE, text=True)
        sel = selectors.DefaultSelector()
        sel.register(sock, selectors.EVENT_READ)
        cpu0 = time.process_time()
        while sender.poll() is None or sel.select(timeout=0.3):
            if sel.select(timeout=0.1):
                svc._drain(c)  # noqa: SLF001 - the decode path alone (no OVSDB, no switch)
        cpu = time.process_time() - cpu0
        sent = int(sender.stdout.read())
        lost = sum(metrics.flowlog_lost.labels("east", cause)._value.get() for cause in ("sequence", "undecodable"))
        sock.close()
        return metrics.flowlog_records.labels("east", "new")._value.get(), sent, lost, cpu


def bench_throughput(workdir: str, rounds: int = 3) -> None:
    srv = subprocess.Popen(ns_argv(workdir, "api1", "iperf3", "-s", "-p", "9006"), stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    got: dict[bool, list[float]] = {True: [], False: []}
    try:
        time.sleep(0.5)
        for _ in range(rounds):
            for on in (True, False):
                edit_live(workdir, with_security_ops if on else
                          (lambda doc: (doc.pop("flow_logs", None), doc.pop("detection", None))))
                run = subprocess.run(ns_argv(workdir, "web2", "iperf3", "-J", "-t", "4", "-c", "10.41.0.21", "-p",
                                             "9006"), capture_output=True, text=True, timeout=60)
                r = json.loads(run.stdout)["end"]["sum_received"]
                got[on].append(r["bits_per_second"] / 1e9)
                print(f"  flow logs {'on ' if on else 'off'}: {got[on][-1]:.3f} Gbit/s", flush=True)
    finally:
        stop([srv])
        edit_live(workdir, with_security_ops)
    on, off = statistics.median(got[True]), statistics.median(got[False])
    print(f"throughput web2 -> api1 (conntracked both ways): median {on:.3f} Gbit/s with flow logs, {off:.3f} without: "
          f"{on / off:.2f}x")


OUTSIDE = "198.51.100.66"  # the flood's spoofed source: no endpoint


def with_an_outside_victim(doc: dict) -> None:
    doc["flow_logs"] = {"new": 1, "unreplied": "1/16", "drops": "1/16"}
    doc["detection"] = {}
    blue = doc["segments"]["blue"]
    blue["forwards"].append({"proto": "udp", "port": 5000, "to": "blue1", "to_port": 5000})
    del blue["max_connections"]  # a flood fills it by design; the limit is what is measured here


def outside_once(workdir: str, topology: str, nat_ip: str, seconds: float = 5.0) -> dict:
    from cloudweave.testbed.build import INTERNET

    cap = subprocess.Popen(ns_argv(workdir, "blue1", *LOAD, "capture", OUTSIDE, "--seconds", str(seconds + 2)),
                           stdout=subprocess.PIPE, text=True)
    sink = subprocess.Popen(ns_argv(workdir, "blue1", *LOAD, "sink", "5000", "--seconds", str(seconds + 2)),
                            stdout=subprocess.PIPE, text=True)
    assert cap.stdout.readline().strip() == "ready" and sink.stdout.readline().strip() == "ready"
    started = time.time()
    flood = subprocess.Popen(ns_argv(workdir, INTERNET, "timeout", "-s", "INT", str(seconds), "hping3", "--udp",
                                     "--flood", "-a", OUTSIDE, "-p", "5000", nat_ip),
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    entry = None
    while time.time() < started + seconds and entry is None:
        entry = quarantined(topology).get(OUTSIDE)
        time.sleep(0.05)
    out = flood.communicate(timeout=30)[0]
    times = json.loads(cap.communicate(timeout=30)[0])["times"]
    sink.communicate(timeout=30)
    sent = int(m.group(1)) if (m := re.search(r"(\d+) packets transmitted", out)) else 0
    result = {"detected": entry is not None, "sent_pps": sent / seconds}
    if entry is not None:
        alarm = entry.evidence.get("alarm", entry.since)
        committed = log_times(workdir, "site east (dpid", alarm - 0.002)
        cut = committed[0] if committed else entry.since
        first = times[0] if times else started
        lo, hi = cut + 0.2, started + seconds - 0.2
        result.update(first_to_limit=cut - first, first_to_alarm=alarm - first,
                      limited_pps=sum(1 for t in times if lo <= t < hi) / (hi - lo),
                      before_pps=sum(1 for t in times if t < cut) / max(cut - first, 1e-3))
        release(topology, OUTSIDE)
    time.sleep(6.5)  # quiet for the detector's longest window: armed again
    # Each round against a fresh conntrack table: the flood's spoofed connections (tens of thousands a round,
    # 30 s each) would otherwise slow the next rounds' datapath, and with it their detection.
    appctl(workdir, "east", "dpctl/flush-conntrack")
    return result


def bench_outside(rounds: int) -> None:
    with running("nat", with_an_outside_victim) as (workdir, doc):
        topology = State.load(workdir).topology
        nat_ip = doc["sites"]["east"]["nat_ip"]
        results = []
        for _ in range(rounds):
            r = outside_once(workdir, topology, nat_ip)
            results.append(r)
            print(f"  outside flood: {r['sent_pps']:.0f} pps sent; " + (
                f"first packet -> limit in force {r['first_to_limit'] * 1000:.0f} ms (alarm after "
                f"{r['first_to_alarm'] * 1000:.0f} ms); {r['before_pps']:.0f} pps reached the victim before, "
                f"{r['limited_pps']:.0f} pps once limited" if r["detected"] else "NOT DETECTED"), flush=True)
    got = [r for r in results if r["detected"]]
    said = (f"; first packet -> limit: {spread_ms(r['first_to_limit'] for r in got)}; delivered once limited: "
            f"median {statistics.median(r['limited_pps'] for r in got):.0f} pps of a median "
            f"{statistics.median(r['sent_pps'] for r in got):.0f} pps sent" if got else "")
    print(f"outside flood -> limit (1000pps at every uplink): {len(got)}/{len(results)} detected{said}")


def bench_release(workdir: str, topology: str, rounds: int = 10) -> None:
    back = []
    for _ in range(rounds):
        subprocess.run([sys.executable, "-m", "cloudweave", "quarantine", "add", topology, VICTIM], cwd=ROOT,
                       capture_output=True, timeout=60)
        time.sleep(1.0)
        sink = subprocess.Popen(ns_argv(workdir, VICTIM, *LOAD, "stampsink", "7004", "--seconds", "4"),
                                stdout=subprocess.PIPE, text=True)
        assert sink.stdout.readline().strip() == "ready"
        sender = subprocess.Popen(ns_argv(workdir, ATTACKER, *LOAD, "stamped", VICTIM_IP, "7004", "--pps", "1000",
                                          "--seconds", "3", "--sport", "37004"), stdout=subprocess.DEVNULL)
        time.sleep(1.0)
        release(topology, VICTIM)
        written = os.stat(paths.default_quarantine_path(topology)).st_mtime
        sender.wait(30)
        got = json.loads(sink.communicate(timeout=30)[0])["received"]
        first = min((t for _, t in got), default=None)
        if first is not None:
            back.append((first - written) * 1000)
        time.sleep(0.5)
    print(f"release -> traffic back: median {statistics.median(back):.0f} ms, max {max(back):.0f} ms over "
          f"{len(back)} releases ({rounds - len(back)} without traffic back)")


def on_matrix(skip: set[str], args: argparse.Namespace) -> None:
    with running("matrix", with_security_ops) as (workdir, _):
        topology = State.load(workdir).topology
        if "attacks" not in skip:
            bench_attacks(workdir, topology, args.rounds)
        if "benign" not in skip:
            bench_benign(workdir, topology, args.benign_s)
        if "throughput" not in skip:
            bench_throughput(workdir)
        if "release" not in skip:
            bench_release(workdir, topology)
        if "filters" not in skip:
            bench_filters(workdir)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=20, help="repeats of the scan and of the one-flow flood")
    ap.add_argument("--benign-s", type=int, default=120)
    ap.add_argument("--skip", default="", help="comma-separated: attacks, benign, collector, throughput, release, "
                    "filters, outside")
    args = ap.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    if "collector" not in skip:
        bench_collector()
    if {"attacks", "benign", "throughput", "release", "filters"} - skip:
        on_matrix(skip, args)
    if "outside" not in skip:
        bench_outside(max(5, args.rounds // 2))
    print(f"reproduce: .venv/bin/python bench/secops.py --rounds {args.rounds} --benign-s {args.benign_s}"
          + (f" --skip {args.skip}" if args.skip else ""))


if __name__ == "__main__":
    main()
