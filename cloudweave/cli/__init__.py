"""The `cloudweave` command."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

from cloudweave import paths
from cloudweave.cli.common import add_store_tls, load_reported, use_store_tls
from cloudweave.config.model import Model

if TYPE_CHECKING:
    from cloudweave.secops.stored import StoredList


def cmd_check(args: argparse.Namespace) -> int:
    from cloudweave.flows.compile import compile_model

    model, rc = load_reported(args.file)
    if model is None:
        return rc
    states = compile_model(model)
    print(f"{args.file}: valid ({len(model.files)} file(s))")
    print(f"{len(model.sites)} sites, {len(model.links)} links, {len(model.segments)} segments, "
          f"{len(model.endpoints)} endpoints")
    print(f"{'site':<12} {'dpid':>8} {'vtep':<16} {'bridge':<10} {'tunnels':>7} {'endpoints':>9} {'flows':>6}")
    for site in model.sites:
        st = states[site.name]
        eps = len(model.endpoints_at(site.name))
        print(f"{site.name:<12} {site.dpid:>#8x} {str(site.vtep):<16} {site.bridge:<10} {len(st.tunnels):>7} "
              f"{eps:>9} {st.flow_count:>6}")
    for seg in model.segments:
        sites = sorted({e.site for e in model.endpoints_of_segment(seg.name)})
        print(f"segment {seg.name}: vni {seg.vni}, {seg.subnet}, mode {seg.mode}, sites {', '.join(sites) or '-'}")
    return 0


def cmd_compile(args: argparse.Namespace) -> int:
    from cloudweave.flows.compile import compile_site
    from cloudweave.flows.ofctl import render_flows, render_groups

    model, rc = load_reported(args.file)
    if model is None:
        return rc
    if args.site not in {s.name for s in model.sites}:
        print(f"cloudweave: unknown site '{args.site}' (sites: {', '.join(s.name for s in model.sites)})",
              file=sys.stderr)
        return 2
    state = compile_site(model, args.site)
    if args.groups:
        sys.stdout.write(render_groups(state.groups, args.site))
    else:
        sys.stdout.write(render_flows(state.flows, args.site))
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    from ipaddress import IPv4Address, ip_address

    from cloudweave.config.errors import Invalid
    from cloudweave.config.security import proto as parse_proto
    from cloudweave.config.yamlpos import show
    from cloudweave.flows.policy import Policy

    model, rc = load_reported(args.file)
    if model is None:
        return rc

    def resolve(text: str):
        by_name = {e.name: e for e in model.endpoints}
        if text in by_name:
            return by_name[text]
        try:
            addr = ip_address(text)
        except ValueError:
            raise LookupError(f"'{show(text)}' is neither an endpoint nor an IP address") from None
        if addr.version != 4:
            raise LookupError(f"{addr} is an IPv6 address; cloudweave's segments are IPv4")
        owners = [e for e in model.endpoints if e.ip == addr]
        if len(owners) > 1:
            names = " and ".join(f"{e.name} ({e.segment})" for e in owners)
            raise LookupError(f"{text} is the address of {names}; name the endpoint")
        return owners[0] if owners else addr

    try:
        src, dst = resolve(args.src), resolve(args.dst)
    except LookupError as exc:
        print(f"cloudweave: {exc}", file=sys.stderr)
        return 2
    proto_name = args.proto or ("tcp" if args.port else "icmp")
    try:
        proto = parse_proto(int(proto_name) if proto_name.isascii() and proto_name.isdigit() else proto_name)
        if proto is None:
            raise Invalid("a packet has one protocol: name it (tcp, udp, icmp, sctp or a number), not 'any'")
    except Invalid as exc:
        print(f"cloudweave: --proto: {exc}", file=sys.stderr)
        return 2
    from cloudweave.flows.filters import deciding_filter

    decision = Policy(model).decide(src, dst, proto, args.port)
    by_filter = deciding_filter(model, src, dst, proto, args.port)
    dropped = by_filter is not None and by_filter[0].action == "drop"
    print("allow" if decision.allowed and not dropped else "deny")
    what = f"{proto_name}{'/' + str(args.port) if args.port else ''}"
    print(f"  {args.src} -> {args.dst} {what}")
    if by_filter is not None:
        f, site = by_filter
        verb = "dropped" if dropped else f"rate-limited to {f.rate}"
        print(f"  {verb} by filter '{f.name}' at site {site} ({f.loc}), before the security groups")
    if decision.reason:
        print(f"  {decision.reason}")
    if decision.allowed and not isinstance(src, IPv4Address) and not isinstance(dst, IPv4Address):
        _explain_route(model, src, dst, proto, args.port)
    for v in decision.verdicts:
        groups = ",".join(v.endpoint.groups) or "no groups"
        head = f"  {v.direction:<7} of {v.endpoint.name} [{groups}]: {'allow' if v.allowed else 'deny'}"
        if not v.rules:
            print(f"{head} by default of segment '{v.segment.name}' (default {v.segment.default}, {v.segment.loc})")
        for r in v.rules:
            print(f"{head} by {r.describe()} ({r.loc})")
    return 0


def _explain_route(model: Model, src: Any, dst: Any, proto: int, port: int | None) -> None:
    """The route (from `routes` or `cloud_policy`) that carries the packet between sites, and its split."""
    from cloudweave.flows.routing import route_of

    r = route_of(model, src, dst, proto, port)
    if r is None:
        return
    if r.auto:
        how = "split: auto (traffic engineering)"
    elif r.k_shortest:
        how = f"equal split over the {r.k_shortest} shortest paths"
    else:
        total = sum(p.weight for p in r.paths)
        how = ", ".join(f"{' -> '.join(p.sites)} {p.weight / total:.0%}" for p in r.paths)
    print(f"  route {r.name} ({r.loc}): {how}")


def cmd_tm(args: argparse.Namespace) -> int:
    from cloudweave.cli.tm import main as tm_main
    from cloudweave.paths import default_state_path

    return tm_main(args.state or default_state_path(args.file), args.json, args.plot)


def _store_model(lst: StoredList) -> tuple[Model | None, int]:
    """The model of the policy in force in the store (endpoint names are checked against it)."""
    import tempfile

    from cloudweave.store import ops
    from cloudweave.store.policy import write_out

    have = ops.stored_policy(lst.idl)
    if have is None:
        print(f"cloudweave: {lst.where} holds no policy yet (cloudweave apply FILE --store ...)", file=sys.stderr)
        return None, 1
    with tempfile.TemporaryDirectory(prefix="cloudweave-policy-") as d:
        return load_reported(write_out(have[1], d))


def cmd_quarantine(args: argparse.Namespace) -> int:
    import getpass
    import json
    import socket
    import time

    from cloudweave.config.errors import Invalid
    from cloudweave.config.values import duration_s
    from cloudweave.flows.quarantine import limit_rate, outside_address
    from cloudweave.secops.quarantine import FileList, QuarantineFileError
    from cloudweave.secops.stored import StoredList
    from cloudweave.store.client import StoreUnavailable

    if args.store and args.state:
        print("cloudweave: --store and --state name two different lists: give one", file=sys.stderr)
        return 2
    if not args.store and not args.file:
        print("cloudweave: name the configuration FILE (its list is .FILE.quarantine.json beside it), or the "
              "replicas' --store REMOTES", file=sys.stderr)
        return 2
    try:
        who = use_store_tls(args) or f"{getpass.getuser()}@{socket.gethostname()}"
        lst = StoredList(args.store, who) if args.store else \
            FileList(args.state or paths.default_quarantine_path(args.file))
    except StoreUnavailable as exc:
        print(f"cloudweave: {exc}", file=sys.stderr)
        return 1
    try:
        if args.action == "list":
            entries = lst.load()
            now = time.time()
            if args.json:
                print(json.dumps([{**e.__dict__, "active": e.active(now)} for e in entries], indent=1))
                return 0
            shown = [e for e in entries if e.active(now)]
            if not shown:
                print(f"no endpoint is quarantined ({lst.where})")
            for e in shown:
                until = "until released" if e.until is None else f"{e.until - now:.0f} s left"
                since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e.since))
                print(f"{e.endpoint}: since {since}, {until}, by {e.source}: {e.reason or 'no reason given'}")
                for key, value in sorted(e.evidence.items()):
                    print(f"    {key}: {value}")
            return 0
        model, rc = load_reported(args.file) if args.file else _store_model(lst)
        if model is None:
            return rc
        policy = args.file or f"the policy in {lst.where}"
        outside = not model.has_endpoint(args.endpoint) and outside_address(args.endpoint) is not None
        if not outside and not model.has_endpoint(args.endpoint):
            print(f"cloudweave: '{args.endpoint}' is neither an endpoint of {policy} nor an IPv4 address",
                  file=sys.stderr)
            return 2
        if outside:  # one spelling of an address, as the detector and the flow log write it
            args.endpoint = str(outside_address(args.endpoint))
        if args.action == "release":
            if not lst.release(args.endpoint):
                print(f"cloudweave: {args.endpoint} is not quarantined", file=sys.stderr)
                return 2
            print(f"{args.endpoint} released; the controller " + (
                "lifts its limit" if outside else "restores its traffic"))
            return 0
        hold = None
        if args.hold is not None:
            try:
                hold = duration_s(args.hold)
            except Invalid as exc:
                print(f"cloudweave: --for: {exc}", file=sys.stderr)
                return 2
        lst.add(args.endpoint, args.reason or "", "cli", hold)
        if outside:
            where = ", ".join(s.name for s in model.sites if s.uplink) or "no site (none has an uplink)"
            print(f"{args.endpoint} (outside) held to {limit_rate(model)} at the uplinks of {where}", end="")
        else:
            print(f"{args.endpoint} quarantined at site {model.endpoint(args.endpoint).site}", end="")
        print(f" for {hold:g} s" if hold else " until released")
        return 0
    except (QuarantineFileError, OSError, StoreUnavailable) as exc:
        print(f"cloudweave: {exc}", file=sys.stderr)
        return 1
    finally:
        lst.close()


def cmd_flowlog(args: argparse.Namespace) -> int:
    import time

    from cloudweave.cli.flowlog import FIELDS, main
    from cloudweave.config.errors import Invalid
    from cloudweave.config.values import duration_s
    from cloudweave.paths import default_flowlog_path

    since = None
    if args.since is not None:
        try:
            since = time.time() - duration_s(args.since)
        except Invalid as exc:
            print(f"cloudweave: --since: {exc}", file=sys.stderr)
            return 2
    fields = args.fields.split(",") if args.fields else None
    unknown = [f for f in fields or () if f not in FIELDS]
    if unknown:
        print(f"cloudweave: --fields: unknown field '{unknown[0]}' (fields: {', '.join(FIELDS)})", file=sys.stderr)
        return 2
    return main(args.log or default_flowlog_path(args.file), args.follow, args.json, fields, endpoint=args.endpoint,
                verdict=args.verdict, rule=args.rule, kind=args.kind, site=args.site, since=since)


def cmd_run(args: argparse.Namespace) -> int:
    from controller.launch import run

    # The controller loads and checks the file itself (a bad one: the same messages, exit 1); loading it
    # here first as well would double a large file's start-up.
    if not args.file and not args.store:
        print("cloudweave: run FILE, or run --store REMOTES (a replica compiles the store's policy)", file=sys.stderr)
        return 2
    if args.import_policy and not (args.file and args.store):
        print("cloudweave: --import publishes FILE to --store: give both", file=sys.stderr)
        return 2
    if args.quarantine and args.store:
        print("cloudweave: a replica follows the store's quarantine list (cloudweave quarantine ... --store), not "
              "--quarantine", file=sys.stderr)
        return 2
    from controller.launch import ListenError, check_listen

    try:
        check_listen(args.listen, args.private_key, args.certificate, args.ca_cert, args.store)
    except ListenError as exc:
        print(f"cloudweave: --listen {args.listen}: {exc}", file=sys.stderr)
        return 2
    return run(args.file, args.listen, args.metrics, args.switch_target, args.log_level, args.state,
               args.quarantine, args.store, args.replica, args.import_policy,
               (args.private_key, args.certificate, args.ca_cert) if args.private_key else None)


def cmd_pki(args: argparse.Namespace) -> int:
    from cloudweave import pki

    try:
        if args.action == "init":
            print(f"CA made: {pki.init(args.dir)} (its key, {pki.ca_paths(args.dir)[0]}, stays here: 0600)")
            return 0
        issued = pki.issue(args.dir, args.name, args.kind)
    except (pki.PkiError, OSError) as exc:
        print(f"cloudweave: pki: {exc}", file=sys.stderr)
        return 1
    verb = "reissued" if args.action == "rotate" else "issued"
    print(f"{args.kind} {args.name} {verb}: key {issued.key}, certificate {issued.cert}, CA {issued.ca}")
    if args.kind == "site":
        print(f"  on the switch's host: ovs-vsctl set-ssl {issued.key} {issued.cert} {issued.ca}")
    return 0


def cmd_testbed(args: argparse.Namespace) -> int:
    from cloudweave.testbed import cli as tb

    return tb.main(args)


def cmd_demo(args: argparse.Namespace) -> int:
    from cloudweave.testbed.demo import demo

    return demo(args.topology, args.workdir)


def _port(text: str) -> int:
    """--port: the same rule as a port in the file (ASCII digits, 1..65535)."""
    from cloudweave.config.errors import Invalid
    from cloudweave.config.values import integer

    try:
        return integer(1, 65535)(text)
    except Invalid as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cloudweave", description=(
        "SDN controller for Open vSwitch: VXLAN overlays between sites, stateful security groups, bridge/NAT/"
        "direct attachment, weighted cross-cloud routing with failover, and traffic engineering from a learned "
        "traffic matrix, programmed from a YAML file."))
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("check", help="validate a topology/policy file and summarise it",
                       description="Exit 0 and print a summary when FILE is valid; otherwise exit 1 and print one "
                                   "line per problem as FILE:LINE:COL: message.")
    s.add_argument("file")
    s.set_defaults(func=cmd_check)

    s = sub.add_parser("compile", help="print a site's flows in ovs-ofctl syntax",
                       description="Print the flows of one site, deterministically, with port names; load them "
                                   "with: ovs-ofctl -O OpenFlow15 --bundle add-flows BRIDGE FILE")
    s.add_argument("file")
    s.add_argument("--site", required=True, help="the site whose flows to print")
    s.add_argument("--groups", action="store_true",
                   help="print the site's select groups instead (ovs-ofctl -O OpenFlow15 add-groups syntax)")
    s.set_defaults(func=cmd_compile)

    s = sub.add_parser("explain", help="may SRC send to DST? allow or deny, and the rules that decided",
                       description="Print 'allow' or 'deny' as the first word, then the rules that decided (file:"
                                   "line). SRC and DST are endpoint names or addresses. Without --proto: tcp when "
                                   "--port is given, else icmp.")
    s.add_argument("file")
    s.add_argument("src")
    s.add_argument("dst")
    s.add_argument("--proto", default=None, help="tcp, udp, icmp, sctp or a number")
    s.add_argument("--port", type=_port, default=None, help="destination port (1..65535)")
    s.set_defaults(func=cmd_explain)

    s = sub.add_parser("tm", help="the learned traffic matrix, predictions, weights and link utilisation",
                       description="Read the controller's traffic-engineering state for FILE and print the matrix "
                                   "of its split: auto routes (last rate, learned mean, burst prediction), the "
                                   "weights in force and the links' utilisation. The controller writes it every poll "
                                   "interval; its metrics export the same numbers.")
    s.add_argument("file")
    s.add_argument("--state", default=None, help="state file (default: .FILE.te-state.json beside FILE)")
    s.add_argument("--json", action="store_true", help="print the state as JSON")
    s.add_argument("--plot", metavar="FILE.png", default=None,
                   help="also draw the matrix as a heat map and the site graph with links coloured by utilisation")
    s.set_defaults(func=cmd_tm)

    s = sub.add_parser("run", help="run the controller (os-ken) for a topology/policy file",
                       description="Run controller.app. The file is reloaded on change and on SIGHUP; an invalid "
                                   "edit is rejected and the running flows stay as they are. Tunnels run BFD every "
                                   "100 ms for failover; set CLOUDWEAVE_BFD_MS to change it (0 turns it off, for "
                                   "peers that cannot answer BFD). With --store, this is one replica of several: it "
                                   "compiles the store's policy (FILE is imported when the store has none; later "
                                   "edits go in with `cloudweave apply`), masters the switches of the shards it "
                                   "holds and is a slave on the others (docs/replicas.md).")
    s.add_argument("file", nargs="?", default=None)
    s.add_argument("--store", default=None, metavar="REMOTES",
                   help="run as a replica on this store: tcp:IP:PORT[,tcp:IP:PORT...] (cloudweave store)")
    s.add_argument("--replica", default=None, metavar="NAME",
                   help="this replica's name in the store, unique and kept across restarts (default: the host name)")
    s.add_argument("--import", dest="import_policy", action="store_true",
                   help="with --store: publish FILE even if the store already holds a policy")
    s.add_argument("--listen", default="tcp:127.0.0.1:6653",
                   help="OpenFlow listen address: ssl:HOST:PORT (mutual TLS: give --private-key, --certificate and "
                        "--ca-cert; each switch's certificate must name its site: cloudweave pki), tcp:HOST:PORT "
                        "(cleartext: keep it on loopback) or unix:/path/to.sock (default %(default)s)")
    s.add_argument("--private-key", default=None,
                   help="with --listen ssl:.. or an ssl: --store: this controller's key (PEM)")
    s.add_argument("--certificate", default=None,
                   help="with --listen ssl:.. or an ssl: --store: this controller's certificate; over a TLS store "
                        "its name is the replica's")
    s.add_argument("--ca-cert", default=None, help="with TLS: the CA that signs the switches' and the store's "
                                                   "certificates; no other peer is accepted")
    s.add_argument("--switch-target", default=None,
                   help="controller target written into each bridge (default: derived from --listen); may use "
                        "{site} and {ovsdb_dir} (the directory of the site's unix OVSDB socket), since OVS only "
                        "connects to unix sockets inside its run directory")
    s.add_argument("--metrics", default="127.0.0.1:9108",
                   help="Prometheus metrics HOST:PORT, or 'off' (default %(default)s)")
    s.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    s.add_argument("--state", default=None,
                   help="traffic-engineering state file: the learned matrix and the weights in force, kept across "
                        "restarts (default: .FILE.te-state.json beside FILE)")
    s.add_argument("--quarantine", default=None,
                   help="the quarantine list, followed while running (default: .FILE.quarantine.json beside FILE; "
                        "with --store, the store's)")
    s.set_defaults(func=cmd_run)

    from cloudweave.cli.store import add_parsers as add_store_parsers

    add_store_parsers(sub)

    s = sub.add_parser("flowlog", help="the flow log: who talked to whom, and which rule decided it",
                       description="Print the flow records the controller collects (needs a flow_logs section): "
                                   "one per new connection, per sampled unanswered packet and per sampled drop, each "
                                   "with its endpoints, its verdict and the rule (file:line) that decided it. "
                                   "--follow streams them as they come.")
    s.add_argument("file")
    s.add_argument("--follow", "-f", action="store_true", help="keep printing records as they come")
    s.add_argument("--endpoint", default=None, help="only records from or to this endpoint (or address)")
    s.add_argument("--verdict", choices=["allow", "deny", "drop", "rate_limit", "service"], default=None)
    s.add_argument("--rule", default=None, help="only records decided by a rule whose text or file:line has this")
    s.add_argument("--kind", choices=["new", "unreplied", "icmp", "filter", "quarantine", "limited"], default=None)
    s.add_argument("--site", default=None)
    s.add_argument("--since", default=None, metavar="DURATION", help="only the last DURATION (examples: 30s, 5m)")
    s.add_argument("--json", action="store_true", help="one JSON object per line")
    s.add_argument("--fields", default=None, help="with --json: the fields to print, comma-separated")
    s.add_argument("--log", default=None, help="the flow log (default: .FILE.flowlog.jsonl beside FILE)")
    s.set_defaults(func=cmd_flowlog)

    s = sub.add_parser("quarantine", help="cut an endpoint off at its site, release it, or list who is cut off",
                       description="Quarantine: everything the endpoint sends or is sent is dropped at its site, "
                                   "whatever the policy says, until it is released or its hold time is over. An "
                                   "IPv4 address that is no endpoint (outside: it comes in by an uplink) is not "
                                   "cut off but held to detection's limit (default 1000pps) at every uplink. The "
                                   "running controller follows the list at once; it survives restarts. Open "
                                   "connections resume on release (conntrack is kept).")
    qsub = s.add_subparsers(dest="action", required=True, metavar="ACTION")
    q = qsub.add_parser("list", help="the endpoints quarantined now, with why and since when")
    q.add_argument("file", nargs="?", help="the configuration (not needed with --store)")
    q.add_argument("--json", action="store_true", help="every entry, also ended ones, as JSON")
    q = qsub.add_parser("add", help="quarantine an endpoint, or limit an outside address")
    q.add_argument("file", nargs="?", help="the configuration (with --store: default, the policy in the store)")
    q.add_argument("endpoint", help="an endpoint's name, or an outside IPv4 address")
    q.add_argument("--for", dest="hold", default=None, metavar="DURATION",
                   help="release it after this long (examples: 90s, 15m); default: until released")
    q.add_argument("--reason", default=None, help="why, for the log and the list")
    q = qsub.add_parser("release", help="end an endpoint's quarantine, or an outside address's limit")
    q.add_argument("file", nargs="?", help="the configuration (with --store: default, the policy in the store)")
    q.add_argument("endpoint", help="an endpoint's name, or an outside IPv4 address")
    for q in qsub.choices.values():
        q.add_argument("--state", default=None, help="the quarantine list (default: .FILE.quarantine.json "
                                                     "beside FILE)")
        q.add_argument("--store", default=None, metavar="REMOTES",
                       help="the replicas' list, in their store: ssl:IP:PORT[,...] (every replica follows it; "
                            "it survives a failover)")
        add_store_tls(q)
    s.set_defaults(func=cmd_quarantine)

    s = sub.add_parser("pki", help="a CA and the keys and certificates of sites, replicas and operators",
                       description="Mutual TLS for OpenFlow: each switch presents a certificate naming its site "
                                   "(CN and DNS name; OU site), the controller one of kind replica. A switch whose "
                                   "certificate names another site than its dpid's is refused.")
    psub = s.add_subparsers(dest="action", required=True, metavar="ACTION")
    q = psub.add_parser("init", help="make a CA in DIR (its key stays there, 0600)")
    q.add_argument("dir")
    for action, text in (("issue", "a key and certificate for NAME, signed by DIR's CA"),
                         ("rotate", "a new key and certificate for NAME in place of the old ones (same CA: peers "
                                    "accept it at their next connection)")):
        q = psub.add_parser(action, help=text)
        q.add_argument("dir")
        q.add_argument("name", help="a site's name (its switch), a replica's name, or an operator's")
        q.add_argument("--kind", required=True, choices=["site", "replica", "operator"])
    s.set_defaults(func=cmd_pki)

    s = sub.add_parser("testbed", help="build, use and remove the emulated test bed (Mininet)")
    tsub = s.add_subparsers(dest="action", required=True, metavar="ACTION")
    t = tsub.add_parser("up", help="build a topology: one OVS instance per site, endpoints as Mininet hosts")
    t.add_argument("topology")
    t.add_argument("--workdir", default="/run/cloudweave", help="sockets, logs and state (default %(default)s)")
    t.add_argument("--controller", default=None,
                   help="attach to a running controller at this OpenFlow target (unix:/path or tcp:H:P) "
                        "instead of starting one")
    t.add_argument("--replicas", type=int, default=0, metavar="N",
                   help="start a 3-member store and N controller replicas instead of one controller "
                        "(docs/replicas.md)")
    t.add_argument("--tls", action="store_true",
                   help="as across hosts: a PKI made for the run (in WORKDIR/pki), a management network joining "
                        "every site and this host, switches connected over ssl:, each site's OVSDB on pssl: "
                        "(FILE's ovsdb: are rewritten to those addresses), with --replicas a TLS store with "
                        "RBAC (docs/deploy.md)")
    t = tsub.add_parser("exec", help="run a command in an endpoint's namespace; exits with its status")
    t.add_argument("host")
    t.add_argument("cmd", nargs=argparse.REMAINDER, help="-- COMMAND [ARGS...]")
    t.add_argument("--workdir", default="/run/cloudweave")
    t = tsub.add_parser("down", help="remove every namespace, process and socket the test bed made")
    t.add_argument("--workdir", default="/run/cloudweave")
    t.add_argument("--force", action="store_true", help="clean up from the state file even after a crash")
    t = tsub.add_parser("restart-ovs", help="restart one site's ovs-vswitchd as an upgrade would (ovs-ctl restart)",
                        description="Save every bridge's groups and flows, set flow-restore-wait, stop and start "
                                    "ovs-vswitchd on the same database, put the flows back and clear the flag (as "
                                    "`ovs-ctl restart` does); restore what the host owns (br-phy's address, flows and "
                                    "tunnel neighbours). --no-flow-restore-wait: start with empty tables, and let the "
                                    "controller reprogram br-int when it reconnects.")
    t.add_argument("site")
    t.add_argument("--no-flow-restore-wait", action="store_true", help="restart without saving and restoring flows")
    t.add_argument("--workdir", default="/run/cloudweave")
    t = tsub.add_parser("status", help="show what the test bed runs")
    t.add_argument("--workdir", default="/run/cloudweave")
    s.set_defaults(func=cmd_testbed)

    s = sub.add_parser("demo", help="test bed up on the three-site topology; pings, TCP probes and iperf3 across "
                                    "sites checked against the policy; down")
    s.add_argument("--topology", default=None, help="topology file (default: topologies/three-clouds.yaml)")
    s.add_argument("--workdir", default="/run/cloudweave")
    s.set_defaults(func=cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
