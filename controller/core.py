"""The core: the one writer of the controller's state, fed by one queue.

State is (model, links seen down, learned next hops, TE weights), a frozen value. A message that changes it
makes a new state, compiles the desired flows of the sites whose switches are connected (controller.desired:
only the units whose inputs changed), and commits state and flows together, only once the compile
succeeded: a failure leaves both as they were. A site whose switch connects later is compiled then, from the
state in force (its units memoised). The sessions of the switches whose desired state changed are handed the
new one; every other switch hears nothing. Services read `published` (an immutable snapshot) and post
messages; they never write here.

Each feature's state has its keeper (controller.keeper): the files in force (`reload_keeper`), link liveness
(`link_keeper`), next hops (`next_hop_keeper`), the quarantine (`quarantine_keeper`). The core hands a keeper
its input with the published snapshot and commits the `Reply` it returns; what remains here is the one job of
committing state with its flows, and the switches' sessions and roles that job feeds.
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import Any

from os_ken.lib import hub

from cloudweave import pki
from cloudweave.config.model import Site
from cloudweave.flowlog import key as flowlog_key_file
from cloudweave.flows.compile import SwitchState
from cloudweave.secops import quarantine
from cloudweave.store.shards import site_shards
from controller.changes import describe
from controller.desired import DesiredCompiler, State
from controller.guard import Repeats
from controller.keeper import Reply, change
from controller.link_keeper import LinkKeeper
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
from controller.next_hop_keeper import NextHopKeeper
from controller.peer_gone import peer_gone
from controller.quarantine_keeper import QuarantineKeeper, StoreFeed
from controller.reload_keeper import ReloadKeeper
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
        self.compiler = DesiredCompiler(metrics)
        # Each feature's keeper: its state and lifecycle; the core commits what they return (HANDLERS, _tick).
        self.reloader = ReloadKeeper(settings.config, metrics, reloads, use_inotify, not self.replicated)
        if quarantine_list is None and settings.quarantine:
            quarantine_list = quarantine.FileList(settings.quarantine)
        self.quarantine = QuarantineKeeper(quarantine_list, settings.config, metrics)
        self.links = LinkKeeper(metrics)
        self.next_hops = NextHopKeeper(metrics)
        model = self.reloader.first()
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

    # ---- state changes -------------------------------------------------------------------------------------

    def apply(self, reply: Reply) -> bool:
        """Commit what a keeper returned; tell it whether it was committed; send its messages. True: committed
        (or nothing to commit, and the keeper did not turn its input down)."""
        committed = self._change(replace(self.state, **reply.state), reply.why) if reply.state else not reply.refused
        if reply.then is not None:
            reply.then(committed)
        if reply.resync:
            for session in self.sessions.values():
                session.resync()
        for send in reply.sends:
            session = self.sessions.get(send.dpid)
            if session is not None:
                session.send_soon(send.build(session.dp))
        return committed

    def _change(self, state: State, why: str) -> bool:
        """Compile `state` and commit it with its flows; on failure keep everything as it was."""
        try:
            desired = self.compiler.compile(state, sites=self._connected())
        except Exception:  # noqa: BLE001 - a compiler bug must not take the controller down
            LOG.exception("could not compile the flows for %s; the state in force stays", why)
            self.metrics.compile_failures.inc()
            return False
        before, before_model = self.desired, self.state.model
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
        if state.model is not before_model:
            self._model_changed()
        return True

    def _model_changed(self) -> None:
        self.unknown_dpids.clear()
        self._attach_sessions()
        if self.replicated:
            self._set_roles()  # the sites (and so the shards' sites) may have changed

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

    def _policy_stored(self, msg: PolicyStored) -> None:
        if self.apply(self.reloader.policy_stored(msg.path, self.published)):
            self.policy_version = msg.version
            self.published = self._publish()
            LOG.info("policy version %d in force", msg.version)

    def reload(self) -> bool:
        """Load the files again; apply the difference, or keep everything as it is if they are invalid."""
        return self.apply(self.reloader.reload(self.published))

    def _attach_sessions(self) -> None:
        """After a reload: a switch whose dpid now names another site (or none) follows the file."""
        for dpid, session in list(self.sessions.items()):
            site = self.state.model.site_by_dpid(dpid)
            if site is None:
                LOG.warning("switch %#x is no longer a site of %s; leaving its flows alone", dpid,
                            self.reloader.config)
                session.stop()
                del self.sessions[dpid]
            elif site.name != session.site:
                session.stop()
                del self.sessions[dpid]
                self._switch_up(session.dp)
        self.published = self._publish()

    # ---- handlers ------------------------------------------------------------------------------------------

    def _switch_up(self, dp: Any) -> None:
        site = self.state.model.site_by_dpid(dp.id)
        refusal = _certificate_refusal(dp, site)
        if refusal is not None:
            if self._said.check(("certificate", dp.id, refusal)) is not None:
                LOG.warning("switch %#x: %s; refused (said once a minute)", dp.id, refusal)
            self.metrics.impostor_switches.inc()
            dp.close()
            return
        held = self.sessions.get(dp.id)
        if held is not None and held.dp is not dp and not peer_gone(held.dp):
            # One connection per dpid while the first lives (ONOS's rule): a second one, an impostor or a
            # confused peer, would otherwise take the site's session and orphan the real switch. A switch that
            # restarted has closed its old connection; if its end is still in flight it retries within seconds.
            if self._said.check(("duplicate", dp.id)) is not None:
                LOG.warning("switch %#x (site %s): a second connection while the first is alive; refused, the "
                            "first keeps the session (said once a minute per dpid)", dp.id, held.site)
            self.metrics.duplicate_switches.labels(held.site).inc()
            dp.close()
            return
        LOG.info("switch %#x connected", dp.id)
        old = self.sessions.pop(dp.id, None)
        if old is not None:
            old.stop()
        if site is None:
            # Closed, as Faucet and ONOS do: an unknown switch gets nothing, and holds no thread or socket here.
            if dp.id not in self.unknown_dpids:
                LOG.warning("switch %#x is not a site of %s; closing its connection (said once per dpid)", dp.id,
                            self.reloader.config)
                if len(self.unknown_dpids) >= MAX_UNKNOWN:
                    self.unknown_dpids.clear()
                self.unknown_dpids.add(dp.id)
            self.metrics.unknown_switches.inc()
            dp.close()
        else:
            self.links.switch_up(site.name)
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
        session = self.sessions.get(msg.dpid)
        if not msg.complete and session is not None and (msg.removed or any(
                name not in session.ports for name, _, _ in msg.ports)):
            session.ports_changed()  # a port came or went: flows may name it
        self.apply(self.links.ports_seen(msg, self.published))

    def _tick(self) -> None:
        for keeper_tick in (self.quarantine.tick, self.reloader.tick, self.next_hops.tick):
            self.apply(keeper_tick(self.published))


def _certificate_refusal(dp: Any, site: Site | None) -> str | None:
    """Why a switch connected over TLS is not the site its dpid names (None: it is, or no TLS): its
    certificate (verified against the CA by then) must be a site's, naming that site (cloudweave.pki)."""
    getpeercert = getattr(getattr(dp, "socket", None), "getpeercert", None)
    if getpeercert is None or site is None:
        return None
    try:
        kind, names = pki.peer_identity(getpeercert())
    except (ValueError, OSError):
        kind, names = None, frozenset()
    if kind == "site" and site.name in names:
        return None
    said = f"a {kind} certificate for {', '.join(sorted(names))}" if names else "no certificate"
    return f"it announces site {site.name}'s dpid but presents {said}"


def _own_key(path: str) -> bytes | None:
    try:
        return flowlog_key_file.load_or_create(path)
    except (OSError, flowlog_key_file.KeyFileError) as exc:
        LOG.error("flow-log key %s: %s; flow records are not authenticated (any local process could forge them)",
                  path, exc)
        return None


# Every input of the core and who handles it (tests/unit/test_core_handlers.py: none is missing).
HANDLERS: dict[type, Callable[[Core, Any], Any]] = {
    Tick: lambda core, _: core._tick(),
    SwitchUp: lambda core, msg: core._switch_up(msg.dp),
    SwitchDown: lambda core, msg: core._switch_down(msg.dp),
    Mastership: Core._mastership,
    PolicyStored: Core._policy_stored,
    PortsSeen: Core._ports_seen,
    PacketIn: lambda core, msg: core.apply(core.next_hops.packet_in(msg, core.published)),
    NextHopsStored: lambda core, msg: core.apply(core.next_hops.stored(msg, core.published)),
    QuarantineAlarm: lambda core, msg: core.apply(core.quarantine.alarm(msg, core.published)),
    QuarantineSeen: lambda core, msg: core.quarantine.seen(msg.endpoint, msg.at),
    QuarantineStored: lambda core, msg: core.quarantine.stored(msg.entries),
    WeightsAdopted: lambda core, msg: core.apply(change("new traffic-engineering weights", auto=msg.auto)),
}
