"""Edit latency on real ovs-vswitchd: a one-line edit of the file until the switch holds its result.

1. 100,000 endpoints (bench/program_switch.py's topology; the hub site's switch, ~100,600 flows): controller
   start to a programmed switch; one endpoint's MAC edited, file write to the bundle committed (the
   controller logs the line once the switch confirmed the commit), and the flow-mods it took; a reload that
   changes nothing (the file touched; a comment added); a restart with every flow in place. Baseline, same
   run: loading and compiling the edited file from scratch, which is what every edit cost before.
2. 1,000 sites and 10,000 endpoints (testkit/generate.py's mesh): one endpoint added; every affected site that
   has a switch here (up to --switches of them, real OVS) converged, and unaffected ones (--unaffected of
   them, real OVS too) sent nothing.

Run: .venv/bin/python bench/edit_latency.py [--endpoints 100000] [--edits 5] [--sites 1000 --site-endpoints 10000]
"""

from __future__ import annotations

import argparse
import datetime
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
import uuid

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.program_switch import count, topology  # noqa: E402
from cloudweave.config import load_model  # noqa: E402
from cloudweave.flows.compile import compile_model, compile_site  # noqa: E402
from cloudweave.flows.incremental import IncrementalCompiler  # noqa: E402
from cloudweave.testbed.ovs import NetnsOvs  # noqa: E402
from testkit.generate import mesh, to_yaml_doc  # noqa: E402
from testkit.harness import Controller, wait_for  # noqa: E402

STAMP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")


def stamp(line: str) -> float:
    """The wall-clock time a controller log line was written."""
    # asctime is local time, as a naive datetime's timestamp() takes it
    return datetime.datetime.strptime(STAMP.match(line).group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()


def mac_of(n: int) -> str:
    return "02:" + ":".join(f"{(n >> s) & 0xFF:02x}" for s in (32, 24, 16, 8, 0))


def replace_file(path: str, text: str) -> None:
    """As editors save: write a new file beside it, then rename it into place."""
    with open(path + ".new", "w") as fh:
        fh.write(text)
    os.replace(path + ".new", path)


def new_line(ctl: Controller, site: str, before: int, timeout_s: float = 60) -> str:
    return wait_for(lambda: len(ctl.reconcile_lines(site)) > before and ctl.reconcile_lines(site)[before],
                    timeout_s, interval_s=0.01, what=f"a reconcile of {site}")


def audit_cost(ovs: NetnsOvs, rounds: int = 5) -> tuple[float, float]:
    """What the session's audit asks every second (one aggregate request for our cookie), timed against a
    read of every flow, both through ovs-ofctl against the same switch (process start-up included in both)."""
    ours = "cookie=0xc10d000000000000/0xffff000000000000"
    agg = []
    for _ in range(rounds):
        t = time.perf_counter()
        ovs.ofctl("dump-aggregate", "br-int", ours)
        agg.append(time.perf_counter() - t)
    t = time.perf_counter()
    ovs.ofctl("dump-flows", "br-int", ours)
    return statistics.median(agg), time.perf_counter() - t


def one_site(args: argparse.Namespace, workdir: str) -> None:
    os.makedirs(workdir)
    ovs = NetnsOvs(os.path.join(workdir, "hub"), f"cwe-{uuid.uuid4().hex[:6]}")
    ctl = None
    try:
        ovs.start()
        ovs.vsctl("add-br", "br-int", "--", "set", "bridge", "br-int", "datapath_type=netdev", "fail_mode=secure")
        config = topology(workdir, args.endpoints)
        n_flows = len(compile_site(load_model(config)[0], "hub").flows)
        ctl = Controller(config, workdir, [ovs.rundir])
        started = time.time()
        ctl.start()
        first = new_line(ctl, "hub", 0, 600)
        start_to_programmed = stamp(first) - started
        assert count(ovs) == n_flows, (count(ovs), n_flows)
        audit_s, dump_s = audit_cost(ovs)
        text = open(config).read()
        latencies, mods = [], []
        for i in range(args.edits):
            n = 2 * i  # idx 1: an endpoint at site a, whose MAC the hub forwards to
            old, new = mac_of(n), f"02:ee:00:00:00:{i:02x}"
            text = text.replace(f"    mac: {old}\n", f"    mac: {new}\n", 1)
            before = len(ctl.reconcile_lines("hub"))
            written = time.time()
            replace_file(config, text)
            line = new_line(ctl, "hub", before)
            latencies.append(stamp(line) - written)
            mods.append(int(re.search(r"\((\d+) flow-mods\)", line).group(1)))
            assert "cookie=" in ovs.ofctl("dump-flows", "br-int", f"dl_dst={new}"), line
            time.sleep(0.5)
        sent = ctl.metric("cloudweave_flow_mods_total", site="hub")
        unchanged = []
        for how in ("touched", "comment added"):
            applied = ctl.log().count("reload applied in")
            if how == "touched":
                os.utime(config)
            else:
                with open(config, "a") as fh:
                    fh.write("# nothing changes\n")
            line = wait_for(lambda a=applied: ctl.log().count("reload applied in") > a and [
                ln for ln in ctl.log().splitlines() if "reload applied in" in ln][a], 30, interval_s=0.01,
                what="the reload")
            unchanged.append((how, int(re.search(r"applied in (\d+) ms", line).group(1))))
        time.sleep(1.5)
        assert ctl.metric("cloudweave_flow_mods_total", site="hub") == sent, "a reload that changes nothing sent"
        ctl.stop()
        ctl = Controller(config, workdir, [ovs.rundir])
        started = time.time()
        ctl.start()
        again = new_line(ctl, "hub", 0, 600)
        assert "(0 flow-mods)" in again, again
        restart_total = stamp(again) - started
        restart_read = int(re.search(r"in (\d+) ms", again).group(1)) / 1000
        t = time.perf_counter()
        compile_model(load_model(config)[0])
        scratch = time.perf_counter() - t
        print(f"{args.endpoints} endpoints, hub switch with {n_flows} flows (real ovs-vswitchd)")
        print(f"  controller start to programmed switch: {start_to_programmed:.2f} s")
        print(f"  one MAC edited, file write to switch converged: median {statistics.median(latencies) * 1000:.0f} ms, "
              f"max {max(latencies) * 1000:.0f} ms over {len(latencies)} edits "
              f"({', '.join(f'{x * 1000:.0f}' for x in latencies)} ms); flow-mods per edit: {sorted(set(mods))}")
        print("  reload that changes nothing: " + ", ".join(f"{how} {ms} ms" for how, ms in unchanged)
              + "; flow-mods sent: 0")
        print(f"  restart with every flow in place: confirmed (0 flow-mods) {restart_total:.2f} s after start, "
              f"of which the switch read and compare {restart_read:.2f} s")
        print(f"  baseline, same run: load and compile the edited file from scratch {scratch:.2f} s")
        print(f"  audit question (aggregate flow count of our cookie, ovs-ofctl): median {audit_s * 1000:.1f} ms; "
              f"the full read it saves (dump-flows of the same flows): {dump_s:.2f} s")
    finally:
        if ctl is not None:
            ctl.stop()
        ovs.stop()


def many_sites(args: argparse.Namespace, workdir: str) -> None:
    os.makedirs(workdir)
    model = mesh(args.sites, args.site_endpoints, args.sites, seed=5)
    doc = to_yaml_doc(model, workdir)
    config = os.path.join(workdir, "mesh.yaml")
    with open(config, "w") as fh:
        yaml.safe_dump(doc, fh, sort_keys=False)
    model = load_model(config)[0]
    seg = model.endpoints[0].segment
    host = model.endpoints[0].site
    name = f"x{args.site_endpoints}"
    used = {e.ip for e in model.endpoints if e.segment == seg}
    ip = next(str(a) for a in model.segment(seg).subnet.hosts() if a not in used)
    entry = {"site": host, "port": "px", "segment": seg, "mac": "02:ee:ee:00:00:01", "ip": ip}
    inc = IncrementalCompiler()
    before = inc.compile(model)
    edited_doc = dict(doc, endpoints=dict(doc["endpoints"], **{name: entry}))
    edited_path = os.path.join(workdir, "edited.yaml")
    with open(edited_path, "w") as fh:
        yaml.safe_dump(edited_doc, fh, sort_keys=False)
    after = inc.compile(load_model(edited_path)[0])
    affected = sorted(s for s in after if after[s] is not before[s])
    quiet = sorted(s for s in after if after[s] is before[s])[: args.unaffected]
    real = affected[: args.switches] + quiet
    instances = {}
    ctl = None
    try:
        for site in real:
            ovs = NetnsOvs(os.path.join(workdir, site), f"cwm-{uuid.uuid4().hex[:5]}-{site}")
            instances[site] = ovs
            ovs.start()
            ports = [e.port for e in model.endpoints if e.site == site] + (["px"] if site == host else [])
            argv = ["add-br", "br-int", "--", "set", "bridge", "br-int", "datapath_type=netdev", "fail_mode=secure"]
            for port in ports:
                argv += ["--", "add-port", "br-int", port, "--", "set", "interface", port, "type=internal"]
            ovs.vsctl(*argv)
        ctl = Controller(config, workdir, [o.rundir for o in instances.values()])
        started = time.time()
        ctl.start()
        for site in real:
            new_line(ctl, site, 0, 900)
        programmed = time.time() - started
        time.sleep(3)  # tunnel ports and audits settle
        lines = {s: len(ctl.reconcile_lines(s)) for s in real}
        sent = {s: ctl.metric("cloudweave_flow_mods_total", site=s) for s in real}
        edited_text = yaml.safe_dump(edited_doc, sort_keys=False)
        written = time.time()
        replace_file(config, edited_text)
        took = {s: stamp(new_line(ctl, s, lines[s], 120)) - written for s in affected[: args.switches]}
        time.sleep(2)
        quiet_sent = {s: ctl.metric("cloudweave_flow_mods_total", site=s) - sent[s] for s in quiet}
        quiet_lines = {s: len(ctl.reconcile_lines(s)) - lines[s] for s in quiet}
        compile_line = [ln for ln in ctl.log().splitlines() if "compiled" in ln and " compiled 0 sites" not in ln]
        print(f"{args.sites} sites, {args.site_endpoints} endpoints; one endpoint added to segment {seg} at {host}: "
              f"{len(affected)} sites affected, {len(after) - len(affected)} not")
        print(f"  start to programmed ({len(real)} real switches; the controller compiles the sites whose switches "
              f"are connected, not all {args.sites}): {programmed:.1f} s")
        print(f"  affected sites with a switch here ({len(took)}): converged after the write in median "
              f"{statistics.median(took.values()) * 1000:.0f} ms, max {max(took.values()) * 1000:.0f} ms")
        print(f"  unaffected sites with a switch here ({len(quiet)}): flow-mods sent {sum(quiet_sent.values()):.0f}, "
              f"reconcile lines {sum(quiet_lines.values())}")
        if compile_line:
            print(f"  the controller's first compile of a site: {compile_line[0].split(': ', 1)[1]}")
    finally:
        if ctl is not None:
            ctl.stop()
        for ovs in instances.values():
            ovs.stop()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--endpoints", type=int, default=100_000)
    p.add_argument("--edits", type=int, default=5)
    p.add_argument("--sites", type=int, default=1000)
    p.add_argument("--site-endpoints", type=int, default=10_000)
    p.add_argument("--switches", type=int, default=8, help="affected sites given a real switch")
    p.add_argument("--unaffected", type=int, default=4, help="unaffected sites given a real switch")
    p.add_argument("--skip", choices=("one-site", "many-sites"), help="leave out one part")
    args = p.parse_args()
    workdir = tempfile.mkdtemp(prefix="cw-edit-")
    try:
        if args.skip != "one-site":
            one_site(args, os.path.join(workdir, "one"))
        if args.skip != "many-sites":
            many_sites(args, os.path.join(workdir, "many"))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"reproduce: .venv/bin/python bench/edit_latency.py --endpoints {args.endpoints} --edits {args.edits} "
          f"--sites {args.sites} --site-endpoints {args.site_endpoints}")


if __name__ == "__main__":
    main()
