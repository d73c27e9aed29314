"""The flow-log core without a switch: the IPFIX decoder on messages laid out as OVS 3.1 sends them, the
detector on record streams (attacks raise one alarm each, benign traffic none, a victim never), and the
annotator naming a record's rule and file:line as `explain` does."""

from ipaddress import IPv4Address

import pytest

from cloudweave.config import load_model
from cloudweave.config.model import Detection
from cloudweave.flowlog.ipfix import Decoder, NotIpfix
from cloudweave.flowlog.records import Annotator
from cloudweave.flows.flowlog import KIND_FILTER, KIND_NEW, KIND_UNREPLIED, obs_point
from cloudweave.secops.detect import Detector
from testkit.harness import ROOT
from testkit.ipfix import data_set, message, record, template_set


def test_decodes_ovs_flow_samples_and_counts_what_it_cannot():
    d = Decoder()
    first = record(obs_point(KIND_NEW), "10.41.0.11", "10.41.0.21", 6, 40000, 9004)
    assert d.decode(message(data_set(first))) == [] and d.unknown_template == 1  # before its template
    got = d.decode(message(template_set() + data_set(first, record(obs_point(KIND_FILTER, 3), "10.41.0.11",
                                                                   "8.8.8.8", 17, 5353, 53)), seq=0))
    seen = [(r["obs_point"] >> 24, r["src"], r["dst"], r["proto"], r["sport"], r["dport"], r["ifname"]) for r in got]
    assert seen == [
        (KIND_NEW, "10.41.0.11", "10.41.0.21", 6, 40000, 9004, "web1"),
        (KIND_FILTER, "10.41.0.11", "8.8.8.8", 17, 5353, 53, "web1")]
    assert got[0]["src_mac"] == "02:00:00:41:00:11" and got[0]["tunnel_key"] == 0x1005 and got[0]["packets"] == 1
    assert got[1]["obs_point"] & 0xFFFFFF == 3 and got[0]["domain"] == 0x41
    # Sequence numbers count records: a message that says 5 came before when 2 did means 3 were lost.
    d.decode(message(data_set(first), seq=5))
    assert d.lost == 3
    cut = message(data_set(first))[:-7]
    d.decode(cut)
    assert d.malformed == 1
    with pytest.raises(NotIpfix):
        d.decode(b"\x00\x05" + b"\x00" * 30)


DET = Detection(scan_distinct=100, scan_window_s=5.0, flood_pps=8000, flood_window_s=0.5, connections_pps=2000,
                connections_window_s=1.0)


def line(t: float, src: str, dst: str, dport: int, kind: str = "new", sampling: float = 1.0, sport: int = 0) -> dict:
    return {"time": t, "src": src, "dst": dst, "dport": dport, "kind": kind, "sampling": sampling, "proto": "tcp",
            "sport": sport}


def test_a_scan_raises_one_alarm_with_its_evidence():
    det = Detector(DET)
    alarms = []
    for i in range(300):  # 300 ports in 3 s
        alarms += det.feed(line(100 + i * 0.01, "lb1", "web2", 1 + i))
    assert [(a.signal, a.source, a.value) for a in alarms] == [("scan", "lb1", 100)]
    a = alarms[0]
    assert a.first == 100 and a.at == pytest.approx(100.99) and len(a.evidence()["examples"]) == 5


def test_a_flood_and_a_connection_flood_name_the_sender_never_the_victim():
    det = Detector(DET)
    alarms = []
    for i in range(2000):  # 1 in 16 of 64 kpps for ~0.5 s, one flow
        alarms += det.feed(line(10 + i / 4000, "dev1", "dev2", 5000, "unreplied", sampling=16))
    for i in range(3000):  # 3000 SYNs/s from changing ports, to one port
        alarms += det.feed(line(20 + i / 3000, "web3", "api2", 9004, sport=1024 + i))
    for i in range(6000):  # a denied flow that keeps sending: every packet a new record, one connection
        alarms += det.feed(line(30 + i / 3000, "api1", "web2", 5353, sport=5353))
    assert [(a.signal, a.source) for a in alarms] == [("flood", "dev1"), ("connections", "web3")]
    assert "dev2" not in det.sources and "api2" not in det.sources


def test_benign_traffic_raises_nothing_over_many_windows():
    det = Detector(DET)
    alarms = []
    t = 0.0
    for second in range(1200):  # 20 minutes of a busy client: 500 short connections a second to 20 backends,
        for i in range(500):  # a bulk transfer (established: no records), and a one-way 2 kpps stream
            alarms += det.feed(line(second + i / 500, "lb1", f"web{i % 20}", 8080, sport=(second * 500 + i) % 60000))
        for i in range(125):
            alarms += det.feed(line(second + i / 125, "cam1", "nvr1", 5004, "unreplied", sampling=16))
        t = second
    assert alarms == [] and t == 1199


def test_an_alarm_is_armed_again_after_a_quiet_window():
    det = Detector(DET)
    first = [a for i in range(150) for a in det.feed(line(i * 0.001, "x", "y", i))]
    again = [a for i in range(150) for a in det.feed(line(100 + i * 0.001, "x", "y", i))]
    assert len(first) == 1 and len(again) == 1


def test_annotator_names_the_deciding_rule_and_its_place():
    model = load_model(f"{ROOT}/topologies/matrix.yaml")[0]
    ann = Annotator(model)
    rec = {"obs_point": obs_point(KIND_NEW), "src_mac": "02:00:00:41:00:12", "dst_mac": "02:00:00:41:00:21",
           "src": "10.41.0.12", "dst": "10.41.0.21", "proto": 6, "sport": 40000, "dport": 9005}
    out = ann.annotate(rec, "east", 1.0)
    assert (out["src"], out["dst"], out["verdict"]) == ("web2", "api1", "deny")
    assert out["rules"] == (("api ingress rule 2: deny from web tcp/9005 priority 5", str(
        model.security_groups[2].rules[1].loc)),)
    out = ann.annotate(dict(rec, dport=9004), "east", 1.0)
    assert out["verdict"] == "allow" and [r[0] for r in out["rules"]] == [
        "web egress rule 1: allow to api tcp/9000-9010", "api ingress rule 1: allow from web tcp/9000-9010"]
    # dev1 has lb1's address in the other segment: the MAC at its site tells them apart.
    dev = ann.annotate(dict(rec, src_mac="02:00:00:41:01:01", src="10.41.0.1", dst="10.41.0.11", dport=22,
                            obs_point=obs_point(KIND_UNREPLIED)), "east", 1.0)
    assert (dev["src"], dev["dst"], dev["kind"], dev["verdict"]) == ("dev1", "dev2", "unreplied", "allow")
    assert IPv4Address(dev["dst_ip"]) == model.endpoint("dev2").ip


def test_the_fast_json_line_is_what_json_writes():
    import json

    from cloudweave.flowlog.records import to_json

    model = load_model(f"{ROOT}/topologies/matrix.yaml")[0]
    ann = Annotator(model)
    rec = {"obs_point": obs_point(KIND_NEW), "src_mac": "02:00:00:41:00:12", "src": "10.41.0.12",
           "dst": "10.41.0.21", "proto": 6, "sport": 40000, "dport": 9005, "ifname": 'we"b\\2'}
    for r in (rec, dict(rec, src_mac="00:00:00:00:00:99", obs_point=obs_point(KIND_FILTER, 0))):
        line = ann.annotate(r, "east", 1796000000.123456)
        assert json.loads(to_json(line)) == json.loads(json.dumps(line))


def test_a_group_or_segment_has_its_own_thresholds(tmp_path):
    text = open(f"{ROOT}/topologies/matrix.yaml").read() + """
flow_logs: {}
detection:
  scan: {distinct: 50}
  per:
    ops: {scan: {distinct: 1000}}     # the operators' scanner
    dev: {connections: {per_second: 100}}
"""
    path = tmp_path / "m.yaml"
    path.write_text(text)
    model = load_model(str(path))[0]
    d = model.detection
    ops1, dev1, web1 = (model.endpoint(n) for n in ("ops1", "dev1", "web1"))
    assert d.for_endpoint(ops1.name, ops1.groups, ops1.segment).scan_distinct == 1000
    assert d.for_endpoint(dev1.name, dev1.groups, dev1.segment).connections_pps == 100
    assert d.for_endpoint(dev1.name, dev1.groups, dev1.segment).scan_distinct == 50  # the rest as the defaults
    assert d.for_endpoint(web1.name, web1.groups, web1.segment) is d
    by = {e.name: e for e in model.endpoints}
    det = Detector(d, thresholds=lambda src: d.for_endpoint(src, by[src].groups, by[src].segment))
    scans = [a for src in ("ops1", "web1") for i in range(200) for a in det.feed(line(i * 0.001, src, "db1", i))]
    assert [a.source for a in scans] == ["web1"]  # 200 ports: over web1's 50, under the scanner's 1000
    path.write_text(text.replace("    ops: {scan", "    nobody: {scan"))
    with pytest.raises(Exception, match="detection: per: 'nobody' is not a group, a segment or an endpoint"):
        load_model(str(path))


def _limit_model(tmp_path, extra: str = ""):
    path = tmp_path / "nat.yaml"
    path.write_text(open(f"{ROOT}/topologies/nat.yaml").read() + "\nflow_logs: {}\ndetection:\n  limit: 500pps\n"
                    + extra)
    return path, load_model(str(path))[0]


def test_an_outside_flooder_is_limited_where_an_endpoint_would_be_quarantined(tmp_path):
    """The flow-log service's decision: an endpoint's alarm quarantines it, an outside address's alarm limits
    it (the same entry in the list), a name that is neither is logged only, an exempt endpoint too."""
    from types import SimpleNamespace

    from cloudweave.secops.detect import Alarm
    from controller.flowlog_service import FlowLogService
    from controller.metrics import Metrics

    _, model = _limit_model(tmp_path, "  exempt: [green1]\n")
    assert model.detection.limit.value == 500 and model.detection.limit.unit == "pktps"
    posted = []
    svc = FlowLogService(SimpleNamespace(flowlog=str(tmp_path / "log"), config=str(tmp_path / "nat.yaml")),
                         Metrics(), lambda: None, posted.append)
    svc._model = model
    for source in ("blue1", "198.51.100.7", "green1", "not-an-address"):
        svc._alarm(Alarm("flood", source, 9000.0, 8000.0, 0.5, 2.0, 1.9, ()))
    assert [m.endpoint for m in posted] == ["blue1", "198.51.100.7"]
    svc._quarantined = frozenset({"198.51.100.7"})
    svc._alarm(Alarm("connections", "198.51.100.7", 3000.0, 2000.0, 1.0, 3.0, 2.5, ()))
    assert len(posted) == 2  # already held: not posted again


def test_an_outside_address_is_metered_at_every_uplink_and_only_there(tmp_path):
    from cloudweave.flows.filters import FILTER_TOP, LIMIT_PRIORITY
    from cloudweave.flows.incremental import IncrementalCompiler
    from cloudweave.flows.values import Meter

    _, model = _limit_model(tmp_path, "filters:\n  - {name: f1, match: 'ip.src == 198.51.100.7', action: drop}\n")
    c = IncrementalCompiler()
    before = c.compile(model)
    held = frozenset({"198.51.100.7", "blue1"})
    after = c.compile(model, quarantined=held)
    assert c.stats.handled  # a change handler, not the fallback
    for site in model.sites:
        new = set(after[site.name].flows) - set(before[site.name].flows)
        limits = [f for f in new if f.priority == LIMIT_PRIORITY]
        assert len(limits) == 1, site.name
        f = limits[0]
        assert dict(f.match) == {"in_port": site.uplink, "eth_type": 0x0800, "ipv4_src": "198.51.100.7",
                                 "reg5": 0}
        meter = f.actions[0]
        assert isinstance(meter, Meter) and (meter.rate, meter.unit) == (500, "pktps")
        assert after[site.name].meters == (meter,)  # the session installs it before the flow that names it
        # Below every filter: a filter that drops the address decides it first.
        assert all(g.priority > LIMIT_PRIORITY for g in after[site.name].flows if g.priority <= FILTER_TOP and
                   g.cookie >> 40 & 0xFF == 22)
    full = IncrementalCompiler().compile(model, quarantined=held)
    assert {s: st.flows for s, st in full.items()} == {s: st.flows for s, st in after.items()}
    released = c.compile(model)
    assert {s: st.flows for s, st in released.items()} == {s: st.flows for s, st in before.items()}


def test_the_limit_is_checked_with_its_place(tmp_path):
    path, _ = _limit_model(tmp_path)
    path.write_text(path.read_text().replace("limit: 500pps", "limit: lots"))
    with pytest.raises(Exception) as e:
        load_model(str(path))
    lines = path.read_text().splitlines()
    row = next(i for i, x in enumerate(lines, 1) if "limit: lots" in x)
    assert f"nat.yaml:{row}:10: detection: limit: 'lots' is not a rate (examples: 2000pps, 500kbit, 10Mbit)" \
        in str(e.value)


def test_what_a_limit_lets_through_is_recorded_as_such(tmp_path):
    from cloudweave.flows.flowlog import KIND_LIMITED

    _, model = _limit_model(tmp_path)
    rec = {"obs_point": obs_point(KIND_LIMITED), "src_mac": "02:aa:00:00:00:01", "dst_mac": "02:aa:00:00:00:02",
           "src": "198.51.100.7", "dst": str(model.site("east").nat_ip), "proto": 6, "sport": 1, "dport": 8080}
    line = Annotator(model).annotate(rec, "east", 1.0)
    assert (line["kind"], line["src"], line["verdict"]) == ("limited", "198.51.100.7", "rate_limit")
