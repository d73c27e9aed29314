"""The pure parts behind #24 (hostile input on the wire): bounded memories, the handler guard, the connection
table's limits, the flow-log key and domains, the detector's bounded state, the quarantine budget. The same
behaviours are exercised against real OVS and a real controller in tests/ovs/test_wire.py."""

from __future__ import annotations

import logging
import os
import random
import stat
import time
import tracemalloc
from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cloudweave.config.model import Detection
from cloudweave.flowlog.key import KeyFileError, load_or_create, parse
from cloudweave.flows.flowlog import obs_domain, site_domain
from cloudweave.secops import detect, quarantine
from cloudweave.secops.detect import Detector
from controller.app import port_name
from controller.connections import ConnectionTable, Limits
from controller.flowlog_service import _rejected
from controller.guard import Budget, RepeatFilter, Repeats, guarded
from controller.session import _name, _over_bound, _Pending


def test_repeats_says_once_a_window_counts_the_rest_and_forgets_the_oldest():
    r = Repeats(every_s=60, max_kinds=3)
    assert r.check("a", now=0) == 0
    assert r.check("a", now=10) is None and r.check("a", now=20) is None
    assert r.check("a", now=61) == 2  # said again, with the two held back
    for k in "bcdef":
        r.check(k, now=62)
    assert len(r) == 3  # bounded: a peer with a million kinds of error costs three entries


def test_budget_allows_n_a_window_per_key():
    b = Budget(2, 60.0, max_kinds=10)
    assert [b.allow("x", now=t) for t in (0, 1, 2, 3)] == [True, True, False, False]
    assert b.allow("y", now=3)
    assert b.allow("x", now=61)


def test_a_guarded_handler_never_raises_counts_and_logs_once(caplog):
    class App:
        metrics = SimpleNamespace(handler_errors=SimpleNamespace(labels=lambda e: counts.setdefault(e, _Count())))

        @guarded("port_status")
        def handler(self, ev):
            raise UnicodeDecodeError("utf-8", b"\xc3", 0, 1, "unexpected end of data")

    class _Count:
        n = 0

        def inc(self):
            self.n += 1

    counts: dict = {}
    ev = SimpleNamespace(msg=SimpleNamespace(datapath=SimpleNamespace(id=0x52)))
    with caplog.at_level(logging.DEBUG, logger="cloudweave"):
        for _ in range(5):
            App().handler(ev)  # does not raise
    assert counts["port_status"].n == 5
    said = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(said) == 1 and said[0].exc_info and "from switch 0x52" in said[0].getMessage()


def test_osken_log_lines_are_said_once_a_minute_without_a_traceback():
    f = RepeatFilter()
    try:
        raise ValueError("bad % length")
    except ValueError:
        import sys
        exc = sys.exc_info()
    rec = logging.LogRecord("os_ken.ofproto.ofproto_parser", logging.ERROR, __file__, 1, "parse error %s", ("x",), exc)
    assert f.filter(rec) and rec.exc_info is None and "ValueError: bad %% length" in rec.msg
    assert rec.getMessage().endswith("(ValueError: bad % length)")
    again = logging.LogRecord("os_ken.ofproto.ofproto_parser", logging.ERROR, __file__, 1, "parse error %s", ("y",),
                              exc)
    assert not f.filter(again)


def test_port_names_never_fail_to_decode():
    cut = "abcdefghijklmnä".encode()[:15]  # what OVS keeps of a 16-byte name
    for decode in (port_name, _name):
        assert decode(cut) == "abcdefghijklmn\ufffd"
        assert decode(b"web1\0\0\0") == "web1"
        assert decode(bytes(range(128, 143))) == "\ufffd" * 15  # anything at all


def test_limits_fit_the_open_file_limit():
    lim = Limits().fitted(1024)
    assert lim.max_connections == 1024 - 128 and lim.max_pending == 256 and lim.max_pending_per_source == 32
    tiny = Limits().fitted(100)
    assert tiny.max_connections >= 8 and tiny.max_pending <= tiny.max_connections
    assert tiny.max_pending_per_source <= tiny.max_pending


class _Sock:
    def __init__(self):
        self.shut = False

    def shutdown(self, how):
        self.shut = True


def test_the_connection_table_caps_pending_per_source_and_reaps_at_the_deadline():
    t = ConnectionTable(Limits(handshake_s=5.0, max_connections=10, max_pending=5, max_pending_per_source=3))
    a = [t.admit(_Sock(), "10.0.0.1") for _ in range(4)]
    assert a[3] is None and t.refused == {"pending_per_source": 1}
    b = [t.admit(_Sock(), "10.0.0.2") for _ in range(3)]
    assert b[2] is None and t.refused["pending"] == 1  # 5 in their handshake in all
    dp = object()
    t.attach(a[0], dp)
    t.established(dp)  # past the handshake: no longer pending
    assert t.admit(_Sock(), "10.0.0.2") is not None
    assert t.counts() == (6, 5)
    socks = [c.sock for c in t.conns.values()]
    assert t.reap(time.monotonic() + 6.0) == 5 and sum(s.shut for s in socks) == 5  # not the established one
    assert t.reap(time.monotonic() + 7.0) == 0  # each closed once
    assert t.closed == {"handshake": 5}


def test_a_multipart_reply_is_bounded_in_bytes_parts_and_time(monkeypatch):
    from controller import session

    p = _Pending(True, 1, "OFPFlowDescStatsRequest")
    assert _over_bound(p) is None
    p.size = session.REPLY_MAX_BYTES + 1
    assert _over_bound(p)[0] == "bytes"
    p.size, p.replies = 0, [None] * session.REPLY_MAX_PARTS
    assert _over_bound(p)[0] == "parts"
    p.replies, p.started_at = [], time.monotonic() - session.REPLY_MAX_S - 1
    assert _over_bound(p)[0] == "time"


def test_flow_log_datagrams_must_carry_the_sites_domain_and_come_from_this_host():
    header = lambda domain: (10).to_bytes(2, "big") + (16).to_bytes(2, "big") + bytes(8) + domain.to_bytes(4, "big")  # noqa: E731
    assert _rejected(header(0xABCD), ("127.0.0.1", 4739), 0xABCD) is None
    assert _rejected(header(0x51), ("127.0.0.1", 4739), 0xABCD) == "domain"
    assert _rejected(header(0xABCD), ("192.0.2.7", 4739), 0xABCD) == "sender"
    assert _rejected(b"short", ("127.0.0.1", 1), 0xABCD) is None  # the decoder says it is not IPFIX


def test_site_domains_are_the_dpid_without_a_key_and_keyed_otherwise():
    assert site_domain(None, "east", 0x1_0000_0051) == obs_domain(0x1_0000_0051) == 0x51
    k1, k2 = os.urandom(16), os.urandom(16)
    d = site_domain(k1, "east", 0x51)
    assert d == site_domain(k1, "east", 0x51) != site_domain(k1, "west", 0x52)
    assert d != site_domain(k2, "east", 0x51) and 0 < d < 1 << 32


def test_the_key_file_is_made_private_and_kept(tmp_path):
    path = str(tmp_path / ".x.yaml.flowlog-key")
    key = load_or_create(path)
    assert len(key) == 16 and stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert load_or_create(path) == key  # a restart keeps the domains, so the flows
    os.chmod(path, 0o644)
    assert load_or_create(path) == key and stat.S_IMODE(os.stat(path).st_mode) == 0o600
    with pytest.raises(KeyFileError, match="not a flow-log key"):
        parse("zz", "f")
    with pytest.raises(KeyFileError, match="of 2 bytes"):
        parse("abcd", "f")


def _line(t: float, src: str, dst: str, dport: int, kind: str = "new") -> dict:
    return {"time": t, "src": src, "dst": dst, "dport": dport, "sport": 40000, "proto": 6, "kind": kind}


def test_100000_forged_sources_leave_the_detectors_memory_bounded():
    d = Detector(Detection(), max_sources=20_000)
    tracemalloc.start()
    for i in range(100_000):
        d.feed(_line(1000.0 + i * 1e-5, f"11.{i >> 16}.{(i >> 8) & 255}.{i & 255}", "10.0.0.1", 80))
    size, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert len(d.sources) == 20_000 and d.forgotten == 80_000
    assert peak < 120 << 20, f"{peak >> 20} MiB"
    d.feed(_line(1000.0 + 3600, "late", "10.0.0.1", 80))  # an hour on: everyone quiet for a window is gone
    assert list(d.sources) == ["late"]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 0.5), st.integers(0, 5), st.integers(0, 40), st.sampled_from(
    ["new", "unreplied"])), min_size=1, max_size=400))
def test_forgetting_quiet_sources_changes_no_alarm(events):
    """Referee: the bounded detector raises exactly the alarms of one that never forgets (below the cap)."""
    d = Detection(scan_distinct=8, scan_window_s=2.0, flood_pps=5.0, flood_window_s=1.0, connections_pps=4.0,
                  connections_window_s=1.0)
    bounded, keeps_all = Detector(d), Detector(d)
    keeps_all._forget_quiet = lambda t: None
    t = 0.0
    for gap, src, dst, kind in events:
        t += gap * (20 if src == 5 else 1)  # now and then a long pause
        line = _line(t, f"s{src}", f"10.0.0.{dst}", 1000 + dst, kind)
        got = [(a.signal, a.source) for a in bounded.feed(dict(line))]
        want = [(a.signal, a.source) for a in keeps_all.feed(dict(line))]
        assert got == want


def test_the_quarantine_list_never_passes_its_cap_and_auto_entries_have_a_budget(tmp_path, monkeypatch):
    path = str(tmp_path / "q.json")
    monkeypatch.setattr(quarantine, "MAX_BYTES", 4096)
    for i in range(200):
        try:
            quarantine.add(path, f"10.9.{i >> 8}.{i & 255}", "scan" * 10, "auto", 600)
        except quarantine.QuarantineFileError as exc:
            assert "would pass" in str(exc)
            break
    else:
        pytest.fail("the cap was never met")
    entries = quarantine.load(path)  # still readable: a start is never refused for it
    assert 0 < len(entries) < 200
    now = time.time()
    assert quarantine.auto_refusal(entries, now, len(entries), lambda: True) == "total"
    assert quarantine.auto_refusal(entries, now, len(entries) + 1, lambda: False) == "per_minute"
    assert quarantine.auto_refusal(entries, now, len(entries) + 1, lambda: True) is None


def test_mutated_messages_keep_a_plausible_header():
    from testkit import ofpeer

    rng = random.Random(1)
    for _ in range(200):
        m = ofpeer.mutate(rng, ofpeer.port_status(0, ofpeer.port(1, "web1")))
        assert len(m) >= 8
    assert detect.MAX_SOURCES >= 10_000


def test_the_watchdog_exits_loudly_when_a_watched_thread_ends():
    """A dead event loop or listener must not leave a deaf process: exit 70, with the reason."""
    import subprocess
    import sys

    code = ("import logging, threading, time\n"
            "logging.basicConfig(level=logging.INFO)\n"
            "from controller import liveness\n"
            "liveness.CHECK_S = 0.05\n"
            "t = threading.Thread(target=lambda: None); t.start(); t.join()\n"
            "liveness.register('os-ken event loop', t)\n"
            "time.sleep(5)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30,
                         cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    assert out.returncode == 70, out
    assert "CRITICAL" in out.stderr and "os-ken event loop" in out.stderr and "service manager" in out.stderr
    stopping = code.replace("liveness.register", "liveness.stopping(); liveness.register")
    out = subprocess.run([sys.executable, "-c", stopping.replace("time.sleep(5)", "time.sleep(0.5)")],
                         capture_output=True, text=True, timeout=30,
                         cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    assert out.returncode == 0, out  # a controller that is stopping: threads end as they should


def test_flow_monitor_updates_are_read_from_bytes_and_never_trusted():
    import struct

    from cloudweave.flows.cookies import OWNER, OWNER_MASK
    from controller import flow_monitor as fm

    def full(event: int, cookie: int) -> bytes:  # ofp_flow_update_full without match and instructions
        body = struct.pack("!HHBBHHH4xQ", 24, event, 3, 0, 0, 0, 100, cookie)
        return body
    ours = lambda c: c & OWNER_MASK == OWNER  # noqa: E731
    mine, foreign = OWNER | 0x1234, 0x1234
    body = fm.RawFlowUpdates(struct.pack("!HHI", 8, fm.ABBREV, 77) + full(fm.MODIFIED, foreign))
    assert list(fm.updates(body)) == [(fm.ABBREV, None), (fm.MODIFIED, foreign)]
    assert fm.changed_behind_our_back(body, ours) is None  # our own change, and someone else's flow
    assert "was modified" in fm.changed_behind_our_back(fm.RawFlowUpdates(full(fm.MODIFIED, mine)), ours)
    assert "removed" in fm.changed_behind_our_back(fm.RawFlowUpdates(full(fm.REMOVED, mine)), ours)
    assert "paused" in fm.changed_behind_our_back(fm.RawFlowUpdates(struct.pack("!HH4x", 8, fm.PAUSED)), ours)
    for junk in (b"\x00\x00\x00\x01", b"\xff\xff\x00\x01" + bytes(8), os.urandom(64)):
        list(fm.updates(fm.RawFlowUpdates(junk)))  # ends, whatever the lengths say
    raw = fm.request(5)
    assert len(raw) == 40 and raw[1] == 18 and struct.unpack_from("!H", raw, 8)[0] == 16  # OFPMP_FLOW_MONITOR


def test_a_remote_sites_records_must_come_from_its_address():
    from controller.flowlog_service import collector_address

    assert collector_address("unix:/run/x/db.sock") == ("127.0.0.1", "127.")
    assert collector_address("ssl:127.0.0.1:6640") == ("127.0.0.1", "127.0.0.1")
    h = bytes(12) + (0xABCD).to_bytes(4, "big")
    assert _rejected(h, ("10.253.0.1", 4739), 0xABCD, "10.253.0.1") is None
    assert _rejected(h, ("10.253.0.11", 4739), 0xABCD, "10.253.0.1") == "sender"  # not a prefix match
    assert _rejected(h, ("127.0.0.1", 4739), 0xABCD, "10.253.0.1") == "sender"
