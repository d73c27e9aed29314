"""A store member: one ovsdb-server serving the clustered `Cloudweave` database, in a directory of its own.

Layout of a member's directory: `cloudweave.db` (the Raft database), `local.db` (a standalone database that
lists this member's client remote with its inactivity probe, served with `--remote=db:...`, the way OVN sets
a per-server probe), `member.json` (what it was created with), the server's pid file, log, control socket and
a unix socket for local tools. Clients reach it on TCP (`listen`): only TCP carries inactivity probes, which
is how a frozen replica's locks are freed (1,000 ms probe: ~2 s; a unix socket never frees them).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from dataclasses import asdict, dataclass

from cloudweave.store import DB, LOCAL_SCHEMA, SCHEMA

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
    raft: str  # this member's Raft address: unix:/path, tcp:IP:PORT
    listen: str  # its client remote: ptcp:PORT:IP
    probe_ms: int = PROBE_MS

    @property
    def remote(self) -> str:
        """What a client connects to: tcp:IP:PORT."""
        return client_remote(self.listen)

    def path(self, name: str) -> str:
        return os.path.join(self.dir, name)


def client_remote(listen: str) -> str:
    kind, _, rest = listen.partition(":")
    if kind != "ptcp":
        raise StoreError(f"a member listens for clients on TCP (ptcp:PORT:IP), not '{listen}': only TCP carries "
                         f"the inactivity probe that frees a frozen replica's locks")
    port, _, ip = rest.partition(":")
    return f"tcp:{ip or '127.0.0.1'}:{port}"


def _run(*argv: str, timeout: float = 30) -> str:
    out = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if out.returncode != 0:
        raise StoreError(f"{' '.join(argv[:2])}: {out.stderr.strip() or out.stdout.strip()}")
    return out.stdout


def _prepare(m: Member) -> None:
    local = m.path("local.db")
    _run("ovsdb-tool", "create", local, LOCAL_SCHEMA)
    _run("ovsdb-tool", "transact", local, json.dumps(
        ["CloudweaveLocal",
         {"op": "insert", "table": "Connection", "uuid-name": "c",
          "row": {"target": m.listen, "inactivity_probe": m.probe_ms}},
         {"op": "insert", "table": "Root", "row": {"connections": ["named-uuid", "c"]}}]))
    with open(m.path("member.json"), "w") as fh:
        json.dump(asdict(m), fh, indent=1)


def _fresh(directory: str) -> None:
    os.makedirs(directory, exist_ok=True)
    if os.path.exists(os.path.join(directory, "cloudweave.db")):
        raise StoreError(f"{directory} already holds a store member (cloudweave.db); remove it first")


def create(directory: str, raft: str, listen: str, election_ms: int = ELECTION_MS, probe_ms: int = PROBE_MS) -> Member:
    """The first member of a new cluster (`ovsdb-tool create-cluster`)."""
    _fresh(directory)
    client_remote(listen)
    m = Member(os.path.abspath(directory), raft, listen, probe_ms)
    _run("ovsdb-tool", f"--election-timer={election_ms}", "create-cluster", m.path("cloudweave.db"), SCHEMA, raft)
    _prepare(m)
    return m


def join(directory: str, raft: str, peers: list[str], listen: str, probe_ms: int = PROBE_MS) -> Member:
    """A member that joins an existing cluster through any of `peers` (their Raft addresses)."""
    _fresh(directory)
    client_remote(listen)
    if not peers:
        raise StoreError("join: name at least one member of the cluster (its Raft address)")
    m = Member(os.path.abspath(directory), raft, listen, probe_ms)
    _run("ovsdb-tool", "join-cluster", m.path("cloudweave.db"), DB, raft, *peers)
    _prepare(m)
    return m


def load(directory: str) -> Member:
    try:
        with open(os.path.join(directory, "member.json")) as fh:
            return Member(**json.load(fh))
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
    _run("ovsdb-server", "--detach", "--no-chdir", f"--pidfile={m.path('ovsdb-server.pid')}",
         "-vconsole:off", "-vfile:info", f"--log-file={m.path('ovsdb-server.log')}",
         f"--unixctl={m.path('ovsdb-server.ctl')}", f"--remote=punix:{m.path('db.sock')}",
         "--remote=db:CloudweaveLocal,Root,connections", m.path("cloudweave.db"), m.path("local.db"))
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


def local_cluster(root: str, members: int = 3, ports: list[int] | None = None, ip: str = "127.0.0.1",
                  election_ms: int = ELECTION_MS) -> list[Member]:
    """A whole cluster on this host (a test bed, a demo): Raft on unix sockets, clients on loopback TCP."""
    if ports is None:
        ports = [free_port(ip) for _ in range(members)]
    out: list[Member] = []
    for i in range(members):
        d = os.path.join(root, f"s{i + 1}")
        raft = f"unix:{os.path.join(os.path.abspath(d), 'raft.sock')}"
        listen = f"ptcp:{ports[i]}:{ip}"
        if i == 0:
            out.append(create(d, raft, listen, election_ms))
        else:
            out.append(join(d, raft, [m.raft for m in out], listen))
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
