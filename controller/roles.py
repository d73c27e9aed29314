"""Which replica does what: one table, and the one question every service asks.

Alone (no store) a controller does everything. With replicas (docs/replicas.md) every duty at a site belongs
to the replica that masters the site's shard and moves with it; traffic engineering belongs to one replica for
the whole fabric, the coordinator, because its LP sees every link at once.

| duty | done by | asked in |
|---|---|---|
| flow-mods, groups, meters | the site's master (OVS refuses a slave's writes) | `controller.session` |
| OVSDB: bridge, tunnel ports, BFD | the site's master | `controller.ovsdb_service` |
| next-hop ARP toward a NAT uplink's gateway | the site's master | `controller.next_hop_keeper` |
| flow-log collector (the site's IPFIX row aimed at it) | the site's master | `controller.flowlog_service` |
| conntrack zone limits | the site's master | `controller.conn_limit_service` |
| automatic quarantine (alarm, store row, hold) | the site's master (its collector) | `controller.flowlog_service` |
| traffic engineering | the coordinator | `controller.te_loop` |
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import Enum
from types import MappingProxyType


class Duty(Enum):
    FLOW_MODS = "flow-mods"
    OVSDB = "OVSDB"
    NEXT_HOP_ARP = "next-hop ARP"
    FLOW_LOG_COLLECTOR = "flow-log collector"
    CONN_LIMITS = "connection limits"
    TRAFFIC_ENGINEERING = "traffic engineering"


SITE_MASTER, COORDINATOR = "the site's master", "the coordinator"
DONE_BY: Mapping[Duty, str] = MappingProxyType({
    Duty.FLOW_MODS: SITE_MASTER,
    Duty.OVSDB: SITE_MASTER,
    Duty.NEXT_HOP_ARP: SITE_MASTER,
    Duty.FLOW_LOG_COLLECTOR: SITE_MASTER,
    Duty.CONN_LIMITS: SITE_MASTER,
    Duty.TRAFFIC_ENGINEERING: COORDINATOR,
})


def acts_at(duty: Duty, site: str, mastered: frozenset[str] | None) -> bool:
    """Does this replica do `duty` at `site`? `mastered`: the sites it masters (None: alone, so all of them)."""
    if DONE_BY[duty] != SITE_MASTER:
        raise ValueError(f"{duty.value} is {DONE_BY[duty]}'s, not a site's")
    return mastered is None or site in mastered


def acts_for_fabric(duty: Duty, replicated: bool, coordinator: bool) -> bool:
    """Does this replica do a fabric-wide `duty`? Alone it does; with replicas only the coordinator does."""
    if DONE_BY[duty] != COORDINATOR:
        raise ValueError(f"{duty.value} is {DONE_BY[duty]}'s, not the fabric's")
    return not replicated or coordinator
