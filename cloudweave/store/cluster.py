"""A store member: one ovsdb-server serving the clustered `Cloudweave` database, in a directory of its own.

Layout of a member's directory: `cloudweave.db` (the Raft database), `local.db` (a standalone database that
lists this member's client remote with its inactivity probe, served with `--remote=db:...`, the way OVN sets
a per-server probe), `member.json` (what it was created with), the server's pid file, log, control socket and
a unix socket for local tools. Clients reach it on TCP (`listen`): only TCP carries inactivity probes, which
is how a frozen replica's locks are freed (1,000 ms probe: ~2 s; a unix socket never frees them).

Across hosts a member runs with TLS (`tls`: its key, certificate and the CA): clients on `pssl:` must show a
certificate of the CA and get the RBAC role of `cloudweave.store.rbac`; Raft between members runs over
`ssl:` with the same files. The unix socket (root only) stays the administrator's way in: no role, which is
how operators are added (`add_operator`). A `ptcp:` listener is for one host: no names, no role.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from dataclasses import asdict, dataclass
from typing import Any

from cloudweave import pki
from cloudweave.store import DB, LOCAL_SCHEMA, SCHEMA, rbac

PROBE_MS = 1000  # the least OVS accepts; a frozen client's locks go after about twice this
# Raft election timer: a follower calls an election the timer plus up to 1 s after the last heartbeat (raft.c).
# 500 ms (OVS: 1000) keeps a leader loss decided in one term under 3 s of paused writes, with clients that find
# the new leader within a second of its election (store.client; docs/replicas.md); raise it on a loaded or large
# store (OVN operators run seconds there).
ELECTION_MS = 500


class StoreError(RuntimeError):
    pass


@dataclass(frozen=True)
class Member:
    dir: str
    raft: str  # this member's Raft address: unix:/path, tcp:IP:PORT, ssl:IP:PORT
    listen: str  # its client remote: pssl:PORT:IP (TLS, RBAC) or ptcp:PORT:IP (one host)
    probe_ms: int = PROBE_MS
    tls: tuple[str, str, str] | None = None  # its key, certificate and CA (absolute paths)

    @property
    def remote(self) -> str:
        """What a client connects to: ssl:IP:PORT or tcp:IP:PORT."""
        return client_remote(self.listen)

    def path(self, name: str) -> str:
        return os.path.join(self.dir, name)


def client_remote(listen: str) -> str:
    kind, _, rest = listen.partition(":")
    if kind not in ("pssl", "ptcp"):
        raise StoreError(f"a member listens for clients on pssl:PORT:IP (or ptcp:PORT:IP on one host), not "
                         f"'{listen}': only TCP carries the inactivity probe that frees a frozen replica's locks")
    port, _, ip = rest.partition(":")
    return f"{kind[1:]}:{ip or '127.0.0.1'}:{port}"


def _checked_tls(raft: str, listen: str, tls: tuple[str, str, str] | None) -> tuple[str, str, str] | None:
    """TLS files as absolute paths, checked against the addresses that need them; StoreError says what is
    missing."""
    client_remote(listen)
    needs = [a for a in (raft, listen) if a.startswith(("ssl:", "pssl:"))]
    try:
        files = pki.tls_files(*(tls or (None, None, None)))
    except pki.PkiError as exc:
        raise StoreError(str(exc)) from None
    if files is None and needs:
        raise StoreError(f"{needs[0]} needs the member's --private-key, --certificate and --ca-cert "
                         "(cloudweave pki issue DIR NAME --kind store)")
    if files is not None and not needs:
        raise StoreError("TLS files given, but neither --raft nor --listen is ssl:/pssl:")
    return files


def _run(*argv: str, timeout: float = 30) -> str:
    out = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if out.returncode != 0:
        raise StoreError(f"{' '.join(argv[:2])}: {out.stderr.strip() or out.stdout.strip()}")
    return out.stdout


def _prepare(m: Member) -> None:
    local = m.path("local.db")
    _run("ovsdb-tool", "create", local, LOCAL_SCHEMA)
    role = rbac.ROLE if m.listen.startswith("pssl:") else ""
    _run("ovsdb-tool", "transact", local, json.dumps(
        ["CloudweaveLocal",
         {"op": "insert", "table": "Connection", "uuid-name": "c",
          "row": {"target": m.listen, "inactivity_probe": m.probe_ms, "role": role}},
         {"op": "insert", "table": "Root", "row": {"connections": ["named-uuid", "c"]}}]))
    with open(m.path("member.json"), "w") as fh:
        json.dump(asdict(m), fh, indent=1)


def _fresh(directory: str) -> None:
    os.makedirs(directory, exist_ok=True)
    if os.path.exists(os.path.join(directory, "cloudweave.db")):
        raise StoreError(f"{directory} already holds a store member (cloudweave.db); remove it first")


def create(directory: str, raft: str, listen: str, election_ms: int = ELECTION_MS, probe_ms: int = PROBE_MS,
           tls: tuple[str, str, str] | None = None, operators: tuple[str, ...] = ()) -> Member:
    """The first member of a new cluster (`ovsdb-tool create-cluster`), its database seeded with the RBAC
    role and the first `operators` (certificate names that may apply a policy)."""
    _fresh(directory)
    m = Member(os.path.abspath(directory), raft, listen, probe_ms, _checked_tls(raft, listen, tls))
    seed = m.path("seed.db")
    _run("ovsdb-tool", "create", seed, SCHEMA)
    _run("ovsdb-tool", "transact", seed, json.dumps(rbac.seed_operations(DB, operators)))
    _run("ovsdb-tool", f"--election-timer={election_ms}", "create-cluster", m.path("cloudweave.db"), seed, raft)
    os.unlink(seed)
    _prepare(m)
    return m


def join(directory: str, raft: str, peers: list[str], listen: str, probe_ms: int = PROBE_MS,
         tls: tuple[str, str, str] | None = None) -> Member:
    """A member that joins an existing cluster through any of `peers` (their Raft addresses)."""
    _fresh(directory)
    if not peers:
        raise StoreError("join: name at least one member of the cluster (its Raft address)")
    m = Member(os.path.abspath(directory), raft, listen, probe_ms, _checked_tls(raft, listen, tls))
    _run("ovsdb-tool", "join-cluster", m.path("cloudweave.db"), DB, raft, *peers)
    _prepare(m)
    return m


def load(directory: str) -> Member:
    try:
        with open(os.path.join(directory, "member.json")) as fh:
            doc = json.load(fh)
        return Member(**{**doc, "tls": tuple(doc["tls"]) if doc.get("tls") else None})
    except (OSError, ValueError, TypeError) as exc:
        raise StoreError(f"{directory} is not a store member (no readable member.json: {exc})") from None


def pid(m: Member) -> int | None:
    """The running server's pid; None when it is not running (a killed one not yet reaped is a zombie, not
    running: taking it for alive would skip the restart)."""
    try:
        with open(m.path("ovsdb-server.pid")) as fh:
            p = int(fh.read().strip())
        with open(f"/proc/{p}/stat") as fh:
            state = fh.read().rsplit(")", 1)[1].split()[0]
    except (OSError, ValueError, IndexError):
        return None
    return None if state in ("Z", "X") else p


def start(m: Member) -> int:
    """Start the member's ovsdb-server in the background; its pid."""
    if pid(m) is not None:
        return pid(m)  # type: ignore[return-value]
    tls = [f"--private-key={m.tls[0]}", f"--certificate={m.tls[1]}", f"--ca-cert={m.tls[2]}"] if m.tls else []
    _run("ovsdb-server", "--detach", "--no-chdir", f"--pidfile={m.path('ovsdb-server.pid')}",
         "-vconsole:off", "-vfile:info", f"--log-file={m.path('ovsdb-server.log')}",
         f"--unixctl={m.path('ovsdb-server.ctl')}", f"--remote=punix:{m.path('db.sock')}",
         "--remote=db:CloudweaveLocal,Root,connections", *tls, m.path("cloudweave.db"), m.path("local.db"))
    p = pid(m)
    if p is None:
        raise StoreError(f"ovsdb-server did not start in {m.dir}; see {m.path('ovsdb-server.log')}")
    return p


def stop(m: Member, timeout_s: float = 10.0) -> None:
    """Stop gracefully (a leader hands its leadership on first)."""
    p = pid(m)
    if p is None:
        return
    os.kill(p, signal.SIGCONT)
    os.kill(p, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while pid(m) is not None and time.monotonic() < deadline:
        time.sleep(0.02)
    if pid(m) is not None:
        os.kill(p, signal.SIGKILL)


def status(m: Member, timeout_s: float = 2.0) -> dict[str, str]:
    """`cluster/status` as a mapping (Role, Status, Term, Leader, ...); empty when the server does not answer."""
    try:
        out = _run("ovs-appctl", "-t", m.path("ovsdb-server.ctl"), "cluster/status", DB, timeout=timeout_s)
    except (StoreError, subprocess.TimeoutExpired):
        return {}
    kv: dict[str, str] = {}
    for line in out.splitlines():
        if ":" in line and not line.startswith(" "):
            k, _, v = line.partition(":")
            kv[k.strip()] = v.strip()
    return kv


def add_operator(m: Member, name: str, remove: bool = False) -> None:
    """Let the holder of certificate `name` apply policies (or no longer): written through the member's unix
    socket, which only root on a store host reaches; the cluster's leader takes it from there."""
    op = ({"op": "delete", "table": "Operator", "where": [["name", "==", name]]} if remove else
          {"op": "insert", "table": "Operator", "row": {"name": name}})
    out = json.loads(_run("ovsdb-client", "transact", f"unix:{m.path('db.sock')}", json.dumps([DB, op])))
    errors = [r for r in out if isinstance(r, dict) and "error" in r]
    if errors and errors[0].get("error") != "constraint violation":  # the index: already an operator
        raise StoreError(f"operator {name}: {errors[0].get('error')}: {errors[0].get('details', '')}")


def upgrade(m: Member, operators: tuple[str, ...] = ()) -> str:
    """Convert a running store to this version's schema, online, through the member's unix socket, and give
    it the RBAC role (and `operators`) if it has none: a store made before 1.3.0 has neither. Policy stopped
    being a root table in 1.3.0 (a row lives while an Operator row points at it), so the policy in force is
    carried over under an Operator row named `upgrade:OLD-VERSION`, which no certificate of our PKI can
    have. What it did, in a sentence."""
    sock = f"unix:{m.path('db.sock')}"

    def transact(*ops: Any) -> list[Any]:
        return json.loads(_run("ovsdb-client", "transact", sock, json.dumps([DB, *ops])))

    before = _run("ovsdb-client", "get-schema-version", sock, DB).strip()
    kept = transact({"op": "select", "table": "Policy", "where": []})[0]["rows"]
    _run("ovsdb-client", "convert", sock, SCHEMA, timeout=120)
    said = []
    if kept and not transact({"op": "select", "table": "Policy", "where": []})[0]["rows"]:
        row = {k: v for k, v in max(kept, key=lambda r: r["version"]).items() if not k.startswith("_")}
        transact({"op": "insert", "table": "Policy", "uuid-name": "p", "row": row},
                 {"op": "insert", "table": "Operator",
                  "row": {"name": f"upgrade:{before}", "policy": ["named-uuid", "p"]}})
        said.append(f"policy version {row['version']} kept")
    if not transact({"op": "select", "table": "RBAC_Role", "where": [["name", "==", rbac.ROLE]]})[0]["rows"]:
        transact(*rbac.seed_operations(DB, ())[1:])
        said.append("RBAC role added")
    for name in operators:
        add_operator(m, name)
    if operators:
        said.append(f"operators {', '.join(operators)}")
    after = _run("ovsdb-client", "get-schema-version", sock, DB).strip()
    return ", ".join([f"schema {before} -> {after}", *said])


def operators(m: Member) -> list[str]:
    out = json.loads(_run("ovsdb-client", "transact", f"unix:{m.path('db.sock')}", json.dumps(
        [DB, {"op": "select", "table": "Operator", "where": [], "columns": ["name"]}])))
    return sorted(r["name"] for r in out[0]["rows"])


def local_cluster(root: str, members: int = 3, ports: list[int] | None = None, ip: str = "127.0.0.1",
                  election_ms: int = ELECTION_MS, pki_dir: str | None = None,
                  operators: tuple[str, ...] = ()) -> list[Member]:
    """A whole cluster on this host (a test bed, a demo): Raft on unix sockets, clients on loopback TCP; with
    `pki_dir` (a CA made by cloudweave.pki), TLS: each member gets a certificate named store-1, store-2, ..., clients
    connect on ssl: with RBAC, and Raft runs over ssl: on loopback."""
    if ports is None:
        ports = [free_port(ip) for _ in range(members)]
    raft_ports = [free_port(ip) for _ in range(members)] if pki_dir else []
    out: list[Member] = []
    for i in range(members):
        d = os.path.join(root, f"s{i + 1}")
        if pki_dir:
            got = pki.issue(pki_dir, f"store-{i + 1}", "store")
            tls: tuple[str, str, str] | None = (got.key, got.cert, got.ca)
            raft, listen = f"ssl:{ip}:{raft_ports[i]}", f"pssl:{ports[i]}:{ip}"
        else:
            tls = None
            raft, listen = f"unix:{os.path.join(os.path.abspath(d), 'raft.sock')}", f"ptcp:{ports[i]}:{ip}"
        if i == 0:
            out.append(create(d, raft, listen, election_ms, tls=tls, operators=operators))
        else:
            out.append(join(d, raft, [m.raft for m in out], listen, tls=tls))
    for m in out:
        start(m)
    wait_formed(out)
    return out


def wait_formed(members: list[Member], timeout_s: float = 30.0) -> Member:
    """Wait until there is a leader and every running member is in the cluster; the leader."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        st = {m.dir: status(m) for m in members if pid(m) is not None}
        leaders = [m for m in members if st.get(m.dir, {}).get("Role") == "leader"]
        if leaders and all(s.get("Status") == "cluster member" for s in st.values()):
            return leaders[0]
        time.sleep(0.05)
    raise StoreError(f"the store cluster did not form within {timeout_s:.0f} s: "
                     + "; ".join(f"{m.dir}: {status(m) or 'no answer'}" for m in members))


def leader(members: list[Member]) -> Member | None:
    for m in members:
        if pid(m) is not None and status(m).get("Role") == "leader":
            return m
    return None


def free_port(ip: str = "127.0.0.1") -> int:
    import socket

    with socket.socket() as s:
        s.bind((ip, 0))
        return s.getsockname()[1]
