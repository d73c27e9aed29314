"""The store across hosts: a 3-member cluster with clients on pssl: and Raft over ssl:, every client known by
its certificate (cloudweave.store.rbac). Real ovsdb-server processes; each identity is a real TLS client
(`cloudweave apply`, `ovsdb-client` with that certificate, a replica process)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from cloudweave import pki
from cloudweave.store import DB, cluster
from testkit.harness import ROOT, Replica, Store, wait_for

pytestmark = pytest.mark.ovs
TOPOLOGY = os.path.join(ROOT, "topologies", "three-clouds.yaml")


@pytest.fixture(scope="module")
def bed(tmp_path_factory):
    work = str(tmp_path_factory.mktemp("store-tls"))
    ca = os.path.join(work, "pki")
    pki.init(ca)
    certs = {name: pki.issue(ca, name, kind) for name, kind in
             (("alice", "operator"), ("bob", "operator"), ("r1", "replica"), ("r2", "replica"))}
    other = os.path.join(work, "other-ca")
    pki.init(other)
    certs["mallory"] = pki.issue(other, "alice", "operator")  # alice's name, another CA
    store = Store(work, members=3, pki_dir=ca, operators=("alice",))
    try:
        yield work, store, certs
    finally:
        store.stop()


def tls_args(c: pki.Issued) -> list[str]:
    return ["--private-key", c.key, "--certificate", c.cert, "--ca-cert", c.ca]


def apply(store: Store, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cloudweave", "apply", TOPOLOGY, "--store", store.remotes, *extra],
                          capture_output=True, text=True, cwd=ROOT, timeout=60)


def transact(store: Store, c: pki.Issued, *ops: dict) -> list:
    """One transaction by the holder of `c`, at the leader (followers forward writes to it)."""
    leader = store.leader()
    assert leader is not None
    out = subprocess.run(["ovsdb-client", "-p", c.key, "-c", c.cert, "-C", c.ca, "--timeout=10", "transact",
                          leader.remote, json.dumps([DB, *ops])], capture_output=True, text=True, timeout=20)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def select(store: Store, table: str) -> list[dict]:
    """Rows as root sees them, through a member's unix socket."""
    return select_at(f"unix:{store.members[0].path('db.sock')}", table)


def select_at(remote: str, table: str) -> list[dict]:
    out = subprocess.run(["ovsdb-client", "transact", remote, json.dumps(
        [DB, {"op": "select", "table": table, "where": []}])], capture_output=True, text=True, timeout=20)
    return json.loads(out.stdout)[0]["rows"]


def denied(result: list) -> str:
    errors = [r for r in result if isinstance(r, dict) and "error" in r]
    assert errors, f"the store took it: {result}"
    return f"{errors[0]['error']}: {errors[0].get('details', '')}"


def test_only_an_operator_certificate_applies_a_policy_under_its_own_name(bed):
    work, store, certs = bed
    out = apply(store)
    assert out.returncode == 1 and "needs this client's --private-key" in out.stderr, out.stderr
    out = apply(store, *tls_args(certs["r1"]))
    assert out.returncode == 1 and "'r1' is not one of its operators" in out.stderr, out.stderr
    out = apply(store, *tls_args(certs["mallory"]))  # alice's name from another CA: no handshake
    assert out.returncode == 1 and "no answer from the store" in out.stderr, out.stderr
    assert not select(store, "Policy")

    out = apply(store, *tls_args(certs["alice"]))
    assert out.returncode == 0, out.stderr
    [row] = select(store, "Policy")
    assert (row["version"], row["applied_by"]) == (1, "alice")

    # bob becomes an operator only when root on a store host says so
    with open(TOPOLOGY) as fh:
        edited = os.path.join(work, "edited.yaml")
        with open(edited, "w") as out_fh:
            out_fh.write(fh.read() + "\n# bob's edit\n")

    def bob_applies() -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "cloudweave", "apply", edited, "--store", store.remotes,
                               *tls_args(certs["bob"])], capture_output=True, text=True, cwd=ROOT, timeout=60)

    assert "'bob' is not one of its operators" in bob_applies().stderr
    cluster.add_operator(store.members[1], "bob")
    assert cluster.operators(store.members[2]) == ["alice", "bob"]
    out = bob_applies()
    assert out.returncode == 0, out.stderr
    assert sorted((r["version"], r["applied_by"]) for r in select(store, "Policy")) == [(1, "alice"), (2, "bob")]
    status = subprocess.run([sys.executable, "-m", "cloudweave", "status", "--store", store.remotes,
                             *tls_args(certs["r1"])], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert "policy: version 2" in status.stdout and "applied by bob" in status.stdout, status.stdout + status.stderr


def test_a_replica_certificate_writes_only_rows_of_its_own_name(bed):
    work, store, certs = bed
    r1 = certs["r1"]
    assert "permission error" in denied(transact(store, r1, {"op": "insert", "table": "Replica",
                                                             "row": {"name": "r2", "target": "ssl:10.9.9.9:6653"}}))
    assert transact(store, r1, {"op": "insert", "table": "Replica", "row": {"name": "r1"}})[0].get("uuid")
    assert "permission error" in denied(transact(store, r1, {"op": "update", "table": "Replica",
                                                             "where": [["name", "==", "r1"]],
                                                             "row": {"name": "r2"}}))
    # a next hop (where NAT sends its traffic) only under its own name
    assert "permission error" in denied(transact(store, r1, {"op": "insert", "table": "NextHop", "row": {
        "site": "cloud2", "mac": "02:66:66:66:66:66", "learned_by": "r2"}}))
    # the policy: not its own Operator row to point with, nor anyone else's; a row on its own is dropped
    assert "permission error" in denied(transact(store, r1, {"op": "insert", "table": "Operator",
                                                             "row": {"name": "r1"}}))
    policy = {"op": "insert", "table": "Policy", "uuid-name": "p", "row": {"version": 99, "applied_by": "r1"}}
    point = {"op": "update", "table": "Operator", "where": [["name", "==", "alice"]],
             "row": {"policy": ["named-uuid", "p"]}}
    assert "permission error" in denied(transact(store, r1, policy, point))
    transact(store, r1, {"op": "insert", "table": "Policy", "row": {"version": 98, "applied_by": "r1"}})
    assert "permission error" in denied(transact(store, r1, {"op": "insert", "table": "Policy",
                                                             "row": {"version": 97, "applied_by": "alice"}}))
    assert all(r["version"] < 90 for r in select(store, "Policy"))
    # and not the rules themselves
    assert "permission error" in denied(transact(store, r1, {"op": "delete", "table": "RBAC_Role", "where": []}))


def test_peers_without_a_certificate_of_the_ca_are_refused(bed):
    work, store, certs = bed
    leader = store.leader()
    host_port = leader.remote.removeprefix("ssl:")
    plain = subprocess.run(["ovsdb-client", "--timeout=3", "list-dbs", f"tcp:{host_port}"], capture_output=True,
                           text=True, timeout=10)
    assert plain.returncode != 0
    m = certs["mallory"]
    forged = subprocess.run(["ovsdb-client", "-p", m.key, "-c", m.cert, "-C", certs["r1"].ca, "--timeout=3",
                             "list-dbs", leader.remote], capture_output=True, text=True, timeout=10)
    assert forged.returncode != 0

    # A server of our own with another CA's certificate asks to join the cluster: never a member.
    rogue = os.path.join(work, "rogue")
    raft = f"ssl:127.0.0.1:{cluster.free_port()}"
    member = cluster.join(rogue, raft, [store.members[0].raft], f"pssl:{cluster.free_port()}:127.0.0.1",
                          tls=(m.key, m.cert, m.ca))
    cluster.start(member)
    try:
        wait_for(lambda: "SSL" in open(member.path("ovsdb-server.log")).read() or
                 "ssl" in open(member.path("ovsdb-server.log")).read(), 15, what="the rogue's TLS refusal")
        for good in store.members:
            st = cluster.status(good)
            assert st.get("Status") == "cluster member", st
        servers = subprocess.run(["ovs-appctl", "-t", leader.path("ovsdb-server.ctl"), "cluster/status", DB],
                                 capture_output=True, text=True, timeout=10).stdout
        assert servers.count("127.0.0.1:") >= 3 and raft.removeprefix("ssl:") not in servers, servers
        assert cluster.status(member).get("Status") != "cluster member"
    finally:
        cluster.stop(member)


def test_a_replica_over_tls_is_its_certificate(bed):
    work, store, certs = bed
    out = subprocess.run([sys.executable, "-m", "cloudweave", "run", "--store", store.remotes, "--replica", "r9",
                          "--metrics", "off", *tls_args(certs["r2"])], capture_output=True, text=True, cwd=ROOT,
                         timeout=60)
    assert out.returncode != 0 and "a replica is named by its certificate" in out.stderr, out.stderr
    replica = Replica("r2", store.remotes, work, [], tls=(certs["r2"].key, certs["r2"].cert, certs["r2"].ca))
    with replica:
        def mastered() -> set[str]:
            return {r["owner"] for r in select(store, "Shard")}
        wait_for(lambda: mastered() == {"r2"}, 30, what="r2 mastering every shard")
        assert [r["name"] for r in select(store, "Replica") if r["name"] == "r2"] == ["r2"]


def test_a_store_of_the_previous_schema_is_upgraded_online_with_its_role(tmp_path):
    """A 1.2.0 store (no RBAC, Policy a root table) converted in place by `cloudweave store upgrade`."""
    old = os.path.join(os.path.dirname(__file__), "cloudweave-1.2.0.ovsschema")
    d = str(tmp_path / "old")
    os.makedirs(d)
    m = cluster.Member(d, f"unix:{d}/raft.sock", f"ptcp:{cluster.free_port()}:127.0.0.1")
    subprocess.run(["ovsdb-tool", "create-cluster", m.path("cloudweave.db"), old, m.raft], check=True)
    cluster._prepare(m)
    cluster.start(m)
    try:
        cluster.wait_formed([m])
        sock = f"unix:{m.path('db.sock')}"
        subprocess.run(["ovsdb-client", "transact", sock, json.dumps(
            [DB, {"op": "insert", "table": "Policy", "row": {"version": 7, "applied_by": "old", "digest": "d7",
                                                             "chunks": ["map", [[0, "{}"]]]}}])],
            check=True, capture_output=True)
        out = subprocess.run([sys.executable, "-m", "cloudweave", "store", "upgrade", d, "--operator", "alice"],
                             capture_output=True, text=True, cwd=ROOT, timeout=120)
        assert out.returncode == 0, out.stderr
        assert "schema 1.2.0 -> 1.3.0, policy version 7 kept, RBAC role added, operators alice" in out.stdout
        assert cluster.operators(m) == ["alice", "upgrade:1.2.0"]
        [kept] = select_at(sock, "Policy")
        assert (kept["version"], kept["digest"], kept["applied_by"]) == (7, "d7", "old")
        assert [r["name"] for r in select_at(sock, "RBAC_Role")] == ["cloudweave"]
        out = subprocess.run([sys.executable, "-m", "cloudweave", "apply", TOPOLOGY, "--store", m.remote],
                             capture_output=True, text=True, cwd=ROOT, timeout=60)
        assert out.returncode == 0 and "policy version 8 applied" in out.stdout, out.stderr
        out = subprocess.run([sys.executable, "-m", "cloudweave", "store", "upgrade", d], capture_output=True,
                             text=True, cwd=ROOT, timeout=120)
        assert out.stdout.endswith(": schema 1.3.0 -> 1.3.0\n"), out.stdout + out.stderr  # again: nothing to add
    finally:
        cluster.stop(m)
