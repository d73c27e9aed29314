"""The os-ken application: `osken-manager controller.app` or `cloudweave run FILE`.

A thin shim (as Faucet's faucet.py): each os-ken event becomes a message on the core's queue
(controller.core, the only writer of state), and each reply from a switch goes to the session that asked
for it (controller.session, the only sender to that switch). Services run on threads of their own and only
read the core's published snapshot or post messages: OVSDB (controller.ovsdb_service), connection limits
(controller.conn_limit_service), traffic engineering (controller.te_loop).

Importing this module patches os-ken (the listener's limits, unix-socket listeners, OF1.5 parsers): it is the
entry module. Every handler here is guarded (controller.guard): nothing a switch sends can end os-ken's event
loop, and a loop or listener that ends anyway makes the process exit loudly (controller.liveness).
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

from os_ken import cfg
from os_ken.base import app_manager
from os_ken.controller import ofp_event
from os_ken.controller.handler import DEAD_DISPATCHER, MAIN_DISPATCHER, set_ev_cls
from os_ken.lib import hub
from os_ken.ofproto import ofproto_v1_5

from cloudweave.config import ConfigError
from cloudweave.secops.quarantine import QuarantineFileError
from cloudweave.store.client import use_tls
from controller import connections, flow_monitor, liveness
from controller.conn_limit_service import ConnLimitService
from controller.core import Core
from controller.flow_desc import install as install_flow_desc
from controller.flowlog_service import FlowLogService
from controller.guard import Budget, Repeats, guarded, limit_osken_logs
from controller.messages import PacketIn, PortsSeen, SwitchDown, SwitchUp
from controller.metrics import Metrics
from controller.osken_fixes import install as install_osken_fixes
from controller.ovsdb_service import OvsdbService
from controller.quarantine_keeper import StoreFeed
from controller.replica import ReplicaService
from controller.roles import Duty, acts_for_fabric
from controller.session import error_name
from controller.settings import Settings
from controller.te_loop import TeLoop
from controller.watch import ReloadRequests

install_osken_fixes()
install_flow_desc()
flow_monitor.install()
limit_osken_logs()

INOTIFY = hub.HUB_TYPE == "native"  # watchdog's threads do not survive eventlet's monkey-patching
LOG = logging.getLogger("cloudweave")
ERROR_REPEAT_S = 60.0  # an OpenFlow error of one kind from one switch is said at most this often
ERRORS_PER_MINUTE = 20  # and at most this many error lines a minute from one switch
MAX_PORTS = 65536  # ports os-ken remembers per switch (we never read them: sessions ask for PORT_DESC)


class CloudweaveApp(app_manager.OSKenApp):
    OFP_VERSIONS = [ofproto_v1_5.OFP_VERSION]  # OpenFlow 1.5: bundles, and select groups' selection_method

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.logger = LOG
        self._errors_said = Repeats(ERROR_REPEAT_S)  # (dpid, type, code) -> when said at error level (bounded)
        self._error_lines = Budget(ERRORS_PER_MINUTE, 60.0)  # error lines per switch a minute
        conf = cfg.CONF
        self.connections = connections.install()
        self.settings = Settings.from_env(conf.ofp_listen_host, conf.ofp_tcp_listen_port)
        if self.settings.tls:  # python-ovs's ssl: sessions (the store's, sites' OVSDB) present this certificate
            LOG.info("TLS as '%s' to ssl: peers", use_tls(*self.settings.tls))
        self.metrics = Metrics()
        self.metrics.watch_connections(self.connections)
        if self.settings.metrics:
            # Bound first: a port taken (another controller?) ends the process at once with the reason, before
            # any thread starts, instead of a controller that runs without its metrics.
            try:
                self.metrics.serve(*self.settings.metrics)
            except OSError as exc:
                LOG.error("metrics: cannot listen on %s:%d: %s; not starting (--metrics HOST:PORT or off)",
                          *self.settings.metrics, exc.strerror or exc)
                raise SystemExit(1) from None
            LOG.info("metrics on http://%s:%d/metrics", *self.settings.metrics)
        self.reloads = ReloadRequests()
        self.te = TeLoop(self.settings.state, self.metrics)
        self.replica: ReplicaService | None = None
        try:
            auto, version, key, listed = sorted(self.te.auto_shares().items()), None, None, None
            if self.settings.store:
                auto, version = self._join_replicas()
                key = self.replica.flowlog_key()
                listed = StoreFeed(self.replica.stored_quarantine(), self.replica.write_quarantine)
            self.core = Core(self.settings, self.metrics, self.reloads, INOTIFY, auto, version, key, listed)
        except ConfigError as exc:
            for p in exc.problems:
                LOG.error("%s", p)
            LOG.error("%s: %d problem(s); not starting", self.settings.config, len(exc.problems))
            raise SystemExit(1) from None
        except QuarantineFileError as exc:
            # Starting without it would release every quarantined endpoint at once.
            LOG.error("%s; not starting (repair or remove the file)", exc)
            raise SystemExit(1) from None
        plain = [s.name for s in self.core.state.model.sites if s.ovsdb.startswith("ssl:")] \
            if not self.settings.tls else []
        if plain:
            LOG.error("site %s: ovsdb %s needs this controller's --private-key, --certificate and --ca-cert; "
                      "not starting", plain[0], self.core.state.model.site(plain[0]).ovsdb)
            raise SystemExit(1)
        targets = (lambda: self.replica.targets) if self.replica else None
        self.ovsdb = OvsdbService(self.settings, self.metrics, lambda: self.core.published, targets)
        self.limits = ConnLimitService(self.metrics, lambda: self.core.published)
        self.flowlog = FlowLogService(self.settings, self.metrics, lambda: self.core.published, self.core.post)
        self.reloads.install_sighup()

    def _join_replicas(self) -> tuple[Any, int]:
        """With a store: the stored policy (imported from the file when the store has none), written out to
        this replica's policy directory, which the core then compiles from; the shares in force."""
        st = self.settings
        self.replica = ReplicaService(st.replica, st.store, st.switch_target, st.policy_dir, self.metrics)
        version, path = self.replica.fetch_policy(st.config or None, st.import_policy)
        LOG.info("replica %s: store %s, policy version %d (written out to %s)", st.replica, st.store, version,
                 st.policy_dir)
        self.settings = replace(st, config=path)
        self.te.leading = lambda: acts_for_fabric(Duty.TRAFFIC_ENGINEERING, True, self.replica.coordinator)
        self.te.persist = self.replica.te_save
        self.te.take_restore = self.replica.te_take_restore
        return self.replica.stored_shares(), version

    def start(self) -> Any:
        thread = super().start()
        liveness.register("os-ken event loop", thread)
        published = lambda: self.core.published  # noqa: E731 - read the snapshot in force at each call
        services = {"core": hub.spawn(self.core.run), "OVSDB": hub.spawn(self.ovsdb.run),
                    "connection limits": hub.spawn(self.limits.run),
                    "traffic engineer": hub.spawn(self.te.run, published, self.core.post),
                    "flow-log collector": hub.spawn(self.flowlog.run)}
        if self.replica is not None:
            services["replica"] = self.replica.start(published, self.core.post)
        for name, t in services.items():
            liveness.register(name, t)
        self.threads += list(services.values())
        if self.replica is None:
            self.reloads.watch(self.core.state.model.files, use_inotify=INOTIFY)  # replicas follow the store
        return thread

    def stop(self) -> None:
        liveness.stopping()
        self.reloads.stop()
        for service in (self.core, self.ovsdb, self.limits, self.te, self.flowlog, self.replica):
            if service is not None:
                service.stop()
        super().stop()

    # ---- events -> the core -------------------------------------------------------------------------------

    @set_ev_cls(ofp_event.EventOFPStateChange, [MAIN_DISPATCHER, DEAD_DISPATCHER])
    @guarded("state_change")
    def _state_change(self, ev: Any) -> None:
        if ev.state == MAIN_DISPATCHER:
            self.connections.established(ev.datapath)
            self.core.post(SwitchUp(ev.datapath))
        elif ev.datapath.id is not None:
            self.core.post(SwitchDown(ev.datapath))

    @set_ev_cls(ofp_event.EventOFPPortStatus, MAIN_DISPATCHER)
    @guarded("port_status")
    def _port_status(self, ev: Any) -> None:
        msg = ev.msg
        ofp, desc = msg.datapath.ofproto, msg.desc
        name = port_name(desc.name)
        if "\ufffd" in name and self._errors_said.check(("name", msg.datapath.id)) is not None:
            LOG.warning("switch %#x: port %d's name is not valid UTF-8 (%r as sent); it is called %r here",
                        msg.datapath.id, desc.port_no, desc.name, name)
        removed = (name,) if msg.reason == ofp.OFPPR_DELETE else ()
        self.core.post(PortsSeen(msg.datapath.id, ((name, int(desc.port_no), bool(desc.state & ofp.OFPPS_LIVE)),),
                                 complete=False, removed=removed))
        bound_ports(msg.datapath)

    @set_ev_cls(ofp_event.EventOFPPacketIn, MAIN_DISPATCHER)
    @guarded("packet_in")
    def _packet_in(self, ev: Any) -> None:
        msg = ev.msg
        in_port = msg.match.get("in_port") if msg.match is not None else None
        self.core.post(PacketIn(msg.datapath.id, bytes(msg.data), in_port if isinstance(in_port, int) else None))

    # ---- replies -> the session that asked ----------------------------------------------------------------

    def _deliver(self, msg: Any) -> bool:
        session = self.core.published.switches.get(msg.datapath.id)
        return session is not None and session.speaks_for(msg.datapath) and session.deliver(msg)

    @set_ev_cls([ofp_event.EventOFPPortDescStatsReply, ofp_event.EventOFPGroupDescStatsReply,
                 ofp_event.EventOFPAggregateStatsReply, ofp_event.EventOFPBarrierReply,
                 ofp_event.EventOFPMeterDescStatsReply, ofp_event.EventOFPRoleReply,
                 ofp_event.EventOFPBundleCtrlMsg], MAIN_DISPATCHER)
    @guarded("reply")
    def _reply(self, ev: Any) -> None:
        self._deliver(ev.msg)

    @set_ev_cls(ofp_event.EventOFPFlowMonitorReply, MAIN_DISPATCHER)
    @guarded("flow_monitor")
    def _flow_monitor(self, ev: Any) -> None:
        session = self.core.published.switches.get(ev.msg.datapath.id)
        if session is not None and session.speaks_for(ev.msg.datapath):
            session.monitored(ev.msg)

    @set_ev_cls(ofp_event.EventOFPRoleStatus, MAIN_DISPATCHER)
    @guarded("role_status")
    def _role_status(self, ev: Any) -> None:
        msg = ev.msg
        session = self.core.published.switches.get(msg.datapath.id)
        if session is not None and session.speaks_for(msg.datapath) and \
                msg.role != msg.datapath.ofproto.OFPCR_ROLE_MASTER:
            session.demoted(msg.generation_id)  # it stops writing; the store's rows tell the core the rest

    @set_ev_cls([ofp_event.EventOFPFlowDescStatsReply, ofp_event.EventOFPPortStatsReply], MAIN_DISPATCHER)
    @guarded("stats_reply")
    def _stats_reply(self, ev: Any) -> None:
        self._deliver(ev.msg)  # to the session that asked (for itself, or for the traffic engineer); else dropped

    @set_ev_cls(ofp_event.EventOFPErrorMsg, MAIN_DISPATCHER)
    @guarded("error")
    def _error(self, ev: Any) -> None:
        msg = ev.msg
        # A rejected reconcile is retried with backoff and worded once by its session; the switch's error for
        # each attempt is said once a minute per kind, the repeats at debug level; and from one switch at most
        # ERRORS_PER_MINUTE kinds a minute (a peer sending every type and code would else write a line each).
        # A switch with no session (an unknown dpid, closed meanwhile) answers nothing of ours: debug level.
        dpid = msg.datapath.id
        session = self.core.published.switches.get(dpid)
        ours = session is not None and session.speaks_for(msg.datapath)
        said = ours and self._errors_said.check((dpid, msg.type, msg.code)) is not None and \
            self._error_lines.allow(dpid)
        LOG.log(logging.ERROR if said else logging.DEBUG, "switch %#x: OpenFlow error %s (xid %#x)%s", dpid,
                error_name(msg.datapath.ofproto, msg.type, msg.code), msg.xid,
                f" (the same again within {ERROR_REPEAT_S:.0f} s: at debug level)" if said else "")
        self._deliver(msg)


def port_name(raw: Any) -> str:
    """A port name as a switch sent it, never failing: OVS cuts a 16-byte UTF-8 name to 15 bytes, possibly in
    the middle of a character."""
    if isinstance(raw, bytes):
        return raw.split(b"\0", 1)[0].decode("utf-8", "replace")
    return str(raw)


def bound_ports(dp: Any) -> None:
    """os-ken keeps every port a PORT_STATUS adds in `dp.ports`, for ever: past MAX_PORTS, forget them all (we
    never read them)."""
    ports = getattr(dp, "ports", None)
    if isinstance(ports, dict) and len(ports) > MAX_PORTS:
        ports.clear()
