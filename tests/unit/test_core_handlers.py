"""The core's inputs and the quarantine keeper, without a switch."""

import dataclasses
import inspect
import time

from cloudweave.config import load_model
from cloudweave.secops import quarantine
from cloudweave.secops.decide import decide
from cloudweave.secops.detect import Alarm
from controller import messages
from controller.core import HANDLERS
from controller.metrics import Metrics
from controller.quarantine_keeper import KEEP_QUIET_S, QuarantineKeeper, StoreFeed
from testkit.harness import ROOT


def test_every_input_of_the_core_has_one_handler():
    kinds = {c for _, c in inspect.getmembers(messages, inspect.isclass)
             if c.__module__ == messages.__name__ and dataclasses.is_dataclass(c)}
    assert len(kinds) >= 11
    assert set(HANDLERS) == kinds, (kinds - set(HANDLERS), set(HANDLERS) - kinds)


def nat_model(tmp_path, extra: str = ""):
    path = tmp_path / "nat.yaml"
    path.write_text(open(f"{ROOT}/topologies/nat.yaml").read() + "\nflow_logs: {}\ndetection:\n  limit: 500pps\n"
                    + extra)
    return str(path), load_model(str(path))[0]


def test_the_act_or_not_rule_is_one_pure_function(tmp_path):
    _, model = nat_model(tmp_path, "  exempt: [green1]\n")

    def alarm(source: str) -> Alarm:
        return Alarm("flood", source, 9000.0, 8000.0, 0.5, 2.0, 1.9, ())

    assert decide(alarm("blue1"), model, frozenset()).act  # an endpoint: quarantined
    outside = decide(alarm("198.51.100.7"), model, frozenset())
    assert outside.act and "limiting it to 500" in outside.said  # an outside address: limited
    assert not decide(alarm("green1"), model, frozenset()).act  # exempt
    assert decide(alarm("not-an-address"), model, frozenset()).said.startswith(" (not an endpoint")
    assert decide(alarm("blue1"), model, frozenset({"blue1"})).said == " (already held)"


def test_the_keeper_follows_the_list_holds_a_sender_and_keeps_to_its_budget(tmp_path):
    config, model = nat_model(tmp_path)
    path = str(tmp_path / "q.json")
    keeper = QuarantineKeeper(quarantine.FileList(path), config, Metrics())
    assert keeper.cut_off() == frozenset() and keeper.check(time.time(), model) is None  # no file, no change
    now = time.time()
    quarantine.add(path, "blue1", "by hand", "cli", now=now)
    assert keeper.check(now, model) == frozenset({"blue1"})
    assert keeper.check(now, model) is None  # the same file: nothing to do

    # An automatic entry about to end while its endpoint still sends is held KEEP_QUIET_S longer.
    keeper.record_auto("green1", "scan", 5.0, {})  # written after the core cut it off: no change to report
    assert keeper.check(time.time(), model) is None and keeper.cut_off() == frozenset({"blue1", "green1"})
    ending = time.time() + 4.5
    keeper.seen("green1", ending - 1.0)
    assert keeper.check(ending, model) == frozenset({"blue1", "green1"})  # held: written again, still in force
    assert keeper.check(ending, model) is None  # the file it wrote is not news
    entry = next(e for e in quarantine.load(path) if e.endpoint == "green1")
    assert entry.until >= ending + KEEP_QUIET_S - 1
    # Quiet since: it ends with its hold time.
    later = entry.until + 0.5
    assert keeper.check(later, model) == frozenset({"blue1"})

    # The budget of automatic entries: a second one within the minute is refused, and past `most` in force.
    budgeted = QuarantineKeeper(quarantine.FileList(path), config, Metrics(), per_minute=1)
    assert budgeted.refusal("x", "scan") is None
    assert budgeted.refusal("y", "scan") == "per_minute"
    full = QuarantineKeeper(quarantine.FileList(path), config, Metrics(), most=1)  # green1: an automatic entry in force
    assert full.refusal("z", "scan") == "total"


def test_with_replicas_the_keeper_follows_the_stores_list_and_hands_its_entries_to_the_replica(tmp_path):
    config, model = nat_model(tmp_path)
    written = []
    now = time.time()
    feed = StoreFeed((quarantine.make("blue1", "by hand", "cli", now=now),), written.append)
    keeper = QuarantineKeeper(feed, config, Metrics())
    assert keeper.cut_off() == frozenset({"blue1"})  # the store's list at start
    assert keeper.check(now, model) is None
    feed.offer(())  # released from another replica or `cloudweave quarantine release --store`
    assert keeper.check(now, model) == frozenset()
    keeper.record_auto("green1", "scan", 5.0, {"pps": 9000})
    assert [(e.endpoint, e.source) for e in written] == [("green1", "auto")] and keeper.cut_off() == {"green1"}
    # Held while it still sends: the longer entry goes to the store too, and is in force here at once.
    keeper.seen("green1", now + 4.0)
    assert keeper.check(now + 4.5, model) == frozenset({"green1"})
    assert len(written) == 2 and written[1].until >= now + 4.5 + KEEP_QUIET_S - 1
