"""The os-ken application: `osken-manager controller.app` or `cloudweave run FILE`.

It decides nothing itself: flows come from flows.compile, the diff from controller.reconcile. This module
connects the events (switch up, port change, config edit, SIGHUP) to those functions and sends the result.
"""

from __future__ import annotations

import itertools
import logging
import os
import time
from typing import Any

from os_ken import cfg
from os_ken.app.ofctl import api as ofctl
from os_ken.base import app_manager
from os_ken.controller import ofp_event
from os_ken.controller.handler import DEAD_DISPATCHER, MAIN_DISPATCHER, set_ev_cls
from os_ken.lib import hub
from os_ken.ofproto import ofproto_v1_5

from cloudweave.config import ConfigError, load_model
from cloudweave.config.model import Model
from controller import conn_limits, next_hop, wire
from controller.changes import describe
from controller.codec import canonical_actual, canonical_group_actual, flow_add, flow_delete, group_mod
from controller.links import LinkWatch
from controller.metrics import Metrics
from controller.osken_fixes import install as install_osken_fixes
from controller.ovsdb import SiteOvsdb
from controller.reconcile import Plan, desired_canonical, desired_groups, plan, plan_groups
from controller.settings import Settings, switch_target_for
from controller.te_loop import TeLoop
from controller.unix_socket import install as install_unix_socket_support
from controller.watch import ReloadRequests
from flows.compile import ModelCompiler, SwitchState
from flows.cookies import OWNER, OWNER_MASK, is_our_group
from flows.topology import TUNNEL_PREFIX

install_unix_socket_support()
install_osken_fixes()

LOOP_TICK_S = 0.1
INOTIFY = hub.HUB_TYPE == "native"  # watchdog's threads do not survive eventlet's monkey-patching
OVSDB_RETRY_S = 3.0
OVSDB_RESYNC_S = float(os.environ.get("CLOUDWEAVE_OVSDB_RESYNC_S", "10"))
SEND_CHUNK_BYTES = 1 << 20


class CloudweaveApp(app_manager.OSKenApp):
    OFP_VERSIONS = [ofproto_v1_5.OFP_VERSION]  # OpenFlow 1.5: bundles, and select groups' selection_method

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.logger = logging.getLogger("cloudweave")
        conf = cfg.CONF
        self.settings = Settings.from_env(conf.ofp_listen_host, conf.ofp_tcp_listen_port)
        self.metrics = Metrics()
        try:
            model, warnings = load_model(self.settings.config)
        except ConfigError as exc:
            for p in exc.problems:
                self.logger.error("%s", p)
            raise SystemExit(1) from None
        for w in warnings:
            self.logger.warning("%s", w)
        self.model: Model = model
        self.next_hops: dict[str, str] = {}  # site -> its uplink gateway's MAC, as learned (NAT mode)
        self.links = LinkWatch()
        self.down: frozenset[tuple[str, str]] = frozenset()
        self.te = TeLoop(self.settings.state, self.metrics)
        self.compiler = ModelCompiler(model, auto=self.te.auto_shares())
        self.desired: dict[str, SwitchState] = self.compiler.all(self.next_hops)
        self.logger.info("loaded %s: %s", self.settings.config, describe(None, model))
        self.datapaths: dict[int, Any] = {}
        self.ports: dict[int, dict[str, int]] = {}  # dpid -> port name -> number, as of the last reconcile
        self.ask_due: dict[str, float] = {}  # site -> when to ask for its uplink gateway's MAC next
        self.limits_due = 0.0
        self.limited: dict[str, set[int]] = {}  # site -> zones we set limits on
        self.full: set[tuple[str, str]] = set()  # (site, segment) at their connection limit
        self.limits_failing: set[str] = set()
        self.pending: set[int] = set()
        self.unknown_dpids: set[int] = set()
        self.ovsdb: dict[str, SiteOvsdb] = {}
        self.ovsdb_due: dict[str, float] = {s.name: 0.0 for s in model.sites}  # site -> next sync (monotonic)
        self.errors: dict[int, list[Any]] = {}
        self.bundle_ids = itertools.count(1)
        self.reloads = ReloadRequests()
        self.reloads.install_sighup()

    def start(self) -> Any:
        thread = super().start()
        self.threads.append(hub.spawn(self._switch_loop))
        self.threads.append(hub.spawn(self._ovsdb_loop))
        self.threads.append(hub.spawn(self._te_loop))
        if self.settings.metrics:
            self.metrics.serve(*self.settings.metrics)
            self.logger.info("metrics on http://%s:%d/metrics", *self.settings.metrics)
        self.reloads.watch(self.model.files, use_inotify=INOTIFY)
        return thread

    def stop(self) -> None:
        self.reloads.stop()
        for conn in self.ovsdb.values():
            conn.close()
        super().stop()

    # ---- events -------------------------------------------------------------------------------------------

    @set_ev_cls(ofp_event.EventOFPStateChange, [MAIN_DISPATCHER, DEAD_DISPATCHER])
    def _state_change(self, ev: Any) -> None:
        dp = ev.datapath
        if ev.state == MAIN_DISPATCHER:
            self.datapaths[dp.id] = dp
            self.pending.add(dp.id)
            self.logger.info("switch %#x connected", dp.id)
        elif dp.id is not None and self.datapaths.get(dp.id) is dp:
            del self.datapaths[dp.id]
            self.logger.info("switch %#x disconnected", dp.id)
        self.metrics.switches.set(len(self.datapaths))

    @set_ev_cls(ofp_event.EventOFPPortStatus, MAIN_DISPATCHER)
    def _port_status(self, ev: Any) -> None:
        dp, desc = ev.msg.datapath, ev.msg.desc
        if ev.msg.reason == dp.ofproto.OFPPR_DELETE:
            site = self.model.site_by_dpid(dp.id)
            if site is not None:
                self.links.forget(site.name, desc.name.decode() if isinstance(desc.name, bytes) else desc.name)
        else:
            self._port_seen(dp, desc)
        if ev.msg.reason != dp.ofproto.OFPPR_MODIFY:
            self.pending.add(dp.id)  # a port came or went: flows may name it

    @set_ev_cls(ofp_event.EventOFPPacketIn, MAIN_DISPATCHER)
    def _packet_in(self, ev: Any) -> None:
        """Only ARP replies from an uplink gateway come up (flows/nat.py): learn its MAC."""
        msg = ev.msg
        site = self.model.site_by_dpid(msg.datapath.id)
        if site is None or site.uplink_gateway is None:
            return
        answer = next_hop.parse_reply(msg.data, site)
        if answer is None or self.next_hops.get(site.name) == answer.mac:
            return
        self.logger.info("site %s: uplink gateway %s is at %s%s", site.name, answer.ip, answer.mac,
                         f" (was {self.next_hops[site.name]})" if site.name in self.next_hops else "")
        self.next_hops[site.name] = answer.mac
        self.desired[site.name] = self.compiler.site(site.name, self.next_hops)
        self.metrics.next_hops_learned.labels(site.name).inc()
        self.pending.add(msg.datapath.id)

    @set_ev_cls(ofp_event.EventOFPFlowDescStatsReply, MAIN_DISPATCHER)
    def _flow_desc_reply(self, ev: Any) -> None:
        self.te.on_reply(ev.msg)  # only the TE loop's own requests; the reconcile's go to os-ken's ofctl

    @set_ev_cls(ofp_event.EventOFPErrorMsg, MAIN_DISPATCHER)
    def _error(self, ev: Any) -> None:
        msg = ev.msg
        self.errors.setdefault(msg.datapath.id, []).append(msg)
        self.logger.error("switch %#x: OpenFlow error type=%d code=%d xid=%#x", msg.datapath.id,
                          msg.type, msg.code, msg.xid)

    # ---- loops --------------------------------------------------------------------------------------------

    def _switch_loop(self) -> None:
        while self.is_active:
            try:
                if not INOTIFY:
                    self.reloads.poll_mtimes()
                if self.reloads.due():
                    self.reload()
                while self.pending:
                    dpid = self.pending.pop()  # atomic: event handlers add to the set from their own thread
                    dp = self.datapaths.get(dpid)
                    if dp is not None:
                        self.reconcile(dp)
                self._ask_next_hops()
                self._check_links()
            except Exception:  # noqa: BLE001 - one bad round must not stop the controller
                self.logger.exception("controller loop")
            hub.sleep(LOOP_TICK_S)

    def _ovsdb_loop(self) -> None:
        while self.is_active:
            try:
                now = time.monotonic()
                for name, when in sorted(self.ovsdb_due.items()):
                    if when <= now:
                        self._sync_site(name)
                if self.limits_due <= now:
                    self.limits_due = now + self.model.poll_interval_s
                    self._connection_limits()
            except Exception:  # noqa: BLE001 - one bad round must not stop OVSDB syncing
                self.logger.exception("OVSDB loop")
            hub.sleep(LOOP_TICK_S)

    def _te_loop(self) -> None:
        """Every poll interval: learn the matrix of the split: auto routes and adopt new weights when worth it."""
        while self.is_active:
            started = time.monotonic()
            try:
                if self.te.round(self.model, self.down, self.datapaths, hub.sleep):
                    self._recompile()
            except Exception:  # noqa: BLE001 - one bad round must not stop traffic engineering
                self.logger.exception("traffic-engineering loop")
            hub.sleep(max(0.1, self.model.poll_interval_s - (time.monotonic() - started)))

    # ---- work ---------------------------------------------------------------------------------------------

    def reload(self) -> bool:
        """Load the files again; apply the difference, or keep everything as it is if they are invalid."""
        try:
            model, warnings = load_model(self.settings.config)
        except ConfigError as exc:
            for p in exc.problems:
                self.logger.error("%s", p)
            self.logger.error("reload rejected: %d problem(s); the running configuration stays in force",
                              len(exc.problems))
            self.metrics.reloads.labels("rejected").inc()
            return False
        for w in warnings:
            self.logger.warning("%s", w)
        self.logger.info("reload: %s", describe(self.model, model))
        old_sites = {s.name: s for s in self.model.sites}
        self.model = model
        self._recompile()
        self.ask_due.clear()
        self.limits_due = 0.0
        for site in model.sites:
            if old_sites.get(site.name) != site:
                self._drop_ovsdb(site.name)
        for gone in set(old_sites) - {s.name for s in model.sites}:
            self._drop_ovsdb(gone)
            self.ovsdb_due.pop(gone, None)
        self.ovsdb_due.update({s.name: 0.0 for s in model.sites})
        if {os.path.realpath(f) for f in model.files} != self.reloads.files:
            self.reloads.watch(model.files, use_inotify=INOTIFY)
        self.metrics.reloads.labels("applied").inc()
        return True

    def _drop_ovsdb(self, site: str) -> None:
        conn = self.ovsdb.pop(site, None)
        if conn is not None:
            conn.close()

    def _sync_site(self, name: str) -> None:
        site = next((s for s in self.model.sites if s.name == name), None)
        if site is None:
            self.ovsdb_due.pop(name, None)
            return
        try:
            if name not in self.ovsdb:
                self.ovsdb[name] = SiteOvsdb(site)
            target = switch_target_for(self.settings.switch_target, site)
            report = self.ovsdb[name].sync(site, self.desired[name].tunnels, target, self.settings.bfd_ms)
        except Exception as exc:  # noqa: BLE001 - an unreachable OVSDB is retried, not fatal
            self.logger.warning("site %s: OVSDB %s: %s; retrying in %.0f s", name, site.ovsdb, exc, OVSDB_RETRY_S)
            self._drop_ovsdb(name)
            self.ovsdb_due[name] = time.monotonic() + OVSDB_RETRY_S
            self.metrics.ovsdb_syncs.labels(name, "failed").inc()
            return
        # Synced again every OVSDB_RESYNC_S: a tunnel port deleted or changed by hand comes back.
        self.ovsdb_due[name] = time.monotonic() + OVSDB_RESYNC_S
        self.metrics.ovsdb_syncs.labels(name, "ok").inc()
        level = logging.INFO if report.changed else logging.DEBUG
        self.logger.log(level, "site %s: OVSDB bridge %s: %s", name, site.bridge, report)

    def _port_seen(self, dp: Any, desc: Any) -> None:
        """Record whether a tunnel port is live (OVS: carrier and BFD); _check_links acts on it."""
        site = self.model.site_by_dpid(dp.id)
        name = desc.name.decode() if isinstance(desc.name, bytes) else desc.name
        if site is None or not name.startswith(TUNNEL_PREFIX):
            return
        self.links.seen(site.name, name, bool(desc.state & dp.ofproto.OFPPS_LIVE))

    def _check_links(self) -> None:
        """Recompile around links whose tunnels went down, and back when they return."""
        peers = {(s.name, t.name): t.peer for s in self.model.sites for t in self.desired[s.name].tunnels}
        down = self.links.down(peers)
        if down == self.down:
            return
        for a, b in sorted(down - self.down):
            self.logger.warning("link %s-%s is down (BFD): traffic moves to the remaining paths", a, b)
            self.metrics.link_changes.labels(f"{a}-{b}", "down").inc()
        for a, b in sorted(self.down - down):
            self.logger.info("link %s-%s is up again: its paths and weights return", a, b)
            self.metrics.link_changes.labels(f"{a}-{b}", "up").inc()
        self.down = down
        self._recompile()

    def _recompile(self) -> None:
        """Compile every site again from the model, the links that are down and the weights in force, and
        reconcile every connected switch with the result."""
        self.compiler = ModelCompiler(self.model, self.down, self.te.auto_shares())
        self.desired = self.compiler.all(self.next_hops)
        self.pending.update(self.datapaths)

    def _ask_next_hops(self) -> None:
        """ARP for each NAT site's uplink gateway: often while unknown, then now and then to notice a change."""
        now = time.monotonic()
        for dpid, dp in list(self.datapaths.items()):
            site = self.model.site_by_dpid(dpid)
            if site is None or self.ask_due.get(site.name, 0.0) > now or not next_hop.needs_next_hop(self.model, site):
                continue
            port = self.ports.get(dpid, {}).get(site.uplink)
            if port is None:
                continue
            known = site.name in self.next_hops
            self.ask_due[site.name] = now + (next_hop.ASK_KNOWN_S if known else next_hop.ASK_UNKNOWN_S)
            ofp, parser = dp.ofproto, dp.ofproto_parser
            dp.send_msg(parser.OFPPacketOut(dp, ofp.OFP_NO_BUFFER, parser.OFPMatch(in_port=ofp.OFPP_CONTROLLER),
                                            [parser.OFPActionOutput(port, 0)], next_hop.request(site)))

    def _connection_limits(self) -> None:
        """Set each site's zone limits and report the segments that reach theirs."""
        for site in self.model.sites:
            want = set(conn_limits.wanted(self.model, site.name))
            had = self.limited.get(site.name, set())
            if not want and not had:
                continue
            try:
                conn_limits.remove(site, had - want)
                uses = conn_limits.apply_and_read(self.model, site)
            except (conn_limits.LimitsUnavailable, OSError, ValueError) as exc:
                if site.name not in self.limits_failing:  # said once, not every poll interval
                    self.logger.warning("%s (retrying quietly)", exc)
                    self.limits_failing.add(site.name)
                continue
            if site.name in self.limits_failing or had != want:
                self.logger.info("site %s: connection limits %s", site.name, ", ".join(
                    f"{u.segment} {u.limit}" for u in uses) or "lifted")
            self.limits_failing.discard(site.name)
            self.limited[site.name] = want
            for use in uses:
                self.metrics.connections.labels(site.name, use.segment).set(use.count)
                self.metrics.connection_limit.labels(site.name, use.segment).set(use.limit)
                key = (site.name, use.segment)
                if use.full and key not in self.full:
                    self.full.add(key)
                    self.metrics.limit_reached.labels(*key).inc()
                    self.logger.warning("site %s: segment %s reached its connection limit (%d of %d): new "
                                        "connections are refused", site.name, use.segment, use.count, use.limit)
                elif not use.full and key in self.full:
                    self.full.discard(key)
                    self.logger.info("site %s: segment %s is below its connection limit again (%d of %d)",
                                     site.name, use.segment, use.count, use.limit)

    def reconcile(self, dp: Any) -> Plan | None:
        """Read the switch's ports and flows, and send only the difference to the desired flows, in one bundle."""
        started = time.monotonic()
        site = self.model.site_by_dpid(dp.id)
        if site is None:
            if dp.id not in self.unknown_dpids:
                self.logger.warning("switch %#x is not a site of %s; leaving it alone", dp.id, self.settings.config)
                self.unknown_dpids.add(dp.id)
            return None
        ofp, parser = dp.ofproto, dp.ofproto_parser
        port_replies = ofctl.send_msg(self, parser.OFPPortDescStatsRequest(dp, 0), parser.OFPPortDescStatsReply,
                                      reply_multi=True)
        ports = {p.name.decode() if isinstance(p.name, bytes) else p.name: p.port_no
                 for r in port_replies for p in r.body}
        self.ports[dp.id] = ports
        for r in port_replies:
            for desc in r.body:
                self._port_seen(dp, desc)
        flow_replies = ofctl.send_msg(self, parser.OFPFlowDescStatsRequest(
            dp, 0, ofp.OFPTT_ALL, ofp.OFPP_ANY, ofp.OFPG_ANY, OWNER, OWNER_MASK, parser.OFPMatch()),
            parser.OFPFlowDescStatsReply, reply_multi=True)
        actual = dict(canonical_actual(s, ofp) for r in flow_replies for s in r.body)
        group_replies = ofctl.send_msg(self, parser.OFPGroupDescStatsRequest(dp, 0), parser.OFPGroupDescStatsReply,
                                       reply_multi=True)
        actual_groups = dict(canonical_group_actual(g, ofp) for r in group_replies for g in r.body
                             if is_our_group(g.group_id))
        groups, missing_for_groups = desired_groups(self.desired[site.name].groups, ports)
        desired, missing = desired_canonical(self.desired[site.name].flows, ports, groups)
        missing |= missing_for_groups
        p = plan_groups(plan(desired, actual), groups, actual_groups)
        p.missing_ports = missing
        if self.logger.isEnabledFor(logging.DEBUG):  # what differed, for whoever debugs a flow that keeps changing
            for key in p.replace:
                self.logger.debug("site %s: replace %s: have %s, want %s", site.name, key, actual[key], desired[key])
            for key in p.add:
                self.logger.debug("site %s: add %s", site.name, key)
            for key in p.delete:
                self.logger.debug("site %s: delete %s", site.name, key)
        ok = True
        if p.size:
            ok = self._send_bundle(dp, p)
            self.metrics.flow_mods.labels(site.name).inc(p.size - p.group_size)
            self.metrics.group_mods.labels(site.name).inc(p.group_size)
            names = {g.group_id: g.name for g in self.desired[site.name].groups}
            for gid in list(p.group_add) + list(p.group_modify):
                self.logger.info("site %s: group %#x %s: %s", site.name, gid,
                                 "added" if gid in p.group_add else "modified", names.get(gid, ""))
        elapsed = time.monotonic() - started
        self.metrics.flows.labels(site.name).set(len(desired) if ok else len(actual))
        self.metrics.groups.labels(site.name).set(len(groups) if ok else len(actual_groups))
        self.metrics.reconcile_seconds.labels(site.name).set(elapsed)
        wait = f"; waiting for ports: {', '.join(sorted(missing))}" if missing else ""
        self.logger.info("site %s (dpid %#x): %d flows desired, %d were on the switch: %s (%d flow-mods%s) "
                         "in %.0f ms%s", site.name, dp.id, len(desired), len(actual), p.summary(), p.size,
                         "" if ok else ", FAILED", elapsed * 1000, wait)
        return p

    def _send_bundle(self, dp: Any, p: Plan) -> bool:
        """Send the plan's flow-mods in one atomic, ordered bundle and wait once for its commit."""
        ofp, parser = dp.ofproto, dp.ofproto_parser
        bundle_id = next(self.bundle_ids)
        flags = ofp.OFPBF_ATOMIC | ofp.OFPBF_ORDERED
        errors_before = len(self.errors.get(dp.id, []))
        try:
            ofctl.send_msg(self, parser.OFPBundleCtrlMsg(dp, bundle_id, ofp.OFPBCT_OPEN_REQUEST, flags, []),
                           parser.OFPBundleCtrlMsg)
            # OpenFlow is a byte stream: many messages per send, not one queue hand-off and syscall each.
            chunk: list[bytes] = []
            size = 0
            for raw in _bundle_adds(dp, p, bundle_id, flags):
                chunk.append(raw)
                size += len(raw)
                if size >= SEND_CHUNK_BYTES:
                    dp.send(b"".join(chunk))
                    chunk, size = [], 0
            if chunk:
                dp.send(b"".join(chunk))
            # The switch answers a rejected message at once; after this barrier every such answer is in, and a
            # bundle with one is discarded rather than committed without it.
            ofctl.send_msg(self, parser.OFPBarrierRequest(dp), parser.OFPBarrierReply)
            rejected = len(self.errors.get(dp.id, [])) - errors_before
            if rejected:
                ofctl.send_msg(self, parser.OFPBundleCtrlMsg(dp, bundle_id, ofp.OFPBCT_DISCARD_REQUEST, flags, []),
                               parser.OFPBundleCtrlMsg)
                self.logger.error("switch %#x: the switch rejected %d of %d messages; bundle %d discarded, its "
                                  "flows stay as they were", dp.id, rejected, p.size, bundle_id)
                return False
            ofctl.send_msg(self, parser.OFPBundleCtrlMsg(dp, bundle_id, ofp.OFPBCT_COMMIT_REQUEST, flags, []),
                           parser.OFPBundleCtrlMsg)
        except Exception as exc:  # noqa: BLE001 - os-ken raises its own OFError types
            self.logger.error("switch %#x: bundle %d of %d messages was not committed: %s", dp.id, bundle_id,
                              p.size, exc)
            return False
        return len(self.errors.get(dp.id, [])) == errors_before


def _next_xid(dp: Any) -> int:
    dp.xid = (dp.xid + 1) & dp.ofproto.MAX_XID  # as Datapath.set_xid does
    return dp.xid


def _wrap(dp: Any, msg: Any, bundle_id: int, flags: int) -> bytes:
    wrapped = dp.ofproto_parser.OFPBundleAddMsg(dp, bundle_id, flags, msg, [])
    wrapped.set_xid(_next_xid(dp))
    wrapped.serialize()
    return bytes(wrapped.buf)


def _bundle_adds(dp: Any, p: Plan, bundle_id: int, flags: int) -> Any:
    """The plan as bundle-add messages, in an order that never refers to a missing group: groups added and
    modified, flows deleted, flows added, groups deleted. Flow-mods by our direct encoder (os-ken's for what it
    lacks), group-mods by os-ken's."""
    for gid, content in itertools.chain(p.group_add.items(), p.group_modify.items()):
        yield _wrap(dp, group_mod(dp, "add" if gid in p.group_add else "modify", gid, content), bundle_id, flags)
    items = [(k, None) for k in p.delete] + list(itertools.chain(p.add.items(), p.replace.items()))
    for key, content in items:
        xid = _next_xid(dp)
        try:
            if content is None:
                inner = wire.flow_mod(xid, wire.OFPFC_DELETE_STRICT, key, None, OWNER, OWNER_MASK)
            else:
                inner = wire.flow_mod(xid, wire.OFPFC_ADD, key, content)
            yield wire.bundle_add(xid, bundle_id, flags, inner)
        except wire.Unsupported:
            yield _wrap(dp, flow_delete(dp, key) if content is None else flow_add(dp, key, content), bundle_id, flags)
    for gid in p.group_delete:
        yield _wrap(dp, group_mod(dp, "delete", gid, None), bundle_id, flags)
