"""``--state.file``: values and the quota ledger survive restarts; a bad file never
stops the exporter.

Restarts run the real process (``python -m exporter``) so that SIGTERM and
SIGKILL behave as in a pod; the finer points use the in-process exporter with a
hand-written state file.
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fakeapi import FakeExecAPI
from harness import (
    InProcess,
    Subprocess,
    Values,
    config_text,
    fake_api,
    sample,
    series,
    wait_until,
)

from exporter.ledger import ledger_path
from exporter.state import StateFile

SCENARIOS = {"discovery-call": 45, "pricing-objection": 12}
COHORTS = ["all", {"name": "sales", "group_ids": "[g1h2i3j4k5l6]"}]
TARGETS = [(s, c) for s in SCENARIOS for c in ("all", "sales")]


@pytest.fixture
def api() -> Iterator[FakeExecAPI]:
    with fake_api(SCENARIOS) as fake:
        yield fake


def write_config(tmp_path: Path, api: FakeExecAPI, refresh: str = "10m",
                 extra: str = "") -> Path:
    path = tmp_path / "config.yaml"
    # These tests pin the restore behaviour of summary requests, request by request;
    # the planner's own restore (pulls due by their targets' age) is in test_planner.
    path.write_text(config_text(api.base_url, list(SCENARIOS), COHORTS, refresh=refresh,
                                extra="planner: {mode: summary}\n" + extra))
    return path


def run(tmp_path: Path, api: FakeExecAPI, config: Path, state: Path, name: str) -> Subprocess:
    return Subprocess(["--config.file", str(config), "--state.file", str(state)],
                      {"EXEC_API_KEY": api.api_key}, tmp_path / f"{name}.log")


def ledger_times(state: Path) -> list[float]:
    """The request times in the quota ledger beside ``state``."""
    return [float(line) for line in ledger_path(state).read_text().split()]


def all_values(values: Values) -> bool:
    return all(sample(values, "exec_scenario_participants", scenario=s, cohort=c)
               == SCENARIOS[s] for s, c in TARGETS)


def last_successes(values: Values) -> dict[tuple[tuple[str, str], ...], float]:
    return series(values, "exec_exporter_target_last_success_timestamp_seconds")


def fill(proc: Subprocess) -> Values:
    proc.wait_serving()
    return wait_until(lambda: (v := proc.scrape()[0]) and all_values(v) and v, 10,
                      what="the first fill")


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_restart_inside_the_interval_serves_saved_values_at_once(
        tmp_path: Path, api: FakeExecAPI, stop: signal.Signals) -> None:
    config, state = write_config(tmp_path, api), tmp_path / "state.json"
    with run(tmp_path, api, config, state, "first") as first:
        before = fill(first)
        if stop == signal.SIGKILL:
            time.sleep(1.5)  # a crash a moment after the fill, not a clean stop
        first.signal(stop)
        first.wait(10)
    assert state.exists()
    api.clear_requests()
    with run(tmp_path, api, config, state, "second") as second:
        second.wait_serving()
        # The very first answers: every value, ready.
        values, _ = second.scrape()
        ready = second.get("/-/ready").status_code
        assert all_values(values), series(values, "exec_scenario_participants")
        assert ready == 200
        # Original success times, so staleness stays honest.
        assert last_successes(values) == last_successes(before)
        time.sleep(1.5)
        assert len(api.requests) <= 1, [r.path for r in api.requests]
        assert "starting fresh" not in second.logs()
        second.signal(signal.SIGTERM)
        assert second.wait(10) == 0


def test_restored_targets_are_due_by_their_age(tmp_path: Path, api: FakeExecAPI) -> None:
    """A target whose data is older than the interval is refreshed; a fresh one waits."""
    config = write_config(tmp_path, api, refresh="1h")
    state = tmp_path / "state.json"
    now = time.time()
    ages = {("discovery-call", "all"): 7200, ("discovery-call", "sales"): 600,
            ("pricing-objection", "all"): 600, ("pricing-objection", "sales"): 600}
    state.write_text(json.dumps({
        "version": 1, "saved_at": now - 60, "ledger": [now - 600, now - 7200],
        "targets": [{"scenario": s, "cohort": c, "up": True, "errors": {},
                     "last_success": now - age,
                     "summary": {"participants": 3, "sessions": 4}}
                    for (s, c), age in ages.items()]}))
    with InProcess(config, api.api_key, state) as exporter:
        values, _ = exporter.scrape()
        assert exporter.get("/-/ready").status_code == 200
        for (s, c), age in ages.items():
            last = sample(values, "exec_exporter_target_last_success_timestamp_seconds",
                          scenario=s, cohort=c)
            # The 2 h old one may already have been refreshed by this first scrape.
            assert last == pytest.approx(now - age, abs=0.01) or (age > 3600 and last > now)
        # The stale one (2 h > 1 h) is refreshed at once, the others are not due yet.
        wait_until(lambda: exporter.value("exec_scenario_participants",
                                          scenario="discovery-call", cohort="all") == 45,
                   5, what="the old target refreshed")
        time.sleep(0.5)
        assert [(r.scenario_id, "group_ids" in r.query) for r in api.requests] == [
            ("discovery-call", False)]
        values, _ = exporter.scrape()
        assert sample(values, "exec_scenario_participants", scenario="pricing-objection",
                      cohort="sales") == 3
        # The ledger came back too: two restored requests plus the new one.
        assert sample(values, "exec_exporter_api_budget_remaining", window="day") == (
            86_400_000 - 3)


def test_restored_data_past_max_staleness_is_not_exported(tmp_path: Path,
                                                          api: FakeExecAPI) -> None:
    api.set_fault(None, "500")  # nothing can be refreshed
    config = write_config(tmp_path, api, refresh="1h", extra="max_staleness: 2h\n")
    state = tmp_path / "state.json"
    now = time.time()
    state.write_text(json.dumps({
        "version": 1, "saved_at": now, "ledger": [],
        "targets": [{"scenario": "discovery-call", "cohort": "all", "up": True,
                     "last_success": now - 3 * 3600, "summary": {"participants": 3}}]}))
    with InProcess(config, api.api_key, state) as exporter:
        values, _ = exporter.scrape()
        assert sample(values, "exec_scenario_participants", scenario="discovery-call",
                      cohort="all") is None
        assert sample(values, "exec_exporter_target_last_success_timestamp_seconds",
                      scenario="discovery-call", cohort="all") == pytest.approx(now - 10800)


def test_restored_ledger_keeps_a_crash_loop_inside_the_day_budget(
        tmp_path: Path, api: FakeExecAPI) -> None:
    """Every target fails, so no data is ever saved, only the ledger: a pod that
    restarts again and again must still not spend more than the day budget."""
    api.set_fault(None, "500")
    config = tmp_path / "config.yaml"
    config.write_text(config_text(api.base_url, list(SCENARIOS), COHORTS).replace(
        "requests_per_day: 86400000", "requests_per_day: 6"))
    state = tmp_path / "state.json"
    for _ in range(4):
        with InProcess(config, api.api_key, state) as exporter:
            time.sleep(0.4)
            exporter.scrape()
    assert 1 <= len(api.requests) <= 6, len(api.requests)
    assert len(ledger_times(state)) == len(api.requests)


@pytest.mark.parametrize("content", [
    b"",
    b"{not json",
    b"\xff\xfe\x00garbage",
    b"[]",
    b'{"version": 99, "targets": [], "ledger": []}',
    b'{"version": 1, "targets": 5, "ledger": []}',
    b'{"version": 1, "targets": "abc", "ledger": []}',
    b'{"version": 1, "targets": [], "ledger": {"a": 1}}',
    b'{"version": 1, "targets": [{"scenario": "discovery-call"}], "ledger": ["x", null]}',
    b'{"version": 1, "targets": [{"scenario": "discovery-call", "cohort": "all",'
    b' "summary": {"average_best_score": 250}, "last_success": 1}], "ledger": []}',
    b'{"version": 1, "targets": [{"scenario": "discovery-call", "cohort": "all",'
    b' "summary": {"participants": 3}, "last_success": 1e300}], "ledger": [1e300]}',
    b'{"version": 1, "targets": [{"scenario": "discovery-call", "cohort": "all",'
    b' "summary": [1, 2], "last_success": "yesterday", "errors": [1]}], "ledger": []}',
    b'{"version": 1, "targets": [null, 1, {"scenario": 1, "cohort": {}}], "ledger": 1}',
], ids=lambda c: c[:24].decode(errors="replace"))
def test_corrupt_state_file_is_a_warning(tmp_path: Path, content: bytes,
                                         caplog: pytest.LogCaptureFixture) -> None:
    state = tmp_path / "state.json"
    state.write_bytes(content)
    saved = StateFile(state).load(time.time())  # never raises
    assert not saved.ledger or all(isinstance(t, float) for t in saved.ledger)
    assert all(t.summary is None or t.summary.average_best_score != 250
               for t in saved.targets.values())
    assert any(r.levelname == "WARNING" and "state file" in r.getMessage()
               for r in caplog.records), [r.getMessage() for r in caplog.records]


def test_corrupt_state_file_means_a_fresh_start(tmp_path: Path, api: FakeExecAPI,
                                                caplog: pytest.LogCaptureFixture) -> None:
    state = tmp_path / "state.json"
    state.write_bytes(b'{"version": 1, "targets": [{"scenario": "discov')
    config = write_config(tmp_path, api, refresh="1h")
    with InProcess(config, api.api_key, state) as exporter:
        wait_until(lambda: all_values(exporter.scrape()[0]), 5, what="a fresh fill")
    assert any(r.levelname == "WARNING" and "state file" in r.getMessage()
               for r in caplog.records)
    # Replaced by a good one on the way out.
    assert json.loads(state.read_text())["version"] == 1


def test_unreadable_state_file_is_a_warning_not_a_stop(tmp_path: Path,
                                                       api: FakeExecAPI) -> None:
    state = tmp_path / "state.json"
    state.mkdir()  # reading a directory fails for root too (chmod 000 would not)
    config = write_config(tmp_path, api)
    with run(tmp_path, api, config, state, "unreadable") as proc:
        fill(proc)
        proc.signal(signal.SIGTERM)
        assert proc.wait(10) == 0
        logs = proc.logs()
    assert "level=warn" in logs and "state file" in logs
    assert "Traceback" not in logs


def test_state_file_is_written_atomically(tmp_path: Path, api: FakeExecAPI) -> None:
    config = write_config(tmp_path, api, refresh="1s")
    state = tmp_path / "state.json"
    with InProcess(config, api.api_key, state) as exporter:
        wait_until(lambda: all_values(exporter.scrape()[0]), 5, what="the fill")
        # Read it again and again while it is being rewritten: never a torn file.
        deadline = time.monotonic() + 1.5
        reads = 0
        while time.monotonic() < deadline:
            if state.exists():
                json.loads(state.read_bytes())
                reads += 1
        assert reads > 10
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "config.yaml", "state.json", "state.json.ledger"]
    assert api.api_key not in state.read_text()
    doc = json.loads(state.read_text())
    assert {(t["scenario"], t["cohort"]) for t in doc["targets"]} == set(TARGETS)
    assert "ledger" not in doc  # the ledger lives beside it, shared with a backfill
    assert len(ledger_times(state)) >= len(TARGETS)


def test_trailing_change_is_saved_without_another_request(tmp_path: Path) -> None:
    """A change that falls inside the minimum gap between writes is written when the
    gap ends, not at the next request (which may be an interval away)."""
    from exporter.store import Store

    state = StateFile(tmp_path / "state.json", min_gap=0.3)
    store = Store()
    now = time.time()
    assert state.save(store.snapshot(), now)
    assert not state.save(store.snapshot(), now + 0.1)  # too soon: deferred
    wait_until(lambda: json.loads((tmp_path / "state.json").read_text())["saved_at"] == now + 0.1,
               2, what="the deferred write")


def test_a_missing_state_directory_is_created_and_kept_across_a_restart(
        tmp_path: Path, api: FakeExecAPI) -> None:
    # The README's run command on a fresh machine: the state file's directory does not
    # exist yet, its parent does. It is created, and the restart finds the values.
    config = write_config(tmp_path, api)
    state = tmp_path / "var-lib" / "exec-exporter" / "state.json"
    state.parent.parent.mkdir()
    with run(tmp_path, api, config, state, "first") as proc:
        proc.wait_serving()
        wait_until(lambda: all_values(proc.scrape()[0]), 10, what="the first fill")
        proc.signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    assert json.loads(state.read_text())["targets"]
    sent = len(api.requests)
    with run(tmp_path, api, config, state, "second") as proc:
        proc.wait_serving()
        assert all_values(proc.scrape()[0])
        proc.signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    assert len(api.requests) == sent  # restored inside the interval: nothing re-fetched


def test_a_state_directory_that_cannot_be_created_refuses_to_start(
        tmp_path: Path, api: FakeExecAPI) -> None:
    config = write_config(tmp_path, api)
    state = tmp_path / "missing" / "deeper" / "state.json"
    with run(tmp_path, api, config, state, "no-parent") as proc:
        assert proc.wait(10) == 2
        logs = proc.logs()
    assert "--state.file" in logs and str(state.parent) in logs and "install -d" in logs
    assert "Traceback" not in logs
    assert api.requests == []  # nothing sent


def test_what_the_planner_learned_survives_the_file_and_bad_parts_are_left_out(
        caplog: pytest.LogCaptureFixture) -> None:
    from exporter.config import PlannerConfig
    from exporter.planner import Planner
    from exporter.state import decode, encode
    from exporter.store import Store

    now = 10_000.0
    saved = {
        "members": {"g1": {"user_ids": ["u2", "u1"], "at": 9000.0, "pages": 3},
                    "g2": {"user_ids": "not a list", "at": 9000.0},
                    "g3": {"user_ids": ["u9"], "at": now + 3600}},  # from the future
        "member_retries": {"g4": {"failures": 2, "next": now + 86400}},
        "refused": [["s", "c", now + 500], ["broken"]],
        "fallback": {"s2": now + 100},
        "pages": [["s", [604800.0, None, None], 4]],
        "precision": {"average_best_score": 1, "practice_minutes": 0, "bogus": 2,
                      "average_score_lift": 9},
        "checks": {"next": now + 700, "cursor": 5},
    }
    planner = Planner(PlannerConfig(), Store(), saved, now=now)
    kept = decode(encode(Store().snapshot(), now, planner=planner.state()), now).planner
    assert kept["members"] == {"g1": {"user_ids": ["u1", "u2"], "at": 9000.0, "pages": 3}}
    # A list that failed keeps its backoff: not asked again before its retry time.
    assert kept["member_retries"] == {"g4": {"failures": 2, "next": now + 86400}}
    assert kept["refused"] == [["s", "c", now + 500]]
    assert kept["fallback"] == {"s2": now + 100}
    assert kept["pages"] == [["s", [604800.0, None, None], 4]]
    assert kept["precision"] == {"average_best_score": 1, "practice_minutes": 0}
    assert kept["checks"] == {"next": now + 700, "cursor": 5}
    assert "ignoring a saved planner members entry" in caplog.text
    assert "ignoring a saved planner refused entry" in caplog.text
