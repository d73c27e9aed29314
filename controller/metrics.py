"""Prometheus metrics of the controller, in a registry of its own, served on a loopback address."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.switches = Gauge("cloudweave_switches_connected", "Switches connected over OpenFlow", registry=r)
        self.flows = Gauge("cloudweave_switch_flows", "cloudweave flows on the switch after the last reconcile",
                           ["site"], registry=r)
        self.groups = Gauge("cloudweave_switch_groups", "Groups on the switch after the last reconcile",
                            ["site"], registry=r)
        self.flow_mods = Counter("cloudweave_flow_mods", "Flow-mods sent", ["site"], registry=r)
        self.group_mods = Counter("cloudweave_group_mods", "Group-mods sent", ["site"], registry=r)
        self.reloads = Counter("cloudweave_reloads", "Configuration reloads", ["result"], registry=r)
        self.reconcile_seconds = Gauge("cloudweave_reconcile_seconds", "Duration of the last reconcile",
                                       ["site"], registry=r)
        self.reads = Counter("cloudweave_switch_reads", "Times a session read the switch's flows back (connect, "
                             "failure, drift)", ["site"], registry=r)
        self.audits = Counter("cloudweave_switch_audits", "Audits of a switch (flow count and groups)", ["site"],
                              registry=r)
        self.foreign_flows = Gauge("cloudweave_foreign_flows", "Flows on a switch whose cookie is not ours (another "
                                   "controller's, or a hand edit): left alone, and said", ["site"], registry=r)
        self.drift = Counter("cloudweave_switch_drift", "Audits that found the switch changed behind our back",
                             ["site"], registry=r)
        self.reconcile_failures = Counter("cloudweave_reconcile_failures", "Reconciles that failed (timeout, "
                                          "rejected or discarded bundle) and were retried", ["site"], registry=r)
        self.compiles = Counter("cloudweave_compiles", "Compiles of the desired state: incremental, or full "
                                "(the fallback)", ["kind"], registry=r)
        self.compile_seconds = Histogram("cloudweave_compile_seconds", "Duration of a compile", ["kind"],
                                         buckets=(0.001, 0.01, 0.05, 0.1, 0.5, 1, 5, 30), registry=r)
        self.compile_units = Counter("cloudweave_compile_units", "Units of the desired state recomputed or reused "
                                     "(their inputs unchanged)", ["result"], registry=r)
        self.compile_failures = Counter("cloudweave_compile_failures", "Compiles that raised (state kept)",
                                        registry=r)
        self.mastered = Gauge("cloudweave_replica_sites_mastered", "Sites this replica masters (with replicas)",
                              registry=r)
        self.replica_shards = Gauge("cloudweave_replica_shards", "Shards this replica masters", registry=r)
        self.replica_claims = Counter("cloudweave_replica_claims", "Shard claims committed by this replica",
                                      registry=r)
        self.replica_forged_claims = Counter(
            "cloudweave_replica_forged_claims", "Shard rows naming a master the policy does not list, claimed again "
            "by this replica (it held the lock)", registry=r)
        self.ovsdb_syncs = Counter("cloudweave_ovsdb_syncs", "OVSDB syncs of a site's bridge", ["site", "result"],
                                   registry=r)

        self.link_changes = Counter("cloudweave_link_changes", "Underlay links seen going down or up (tunnel BFD)",
                                    ["link", "state"], registry=r)
        self.next_hops_learned = Counter("cloudweave_next_hop_changes", "Uplink gateway MACs learned or changed",
                                         ["site"], registry=r)
        self.connections = Gauge("cloudweave_segment_connections", "Conntrack entries of a segment at a site",
                                 ["site", "segment"], registry=r)
        self.connection_limit = Gauge("cloudweave_segment_connection_limit", "A segment's connection limit at a site",
                                      ["site", "segment"], registry=r)
        self.limit_reached = Counter("cloudweave_segment_connection_limit_reached",
                                     "Times a segment's connections reached its limit at a site", ["site", "segment"],
                                     registry=r)

        self.te_demand = Gauge("cloudweave_te_demand_bps", "Learned mean rate of a split: auto route between two sites",
                               ["route", "src", "dst"], registry=r)
        self.te_prediction = Gauge("cloudweave_te_prediction_bps", "Burst-covering prediction for the next interval",
                                   ["route", "src", "dst"], registry=r)
        self.te_utilisation = Gauge("cloudweave_te_link_utilisation", "Predicted utilisation of a link direction "
                                    "at the proposed weights, other traffic included", ["link"], registry=r)
        self.te_background = Gauge("cloudweave_te_background_bps", "Learned mean of a link direction's other traffic "
                                   "(what it carried beyond the auto routes' own paths)", ["link"], registry=r)
        self.te_mlu = Gauge("cloudweave_te_mlu", "Maximum link utilisation of the auto routes", ["weights"],
                            registry=r)
        self.te_solve_seconds = Gauge("cloudweave_te_solve_seconds", "Duration of the last TE solve", registry=r)
        self.te_stale = Gauge("cloudweave_te_site_stale", "1 when a site did not answer the traffic counters",
                              ["site"], registry=r)

        self.quarantined = Gauge("cloudweave_quarantined_endpoints",
                                 "Endpoints cut off by quarantine, and outside addresses held to the limit", registry=r)
        self.flowlog_records = Counter("cloudweave_flowlog_records", "Flow-log records received and decoded",
                                       ["site", "kind"], registry=r)
        self.flowlog_lost = Counter("cloudweave_flowlog_lost", "Flow-log records lost: missing by their sequence "
                                    "numbers (sequence), or sets not decodable (undecodable)", ["site", "cause"],
                                    registry=r)
        self.flowlog_socket_drops = Counter("cloudweave_flowlog_socket_drops", "Datagrams the collector's full "
                                            "socket dropped (the kernel's count: a cause of sequence losses)",
                                            ["site"], registry=r)
        self.detector_alarms = Counter("cloudweave_detector_alarms", "Alarms of the anomaly detector", ["signal"],
                                       registry=r)
        self.detection_seconds = Histogram("cloudweave_detection_seconds", "From the first record of a source in "
                                           "the window to its alarm", buckets=(0.01, 0.05, 0.1, 0.2, 0.5, 1, 2, 5),
                                           registry=r)
        self.quarantine_seconds = Histogram("cloudweave_quarantine_seconds", "From an alarm to the quarantine "
                                            "flows handed to the switch's session",
                                            buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1), registry=r)
        self.quarantine_changes = Counter("cloudweave_quarantine_changes", "Endpoints quarantined or released, "
                                          "by whom (cli, auto, expiry)", ["change", "source"], registry=r)

        self.session_errors = Counter("cloudweave_session_errors", "Unexpected exceptions in a switch's session "
                                      "(a bug of ours, not the switch's; the round is retried as a failure)",
                                      ["site"], registry=r)
        self.handler_errors = Counter("cloudweave_handler_errors", "Exceptions raised by an OpenFlow event "
                                      "handler (the event dropped, the controller went on)", ["event"], registry=r)
        self.unknown_switches = Counter("cloudweave_unknown_switch_connections", "Connections of a switch whose "
                                        "dpid is no site's (closed)", registry=r)
        self.impostor_switches = Counter("cloudweave_impostor_switch_connections", "Switches over TLS whose "
                                         "certificate does not name the site their dpid is (refused)", registry=r)
        self.duplicate_switches = Counter("cloudweave_duplicate_switch_connections", "Second connections with the "
                                          "dpid of a switch whose first connection lives (refused)", ["site"],
                                          registry=r)
        self.next_hops_refused = Counter("cloudweave_next_hop_refused", "Packet-ins not taken as an uplink "
                                         "gateway's answer: not from the site's uplink port", ["site"], registry=r)
        self.reply_refused = Counter("cloudweave_switch_reply_refused", "Replies cut off at their bound (parts, "
                                     "bytes or time of one multipart reply)", ["site", "cause"], registry=r)
        self.flowlog_rejected = Counter("cloudweave_flowlog_rejected", "Flow-log datagrams dropped: from another "
                                        "observation domain than the site's (domain) or another sender (sender)",
                                        ["site", "cause"], registry=r)
        self.detector_sources = Gauge("cloudweave_detector_sources", "Sources the anomaly detector keeps state for",
                                      registry=r)
        self.quarantine_refused = Counter("cloudweave_quarantine_refused", "Automatic quarantines not made: over "
                                          "the budget per minute or in total", ["cause"], registry=r)

    def watch_connections(self, table: Any) -> None:
        """Export the OpenFlow connection table's counts (controller.connections) at every scrape."""
        self.registry.register(_ConnectionCollector(table))

    def serve(self, host: str, port: int) -> None:
        start_http_server(port, addr=host, registry=self.registry)


class _ConnectionCollector:
    def __init__(self, table: Any):
        self.table = table

    def collect(self) -> Any:
        total, pending = self.table.counts()
        g = GaugeMetricFamily("cloudweave_openflow_connections", "OpenFlow connections open, by state",
                              labels=["state"])
        g.add_metric(["established"], total - pending)
        g.add_metric(["handshake"], pending)
        yield g
        refused = CounterMetricFamily("cloudweave_openflow_connections_refused", "OpenFlow connections refused "
                                      "at accept, by the limit that refused them", labels=["cause"])
        for cause, n in sorted(dict(self.table.refused).items()):
            refused.add_metric([cause], n)
        yield refused
        closed = CounterMetricFamily("cloudweave_openflow_connections_closed", "OpenFlow connections closed by "
                                     "the controller, by why", labels=["cause"])
        for cause, n in sorted(dict(self.table.closed).items()):
            closed.add_metric([cause], n)
        yield closed
