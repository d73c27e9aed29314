"""Controller replicas (docs/replicas.md): failover times with real packets, and what sharding buys.

Part 1, on the Mininet test bed (topologies/three-clouds.yaml with every site's uplink gateway set, 3 replicas,
a 3-member store), each fault repeated, with a 5 ms ping, a sequenced UDP stream through a weighted route, an
open TCP connection and NAT egress running across it (testkit/replica_bed.py's traffic):
- crash: kill -9 of onprem's master -> the new master's session has MASTER confirmed by the switch (its log
  line); the killed replica is started again before the next round;
- freeze: SIGSTOP of onprem's master -> the same, then SIGCONT;
- store leader: kill -9 of the Raft leader -> a client's writes (one every 20 ms) succeed again; the member is
  started again and the cluster re-forms.
Part 2, on real ovs-vswitchd instances without Mininet (30 sites, 10 endpoints each, 16 shards): start to
programmed (every switch holds its compiled flows) and CPU seconds per replica, 1 replica and then 3, same run,
empty switches and a new store each time; then kill -9 one of the 3 and time until every site of its shards
has a new master (0 flow-mods expected).

Run: .venv/bin/python bench/failover_ha.py [--crashes 5] [--freezes 3] [--leader-losses 3] [--sites 30]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import statistics
import sys
import tempfile
import time
from datetime import datetime

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from on_testbed import running  # noqa: E402

from cloudweave.config import load_model  # noqa: E402
from cloudweave.flows.compile import compile_site  # noqa: E402
from cloudweave.store import client, cluster  # noqa: E402
from cloudweave.store.shards import site_shards  # noqa: E402
from cloudweave.testbed.build import start_replica  # noqa: E402
from cloudweave.testbed.state import State  # noqa: E402
from testkit.harness import OvsSites, Replica, Store, store_rows, wait_for  # noqa: E402
from testkit.replica_bed import Traffic, lossless, nat_ready, owners, replica_log, with_gateways  # noqa: E402

MASTER = re.compile(r"^(\S+ \S+) INFO cloudweave: site (\S+) \(dpid 0x[0-9a-f]+\): master, generation (\d+)$", re.M)


def master_at(log: str, site: str, generation: int) -> float | None:
    for when, s, g in MASTER.findall(log):
        if s == site and int(g) == generation:
            return datetime.strptime(when, "%Y-%m-%d %H:%M:%S,%f").timestamp()
    return None


def ms(values: list[float]) -> str:
    if not values:
        return "-"
    return (f"median {statistics.median(values) * 1000:.0f} ms, max {max(values) * 1000:.0f} ms "
            f"({len(values)} runs)")


def fault(workdir: str, how: str) -> tuple[float, dict[str, str]]:
    """One crash or freeze of onprem's master under traffic: (seconds to the new MASTER, what each stream lost)."""
    victim, gen = owners(workdir)["onprem"]
    pid = State.load(workdir).replicas[victim]["pid"]
    traffic = Traffic(workdir)
    time.sleep(2)
    at = time.time()
    os.kill(pid, signal.SIGKILL if how == "crash" else signal.SIGSTOP)
    try:
        new, new_gen = wait_for(lambda: owners(workdir)["onprem"][1] > gen and owners(workdir)["onprem"], 15,
                                interval_s=0.02, what="a new master of onprem")
        confirmed = wait_for(lambda: master_at(replica_log(workdir, new), "onprem", new_gen), 15,
                             what="MASTER confirmed")
    finally:
        if how == "freeze":
            os.kill(pid, signal.SIGCONT)
    results = traffic.results()
    if how == "crash":
        start_replica(State.load(workdir), load_model(State.load(workdir).topology)[0], victim)
    time.sleep(4)  # the woken or restarted replica settles (balance may move shards back)
    return confirmed - at, results


def leader_loss(workdir: str) -> float:
    """kill -9 of the store's Raft leader while a client writes every 20 ms: seconds until writes succeed."""
    state = State.load(workdir)
    members = [cluster.load(d) for d in state.store["members"]]
    writer = client.connect(state.store["remotes"], ["Probe"])
    leader = cluster.leader(members)
    seq, killed, back = 0, None, None
    deadline = time.monotonic() + 30
    while back is None and time.monotonic() < deadline:
        if writer.ready:
            status, _ = writer.commit(lambda txn, t, n=seq: client.StoreIdl.insert(txn, t, "Probe", writer="bench",
                                                                                  seq=n))
            if status == client.SUCCESS:
                seq += 1
                if killed is not None:
                    back = time.monotonic() - killed
        else:
            client.run_until([writer], lambda: writer.ready, 10, "reconnecting")
        if killed is None and seq == 20:
            os.kill(cluster.pid(leader), signal.SIGKILL)
            killed = time.monotonic()
        time.sleep(0.02)
    acked = set(range(seq))
    stored = {r["seq"] for r in store_rows(state.store["remotes"], "Probe") if r["writer"] == "bench"}
    writer.close()
    if not acked <= stored:
        raise SystemExit(f"acknowledged writes lost: {sorted(acked - stored)[:10]}")
    cluster.start(leader)
    cluster.wait_formed(members)
    return back if back is not None else float("inf")


def part_failover(args: argparse.Namespace) -> dict:
    out: dict = {"crash": [], "freeze": [], "leader": [], "losses": []}
    with running("three-clouds", with_gateways, replicas=3) as (workdir, _):
        nat_ready(workdir)
        wait_for(lambda: len({o for o, _ in owners(workdir).values()}) == 3, 60, what="one shard per replica")
        for how, n in (("crash", args.crashes), ("freeze", args.freezes)):
            for i in range(n):
                took, results = fault(workdir, how)
                out[how].append(took)
                out["losses"].append((how, results))
                print(f"  {how} {i + 1}: new master after {took * 1000:.0f} ms; {results}", flush=True)
        for i in range(args.leader_losses):
            took = leader_loss(workdir)
            out["leader"].append(took)
            print(f"  store leader loss {i + 1}: writes back after {took * 1000:.0f} ms", flush=True)
    return out


# ---- part 2: sharding ---------------------------------------------------------------------------------------


def generated(sites: int, workdir: str) -> str:
    import yaml

    from testkit.generate import mesh, to_yaml_doc

    model = mesh(sites, sites * 10, max(1, sites // 3), sites_per_segment=4)
    doc = to_yaml_doc(model, "/run/cloudweave")
    path = os.path.join(workdir, "mesh.yaml")
    with open(path, "w") as fh:
        yaml.safe_dump(doc, fh, sort_keys=False)
    return path


def cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def programmed(sites: OvsSites, want: dict[str, int]) -> bool:
    return all(len(sites.instances[s].flows()) == n for s, n in want.items())


def clear(sites: OvsSites) -> None:
    for ovs in sites.instances.values():
        ovs.ofctl("del-flows", "br-int")
        ovs.ofctl("del-groups", "br-int")
        ovs.vsctl("del-controller", "br-int")


def run_replicas(sites: OvsSites, workdir: str, count: int, want: dict[str, int]) -> tuple[float, list[float], Store,
                                                                                           list[Replica]]:
    store_dir = os.path.join(workdir, "store")
    shutil.rmtree(store_dir, ignore_errors=True)
    store = Store(workdir)
    rundirs = [o.rundir for o in sites.instances.values()]
    reps = [Replica(f"r{i + 1}", store.remotes, workdir, rundirs, sites.config) for i in range(count)]
    started = time.monotonic()
    for r in reps:
        r.start()
    wait_for(lambda: programmed(sites, want), 300, interval_s=0.2, what="every switch programmed")
    took = time.monotonic() - started
    return took, [cpu_s(r.pid()) for r in reps], store, reps


def part_sharding(args: argparse.Namespace) -> dict:
    workdir = tempfile.mkdtemp(prefix="cw-ha-shards-")
    sites = OvsSites(generated(args.sites, workdir), workdir)
    out: dict = {}
    store, reps = None, []
    try:
        model = load_model(sites.config)[0]
        want = {s.name: len(compile_site(model, s.name).flows) for s in model.sites}
        for count in (1, 3):
            clear(sites)
            took, cpu, store, reps = run_replicas(sites, workdir, count, want)
            out[count] = (took, cpu)
            print(f"  {count} replica(s): {args.sites} sites programmed in {took:.1f} s; CPU s per replica: "
                  f"{', '.join(f'{c:.1f}' for c in cpu)}", flush=True)
            if count == 3:
                wait_for(lambda st=store: len({r["owner"] for r in st.query("Shard")}) == 3, 60,
                         what=f"shards shared (logs in {workdir}): "
                              f"{sorted((r['name'], r['owner'], r['handoff']) for r in store.query('Shard'))}")
                time.sleep(3)
                out["crash"] = crash_at_scale(store, reps, model)
                print(f"  crash of a replica at {args.sites} sites: every site of its shards has a new master after "
                      f"{out['crash'][0] * 1000:.0f} ms ({out['crash'][1]} sites, flow-mods sent "
                      f"{out['crash'][2]})", flush=True)
            for r in reps:
                r.stop()
            store.stop()
            store, reps = None, []
    finally:
        for r in reps:
            r.stop()
        if store is not None:
            store.stop()
        sites.stop()
        if args.keep:
            print(f"  logs kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return out


def crash_at_scale(store: Store, reps: list[Replica], model) -> tuple[float, int, int]:
    shards = {r["name"]: r for r in store.query("Shard")}
    where = site_shards((s.name for s in model.sites), len(shards))
    victim = reps[0]
    mine = [s for s, sh in where.items() if shards[sh]["owner"] == victim.name]
    gens = {s: shards[where[s]]["generation"] for s in mine}
    at = time.time()
    victim.signal(signal.SIGKILL)

    def taken() -> dict[str, tuple[str, int]] | None:
        now = {r["name"]: r for r in store.query("Shard")}
        got = {s: (now[where[s]]["owner"], now[where[s]]["generation"]) for s in mine}
        return got if all(g > gens[s] for s, (_, g) in got.items()) else None

    got = wait_for(taken, 20, interval_s=0.02, what="new owners")
    by_name = {r.name: r for r in reps}
    times = [wait_for(lambda s=s, o=o, g=g: master_at(by_name[o].log(), s, g), 20) for s, (o, g) in got.items()]
    time.sleep(2)
    mods = 0
    for s, (o, g) in got.items():
        log = by_name[o].log()
        m = re.search(rf"site {s} \(dpid 0x[0-9a-f]+\): master, generation {g}\n(?:.*\n)*?.*site {s} \(dpid "
                      rf"0x[0-9a-f]+\): \d+ flows desired.*\((\d+) flow-mods\)", log)
        mods += int(m.group(1)) if m else 0
    return max(times) - at, len(mine), mods


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--crashes", type=int, default=5)
    p.add_argument("--freezes", type=int, default=3)
    p.add_argument("--leader-losses", type=int, default=3)
    p.add_argument("--sites", type=int, default=30)
    p.add_argument("--skip-failover", action="store_true")
    p.add_argument("--skip-sharding", action="store_true")
    p.add_argument("--keep", action="store_true", help="keep the sharding part's directory (replica logs)")
    args = p.parse_args()
    print("bench/failover_ha.py: controller replicas on a 3-member store")
    ha = {} if args.skip_failover else part_failover(args)
    shards = {} if args.skip_sharding else part_sharding(args)
    print("\nresults")
    if ha:
        lost = [r for _, r in ha["losses"] if not lossless(r)]
        print(f"  crash -> new master:        {ms(ha['crash'])}  (goal <= 1 s, moonshot 100 ms)")
        print(f"  freeze -> takeover:         {ms(ha['freeze'])}  (goal <= 2.5 s)")
        print(f"  store leader -> writes:     {ms(ha['leader'])}  (goal <= 3 s)")
        print(f"  faults with a lost packet:  {len(lost)} of {len(ha['losses'])}  (goal 0)"
              f"{' ' + str(lost) if lost else ''}")
    if shards:
        one, three = shards[1], shards[3]
        print(f"  {args.sites} sites, 1 replica:  programmed in {one[0]:.1f} s, CPU {one[1][0]:.1f} s")
        print(f"  {args.sites} sites, 3 replicas: programmed in {three[0]:.1f} s, CPU "
              f"{', '.join(f'{c:.1f}' for c in three[1])} s (each replica compiles every site; each programs only "
              f"its shards)")
        took, n, mods = shards["crash"]
        print(f"  crash at {args.sites} sites:      new master on all {n} sites of its shards after "
              f"{took * 1000:.0f} ms, {mods} flow-mods")
    skips = "".join(f" --{k.replace('_', '-')}" for k in ("skip_failover", "skip_sharding") if getattr(args, k))
    print(f"\nreproduce: .venv/bin/python bench/failover_ha.py --crashes {args.crashes} --freezes {args.freezes} "
          f"--leader-losses {args.leader_losses} --sites {args.sites}{skips}")


if __name__ == "__main__":
    main()
