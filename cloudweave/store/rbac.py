"""Who may write what in the store: the OVSDB RBAC role every TLS client of a member has (OVN's way for its
chassis). ovsdb-server knows a client by its certificate's CN and nothing else, so each rule ties a row to
that name: a replica writes its own `Replica` row, its own `NextHop` rows and `Probe` rows; a `Policy` row
must carry its writer's name in `applied_by`, and it survives the transaction only if that writer's own
`Operator` row points at it (Policy is not a root table: an unreferenced row is dropped at commit). The
`Operator` rows are written by an administrator on a store host, through the member's unix socket (root
only), never over the network: that list is what makes a certificate an operator's.

What RBAC cannot say is left to the rows' readers and said in docs/deploy.md: a `Shard` claim cannot be
tied to the OVSDB lock behind it (the fence is the switch's role generation), and the traffic engineer's
and the quarantine's rows are writable by any certificate of the CA.

Cleartext clients (a `ptcp:` listener, for one host) get no role: RBAC needs a name, and they have none.
"""

from __future__ import annotations

from typing import Any

ROLE = "cloudweave"


def _p(table: str, auth: tuple[str, ...], insert_delete: bool, update: tuple[str, ...]) -> dict[str, Any]:
    return {"table": table, "authorization": ["set", list(auth)], "insert_delete": insert_delete,
            "update": ["set", list(update)]}


ANYONE = ("",)  # RBAC's empty name: every client is authorised

PERMISSIONS = (
    _p("Operator", ("name",), False, ("policy",)),
    _p("Policy", ("applied_by",), True, ()),
    _p("Replica", ("name",), True, ("target", "pid", "started", "seen", "coordinator", "mastered")),
    _p("NextHop", ("learned_by",), True, ("mac", "learned_at")),
    _p("Probe", ("writer",), True, ("seq",)),
    _p("Cluster", ANYONE, True, ("generation", "shards", "flowlog_key")),
    _p("Shard", ANYONE, True, ("owner", "generation", "handoff", "handoff_at", "policy_applied")),
    _p("Demand", ANYONE, True, ("mean", "dev", "n", "rate", "stale")),
    _p("Shares", ANYONE, True, ("paths", "shares", "te_version")),
    _p("Quarantine", ANYONE, True, ("reason", "source", "since", "until", "evidence", "written_by")),
)


def seed_operations(db: str, operators: tuple[str, ...] = ()) -> list[Any]:
    """The transaction that writes the role (and the first operators) into a new database."""
    ops: list[Any] = [db]
    perms = []
    for i, p in enumerate(PERMISSIONS):
        ops.append({"op": "insert", "table": "RBAC_Permission", "uuid-name": f"p{i}", "row": p})
        perms.append([p["table"], ["named-uuid", f"p{i}"]])
    ops.append({"op": "insert", "table": "RBAC_Role", "row": {"name": ROLE, "permissions": ["map", perms]}})
    ops += [{"op": "insert", "table": "Operator", "row": {"name": name}} for name in operators]
    return ops
