"""The store's snapshots are consistent copies, and a target's state survives the file."""

from __future__ import annotations

import copy
from dataclasses import fields, replace

from exporter.client import Summary
from exporter.config import CohortConfig
from exporter.state import decode, encode
from exporter.store import Snapshot, Store, TargetState
from exporter.targets import Target

TARGETS = [Target(scenario="disc", cohort=CohortConfig(name="all")),
           Target(scenario="renew", cohort=CohortConfig(name="all"))]


def change_everything(store: Store, at: float) -> None:
    """Every kind of change the store takes, each counter moved."""
    store.set_targets(TARGETS)
    store.record_success(TARGETS[0].key, Summary(participants=3, sessions=4), at)
    store.record_failure(TARGETS[1].key, "timeout", "read timed out", at)
    store.record_schedule(900.0 if at < 100 else 60.0, {TARGETS[0].key: at + 900},
                          pause=("rate_limited" if at < 100 else "unauthorized", at + 30),
                          stretched=at < 100, at=at)
    store.set_sources({TARGETS[1].key: "participants"})
    store.record_request("cross_check", "200", 0.3)
    store.record_request("list_groups", "error", 12.0, reason="connection")
    store.set_max_staleness(3600.0 + at)
    store.set_targets_dropped(int(at))
    store.record_discovery("groups", at, invalid_items=2)
    store.record_discovery("scenarios", None, error=f"server_error at {at}")
    store.record_cross_check("disc", "match")
    store.set_plan_cost(12.5 + at)
    store.record_reload(at > 100, at)


def test_a_snapshot_keeps_its_values_while_the_store_changes() -> None:
    store = Store()
    change_everything(store, 10.0)
    before = store.snapshot()
    kept = copy.deepcopy({f.name: getattr(before, f.name) for f in fields(before)
                          if f.name != "targets"})
    version = store.version
    change_everything(store, 200.0)
    after = store.snapshot()
    assert {f.name: getattr(before, f.name) for f in fields(before)
            if f.name != "targets"} == kept
    assert after.version > version == before.version
    # Every field moved: the comparison above would have seen a shared mapping change.
    assert [f.name for f in fields(Snapshot)
            if getattr(before, f.name) == getattr(after, f.name)] == []
    assert after.api_requests[("summary", "200")] == 2
    assert after.latency["groups"].count == 2
    assert after.errors == {"connection": 2}
    assert after.invalid_items == {"groups": 4}
    assert after.cross_checks == {("disc", "match"): 2}
    assert dict(after.discovery_error) == {"scenarios": "server_error at 200.0"}
    state = after.targets[1]
    assert (state.up, state.last_error, dict(state.errors), state.source) == (
        False, "timeout", {"timeout": 2}, "participants")


def test_the_staleness_floor_keeps_the_old_limit_for_two_new_intervals() -> None:
    store = Store()
    change_everything(store, 10.0)  # 900 s interval, max_staleness 3610 s
    change_everything(store, 200.0)  # the interval shrinks to 60 s at t=200
    snapshot = store.snapshot()
    assert snapshot.staleness_floor == (3610.0, 320.0)
    assert snapshot.staleness_limit(320.0) == 3800.0  # max_staleness is now 3800 s
    store.set_max_staleness(None)
    snapshot = store.snapshot()
    assert snapshot.staleness_limit(320.0) == 3610.0  # the old limit, still in force
    assert snapshot.staleness_limit(320.5) == 180.0  # then 3 x 60 s
    assert snapshot.limit_changes_at(300.0) == 320.0


def test_a_saved_target_restores_the_state_it_was_saved_from() -> None:
    store = Store()
    change_everything(store, 10.0)
    snapshot = store.snapshot()
    saved = decode(encode(snapshot, 20.0), 20.0)
    for state in snapshot.targets:
        restored = saved.targets[state.target.key].state(state.target)
        # What the file does not keep: the next planned refresh and the plan's source.
        assert restored == replace(state, next_due=None, source=TargetState.source)
