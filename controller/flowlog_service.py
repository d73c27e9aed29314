"""The flow-log collector: one UDP socket per site this replica masters (controller.roles; alone, every
site), made in its ovs-vswitchd's network namespace, the bridge's IPFIX row pointed at it, and every record
decoded, named after the policy, written to the flow log (JSON lines, `cloudweave flowlog` reads them) and fed
to the detector. An alarm is posted to the core, which quarantines (the core is the one writer of state); this
service only reads the published snapshot.
"""

from __future__ import annotations

import logging
import os
import selectors
import socket
import struct
import time
from collections.abc import Callable
from typing import Any

from cloudweave.flowlog.ipfix import Decoder, NotIpfix
from cloudweave.flowlog.records import Annotator, to_json
from cloudweave.flows.flowlog import COLLECTOR_SET_ID, site_domain
from cloudweave.paths import default_flowlog_path
from cloudweave.secops.decide import decide
from cloudweave.secops.detect import Alarm, Detector
from controller.guard import Repeats
from controller.messages import QuarantineAlarm, QuarantineSeen
from controller.netns import SO_RXQ_OVFL, udp_socket, vswitchd_netns
from controller.ovsdb import SiteOvsdb
from controller.roles import Duty, acts_at

LOG = logging.getLogger("cloudweave.flowlog")
ROTATE_BYTES = 64 << 20
RETRY_S = 2.0
BATCH = 512  # datagrams read from one socket before looking at the others
HELD = ("quarantine", "limited")  # records of what a quarantine or an outside address's limit still sees


class _Collector:
    """One site's socket, the observation domain its records must carry, and what it has counted."""

    def __init__(self, site: str, sock: socket.socket, key: tuple, domain: int, sender: str):
        self.site, self.sock, self.key, self.domain, self.sender = site, sock, key, domain, sender
        self.decoder = Decoder()
        self.socket_drops = 0
        self.lost_said = (0, 0)  # sequence gaps and undecodable sets counted so far


class FlowLogService:
    def __init__(self, settings: Any, metrics: Any, published: Callable[[], Any], post: Callable[[Any], None]):
        self.settings, self.metrics, self.published, self.post = settings, metrics, published, post
        self.path = settings.flowlog or default_flowlog_path(settings.config)
        self.collectors: dict[str, _Collector] = {}
        self.retry_at: dict[str, float] = {}
        self.selector = selectors.DefaultSelector()
        self.active = True
        self._model: Any = None
        self._quarantined: frozenset[str] = frozenset()
        self.annotator: Annotator | None = None
        self.detector: Detector | None = None
        self._out: Any = None
        self._seen_said: dict[str, float] = {}
        self._rejected_said = Repeats()

    def stop(self) -> None:
        self.active = False

    def run(self) -> None:
        while self.active:
            try:
                self._round()
            except Exception:  # noqa: BLE001 - the collector must outlive one bad round
                LOG.exception("flow log collector")
                time.sleep(1.0)
        for c in list(self.collectors.values()):
            self._close(c)

    # ---- set-up ----------------------------------------------------------------------------------------

    def _round(self) -> None:
        state = self.published().state
        model = state.model
        if model is not self._model or state.quarantined != self._quarantined:
            self._model, self._quarantined = model, state.quarantined
            self.annotator = Annotator(model, state.quarantined) if model.flow_logs is not None else None
            if model.detection is None:
                self.detector = None
            elif self.detector is None or self.detector.d != model.detection:
                self.detector = Detector(model.detection, thresholds=self._thresholds)
        if model.flow_logs is None:
            for c in list(self.collectors.values()):
                self._close(c)
            time.sleep(0.5)
            return
        mastered = self.published().mastered
        sites = {s.name: s for s in model.sites if acts_at(Duty.FLOW_LOG_COLLECTOR, s.name, mastered)}
        for name, c in list(self.collectors.items()):
            if name not in sites or c.key != self._key(sites[name]):
                if name not in sites and any(s.name == name for s in model.sites):
                    # Its new master aims the site's IPFIX row at its own collector: the row is left to it.
                    LOG.info("site %s: flow-log collector closed (the site's master collects)", name)
                self._close(c)
            else:
                c.domain = site_domain(state.flowlog_key, name, sites[name].dpid)
        now = time.monotonic()
        for site in sites.values():
            if site.name not in self.collectors and self.retry_at.get(site.name, 0.0) <= now:
                self._open(site)
        if not self.collectors:
            time.sleep(0.2)
            return
        for key, _ in self.selector.select(timeout=0.2):
            self._drain(key.data)

    @staticmethod
    def _key(site: Any) -> tuple:
        return (site.ovsdb, site.bridge, vswitchd_netns(site.ovsdb_dir))

    def _open(self, site: Any) -> None:
        key = self._key(site)
        try:
            host, sender = collector_address(site.ovsdb)
            sock = udp_socket(host, 0, key[2])
        except OSError as exc:
            LOG.error("site %s: no flow-log socket: %s", site.name, exc)
            self.retry_at[site.name] = time.monotonic() + RETRY_S
            return
        target = f"{host}:{sock.getsockname()[1]}"
        db = None
        try:
            db = SiteOvsdb(site)
            db.set_ipfix(site.bridge, COLLECTOR_SET_ID, target)
        except Exception as exc:  # noqa: BLE001 - OVSDB not there yet, or the bridge not made yet: retry
            LOG.info("site %s: flow-log collector not set up yet (%s); retrying", site.name, exc)
            sock.close()
            self.retry_at[site.name] = time.monotonic() + RETRY_S
            return
        finally:
            if db is not None:
                db.close()
        c = _Collector(site.name, sock, key, site_domain(self.published().state.flowlog_key, site.name, site.dpid),
                       sender)
        self.collectors[site.name] = c
        self.selector.register(sock, selectors.EVENT_READ, c)
        LOG.info("site %s: flow-log collector on %s%s (IPFIX row created: templates come at once)", site.name,
                 target, f" in {key[2]}" if key[2] else "")

    def _close(self, c: _Collector) -> None:
        self.selector.unregister(c.sock)
        c.sock.close()
        del self.collectors[c.site]

    # ---- records ---------------------------------------------------------------------------------------

    def _drain(self, c: _Collector) -> None:
        lines = []
        for _ in range(BATCH):
            try:
                data, anc, _, sender = c.sock.recvmsg(65535, socket.CMSG_SPACE(4))
            except BlockingIOError:
                break
            cause = _rejected(data, sender, c.domain, c.sender)
            if cause is not None:
                # Before the decoder sees it: a template from another domain is never learned either.
                self.metrics.flowlog_rejected.labels(c.site, cause).inc()
                if self._rejected_said.check((c.site, cause)) is not None:
                    LOG.warning("site %s: flow-log datagram from %s rejected (%s); counted in "
                                "cloudweave_flowlog_rejected_total, said once a minute", c.site, sender[0],
                                "not the site's observation domain" if cause == "domain" else "not from this host")
                continue
            now = time.time()
            for level, kind, value in anc:
                if level == socket.SOL_SOCKET and kind == SO_RXQ_OVFL and len(value) >= 4:
                    dropped = struct.unpack("=I", value[:4])[0]
                    if dropped > c.socket_drops:  # a cause of the sequence gaps below, not more losses
                        self.metrics.flowlog_socket_drops.labels(c.site).inc(dropped - c.socket_drops)
                        c.socket_drops = dropped
            try:
                records = c.decoder.decode(data)
            except NotIpfix as exc:
                self.metrics.flowlog_lost.labels(c.site, "undecodable").inc()
                LOG.debug("site %s: not IPFIX: %s", c.site, exc)
                continue
            for rec in records:
                lines.append(self.annotator.annotate(rec, c.site, now))
        if c.decoder.lost > c.lost_said[0]:
            self.metrics.flowlog_lost.labels(c.site, "sequence").inc(c.decoder.lost - c.lost_said[0])
        undecodable = c.decoder.unknown_template + c.decoder.malformed
        if undecodable > c.lost_said[1]:
            self.metrics.flowlog_lost.labels(c.site, "undecodable").inc(undecodable - c.lost_said[1])
        c.lost_said = (c.decoder.lost, undecodable)
        if lines:
            self._handle(lines)

    def _handle(self, lines: list[dict]) -> None:
        for line in lines:
            self.metrics.flowlog_records.labels(line["site"], line["kind"]).inc()
            if line["kind"] in HELD and line["time"] - self._seen_said.get(line["src"], 0.0) >= 1.0:
                self._seen_said[line["src"]] = line["time"]  # at most one a second: the core holds it while seen
                self.post(QuarantineSeen(line["src"], line["time"]))
        self._write(lines)
        if self.detector is None:
            return
        for line in lines:
            for alarm in self.detector.feed(line):
                self._alarm(alarm)
        self.metrics.detector_sources.set(len(self.detector.sources))

    def _alarm(self, alarm: Alarm) -> None:
        """Act or only log, as controller.quarantine_keeper decides; acting is the core's."""
        d = self._model.detection
        self.metrics.detector_alarms.labels(alarm.signal).inc()
        self.metrics.detection_seconds.observe(max(0.0, alarm.at - alarm.first))
        decision = decide(alarm, self._model, self._quarantined)
        LOG.warning("detection: %s%s", alarm.describe(), decision.said)
        if decision.act:
            self.post(QuarantineAlarm(alarm.source, alarm.describe(), alarm.evidence(), d.hold_s, alarm.at))

    def _thresholds(self, source: str) -> Any:
        d = self._model.detection
        ep = self._endpoint(source)
        return d if ep is None else d.for_endpoint(ep.name, ep.groups, ep.segment)

    def _endpoint(self, name: str) -> Any:
        return self._model.endpoint(name) if self._model.has_endpoint(name) else None

    def _write(self, lines: list[dict]) -> None:
        if self._out is None or self._out.closed:
            self._out = open_private(self.path)
        self._out.write("".join(to_json(x) + "\n" for x in lines))
        self._out.flush()
        if self._out.tell() > ROTATE_BYTES:
            self._out.close()
            os.replace(self.path, self.path + ".1")


def collector_address(ovsdb: str) -> tuple[str, str]:
    """(where the site's collector listens, whom its datagrams must come from). A site on this host (a unix
    OVSDB socket): its vswitchd's loopback, in its namespace. A site on another host (`ssl:IP:PORT`): this
    host's address on the route to IP, and the datagrams must come from IP, the address its OVSDB is
    reached at (OVS sends IPFIX from its host's address on the route back). IPFIX has no TLS in OVS: records
    cross that network readable, authenticated by the site's domain (docs/deploy.md)."""
    scheme, _, rest = ovsdb.partition(":")
    if scheme not in ("ssl", "tcp"):
        return "127.0.0.1", "127."
    ip = rest.rpartition(":")[0].strip("[]")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect((ip, 9))  # no datagram is sent: the kernel picks the source address of the route
        return probe.getsockname()[0], ip


def _rejected(data: bytes, sender: Any, domain: int, expect: str = "127.") -> str | None:
    """Why a datagram is not believed, or None: it must come from `expect` (an address, or "127." for the
    switch's own loopback when the collector's socket is bound there, in vswitchd's namespace), and every
    record of a site carries the site's domain."""
    host = sender[0] if isinstance(sender, tuple) and sender else ""
    if not (host.startswith(expect) if expect.endswith(".") else host == expect):
        return "sender"
    if len(data) >= 16 and struct.unpack_from("!I", data, 12)[0] != domain:
        return "domain"
    return None  # too short for a header: the decoder says it is not IPFIX


def open_private(path: str) -> Any:
    """The flow log, appended to, readable by its owner and group only (it says who talks to whom): 0640 at
    most, also for a file an earlier version made world-readable."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
    try:
        if os.fstat(fd).st_mode & 0o137:
            os.fchmod(fd, os.fstat(fd).st_mode & 0o640)
    except OSError:
        pass
    return os.fdopen(fd, "a", buffering=1 << 16)
