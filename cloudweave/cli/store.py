"""`cloudweave store ...`, `cloudweave apply` and `cloudweave status`."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time

from cloudweave.cli.common import add_store_tls, load_reported, ovsdb_client_tls, use_store_tls
from cloudweave.store import DB, client, cluster, ops
from cloudweave.store.policy import read_files, write_out
from cloudweave.store.shards import site_shards


def _err(msg: str) -> int:
    print(f"cloudweave: {msg}", file=sys.stderr)
    return 1


def cmd_store(args: argparse.Namespace) -> int:
    try:
        if args.action == "create":
            m = cluster.create(args.dir, args.raft, args.listen, args.election_timer, args.probe, _tls(args),
                               tuple(args.operator))
            print(f"store member created in {m.dir}: Raft {m.raft}, clients {m.remote}; start it with "
                  f"`cloudweave store start {args.dir}`")
        elif args.action == "join":
            m = cluster.join(args.dir, args.raft, args.peer, args.listen, args.probe, _tls(args))
            print(f"store member created in {m.dir}, joining through {', '.join(args.peer)}; start it with "
                  f"`cloudweave store start {args.dir}`")
        elif args.action == "start":
            for d in args.dir:
                m = cluster.load(d)
                print(f"{m.dir}: ovsdb-server pid {cluster.start(m)}, clients {m.remote}")
        elif args.action == "stop":
            for d in args.dir:
                cluster.stop(cluster.load(d))
                print(f"{d}: stopped")
        elif args.action == "local":
            members = cluster.local_cluster(args.dir, args.members, election_ms=args.election_timer,
                                            pki_dir=args.pki, operators=tuple(args.operator))
            print(f"{len(members)}-member store running in {args.dir}" +
                  (f", TLS with the CA in {args.pki}" if args.pki else ""))
            print("remotes: " + ",".join(m.remote for m in members))
        elif args.action == "status":
            return _member_status([cluster.load(d) for d in args.dir])
        elif args.action == "upgrade":
            said = cluster.upgrade(cluster.load(args.dir), tuple(args.operator))
            print(f"{args.dir}: {said}")
        elif args.action == "operator":
            m = cluster.load(args.dir)
            if args.op in ("add", "remove"):
                if not args.name:
                    return _err(f"store operator {args.op} DIR NAME: name the certificate")
                cluster.add_operator(m, args.name, remove=args.op == "remove")
                print(f"{args.name}: {'now an operator' if args.op == 'add' else 'no longer an operator'}")
            else:
                print("\n".join(cluster.operators(m)) or "(no operators)")
    except cluster.StoreError as exc:
        return _err(str(exc))
    return 0


def _tls(args: argparse.Namespace) -> tuple[str, str, str] | None:
    files = (args.private_key, args.certificate, args.ca_cert)
    return files if any(files) else None  # type: ignore[return-value]


def _member_status(members: list[cluster.Member]) -> int:
    bad = 0
    for m in members:
        p = cluster.pid(m)
        st = cluster.status(m) if p else {}
        if not st:
            bad += 1
        print(f"{m.dir}: {'pid ' + str(p) if p else 'NOT RUNNING'}, clients {m.remote}, "
              f"{st.get('Role', 'no answer')}, {st.get('Status', '')}, term {st.get('Term', '?')}, "
              f"leader {st.get('Leader', '?')}")
    return 1 if bad else 0


def cmd_apply(args: argparse.Namespace) -> int:
    model, rc = load_reported(args.file)
    if model is None:
        print(f"{args.file}: not applied; the store keeps the policy in force", file=sys.stderr)
        return rc
    try:
        use_store_tls(args)
        s = client.connect(args.store, ops.TABLES)
        applied = ops.publish(s, read_files(args.file, model.files), len(model.sites), args.shards)
    except client.StoreUnavailable as exc:
        return _err(f"{exc}; nothing applied")
    if applied.changed:
        print(f"{args.file}: policy version {applied.version} applied ({len(model.files)} file(s), "
              f"digest {applied.digest[:12]})")
    else:
        print(f"{args.file}: the store already holds exactly these files (version {applied.version})")
    if args.wait:
        behind = ops.wait_applied(s, applied.version, args.wait)
        if behind:
            return _err(f"shards {', '.join(behind)} do not report version {applied.version} after "
                        f"{args.wait:.0f} s (their master is down or still programming)")
        print(f"every shard reports version {applied.version} in force")
    return 0


def _server_info(remote: str, tls: list[str]) -> str:
    """What one member says of itself, from its _Server database (leader, connected to the cluster)."""
    query = json.dumps(["_Server", {"op": "select", "table": "Database", "where": [["name", "==", DB]],
                                    "columns": ["leader", "connected", "index"]}])
    try:
        out = subprocess.run(["ovsdb-client", *tls, "--timeout=2", "transact", remote, query], capture_output=True,
                             text=True, timeout=4)
        rows = json.loads(out.stdout)[0]["rows"] if out.returncode == 0 else None
    except (subprocess.TimeoutExpired, ValueError, KeyError, IndexError):
        rows = None
    if not rows:
        return "no answer"
    r = rows[0]
    role = "leader" if r.get("leader") else "follower"
    return f"{role}, {'in the cluster' if r.get('connected') else 'CUT OFF from the cluster'}, index {r.get('index')}"


def cmd_status(args: argparse.Namespace) -> int:
    try:
        use_store_tls(args)
        remotes = client.split_remotes(args.store).split(",")
    except client.StoreUnavailable as exc:
        return _err(str(exc))
    print("store:")
    for r in remotes:
        print(f"  {r}: {_server_info(r, ovsdb_client_tls(args))}")
    try:
        s = client.connect(args.store, ops.TABLES)
    except client.StoreUnavailable as exc:
        return _err(str(exc))
    now = time.time()
    have = ops.stored_policy(s)
    pol = ops.latest_policy(s.rows("Policy"))
    if have is None or pol is None:
        print("policy: none (cloudweave apply FILE --store ...)")
        sites: list[str] = []
    else:
        print(f"policy: version {pol.version}, digest {pol.digest[:12]}, applied by {pol.applied_by} "
              f"{now - pol.applied_at:.0f} s ago")
        sites = _sites(have[1])
    print("replicas:")
    for r in sorted(s.rows("Replica"), key=lambda r: r.name):
        age = now - r.seen
        state = "live" if age <= 5 else "NOT SEEN"
        print(f"  {r.name}: {state} (seen {age:.1f} s ago), pid {r.pid}, target {r.target}"
              f"{', coordinator (traffic engineering)' if r.coordinator and age <= 5 else ''}")
    clus = next(iter(s.rows("Cluster")), None)
    k = clus.shards if clus is not None else 0
    by_shard: dict[str, list[str]] = {}
    for site, shard in site_shards(sites, k).items() if k else ():
        by_shard.setdefault(shard, []).append(site)
    print(f"shards: {k}")
    for row in sorted(s.rows("Shard"), key=lambda r: (len(r.name), r.name)):
        behind = pol is not None and row.policy_applied < pol.version
        names = ", ".join(by_shard.get(row.name, [])) or "-"
        print(f"  {row.name}: master {row.owner or 'none'} (generation {row.generation}), policy "
              f"{row.policy_applied}{' (behind)' if behind else ''}; sites {names}")
    hops = sorted(s.rows("NextHop"), key=lambda r: (r.site, r.learned_by))
    if hops:
        print("next hops: " + ", ".join(f"{r.site} {r.mac} (by {r.learned_by})" for r in hops))
    s.close()
    return 0


def _sites(files) -> list[str]:
    from cloudweave.config import ConfigError, load_model

    with tempfile.TemporaryDirectory() as d:
        try:
            model, _ = load_model(write_out(files, d))
        except ConfigError:
            return []
    return [site.name for site in model.sites]


def add_parsers(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser("apply", help="check a policy file and publish it to the replicas' store",
                       description="Check FILE exactly as `cloudweave check` does; if it is valid, publish it (with "
                                   "every file it includes) to the store as the next policy version, in one "
                                   "transaction. Every replica compiles from that version. An invalid file changes "
                                   "nothing.")
    s.add_argument("file")
    s.add_argument("--store", required=True, help="the store's remotes: ssl:IP:PORT[,...] (tcp: on one host)")
    add_store_tls(s)
    s.add_argument("--shards", type=int, default=None,
                   help="number of shards the sites are dealt into (default: kept; at first one per site, at "
                        "most 16)")
    s.add_argument("--wait", type=float, default=0, metavar="SECONDS",
                   help="wait until every shard's master has the new version on all its switches")
    s.set_defaults(func=cmd_apply)

    s = sub.add_parser("status", help="the replicas' store: its members, the policy, who masters which site",
                       description="Print the store's members (leader, in the cluster), the policy version, the "
                                   "replicas (live or not, which one coordinates traffic engineering), each shard's "
                                   "master and generation with its sites, and the learned NAT next hops.")
    s.add_argument("--store", required=True, help="the store's remotes: ssl:IP:PORT[,...] (tcp: on one host)")
    add_store_tls(s)
    s.set_defaults(func=cmd_status)

    s = sub.add_parser("store", help="create, join, start, stop and check the members of a replicated store",
                       description="A store is a Raft cluster of ovsdb-server processes (3, or 5 to survive two "
                                   "losses) serving cloudweave's database. Create the first member, join the "
                                   "others to it, start each; `local` does all of it on this host.")
    ssub = s.add_subparsers(dest="action", required=True, metavar="ACTION")
    t = ssub.add_parser("create", help="the first member of a new cluster (ovsdb-tool create-cluster)")
    t.add_argument("dir", help="the member's directory (created)")
    t.add_argument("--raft", required=True, help="its Raft address: ssl:IP:PORT (tcp:IP:PORT or unix:/path on "
                                                  "one host)")
    t.add_argument("--listen", required=True, help="where clients connect: pssl:PORT:IP (TLS, each client known "
                                                    "by its certificate) or ptcp:PORT:IP (one host)")
    t.add_argument("--operator", action="append", default=[], metavar="NAME",
                   help="a certificate name that may apply policies (repeat; later: store operator add)")
    t.add_argument("--election-timer", type=int, default=cluster.ELECTION_MS,
                   help="Raft election timer, ms (default %(default)s; raise it on a loaded or large store)")
    t.add_argument("--probe", type=int, default=cluster.PROBE_MS,
                   help="inactivity probe on client connections, ms (default %(default)s)")
    t = ssub.add_parser("join", help="a member that joins a cluster (ovsdb-tool join-cluster)")
    t.add_argument("dir")
    t.add_argument("--raft", required=True, help="this member's Raft address")
    t.add_argument("--peer", required=True, action="append", help="a member's Raft address (repeat for more)")
    t.add_argument("--listen", required=True, help="where clients connect: pssl:PORT:IP or ptcp:PORT:IP")
    t.add_argument("--probe", type=int, default=cluster.PROBE_MS)
    for t in (ssub.choices["create"], ssub.choices["join"]):
        t.add_argument("--private-key", default=None, help="with ssl:/pssl: addresses: the member's key")
        t.add_argument("--certificate", default=None, help="the member's certificate (cloudweave pki issue DIR "
                                                           "NAME --kind store)")
        t.add_argument("--ca-cert", default=None, help="the CA: every client and member must show a certificate "
                                                       "it signed")
    t = ssub.add_parser("start", help="start members' ovsdb-server (in the background)")
    t.add_argument("dir", nargs="+")
    t = ssub.add_parser("stop", help="stop members (a leader hands over first)")
    t.add_argument("dir", nargs="+")
    t = ssub.add_parser("status", help="each member's Raft role, status, term and leader; exit 1 if one is down")
    t.add_argument("dir", nargs="+")
    t = ssub.add_parser("local", help="create and start a whole cluster on this host (Raft on unix sockets, "
                                      "clients on loopback TCP)")
    t.add_argument("dir")
    t.add_argument("--members", type=int, default=3)
    t.add_argument("--election-timer", type=int, default=cluster.ELECTION_MS)
    t.add_argument("--pki", default=None, metavar="DIR",
                   help="a CA (cloudweave pki init DIR): TLS clients and Raft, members' certificates issued there")
    t.add_argument("--operator", action="append", default=[], metavar="NAME",
                   help="a certificate name that may apply policies (repeat)")
    t = ssub.add_parser("upgrade", help="convert a running store to this version's schema (online), with the "
                                        "RBAC role; the policy in force is kept")
    t.add_argument("dir", help="a running member's directory (its unix socket is used)")
    t.add_argument("--operator", action="append", default=[], metavar="NAME",
                   help="a certificate name that may apply policies (repeat)")
    t = ssub.add_parser("operator", help="who may apply policies: add, remove or list the certificate names, "
                                         "through a member's unix socket (root on a store host)")
    t.add_argument("op", choices=["add", "remove", "list"])
    t.add_argument("dir", help="a running member's directory")
    t.add_argument("name", nargs="?", help="the operator certificate's name (CN)")
    s.set_defaults(func=cmd_store)

