"""The core: the one writer of the controller's state, fed by one queue.

State is (model, links seen down, learned next hops, TE weights), a frozen value. A message that changes it
makes a new state, compiles the desired flows of the sites whose switches are connected (controller.desired:
only the units whose inputs changed), and commits state and flows together, only once the compile
succeeded: a failure leaves both as they were. A site whose switch connects later is compiled then, from the
state in force (its units memoised). The sessions of the switches whose desired state changed are handed the
new one; every other switch hears nothing. Services read `published` (an immutable snapshot) and post
messages; they never write here.
"""

from __future__ import annotations

import gc
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import Any

from os_ken.lib import hub

from cloudweave.config import ConfigError, LoadCache, load_model_cached
from cloudweave.config.model import Site
from cloudweave.flowlog import key as flowlog_key_file
from cloudweave.flows.compile import SwitchState
from cloudweave.flows.topology import TUNNEL_PREFIX
from cloudweave.secops import quarantine
from cloudweave.store.shards import site_shards
from controller import next_hop, roles
from controller.changes import describe
from controller.desired import DesiredCompiler, State
from controller.guard import Repeats
from controller.links import LinkWatch
from controller.messages import (
    Mastership,
    NextHopsStored,
    PacketIn,
    PolicyStored,
    PortsSeen,
    QuarantineAlarm,
    QuarantineSeen,
    QuarantineStored,
    SwitchDown,
    SwitchUp,
    Tick,
    WeightsAdopted,
)
from controller.quarantine_keeper import QuarantineKeeper, StoreFeed
from controller.roles import Duty
from controller.session import EQUAL, NO_ROLE, Role, SwitchHandle, SwitchSession
from controller.settings import Settings
from controller.watch import ReloadRequests

LOG = logging.getLogger("cloudweave")
TICK_S = 0.02  # how soon a settled reload or a due ARP is noticed
MAX_UNKNOWN = 4096  # unknown dpids remembered (to say each once)


@dataclass(frozen=True)
class Published:
    """What services may read: the state in force, the desired flows of the connected sites, every site's
    tunnel ports, and a handle on each switch's session (by dpid): its status, ask(), the shim's delivery."""

    state: State
    desired: MappingProxyType
    switches: MappingProxyType  # dpid -> controller.session.SwitchHandle
    tunnels: MappingProxyType
    mastered: frozenset[str] | None = None  # with replicas: the sites this replica masters (None: alone, all)
    policy_version: int = 0  # with replicas: the stored policy version in force
    site_shards: tuple[tuple[str, str], ...] = ()  # with replicas: site -> shard


class Core:
    def __init__(self, settings: Settings, metrics: Any, reloads: ReloadRequests, use_inotify: bool,
                 auto: Any = (), policy_version: int | None = None, flowlog_key: bytes | None = None,
                 quarantine_list: StoreFeed | quarantine.FileList | None = None):
        """Raises ConfigError when the file does not load: the controller does not start on a bad file.
        `policy_version`: a replica's (the file is the store's policy of that version, written out);
        `flowlog_key`: the store's, for a replica (alone, it is read from settings.flowlog_key);
        `quarantine_list`: the store's, for a replica (alone, the file settings.quarantine)."""
        self.settings = settings
        self.replicated = policy_version is not None
        self.policy_version = policy_version or 0
        self.mastership: Mastership | None = None
        self.metrics = metrics
        self.reloads = reloads
        self.use_inotify = use_inotify
        self.load_cache = LoadCache()  # kept for good: a reload parses only what was edited
        model, warnings = load_model_cached(settings.config, self.load_cache)
        for w in warnings:
            LOG.warning("%s", w)
        self.compiler = DesiredCompiler(metrics)
        if quarantine_list is None and settings.quarantine:
            quarantine_list = quarantine.FileList(settings.quarantine)
        self.quarantine = QuarantineKeeper(quarantine_list, settings.config, metrics)
        cut_off = self.quarantine.cut_off()
        if flowlog_key is None and settings.flowlog_key:
            flowlog_key = _own_key(settings.flowlog_key)
        self.state = State(model, auto=tuple(auto), quarantined=cut_off, flowlog_key=flowlog_key)
        self.quarantine.log_changes(frozenset(), cut_off, model)
        # No switch is connected yet: each site is compiled as its switch connects (a 100,000-endpoint start
        # compiled 900,000 flows of three sites before the one switch there was could be programmed).
        self.desired: dict[str, SwitchState] = self.compiler.compile(self.state, sites=())
        gc.freeze()  # see _change
        LOG.info("loaded %s: %s", settings.config, describe(None, model))
        self.queue: Any = hub.Queue()
        self.sessions: dict[int, SwitchSession] = {}
        self.links = LinkWatch()
        self.ask_due: dict[str, float] = {}  # site -> when to ask for its uplink gateway's MAC next
        self._asking: tuple[Any, set[str]] = (None, set())  # (model, the sites of it that NAT and must ask)
        self.unknown_dpids: set[int] = set()  # said once (bounded: cleared past MAX_UNKNOWN and at reloads)
        self._said = Repeats()  # lines said at most once a minute per kind
        self.active = True
        self.published = self._publish()

    # ---- the loop ------------------------------------------------------------------------------------------

    def post(self, msg: Any) -> None:
        self.queue.put(msg)

    def run(self) -> None:
        next_tick = time.monotonic()
        while self.active:
            try:
                msg = self.queue.get(timeout=max(0.0, next_tick - time.monotonic()))
            except hub.QueueEmpty:
                msg = Tick()
            if isinstance(msg, Tick) or time.monotonic() >= next_tick:
                next_tick = time.monotonic() + TICK_S
                self._handle(Tick())
            if not isinstance(msg, Tick):
                self._handle(msg)

    def stop(self) -> None:
        self.active = False
        for s in self.sessions.values():
            s.stop()

    def _handle(self, msg: Any) -> None:
        handler = HANDLERS.get(type(msg))
        if handler is None:
            LOG.error("controller core: no handler for %s; dropped", type(msg).__name__)
            return
        try:
            handler(self, msg)
        except Exception:  # noqa: BLE001 - one bad message must not stop the controller
            LOG.exception("controller core: %s", type(msg).__name__)

    def _weights_adopted(self, msg: WeightsAdopted) -> None:
        self._change(replace(self.state, auto=msg.auto), "new traffic-engineering weights")

    # ---- state changes -------------------------------------------------------------------------------------

    def _change(self, state: State, why: str) -> bool:
        """Compile `state` and commit it with its flows; on failure keep everything as it was."""
        try:
            desired = self.compiler.compile(state, sites=self._connected())
        except Exception:  # noqa: BLE001 - a compiler bug must not take the controller down
            LOG.exception("could not compile the flows for %s; the state in force stays", why)
            self.metrics.compile_failures.inc()
            return False
        before = self.desired
        self.state, self.desired = state, desired
        # The state in force lives long and makes no cycles: out of the cyclic collector's way, whose full
        # passes over millions of such objects would otherwise stall every thread now and then.
        gc.freeze()
        changed = [site for site, st in desired.items() if before.get(site) is not st]
        by_site = {s.site: s for s in self.sessions.values()}
        for site in changed:
            if site in by_site:
                by_site[site].set_desired(desired[site])
        self.published = self._publish()
        LOG.debug("%s: %d of %d sites changed", why, len(changed), len(desired))
        return True

    def _connected(self, *more: str) -> list[str]:
        """The sites whose switches are connected (and `more`), that the model has."""
        names = {s.name for s in self.state.model.sites}
        return sorted(({s.site for s in self.sessions.values()} | set(more)) & names)

    def _desired_for(self, site: str) -> SwitchState | None:
        """The site's desired state, compiled now if it was not (its switch just connected)."""
        if site not in self.desired:
            try:
                desired = self.compiler.compile(self.state, sites=self._connected(site))
            except Exception:  # noqa: BLE001 - a compiler bug: the switch is left as it is, and said so
                LOG.exception("could not compile the flows of site %s; its switch is left as it is", site)
                self.metrics.compile_failures.inc()
                return None
            before, self.desired = self.desired, desired
            gc.freeze()
            # The others' states are the very objects they were (the same inputs), unless the compiler had to
            # start again from scratch: then their sessions hear of it as after any change.
            for other in self.sessions.values():
                if other.site in desired and desired[other.site] is not before.get(other.site):
                    other.set_desired(desired[other.site])
        return self.desired.get(site)

    def _publish(self) -> Published:
        mastered = None
        shards: tuple[tuple[str, str], ...] = ()
        if self.replicated:
            shards = tuple(sorted(self._site_shards().items()))
            mine = dict(self.mastership.mine) if self.mastership else {}
            mastered = frozenset(site for site, shard in shards if shard in mine)
        switches = MappingProxyType({dpid: SwitchHandle(s) for dpid, s in self.sessions.items()})
        return Published(self.state, MappingProxyType(dict(self.desired)), switches,
                         MappingProxyType(dict(self.compiler.tunnels)), mastered, self.policy_version, shards)

    # ---- replicas ------------------------------------------------------------------------------------------

    def _site_shards(self) -> dict[str, str]:
        m = self.mastership
        if m is None or m.shards < 1:
            return {}
        return site_shards((s.name for s in self.state.model.sites), m.shards)

    def _role_for(self, site: str) -> Role:
        if not self.replicated:
            return EQUAL
        m = self.mastership
        shard = self._site_shards().get(site)
        if m is None or shard is None:
            return NO_ROLE
        mine = dict(m.mine)
        if shard in mine:
            return Role("master", mine[shard])
        return Role("slave", dict(m.committed).get(shard, 0))

    def _masters(self, site: str) -> bool:
        """Next hops are learned and asked for by the site's master only (controller.roles)."""
        return roles.acts_at(Duty.NEXT_HOP_ARP, site, self.published.mastered)

    def _set_roles(self) -> None:
        for session in self.sessions.values():
            session.set_role(self._role_for(session.site))
        self.published = self._publish()
        self.metrics.mastered.set(len(self.published.mastered or ()))

    def _mastership(self, msg: Mastership) -> None:
        before = self.published.mastered or frozenset()
        self.mastership = msg
        self._set_roles()
        after = self.published.mastered or frozenset()
        if after != before:
            LOG.info("mastering %d of %d sites%s%s", len(after), len(self.state.model.sites),
                     f"; took {', '.join(sorted(after - before))}" if after - before else "",
                     f"; gave up {', '.join(sorted(before - after))}" if before - after else "")
            for site in after - before:
                self.ask_due.pop(site, None)  # a new master asks for its uplink gateway at once

    def _policy_stored(self, msg: PolicyStored) -> None:
        before = self.settings
        self.settings = replace(before, config=msg.path)  # the applied file's name may differ from the last
        if self.reload():
            self.policy_version = msg.version
            self.published = self._publish()
            LOG.info("policy version %d in force", msg.version)
        else:
            self.settings = before

    def _next_hops_stored(self, msg: NextHopsStored) -> None:
        """Next hops learned by other sites' masters: a new master starts from them instead of a drop."""
        hops = dict(self.state.next_hops)
        for site, mac in msg.hops:
            if site not in hops or not self._masters(site):
                hops[site] = mac
        merged = tuple(sorted(hops.items()))
        if merged != self.state.next_hops:
            self._change(replace(self.state, next_hops=merged), "next hops from the store")

    def reload(self) -> bool:
        """Load the files again; apply the difference, or keep everything as it is if they are invalid."""
        started = time.monotonic()
        try:
            model, warnings = load_model_cached(self.settings.config, self.load_cache)
        except ConfigError as exc:
            for p in exc.problems:
                LOG.error("%s", p)
            LOG.error("reload rejected: %d problem(s); the running configuration stays in force", exc.total)
            self.metrics.reloads.labels("rejected").inc()
            return False
        old = self.state.model
        if model is old:
            LOG.info("reload: no change to the files")
            LOG.info("reload applied in %.0f ms", (time.monotonic() - started) * 1000)
            self.metrics.reloads.labels("applied").inc()
            return True
        if old.sites and not model.sites:
            LOG.error("reload rejected: %s defines no sites (emptied, or still being written?); the running "
                      "configuration stays in force", self.settings.config)
            self.metrics.reloads.labels("rejected").inc()
            return False
        for w in warnings:
            LOG.warning("%s", w)
        LOG.info("reload: %s", describe(old, model))
        if not self._change(replace(self.state, model=model), "reload"):
            self.metrics.reloads.labels("rejected").inc()
            return False
        self.ask_due.clear()
        self.unknown_dpids.clear()
        self._attach_sessions()
        if self.replicated:
            self._set_roles()  # the sites (and so the shards' sites) may have changed
        if not self.replicated and {os.path.realpath(f) for f in model.files} != self.reloads.files:
            self.reloads.watch(model.files, use_inotify=self.use_inotify)
        self.metrics.reloads.labels("applied").inc()
        LOG.info("reload applied in %.0f ms", (time.monotonic() - started) * 1000)
        return True

    def _attach_sessions(self) -> None:
        """After a reload: a switch whose dpid now names another site (or none) follows the file."""
        for dpid, session in list(self.sessions.items()):
            site = self.state.model.site_by_dpid(dpid)
            if site is None:
                LOG.warning("switch %#x is no longer a site of %s; leaving its flows alone", dpid,
                            self.settings.config)
                session.stop()
                del self.sessions[dpid]
            elif site.name != session.site:
                session.stop()
                del self.sessions[dpid]
                self._switch_up(session.dp)
        self.published = self._publish()

    # ---- handlers ------------------------------------------------------------------------------------------

    def _switch_up(self, dp: Any) -> None:
        LOG.info("switch %#x connected", dp.id)
        site = self.state.model.site_by_dpid(dp.id)
        old = self.sessions.pop(dp.id, None)
        if old is not None:
            old.stop()
        if site is None:
            # Closed, as Faucet and ONOS do: an unknown switch gets nothing, and holds no thread or socket here.
            if dp.id not in self.unknown_dpids:
                LOG.warning("switch %#x is not a site of %s; closing its connection (said once per dpid)", dp.id,
                            self.settings.config)
                if len(self.unknown_dpids) >= MAX_UNKNOWN:
                    self.unknown_dpids.clear()
                self.unknown_dpids.add(dp.id)
            self.metrics.unknown_switches.inc()
            dp.close()
        else:
            self.links.reconnected(site.name)
            session = SwitchSession(dp, site.name, self.metrics,
                                    lambda ports, dpid=dp.id: self.post(PortsSeen(dpid, ports, complete=True)))
            session.set_desired(self._desired_for(site.name))
            session.set_role(self._role_for(site.name))
            self.sessions[dp.id] = session
        self.metrics.switches.set(len(self.sessions))
        self.published = self._publish()  # before its worker starts: the shim routes its replies by this
        if site is not None:
            self.sessions[dp.id].start()

    def _switch_down(self, dp: Any) -> None:
        session = self.sessions.get(dp.id)
        if session is None or session.dp is not dp:
            return
        session.stop()
        del self.sessions[dp.id]
        LOG.info("switch %#x disconnected", dp.id)
        self.metrics.switches.set(len(self.sessions))
        self.published = self._publish()

    def _ports_seen(self, msg: PortsSeen) -> None:
        site = self.state.model.site_by_dpid(msg.dpid)
        if site is None:
            return
        for name in msg.removed:
            self.links.forget(site.name, name)
        ours = {t.name for t in self.compiler.tunnels.get(site.name, ())}  # a peer may name any port vx-...
        for name, _, live in msg.ports:
            if name.startswith(TUNNEL_PREFIX) and name in ours and name not in msg.removed:
                self.links.seen(site.name, name, live)
        session = self.sessions.get(msg.dpid)
        if not msg.complete and session is not None and (msg.removed or any(
                name not in session.ports for name, _, _ in msg.ports)):
            session.ports_changed()  # a port came or went: flows may name it
        self._check_links()

    def _check_links(self) -> None:
        """Recompile around links whose tunnels went down, and back when they return."""
        peers = {(s, t.name): t.peer for s, tunnels in self.compiler.tunnels.items() for t in tunnels}
        down = self.links.down(peers)
        if down == self.state.down:
            return
        for a, b in sorted(down - self.state.down):
            LOG.warning("link %s-%s is down (BFD): traffic moves to the remaining paths", a, b)
            self.metrics.link_changes.labels(f"{a}-{b}", "down").inc()
        for a, b in sorted(self.state.down - down):
            LOG.info("link %s-%s is up again: its paths and weights return", a, b)
            self.metrics.link_changes.labels(f"{a}-{b}", "up").inc()
        self._change(replace(self.state, down=down), "a link change")

    def _packet_in(self, msg: PacketIn) -> None:
        """Only ARP replies from an uplink gateway come up (flows/nat.py): learn its MAC, but only from a reply
        that came in on the site's uplink port (an endpoint, or anyone who speaks OpenFlow to us, could
        otherwise point NATed traffic at a MAC of its choosing)."""
        site = self.state.model.site_by_dpid(msg.dpid)
        if site is None or site.uplink_gateway is None or not self._masters(site.name):
            return
        session = self.sessions.get(msg.dpid)
        uplink = session.ports.get(site.uplink) if session is not None and site.uplink else None
        if uplink is None or msg.in_port != uplink:
            if self._said.check((site.name, msg.in_port)) is not None:
                LOG.warning("site %s: a packet-in on port %s, not the uplink %s (port %s): not a next hop; "
                            "ignored", site.name, msg.in_port, site.uplink, uplink)
            self.metrics.next_hops_refused.labels(site.name).inc()
            return
        answer = next_hop.parse_reply(msg.data, site)
        hops = dict(self.state.next_hops)
        if answer is None or hops.get(site.name) == answer.mac:
            return
        LOG.info("site %s: uplink gateway %s is at %s%s", site.name, answer.ip, answer.mac,
                 f" (was {hops[site.name]})" if site.name in hops else "")
        hops[site.name] = answer.mac
        if self._change(replace(self.state, next_hops=tuple(sorted(hops.items()))), f"next hop of {site.name}"):
            self.metrics.next_hops_learned.labels(site.name).inc()

    def _check_quarantine(self) -> None:
        now = time.time()
        cut_off = self.quarantine.check(now, self.state.model)
        before = self.state.quarantined
        if cut_off is None or cut_off == before:
            return
        if self._change(replace(self.state, quarantined=cut_off), "a quarantine change"):
            self.quarantine.log_changes(before, cut_off, self.state.model, now)

    def _quarantine_alarm(self, msg: QuarantineAlarm) -> None:
        """Cut the endpoint off first (compile and hand the flows to its session), then write the list, within
        the keeper's budget of automatic entries."""
        before = self.state.quarantined
        if msg.endpoint in before or self.quarantine.refusal(msg.endpoint, msg.reason) is not None:
            return
        if not self._change(replace(self.state, quarantined=before | {msg.endpoint}), f"quarantine of {msg.endpoint}"):
            return
        self.metrics.quarantine_seconds.observe(max(0.0, time.time() - msg.raised_at))
        self.quarantine.record_auto(msg.endpoint, msg.reason, msg.hold_s, dict(msg.evidence))
        self.quarantine.log_changes(before, self.state.quarantined, self.state.model)

    def _quarantine_seen(self, msg: QuarantineSeen) -> None:
        self.quarantine.seen(msg.endpoint, msg.at)

    def _quarantine_stored(self, msg: QuarantineStored) -> None:
        if isinstance(self.quarantine.source, StoreFeed):
            self.quarantine.source.offer(msg.entries)  # followed at the next tick, as a file's change is

    def _tick(self) -> None:
        self._check_quarantine()
        if not self.use_inotify:
            self.reloads.poll_mtimes()
        if self.reloads.due():
            self.reload()
            if self.reloads.take_resync():
                LOG.info("SIGHUP: reading every switch back (%d connected)", len(self.sessions))
                for session in self.sessions.values():
                    session.resync()
        self._ask_next_hops()

    def _ask_next_hops(self) -> None:
        """ARP for each NAT site's uplink gateway: often while unknown, then now and then to notice a change."""
        now = time.monotonic()
        model = self.state.model
        if self._asking[0] is not model:
            self._asking = (model, {s.name for s in model.sites if next_hop.needs_next_hop(model, s)})
        hops = dict(self.state.next_hops)
        for session in list(self.sessions.values()):
            site: Site | None = model.site_by_dpid(session.dpid)
            # Only the site's master asks (a replica's session holds EQUAL until its role is confirmed).
            if site is None or site.name not in self._asking[1] or self.ask_due.get(site.name, 0.0) > now or \
                    not session.role.writes or not self._masters(site.name):
                continue
            port = session.ports.get(site.uplink)
            if port is None:
                continue
            self.ask_due[site.name] = now + (next_hop.ASK_KNOWN_S if site.name in hops else next_hop.ASK_UNKNOWN_S)
            dp = session.dp
            ofp, parser = dp.ofproto, dp.ofproto_parser
            session.send_soon(parser.OFPPacketOut(dp, ofp.OFP_NO_BUFFER, parser.OFPMatch(in_port=ofp.OFPP_CONTROLLER),
                                                  [parser.OFPActionOutput(port, 0)], next_hop.request(site)))


def _own_key(path: str) -> bytes | None:
    try:
        return flowlog_key_file.load_or_create(path)
    except (OSError, flowlog_key_file.KeyFileError) as exc:
        LOG.error("flow-log key %s: %s; flow records are not authenticated (any local process could forge them)",
                  path, exc)
        return None


# Every input of the core and who handles it (tests/unit/test_core_handlers.py: none is missing).
HANDLERS: dict[type, Callable[[Core, Any], None]] = {
    Tick: lambda core, _: core._tick(),
    SwitchUp: lambda core, msg: core._switch_up(msg.dp),
    SwitchDown: lambda core, msg: core._switch_down(msg.dp),
    PortsSeen: Core._ports_seen,
    PacketIn: Core._packet_in,
    QuarantineAlarm: Core._quarantine_alarm,
    QuarantineSeen: Core._quarantine_seen,
    QuarantineStored: Core._quarantine_stored,
    Mastership: Core._mastership,
    PolicyStored: Core._policy_stored,
    NextHopsStored: Core._next_hops_stored,
    WeightsAdopted: Core._weights_adopted,
}
