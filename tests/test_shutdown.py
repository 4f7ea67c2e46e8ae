"""Graceful shutdown: SIGTERM/SIGINT stop polling, let an in-flight request finish
or give up on it, write the state file, and exit 0 (the process may be PID 1 in a
container, so it handles the signals itself).

The exits are awaited with a generous bound (WAIT) rather than timed: how fast a
stop is belongs to benchmarks, whether it happens belongs here."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fakeapi import FakeExecAPI, summary_body
from harness import Subprocess, config_text, fake_api, wait_until

SCENARIOS = {"discovery-call": 45, "pricing-objection": 12}
WAIT = 20.0  # a bounded wait for the exit, not a threshold


@pytest.fixture
def api() -> Iterator[FakeExecAPI]:
    with fake_api(SCENARIOS) as fake:
        yield fake


def start(tmp_path: Path, api: FakeExecAPI, timeout: str = "1s",
          refresh: str = "1s") -> tuple[Subprocess, Path]:
    config = tmp_path / "config.yaml"
    config.write_text(config_text(api.base_url, list(SCENARIOS), refresh=refresh,
                                  timeout=timeout))
    state = tmp_path / "state.json"
    proc = Subprocess(["--config.file", str(config), "--state.file", str(state)],
                      {"EXEC_API_KEY": api.api_key}, tmp_path / "exporter.log")
    proc.wait_serving()
    return proc, state


def filled(proc: Subprocess) -> bool:
    values, _ = proc.scrape()
    return all(values.get(("exec_scenario_participants",
                           (("cohort", "all"), ("scenario", s)))) == n
               for s, n in SCENARIOS.items())


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_stops_cleanly_and_writes_the_state(tmp_path: Path, api: FakeExecAPI,
                                                   signum: signal.Signals) -> None:
    proc, state = start(tmp_path, api)
    with proc:
        wait_until(lambda: filled(proc), 10, what="the first fill")
        state.unlink(missing_ok=True)  # whatever is there now was written before the signal
        sent = time.time()
        proc.signal(signum)
        assert proc.wait(WAIT) == 0
        logs = proc.logs()
    doc = json.loads(state.read_text())
    assert doc["saved_at"] >= sent - 1
    assert {t["scenario"] for t in doc["targets"]} == set(SCENARIOS)
    assert state.with_name(state.name + ".ledger").read_text().split()  # the quota ledger
    assert "shutting down" in logs and "Traceback" not in logs
    assert "level=error" not in logs


def test_no_requests_after_the_signal(tmp_path: Path, api: FakeExecAPI) -> None:
    proc, _ = start(tmp_path, api)
    with proc:
        wait_until(lambda: filled(proc), 10, what="the first fill")
        proc.signal(signal.SIGTERM)
        sent = time.time()
        assert proc.wait(WAIT) == 0
    # A request may already have been on its way; nothing starts after that.
    late = [r for r in api.requests if r.time > sent + 0.2]
    assert not late, [(r.scenario_id, r.time - sent) for r in late]


def test_in_flight_request_is_allowed_to_finish(tmp_path: Path, api: FakeExecAPI) -> None:
    """A request that answers within the grace period lands in the state file."""
    proc, state = start(tmp_path, api, timeout="5s", refresh="10m")
    with proc:
        wait_until(lambda: filled(proc), 10, what="the first fill")
        api.set_summary("discovery-call", summary_body(participant_count=46))
        api.set_fault("discovery-call", "hang", seconds=1.5, times=1)
        config = tmp_path / "config.yaml"
        # A reload with a new cohort filter makes the exporter request it at once.
        config.write_text(config_text(api.base_url, list(SCENARIOS), refresh="10m",
                                      timeout="5s").replace(
            "  - id: discovery-call", "  - id: discovery-call\n    cohorts: [all, late]")
            + "cohorts:\n  - name: all\n  - name: late\n    group_ids: [g1]\n"
            # Its summary, not a member list and a pull first (auto: test_planner).
            + "planner:\n  mode: summary\n")
        proc.signal(signal.SIGHUP)
        wait_until(lambda: any(r.query.get("group_ids") == "g1" for r in api.requests), 5,
                   what="the slow request to start")
        proc.signal(signal.SIGTERM)
        assert proc.wait(WAIT) == 0
    doc = json.loads(state.read_text())
    late = [t for t in doc["targets"] if t["cohort"] == "late"]
    assert late and late[0]["summary"]["participants"] == 46, late


def test_sigterm_while_the_api_hangs_gives_up_on_the_request(tmp_path: Path,
                                                             api: FakeExecAPI) -> None:
    """The in-flight request never answers and the API timeout (60 s) is longer than
    the bounded wait: the exporter must give up waiting for the request, not sit out
    its timeout, and still stop cleanly with its state saved."""
    proc, state = start(tmp_path, api, timeout="60s")
    with proc:
        wait_until(lambda: filled(proc), 10, what="the first fill")
        api.set_fault(None, "hang", seconds=120)
        started = time.time()
        wait_until(lambda: any(r.time > started for r in api.requests), 5,
                   what="a request to hang")
        time.sleep(0.2)
        sent = time.time()
        proc.signal(signal.SIGTERM)
        code = proc.wait(WAIT)
        logs = proc.logs()
    assert code == 0
    assert json.loads(state.read_text())["saved_at"] >= sent - 1
    assert "Traceback" not in logs


def test_second_signal_during_shutdown_does_not_break_it(tmp_path: Path,
                                                         api: FakeExecAPI) -> None:
    proc, state = start(tmp_path, api)
    with proc:
        wait_until(lambda: filled(proc), 10, what="the first fill")
        proc.signal(signal.SIGTERM)
        proc.signal(signal.SIGINT)
        proc.signal(signal.SIGTERM)
        assert proc.wait(WAIT) == 0
        logs = proc.logs()
    assert json.loads(state.read_text())["version"] == 1
    assert "Traceback" not in logs


def test_a_burst_of_signals_never_deadlocks_the_main_thread(tmp_path: Path,
                                                            api: FakeExecAPI) -> None:
    # Signal handlers run in the main thread between two bytecodes; one that takes a
    # lock the main thread may hold (Event.set against Event.wait/clear) can deadlock.
    # Reloads and stops in a burst: the exporter keeps serving, then stops with 0.
    proc, state = start(tmp_path, api)
    with proc:
        wait_until(lambda: filled(proc), 10, what="the first fill")
        for _ in range(200):
            proc.signal(signal.SIGHUP)
        assert proc.get("/-/healthy").status_code == 200
        for signum in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT) * 20:
            proc.signal(signum)
        assert proc.wait(WAIT) == 0
        logs = proc.logs()
    assert json.loads(state.read_text())["version"] == 1
    assert "Traceback" not in logs


def test_an_idle_exporter_with_a_state_file_stops_with_a_final_save(tmp_path: Path) -> None:
    """SIGTERM on an idle exporter with a state file: exit 0 and the final save is
    written, without waiting for the idle state saver (how long the stop takes is a
    benchmark's business: benchmarks/stop_time.py, ~0.17 s against 1.07-1.12 s when
    stop joined the saver through its one-second wait)."""
    state = tmp_path / "state.json"
    proc = Subprocess(["demo", "--state.file", str(state)], {}, tmp_path / "exporter.log")
    with proc:
        proc.wait_serving(30)
        wait_until(lambda: proc.get("/-/ready").status_code == 200, 60, what="ready")
        wait_until(lambda: state.exists(), 5, what="the first save")
        state.unlink()
        proc.signal(signal.SIGTERM)
        assert proc.wait(WAIT) == 0
    assert json.loads(state.read_text())["targets"]  # the final save happened
