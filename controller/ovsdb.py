"""Make a site's bridge match the config through OVSDB: the bridge, its controller, and our tunnel ports.

Only ports that carry our external_ids mark are ever changed or removed; everything else is left alone.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from ovsdbapp.backend.ovs_idl import connection
from ovsdbapp.schema.open_vswitch import impl_idl

from cloudweave.config.model import Site
from cloudweave.flows.compile import TunnelPort

LOG = logging.getLogger("cloudweave.ovsdb")
MARK = "cloudweave-tunnel"  # external_ids key on the Interface rows we own; its value is the peer site
IPFIX_MARK = "cloudweave-flowlog"  # on the IPFIX and Flow_Sample_Collector_Set rows we own
PROTOCOLS = ["OpenFlow13", "OpenFlow14", "OpenFlow15"]
# OVS backs off up to 8 s between attempts by default; a restarted controller should get its switches back fast.
CONTROLLER_MAX_BACKOFF_MS = 1000
CONTROLLER_PROBE_MS = 1000  # with replicas; the least OVS accepts


@dataclass
class SyncReport:
    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    bridge_changed: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.created or self.updated or self.removed or self.bridge_changed)

    def __str__(self) -> str:
        parts = [f"{k} {', '.join(v)}" for k, v in
                 (("created", self.created), ("updated", self.updated), ("removed", self.removed),
                  ("bridge", self.bridge_changed)) if v]
        return "; ".join(parts) or "no change"




def bfd(interval_ms: int) -> dict[str, str]:
    """BFD on a tunnel: OVS marks the port not live within ~3 intervals of its peer going silent, select
    group buckets that watch it stop at once, and the port status tells the controller (failover)."""
    if interval_ms <= 0:
        return {"enable": "false"}
    return {"enable": "true", "min_rx": str(interval_ms), "min_tx": str(interval_ms)}


def tunnel_options(t: TunnelPort) -> dict[str, str]:
    return {"remote_ip": str(t.remote_ip), "local_ip": str(t.local_ip), "key": "flow"}


class SiteOvsdb:
    """One site's OVSDB connection (python-ovs IDL through ovsdbapp)."""

    def __init__(self, site: Site, timeout: float = 10.0):
        self.site = site
        idl = connection.OvsdbIdl.from_server(site.ovsdb, "Open_vSwitch")
        self.conn = connection.Connection(idl=idl, timeout=timeout)
        # ovsdbapp keeps the connection in a class attribute and the first one set wins; a class per site
        # keeps each site on its own OVSDB.
        api_class = type(f"OvsdbIdl_{site.name}", (impl_idl.OvsdbIdl,), {"_ovsdb_connection": None})
        self.api = api_class(self.conn)

    def close(self) -> None:
        self.conn.stop()

    def sync(self, site: Site, tunnels: tuple[TunnelPort, ...], controller_targets: tuple[str, ...],
             bfd_ms: int = 100) -> SyncReport:
        """Bring the bridge to the desired state, in one OVSDB transaction; idempotent. `controller_targets`:
        every replica's (never empty: a bridge without a controller loses its flows)."""
        wanted_targets = sorted(set(controller_targets))
        if not wanted_targets:
            raise ValueError("no controller target: a bridge whose controller list empties loses its flows")
        report = SyncReport()
        want_bfd = bfd(bfd_ms)
        api, br = self.api, site.bridge
        bridge_cols = {
            "datapath_type": "netdev" if site.datapath == "netdev" else "system",
            "fail_mode": "secure",
            "protocols": PROTOCOLS,
        }
        other_config = {"datapath-id": f"{site.dpid:016x}", "disable-in-band": "true"}
        existing = {row["name"]: row for row in api.db_list("Bridge", columns=[
            "name", "datapath_type", "fail_mode", "protocols", "other_config", "controller"]).execute(check_error=True)}
        ifaces = {row["name"]: row for row in api.db_list("Interface", columns=[
            "name", "type", "options", "external_ids", "bfd"]).execute(check_error=True)}
        ports_on_bridge = set(api.list_ports(br).execute(check_error=True)) if br in existing else set()
        with api.transaction(check_error=True) as txn:
            if br not in existing:
                txn.add(api.add_br(br, datapath_type=bridge_cols["datapath_type"]))
                report.bridge_changed.append(f"created {br}")
            row = existing.get(br, {})
            for col, want in bridge_cols.items():
                have = row.get(col)
                if (list(have) if isinstance(have, list) else have) != want:
                    txn.add(api.db_set("Bridge", br, (col, want)))
                    if br in existing:
                        report.bridge_changed.append(f"{col}={want}")
            have_oc = row.get("other_config", {})
            if any(have_oc.get(k) != v for k, v in other_config.items()):
                txn.add(api.db_set("Bridge", br, ("other_config", other_config)))
                if br in existing:
                    report.bridge_changed.append(f"datapath-id={other_config['datapath-id']}")
            targets = [c for c in self._controller_targets(br)] if br in existing else []
            if targets != wanted_targets:
                txn.add(api.set_controller(br, wanted_targets))
                report.bridge_changed.append(f"controller={','.join(wanted_targets)}")
            wanted = {t.name: t for t in tunnels}
            for name, t in wanted.items():
                opts, ext = tunnel_options(t), {MARK: t.peer}
                have = ifaces.get(name)
                if have is None or name not in ports_on_bridge:
                    txn.add(api.add_port(br, name, may_exist=True))
                    txn.add(api.db_set("Interface", name, ("type", "vxlan"), ("options", opts),
                                       ("external_ids", ext), ("bfd", want_bfd)))
                    report.created.append(name)
                elif have["type"] != "vxlan" or dict(have["options"]) != opts or \
                        dict(have["external_ids"]).get(MARK) != t.peer or dict(have["bfd"]) != want_bfd:
                    if MARK not in have["external_ids"]:
                        LOG.error("site %s: port %s exists but was not made by cloudweave; leaving it alone",
                                  site.name, name)
                        continue
                    txn.add(api.db_set("Interface", name, ("type", "vxlan"), ("options", opts),
                                       ("external_ids", ext), ("bfd", want_bfd)))
                    report.updated.append(name)
            for name in sorted(ports_on_bridge):
                row = ifaces.get(name)
                if row is not None and MARK in row["external_ids"] and name not in wanted:
                    txn.add(api.del_port(name, bridge=br))
                    report.removed.append(name)
        for row in api.db_list("Controller", columns=["_uuid", "target", "max_backoff", "inactivity_probe"]
                               ).execute(check_error=True):
            if row["target"] not in wanted_targets:
                continue
            if row["max_backoff"] != [CONTROLLER_MAX_BACKOFF_MS]:
                api.db_set("Controller", row["_uuid"], ("max_backoff", CONTROLLER_MAX_BACKOFF_MS)).execute(
                    check_error=True)
            if len(wanted_targets) > 1 and row["inactivity_probe"] != [CONTROLLER_PROBE_MS]:
                # Replicas: a frozen one is noticed (and its connection dropped) within about two probes.
                api.db_set("Controller", row["_uuid"], ("inactivity_probe", CONTROLLER_PROBE_MS)).execute(
                    check_error=True)
        return report

    def set_ipfix(self, bridge: str, set_id: int, target: str) -> None:
        """Point the bridge's flow-sample collector set `set_id` at `target`, in a new IPFIX row: OVS sends
        its templates when the row is created, and otherwise only every 600 s (a collector that restarts
        would decode nothing until then)."""
        api = self.api
        # Rows are matched here, not with db_find: its conditions refused a str against the ref columns.
        br = [r for r in api.db_list("Bridge", columns=["_uuid", "name"]).execute(check_error=True)
              if r["name"] == bridge]
        if not br:
            raise LookupError(f"no bridge {bridge}")
        ours = str(br[0]["_uuid"])
        rows = api.db_list("Flow_Sample_Collector_Set", columns=["_uuid", "id", "bridge"]).execute(check_error=True)
        old = [r for r in rows if r["id"] == set_id and ours == str(getattr(r["bridge"], "uuid", r["bridge"]))]
        if old:
            # Gone first, and applied by ovs-vswitchd, before the new row comes: in one transaction OVS keeps
            # the collector set (same id, same bridge), only re-aims it, and sends no template (measured).
            with api.transaction(check_error=True) as txn:
                for row in old:
                    txn.add(api.db_destroy("Flow_Sample_Collector_Set", row["_uuid"]))
            self._wait_applied()
        with api.transaction(check_error=True) as txn:
            ipfix = txn.add(api.db_create("IPFIX", targets=[target], external_ids={IPFIX_MARK: "1"}))
            txn.add(api.db_create("Flow_Sample_Collector_Set", id=set_id, bridge=br[0]["_uuid"], ipfix=ipfix,
                                  external_ids={IPFIX_MARK: "1"}))

    def _wait_applied(self, timeout_s: float = 5.0) -> None:
        """Ask ovs-vswitchd to confirm it has applied the database as it is now (next_cfg, as ovs-vsctl does),
        and wait until it has."""
        api = self.api
        (row,) = api.db_list("Open_vSwitch", columns=["_uuid", "next_cfg"]).execute(check_error=True)
        want = row["next_cfg"] + 1
        api.db_set("Open_vSwitch", row["_uuid"], ("next_cfg", want)).execute(check_error=True)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            (now,) = api.db_list("Open_vSwitch", columns=["cur_cfg"]).execute(check_error=True)
            if now["cur_cfg"] >= want:
                return
            time.sleep(0.01)
        raise TimeoutError(f"ovs-vswitchd did not apply the configuration within {timeout_s:.0f} s")

    def _controller_targets(self, bridge: str) -> list[str]:
        return sorted(self.api.get_controller(bridge).execute(check_error=True))
