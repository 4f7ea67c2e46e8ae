"""``exec-exporter backfill``: planning, validation, pacing, output, resume, and end to end
through promtool and a real Prometheus.

The fake API is the demo's simulated workspace (``tests/fake_history.py``): 90
days of sessions, answers honouring ``start_date``/``end_date``, rolling rate
limits with real 429s, every request recorded.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import json
import math
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from conftest import FakeClock
from e2e_helpers import ROOT, Process, require_tool, wait_for
from fake_history import HistoryAPI
from harness import free_port
from prometheus_client.openmetrics.parser import text_string_to_metric_families

from exporter import backfill, cli
from exporter.backfill import (
    Outcome,
    Plan,
    Sender,
    UsageError,
    WorkspaceError,
    as_of_query,
    make_plan,
    parse_window,
    render,
    request_key,
)
from exporter.budget import Budget
from exporter.client import NotFound, RateLimited, Summary, Unauthorized, UpstreamError
from exporter.collector import INFO_FAMILY, INFO_POSITION, TARGET_FAMILIES
from exporter.config import CohortConfig
from exporter.sim import DEMO_API_KEY
from exporter.targets import Target

DAY = 86400
NOW = 1_796_000_000.0  # 2026-11-30T01:33:20Z


# --- helpers -----------------------------------------------------------------------


@pytest.fixture
def api() -> Iterator[HistoryAPI]:
    with HistoryAPI(requests_per_minute=1000) as fake:
        yield fake


def write_config(path: Path, base_url: str, rpm: int = 1000, reserve: float = 0.0,
                 extra_cohorts: list[dict[str, Any]] | None = None) -> Path:
    config = {
        "api": {"base_url": base_url, "timeout": "5s",
                "rate_limit": {"requests_per_minute": rpm, "requests_per_day": 100000,
                               "reserve": reserve}},
        "scenarios": [{"id": "discovery-call-it-director", "name": "Discovery call"},
                      {"id": "renewal-negotiation"}],
        "cohorts": [{"name": "all"}, {"name": "last-7d", "window": "7d"},
                    *(extra_cohorts or [])],
    }
    path.write_text(yaml.safe_dump(config))
    return path


def run(argv: list[str]) -> tuple[int, str, str]:
    """``exec-exporter backfill ...`` in-process: (exit code, stdout, stderr)."""
    args = cli.build_parser().parse_args(["backfill", *argv])
    out, err = io.StringIO(), io.StringIO()
    code = backfill.main(args, out=out, err=err)
    return code, out.getvalue(), err.getvalue()


def run_a_day_on_a_fake_clock(config: Path, output: Path) -> tuple[int, str, str]:
    """A one-day backfill of ``config`` in-process, its waits taken on a fake clock
    (retries back off for minutes): (exit code, stdout, stderr)."""
    clock = FakeClock(time.time())

    def sleep(seconds: float) -> bool:
        clock.advance(seconds)
        return False

    args = cli.build_parser().parse_args([
        "backfill", f"--config.file={config}", "--since=1d", f"--until={midnight(1)}",
        f"--output={output}"])
    out, err = io.StringIO(), io.StringIO()
    code = backfill.main(args, now=clock.time, out=out, err=err, sleep=sleep)
    return code, out.getvalue(), err.getvalue()


@contextlib.contextmanager
def stopped_after(monkeypatch: pytest.MonkeyPatch, count: int) -> Iterator[None]:
    """Inside, a run stops as SIGINT would stop it after ``count`` requests: the next
    wait for a slot ends the run."""
    count_send = backfill.Sender.count_send

    def stop_later(sender: Sender) -> None:
        count_send(sender)
        if sender.sent_count == count:
            sender.stop.set()

    monkeypatch.setattr(backfill.Sender, "count_send", stop_later)
    yield
    monkeypatch.setattr(backfill.Sender, "count_send", count_send)


def midnight(days_ago: int, now: float | None = None) -> int:
    now = time.time() if now is None else now
    return int(now // DAY * DAY - days_ago * DAY)


# --- the time range and the queries ----------------------------------------------------


def test_window_has_one_instant_per_step_from_until_minus_since_to_until() -> None:
    window = parse_window("3d", "2026-11-29T00:00:00Z", "1d", NOW)
    until = int(dt.datetime(2026, 11, 29, tzinfo=dt.UTC).timestamp())
    assert window.instants == [until - 3 * DAY, until - 2 * DAY, until - DAY, until]


def test_default_until_is_the_last_step_boundary_outside_the_head_block() -> None:
    # 01:33 UTC: midnight is under 3 h ago, so the day before's midnight.
    window = parse_window("2d", None, "1d", NOW)
    assert window.until == int(NOW // DAY * DAY) - DAY
    assert parse_window("2h", None, "1h", NOW).until == int(NOW // 3600 * 3600) - 3 * 3600


@pytest.mark.parametrize(("since", "until", "step", "flag", "words"), [
    ("7d", None, "2d", "--since", "not a multiple of --step"),
    ("2h", None, "30m", "--step", "under the minimum of 1h"),
    ("1d", "2027-01-01T00:00:00Z", "1d", "--until", "in the future"),
    ("1d", "yesterday", "1d", "--until", "ISO 8601"),
    ("soon", None, "1d", "--since", "invalid duration"),
    (None, None, "1d", "--since", "required"),
])
def test_bad_ranges_are_refused_naming_the_flag(since: str | None, until: str | None,
                                                step: str, flag: str, words: str) -> None:
    with pytest.raises(UsageError) as info:
        parse_window(since, until, step, NOW)
    assert str(info.value).startswith(flag + ":")
    assert words in str(info.value)


def _cohort(**kw: Any) -> CohortConfig:
    return CohortConfig.model_validate({"name": "c", **kw})


def test_as_of_query_ends_at_the_instant_and_keeps_the_filters() -> None:
    cohort = _cohort(group_ids=["g1", "g2"], exclude_system_users=True)
    assert as_of_query(cohort, 1_795_000_000) == {
        "group_ids": "g1,g2", "exclude_system_users": "true",
        "end_date": "2026-11-18T11:06:40Z"}


def test_as_of_query_of_a_rolling_window_starts_a_window_before_the_instant() -> None:
    query = as_of_query(_cohort(window="7d"), 1_795_000_000)
    assert query == {"start_date": "2026-11-11T11:06:40Z", "end_date": "2026-11-18T11:06:40Z"}


def test_fixed_cohort_has_no_point_before_its_start_and_freezes_after_its_end() -> None:
    cohort = _cohort(start_date="2026-11-10T00:00:00Z", end_date="2026-11-15T00:00:00Z")
    before = int(dt.datetime(2026, 11, 9, tzinfo=dt.UTC).timestamp())
    inside = int(dt.datetime(2026, 11, 12, tzinfo=dt.UTC).timestamp())
    after = int(dt.datetime(2026, 11, 20, tzinfo=dt.UTC).timestamp())
    assert as_of_query(cohort, before) is None
    assert as_of_query(cohort, inside) == {"start_date": "2026-11-10T00:00:00Z",
                                           "end_date": "2026-11-12T00:00:00Z"}
    assert as_of_query(cohort, after) == {"start_date": "2026-11-10T00:00:00Z",
                                          "end_date": "2026-11-15T00:00:00Z"}


def test_plan_asks_each_distinct_query_once() -> None:
    fixed = _cohort(start_date="2026-11-10T00:00:00Z", end_date="2026-11-15T00:00:00Z")
    targets = [Target("s1", _cohort()), Target("s1", fixed)]
    window = parse_window("10d", "2026-11-20T00:00:00Z", "1d", NOW)  # Nov 10 .. Nov 20
    plan = make_plan(targets, window)
    assert len(plan.points) == 11 + 11
    # The fixed cohort: Nov 10..15 are six distinct queries; Nov 16..20 repeat Nov 15's.
    assert len(plan.requests) == 11 + 6
    assert plan.skipped == 0


# --- the output ----------------------------------------------------------------------


SUMMARY = Summary(participants=45, sessions=128, average_best_score=74.2,
                  average_best_rank="silver", average_score_lift=None, practice_seconds=44520.0,
                  average_session_duration_seconds=348.0,
                  rank_participants={"gold": 12, "silver": 18, "bronze": 10, "unranked": 5})


def _two_point_plan() -> tuple[Plan, dict[Any, Outcome]]:
    target = Target("s1", _cohort(), display_name="Scenario one")
    other = Target("s0", _cohort())
    window = parse_window("1d", "2026-11-20T00:00:00Z", "1d", NOW)
    plan = make_plan([target, other], window)
    results = {}
    for point in plan.points:
        grown = Summary(**{**SUMMARY.to_json(), "sessions": 128 + point.instant % 1000})
        results[point.request] = Outcome(grown if point.target is target else SUMMARY)
    return plan, results


def test_output_is_openmetrics_with_the_families_of_metrics_and_timestamps() -> None:
    plan, results = _two_point_plan()
    text = render(plan, results).decode()
    assert text.endswith("# EOF\n")
    families = {f.name: f for f in text_string_to_metric_families(text)}
    data_specs = {s.name: s for s in TARGET_FAMILIES[:INFO_POSITION]}
    # Every data family of /metrics but the lift (null here: no sample, not 0), and the info.
    assert set(families) == (set(data_specs) - {"exec_scenario_average_score_lift"}
                             | {INFO_FAMILY.name})
    for name, family in families.items():
        spec = data_specs.get(name, INFO_FAMILY)
        assert family.type == "gauge"
        # /metrics' HELP, but the values are as of each timestamp, not the last poll.
        assert "last successful poll" not in family.documentation
        assert family.documentation == spec.documentation.replace(
            "as of the last successful poll", "as of the sample's timestamp (backfilled)")
        for sample in family.samples:
            assert tuple(sorted(sample.labels)) == tuple(sorted(spec.labels))
    instants = [p.instant for p in plan.points]
    sessions = [(s.labels["scenario"], float(s.timestamp), s.value)
                for s in families["exec_scenario_sessions"].samples]
    t0, t1 = sorted(set(instants))
    assert sessions == [("s0", t0, 128), ("s0", t1, 128),
                        ("s1", t0, 128 + t0 % 1000), ("s1", t1, 128 + t1 % 1000)]
    ranks = {(s.labels["rank"], float(s.timestamp)): s.value
             for s in families["exec_scenario_average_best_rank"].samples
             if s.labels["scenario"] == "s1"}
    assert ranks[("silver", t0)] == 1 and ranks[("gold", t0)] == 0
    # The info series is there for every scenario, as on /metrics (an empty name when
    # none is known).
    info = [(s.labels, float(s.timestamp)) for s in families["exec_scenario_info"].samples]
    assert info == [({"scenario": "s0", "name": "", "id": "s0"}, t0),
                    ({"scenario": "s0", "name": "", "id": "s0"}, t1),
                    ({"scenario": "s1", "name": "Scenario one", "id": "s1"}, t0),
                    ({"scenario": "s1", "name": "Scenario one", "id": "s1"}, t1)]


def test_each_series_is_contiguous_and_in_time_order() -> None:
    plan, results = _two_point_plan()
    lines = [ln for ln in render(plan, results).decode().splitlines() if not ln.startswith("#")]
    seen: dict[str, int] = {}
    finished: set[str] = set()
    previous = None
    for line in lines:
        series, _value, stamp = line.rsplit(" ", 2)
        if series != previous and previous is not None:
            finished.add(previous)
        assert series not in finished, f"{series} appears in two runs"
        assert int(stamp) > seen.get(series, 0)
        seen[series] = int(stamp)
        previous = series


def test_refused_points_have_no_samples() -> None:
    plan, results = _two_point_plan()
    for point in plan.points:
        if point.target.scenario == "s0":
            results[point.request] = Outcome(None, "not_found")
    text = render(plan, results).decode()
    assert 'scenario="s0"' not in text and 'scenario="s1"' in text


# --- pacing within the budget --------------------------------------------------------


class ScriptedClient:
    """Stands in for ExecClient: records when each request was sent, raises on cue."""

    def __init__(self, clock: FakeClock, errors: list[Exception] | None = None) -> None:
        self.clock = clock
        self.errors = list(errors or [])
        self.sent: list[float] = []

    def summary(self, scenario: str, params: dict[str, str]) -> Summary:
        self.sent.append(self.clock.time())
        if self.errors:
            raise self.errors.pop(0)
        return SUMMARY


def _sender(clock: FakeClock, client: ScriptedClient, minute: int = 1000, day: int = 100000,
            seed: list[float] | None = None) -> Sender:
    def sleep(seconds: float) -> bool:
        clock.advance(seconds)
        return False

    return Sender(client, Budget(minute, day, seed or []), now=clock.time, sleep=sleep)


def _key(n: int) -> Any:
    return request_key("s1", {"end_date": str(n)})


def test_requests_never_exceed_the_minute_budget(clock: FakeClock) -> None:
    client = ScriptedClient(clock)
    sender = _sender(clock, client, minute=5)
    for n in range(12):
        assert sender.fetch(_key(n)) == Outcome(SUMMARY)
    sent = client.sent
    assert len(sent) == 12
    for t in sent:
        assert sum(1 for u in sent if t - 60 < u <= t) <= 5
    assert sent[-1] - sent[0] > 120  # two full minutes of waiting, not a burst


def test_the_day_budget_counts_the_daemons_ledger(clock: FakeClock) -> None:
    start = clock.time()
    seed = [start - 3600 * h for h in range(9, 0, -1)]  # nine requests in the last 9 hours
    client = ScriptedClient(clock)
    sender = _sender(clock, client, day=10, seed=seed)
    sender.fetch(_key(1))
    sender.fetch(_key(2))
    assert client.sent[0] == start
    assert client.sent[1] >= seed[0] + DAY  # the oldest request must leave the day first


def test_a_429_holds_the_next_request_for_retry_after(clock: FakeClock) -> None:
    client = ScriptedClient(clock, [RateLimited("HTTP 429", 30.0)] * 5)
    sender = _sender(clock, client)
    assert sender.fetch(_key(1)) == Outcome(SUMMARY)  # 429s are waited out, not failures
    assert len(client.sent) == 6
    gaps = [b - a for a, b in zip(client.sent, client.sent[1:], strict=False)]
    assert all(gap >= 30 for gap in gaps)
    assert sender.sent_count == 6 and sender.rate_limited == 5


def test_not_found_is_final_transient_errors_are_retried_then_left_for_the_next_run(
        clock: FakeClock) -> None:
    client = ScriptedClient(clock, [NotFound("HTTP 404", 404)])
    assert _sender(clock, client).fetch(_key(1)) == Outcome(None, "not_found")
    assert len(client.sent) == 1
    client = ScriptedClient(clock, [UpstreamError("HTTP 500", 500)] * 10)
    assert _sender(clock, client).fetch(_key(1)) is None
    assert len(client.sent) == backfill.TRANSIENT_TRIES


def test_unauthorized_stops_the_run(clock: FakeClock) -> None:
    client = ScriptedClient(clock, [Unauthorized("HTTP 401", 401)])
    with pytest.raises(WorkspaceError):
        _sender(clock, client).fetch(_key(1))


def test_a_refused_key_is_not_announced_as_probed_again(clock: FakeClock,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    """The daemon's poller says it probes again after a 401; a backfill stops instead."""
    client = ScriptedClient(clock, [Unauthorized("HTTP 401", 401)])
    with pytest.raises(WorkspaceError):
        _sender(clock, client).fetch(_key(1))
    assert "probing again" not in caplog.text


# --- the command, in-process ---------------------------------------------------------


@pytest.fixture
def key_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EXEC_API_KEY", DEMO_API_KEY)


def test_a_run_writes_the_file_and_a_rerun_sends_nothing(api: HistoryAPI, tmp_path: Path,
                                                         key_env: None) -> None:
    config = write_config(tmp_path / "c.yaml", api.base_url)
    output = tmp_path / "h.om"
    argv = [f"--config.file={config}", "--since=3d", f"--until={midnight(1)}",
            f"--output={output}"]
    code, out, err = run(argv)
    assert code == 0, err
    assert "points: 16" in out and "requests: 16 summary requests" in out  # plan first
    assert len(api.summaries()) == 16
    first = output.read_bytes()
    assert first.endswith(b"# EOF\n")
    code, out, err = run(argv)
    assert code == 0, err
    assert len(api.summaries()) == 16, "a finished run must not send again"
    assert output.read_bytes() == first


def test_a_partial_journal_resumes_without_repeating_finished_requests(
        api: HistoryAPI, tmp_path: Path, key_env: None) -> None:
    config = write_config(tmp_path / "c.yaml", api.base_url)
    output = tmp_path / "h.om"
    argv = [f"--config.file={config}", "--since=3d", f"--until={midnight(1)}",
            f"--output={output}"]
    assert run(argv)[0] == 0
    complete = output.read_bytes()
    journal = output.with_name("h.om.journal")
    lines = journal.read_text().splitlines()
    done = [ln for ln in lines[1:] if '"summary"' in ln]
    # As if stopped after six answers (and with a torn line from the kill).
    kept = [lines[0], *done[:6]]
    journal.write_text("\n".join(kept) + '\n{"scenario": "disc')
    output.unlink()
    api.seen.clear()
    code, out, err = run(argv)
    assert code == 0, err
    assert "6 already done, 10 to send" in out
    again = {(s.scenario, tuple(sorted(s.query.items()))) for s in api.summaries()}
    finished = {(json.loads(ln)["scenario"], tuple(sorted(json.loads(ln)["params"].items())))
                for ln in done[:6]}
    assert len(api.summaries()) == 10 and not again & finished
    assert output.read_bytes() == complete


def test_a_resume_after_an_edit_that_leaves_the_values_alone_repeats_no_request(
        api: HistoryAPI, tmp_path: Path, key_env: None, monkeypatch: pytest.MonkeyPatch
        ) -> None:
    """Stopped after 5 requests; the daemon's settings are then edited (refresh_interval,
    max_staleness, the planner, the skills listing, the budget): the resume sends only
    what the journal lacks. Editing a cohort's filter still refuses the old output."""
    config = write_config(tmp_path / "c.yaml", api.base_url)
    output = tmp_path / "h.om"
    argv = [f"--config.file={config}", "--since=3d", f"--until={midnight(1)}",
            f"--output={output}"]
    with stopped_after(monkeypatch, 5):
        code, _, err = run(argv)
    assert code == 0 and "stopped:" in err
    raw = yaml.safe_load(config.read_text())
    raw.update(refresh_interval="7m", max_staleness="2h", skills={"interval": "3h"},
               planner={"mode": "summary", "cross_check_share": 0.2, "fallback_for": "2h"})
    raw["api"]["timeout"] = "9s"
    raw["api"]["rate_limit"]["requests_per_minute"] = 500
    config.write_text(yaml.safe_dump(raw))
    code, out, err = run(argv)
    assert code == 0, err
    assert "5 already done, 11 to send" in out
    sent = [(s.scenario, tuple(sorted(s.query.items()))) for s in api.summaries()]
    assert len(sent) == len(set(sent)) == 16, "a finished request was sent again"
    raw["cohorts"][1]["window"] = "8d"  # other values: the old output is refused
    config.write_text(yaml.safe_dump(raw))
    code, _, err = run(argv)
    assert code == 2 and "another configuration" in err


def _bad_runs(tmp: Path, base_url: str) -> list[tuple[list[str], str]]:
    config = write_config(tmp / "c.yaml", base_url)
    ok = [f"--config.file={config}", f"--output={tmp / 'h.om'}"]
    return [
        ([*ok, "--since=7d", "--step=2d"], "--since"),
        ([*ok, "--since=2h", "--step=30m"], "--step"),
        ([*ok, "--since=1d", "--until=2099-01-01T00:00:00Z"], "--until"),
        ([f"--config.file={config}", "--since=1d"], "--output"),
        ([f"--config.file={tmp / 'missing.yaml'}", "--since=1d", f"--output={tmp / 'x'}"],
         "no such file"),
    ]


def test_bad_input_exits_2_and_sends_nothing(api: HistoryAPI, tmp_path: Path,
                                             key_env: None) -> None:
    for argv, words in _bad_runs(tmp_path, api.base_url):
        code, _out, err = run(argv)
        assert code == 2, (argv, err)
        assert words in err and err.startswith("error: ") and len(err.splitlines()) == 1
        assert "Traceback" not in err
    assert api.seen == []
    assert not (tmp_path / "h.om").exists() and not (tmp_path / "h.om.journal").exists()


def test_a_missing_key_exits_2_and_sends_nothing(api: HistoryAPI, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EXEC_API_KEY", raising=False)
    config = write_config(tmp_path / "c.yaml", api.base_url)
    code, _, err = run([f"--config.file={config}", "--since=1d",
                        f"--output={tmp_path / 'h.om'}"])
    assert code == 2 and "no API key" in err
    assert api.seen == []


def test_an_output_of_another_configuration_is_refused(api: HistoryAPI, tmp_path: Path,
                                                       key_env: None) -> None:
    config = write_config(tmp_path / "c.yaml", api.base_url)
    output = tmp_path / "h.om"
    argv = [f"--config.file={config}", "--since=1d", f"--until={midnight(1)}",
            f"--output={output}"]
    assert run(argv)[0] == 0
    sent = len(api.seen)
    written = output.read_bytes()
    write_config(config, api.base_url, extra_cohorts=[{"name": "sales", "group_ids": ["g"]}])
    code, _, err = run(argv)
    assert code == 2 and "another configuration" in err and "--output" in err
    other_range = [*argv[:2], f"--until={midnight(2)}", argv[3]]
    write_config(config, api.base_url)
    code, _, err = run(other_range)
    assert code == 2 and "another configuration or time range" in err
    assert len(api.seen) == sent and output.read_bytes() == written
    # A file the backfill did not write is never overwritten either.
    foreign = tmp_path / "foreign.om"
    foreign.write_text("mine\n")
    code, _, err = run([*argv[:3], f"--output={foreign}"])
    assert code == 2 and "not written by this backfill" in err
    assert foreign.read_text() == "mine\n" and len(api.seen) == sent


def test_the_key_never_appears_in_the_output(api: HistoryAPI, tmp_path: Path,
                                             key_env: None) -> None:
    config = write_config(tmp_path / "c.yaml", api.base_url)
    output = tmp_path / "h.om"
    code, out, err = run([f"--config.file={config}", "--since=1d", f"--until={midnight(1)}",
                          f"--output={output}"])
    assert code == 0
    for text in (out, err, output.read_text(), output.with_name("h.om.journal").read_text()):
        assert DEMO_API_KEY not in text


def test_progress_is_plain_lines_off_a_terminal_and_a_bar_on_one(api: HistoryAPI,
                                                                 tmp_path: Path,
                                                                 key_env: None) -> None:
    config = write_config(tmp_path / "c.yaml", api.base_url)
    code, _, err = run([f"--config.file={config}", "--since=1d", f"--until={midnight(1)}",
                        f"--output={tmp_path / 'h.om'}"])
    assert code == 0 and "backfill: 8/8 requests (100%)" in err

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    screen = Terminal()
    progress = backfill.Progress(total=4, done=1, stream=screen)
    progress.advance()
    progress.close()
    assert "2/4" in screen.getvalue() and "req" in screen.getvalue()


def test_the_daemons_ledger_in_the_state_file_counts(api: HistoryAPI, tmp_path: Path,
                                                     key_env: None,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO")
    now = time.time()
    state = tmp_path / "state.json"
    state.write_text(json.dumps({"version": 1, "saved_at": now, "targets": [],
                                 "ledger": [now - 60 * i for i in range(1, 41)]}))
    config = write_config(tmp_path / "c.yaml", api.base_url)
    code, out, err = run([f"--config.file={config}", "--since=1d", f"--until={midnight(1)}",
                          f"--output={tmp_path / 'h.om'}", f"--state.file={state}"])
    assert code == 0, err
    assert "the running exporter spent 40 requests in the last 24 h" in out
    assert "(99960 left in the rolling day)" in out
    restored = [r.getMessage() for r in caplog.records if "restored" in r.getMessage()]
    assert len(restored) == 1, restored  # the state file is read once, and said once


def test_discovered_targets_are_backfilled_and_the_listing_is_counted(
        api: HistoryAPI, tmp_path: Path, key_env: None) -> None:
    config = write_config(tmp_path / "c.yaml", api.base_url)
    raw = yaml.safe_load(config.read_text())
    raw["scenarios"] = []
    raw["discovery"] = {"scenarios": {}}
    config.write_text(yaml.safe_dump(raw))
    output = tmp_path / "h.om"
    code, out, err = run([f"--config.file={config}", "--since=1d", f"--until={midnight(1)}",
                          f"--output={output}"])
    assert code == 0, err
    listed = api.of_kind("list")
    assert listed and "discovery: 1 listing requests" in out
    scenarios = {s.scenario for s in api.summaries()}
    assert len(scenarios) >= 3
    text = output.read_text()
    for slug in scenarios:
        assert f'scenario="{slug}"' in text


# --- end to end: a subprocess, interrupted and resumed; promtool; a real Prometheus ----


def _prometheus_query(url: str, expr: str, at: float) -> list[dict[str, Any]]:
    response = requests.get(f"{url}/api/v1/query", params={"query": expr, "time": str(at)},
                            timeout=5)
    body = response.json()
    assert body["status"] == "success", body
    return list(body["data"]["result"])


@pytest.mark.e2e
def test_backfill_interrupted_resumed_imported_and_queried(tmp_path: Path) -> None:
    """30 days of history under a tight minute limit, with the planner deriving the
    cohorts one participants pull serves: the run is stopped with SIGINT while it waits
    for quota, the rerun finishes without repeating a request (summary, participants
    page or member list) and without a single 429, promtool imports the file, and a
    real Prometheus answers past instants with exactly what the summary endpoint says
    for those instants, derived cohorts included."""
    promtool = require_tool("promtool")
    prometheus_bin = require_tool("prometheus")
    minute_limit = 20
    with HistoryAPI(requests_per_minute=minute_limit) as api:
        now = time.time()
        until = int((now - 3 * 3600) // DAY * DAY)  # the default: a midnight 3 h past
        fixed_start, fixed_end = until - 25 * DAY, until - 15 * DAY
        config = write_config(tmp_path / "c.yaml", api.base_url, rpm=minute_limit, reserve=0.0,
                              extra_cohorts=[
                                  {"name": "sales", "group_ids": ["g1h2i3j4k5l6"],
                                   "exclude_system_users": True},
                                  {"name": "cs", "group_ids": [CS]},
                                  {"name": "no-staff", "exclude_system_users": True},
                                  {"name": "pilot",
                                   "start_date": dt.datetime.fromtimestamp(
                                       fixed_start, dt.UTC).isoformat(),
                                   "end_date": dt.datetime.fromtimestamp(
                                       fixed_end, dt.UTC).isoformat()}])
        output = tmp_path / "history.om"
        command = [sys.executable, "-m", "exporter", "backfill", f"--config.file={config}",
                   "--since=30d", "--step=10d", f"--output={output}",
                   "--label=job=exec-exporter"]
        env = {"EXEC_API_KEY": DEMO_API_KEY, "PATH": "/usr/bin:/bin"}
        first = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True)
        journal = output.with_name("history.om.journal")

        def answered() -> int:
            if not journal.exists():
                return 0
            return journal.read_text().count('"params"')

        # One summary per target and instant: 2 scenarios x (all, last-7d, sales, cs,
        # no-staff: 4 instants; pilot: 2 distinct) = 44 requests. With the planner, per
        # scenario: all, sales, cs and no-staff from one pull per instant (4 proofs + 4
        # one-page pulls), last-7d and pilot on summaries (4 + 2), and the 2 member lists
        # once: 2 x 14 + 2 = 30, more than a minute's budget: the run waits after 20.
        wait_for(lambda: answered() >= minute_limit, 30, "the first minute's requests")
        first.send_signal(signal.SIGINT)
        out1, err1 = first.communicate(timeout=20)
        assert first.returncode == 0, err1
        assert "one summary per target and instant: 44 requests" in out1
        assert "requests: about 30 with participants pulls" in out1
        assert "stopped:" in err1 and "run the same command again" in err1
        assert not output.exists()
        sent_first = len(api.seen)
        assert sent_first < 30

        second = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True,
                                timeout=150)
        assert second.returncode == 0, second.stderr
        assert f"{sent_first} already done" in second.stdout
        seen = api.seen
        assert [s for s in seen if s.status == 429] == [], "the budget must prevent 429s"
        keys = [(s.path, tuple(sorted(s.query.items()))) for s in seen]
        assert len(keys) == len(set(keys)) == 30, "a finished request was sent again"
        assert _kinds(api) == {"summary": 2 * (4 + 4 + 2), "participants": 2 * 4,
                               "members": 2}
        assert "derived: 24 points of 8 cohorts" in second.stdout

        blocks = tmp_path / "data"
        result = subprocess.run([promtool, "tsdb", "create-blocks-from", "openmetrics",
                                 str(output), str(blocks)], capture_output=True, text=True,
                                timeout=120)
        assert result.returncode == 0, result.stdout + result.stderr

        port = free_port()
        url = f"http://127.0.0.1:{port}"
        prom_config = tmp_path / "prometheus.yml"
        prom_config.write_text("global: {scrape_interval: 1m}\n")
        prometheus = Process("prometheus", [
            prometheus_bin, f"--config.file={prom_config}", f"--storage.tsdb.path={blocks}",
            "--storage.tsdb.retention.time=3650d", f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn"], tmp_path / "prometheus.log", cwd=tmp_path)
        try:
            wait_for(lambda: prometheus.running()
                     and requests.get(f"{url}/-/ready", timeout=5).status_code == 200,
                     30, "Prometheus' /-/ready", diagnostics=prometheus.tail)
            checked = 0
            for days_ago in (30, 20, 10, 0):
                instant = until - days_ago * DAY
                for scenario in ("discovery-call-it-director", "renewal-negotiation"):
                    for cohort, query in _as_of(instant, fixed_start, fixed_end).items():
                        if query is None:
                            continue
                        want = api.expected(scenario, query)
                        got = _stored(url, scenario, cohort, instant)
                        assert got == _as_metrics(want), (scenario, cohort, days_ago)
                        checked += 1
            assert checked == 2 * 5 * 4 + 2 * 3
        finally:
            prometheus.stop()


def _iso(seconds: float) -> str:
    return dt.datetime.fromtimestamp(seconds, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _as_of(instant: int, fixed_start: int, fixed_end: int) -> dict[str, dict[str, str] | None]:
    """The queries the API must be asked for each cohort as of ``instant`` (written out
    here independently of the exporter's own code)."""
    return {
        "all": {"end_date": _iso(instant)},
        "last-7d": {"start_date": _iso(instant - 7 * DAY), "end_date": _iso(instant)},
        "sales": {"group_ids": "g1h2i3j4k5l6", "exclude_system_users": "true",
                  "end_date": _iso(instant)},
        "cs": {"group_ids": CS, "end_date": _iso(instant)},
        "no-staff": {"exclude_system_users": "true", "end_date": _iso(instant)},
        "pilot": None if instant < fixed_start else {
            "start_date": _iso(fixed_start), "end_date": _iso(min(instant, fixed_end))},
    }


def _as_metrics(body: dict[str, Any]) -> dict[str, float]:
    values = {
        "exec_scenario_participants": body["participant_count"],
        "exec_scenario_sessions": body["total_sessions"],
        "exec_scenario_average_best_score": body["average_best_score"],
        "exec_scenario_average_score_lift": body["average_lift_percentage"],
        "exec_scenario_practice_seconds": None if body["total_practice_minutes"] is None
        else body["total_practice_minutes"] * 60.0,
        "exec_scenario_average_session_duration_seconds":
            body["average_session_duration_seconds"],
    }
    out = {name: float(v) for name, v in values.items() if v is not None}
    for item in body["score_distribution"]:
        out[f"exec_scenario_rank_participants/{item['rank']}"] = float(item["count"])
    if body["average_best_rank"] is not None:
        for rank in ("gold", "silver", "bronze", "unranked"):
            out[f"exec_scenario_average_best_rank/{rank}"] = float(
                rank == body["average_best_rank"])
    return out


def _stored(url: str, scenario: str, cohort: str, instant: int) -> dict[str, float]:
    """What Prometheus holds for one target at ``instant`` (the sample at that time)."""
    expr = (f'{{__name__=~"exec_scenario_.+",job="exec-exporter",scenario="{scenario}",'
            f'cohort="{cohort}"}}')
    out = {}
    for item in _prometheus_query(url, expr, instant):
        metric = item["metric"]
        name = metric["__name__"] + (f"/{metric['rank']}" if "rank" in metric else "")
        out[name] = float(item["value"][1])
    return out


def test_the_command_line_dispatches_backfill(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                              ) -> None:
    code = cli.main(["backfill", f"--config.file={tmp_path / 'none.yaml'}", "--since=1d",
                     "--step=1h", f"--output={tmp_path / 'h.om'}"])
    assert code == 2
    assert "none.yaml: no such file" in capsys.readouterr().err


def test_labels_go_on_every_sample_and_a_rerun_relabels_without_requests(
        api: HistoryAPI, tmp_path: Path, key_env: None) -> None:
    config = write_config(tmp_path / "c.yaml", api.base_url)
    output = tmp_path / "h.om"
    argv = [f"--config.file={config}", "--since=1d", f"--until={midnight(1)}",
            f"--output={output}"]
    code, out, _ = run(argv)
    assert code == 0 and "note: no --label" in out
    sent = len(api.seen)
    code, out, _ = run([*argv, "--label=job=exec-exporter", "--label=instance=exporter:10025"])
    assert code == 0 and "labels on every sample: job='exec-exporter'" in out
    assert len(api.seen) == sent
    samples = [s for f in text_string_to_metric_families(output.read_text()) for s in f.samples]
    assert samples and all(s.labels["job"] == "exec-exporter"
                           and s.labels["instance"] == "exporter:10025" for s in samples)


@pytest.mark.parametrize(("label", "words"), [
    ("job", "not NAME=VALUE"), ("1x=a", "not a valid label name"),
    ("__name__=x", "not a valid label name"), ("cohort=x", "set by the exporter")])
def test_bad_labels_exit_2(api: HistoryAPI, tmp_path: Path, key_env: None, label: str,
                           words: str) -> None:
    config = write_config(tmp_path / "c.yaml", api.base_url)
    code, _, err = run([f"--config.file={config}", "--since=1d", f"--label={label}",
                        f"--output={tmp_path / 'h.om'}"])
    assert code == 2 and err.startswith("error: --label:") and words in err
    assert api.seen == []


def test_a_stop_ends_a_quota_wait_and_the_run_keeps_its_journal(clock: FakeClock) -> None:
    client = ScriptedClient(clock)
    sender = Sender(client, Budget(1, 1000), now=clock.time)  # the real, stop-aware sleep
    sender.fetch(_key(1))
    sender.stop.set()  # what SIGINT/SIGTERM do
    with pytest.raises(backfill.Stopped):
        sender.fetch(_key(2))  # would wait a minute for the budget
    assert len(client.sent) == 1
    assert backfill.StopFlag().wait(0.01) is False


def test_a_429_on_a_discovery_listing_waits_and_reads_the_page_again(tmp_path: Path,
                                                                      key_env: None) -> None:
    from fakeapi import FakeExecAPI, summary_body

    with FakeExecAPI(DEMO_API_KEY) as fake:
        fake.set_scenarios([{"id": "u1", "slug": "cold-call", "name": "Cold call"}])
        fake.set_summary("cold-call", summary_body())
        fake.set_list_fault("scenarios", "429_error_object", retry_after=1, times=1)
        config = write_config(tmp_path / "c.yaml", fake.base_url)
        raw = yaml.safe_load(config.read_text())
        raw["scenarios"], raw["discovery"] = [], {"scenarios": {}}
        config.write_text(yaml.safe_dump(raw))
        output = tmp_path / "h.om"
        code, out, err = run([f"--config.file={config}", "--since=1d",
                              f"--until={midnight(1)}", f"--output={output}"])
        assert code == 0, err
        assert len(fake.list_requests("scenarios")) == 2
        assert "discovery: 2 listing requests" in out
        assert len(fake.requests_for("cold-call")) == 4  # 2 cohorts x 2 instants
        assert 'scenario="cold-call"' in output.read_text()


@pytest.mark.parametrize("failures", [1, 10])
def test_a_failing_discovery_listing_is_retried_then_stops_the_run(tmp_path: Path,
                                                                    key_env: None,
                                                                    failures: int) -> None:
    """A 500 on the scenario list is retried by discovery's own rule (not a stop at the
    first error); one that keeps failing stops the run after TRANSIENT_TRIES reads."""
    from fakeapi import FakeExecAPI, summary_body

    with FakeExecAPI(DEMO_API_KEY) as fake:
        fake.set_scenarios([{"id": "u1", "slug": "cold-call", "name": "Cold call"}])
        fake.set_summary("cold-call", summary_body())
        fake.set_list_fault("scenarios", "500", times=failures)
        config = write_config(tmp_path / "c.yaml", fake.base_url)
        raw = yaml.safe_load(config.read_text())
        raw["scenarios"], raw["discovery"] = [], {"scenarios": {}}
        config.write_text(yaml.safe_dump(raw))
        code, out, err = run_a_day_on_a_fake_clock(config, tmp_path / "h.om")
        reads = len(fake.list_requests("scenarios"))
        if failures == 1:
            assert code == 0, err
            assert reads == 2 and "discovery: 2 listing requests" in out
            assert len(fake.requests_for("cold-call")) == 4
        else:
            assert code == 1 and reads == backfill.TRANSIENT_TRIES
            assert "error: discovery: reading scenarios failed" in err
            assert fake.requests_for("cold-call") == []


def test_failures_of_two_listings_count_apart(tmp_path: Path, key_env: None) -> None:
    """The stop rule is per list: the scenario list and the group list each failing
    twice (then answering) is not four failures of one listing; the run finishes."""
    from fakeapi import FakeExecAPI, summary_body

    with FakeExecAPI(DEMO_API_KEY) as fake:
        fake.set_scenarios([{"id": "u1", "slug": "cold-call", "name": "Cold call"}])
        fake.set_groups([{"id": "g1", "name": "Sales"}])
        fake.set_summary("cold-call", summary_body())
        fake.set_list_fault("scenarios", "500", times=2)
        fake.set_list_fault("groups", "500", times=2)
        config = write_config(tmp_path / "c.yaml", fake.base_url)
        raw = yaml.safe_load(config.read_text())
        raw["scenarios"] = []
        raw["discovery"] = {"scenarios": {}, "group_cohorts": {"include": ["Sales"]}}
        config.write_text(yaml.safe_dump(raw))
        code, _out, err = run_a_day_on_a_fake_clock(config, tmp_path / "h.om")
        assert code == 0, err
        assert len(fake.list_requests("scenarios")) == len(fake.list_requests("groups")) == 3
        assert fake.requests_for("cold-call")


def test_a_journal_that_cannot_be_written_stops_the_run(tmp_path: Path, key_env: None,
                                                       monkeypatch: pytest.MonkeyPatch
                                                       ) -> None:
    """A send the journal cannot record is not sent: the run stops at once with the
    journal's error (a full disk), not after four 'failed' tries of every request, each
    claiming quota."""
    from fakeapi import FakeExecAPI, summary_body

    from exporter.backfill import journal as journal_module

    def full(self: Any, at: float) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(journal_module.Journal, "add_sent", full)
    with FakeExecAPI(DEMO_API_KEY) as fake:
        fake.set_summary("cold-call", summary_body())
        config = write_config(tmp_path / "c.yaml", fake.base_url)
        code, _out, err = run_a_day_on_a_fake_clock(config, tmp_path / "h.om")
        assert code == 1
        assert "cannot write the journal" in err
        assert "No space left on device" in err
        assert fake.requests == [], "nothing is sent that the journal could not record"


# --- derived cohorts: one participants pull per scenario, date range and instant -------

SCENARIOS = ("discovery-call-it-director", "renewal-negotiation")
SALES, CS, SDR = "g1h2i3j4k5l6", "g7h8i9j0k1l2", "g3m4n5o6p7q8"
# Five cohorts that one all-time pull serves, and one rolling window alone in its range.
MANY_COHORTS: list[dict[str, Any]] = [
    {"name": "sales", "group_ids": [SALES], "exclude_system_users": True},
    {"name": "cs", "group_ids": [CS]},
    {"name": "no-staff", "exclude_system_users": True},
    {"name": "sdr", "group_ids": [SDR]},
]


def _queries(instant: int) -> dict[str, dict[str, str]]:
    """Each cohort's as-of summary query (written out here, apart from the exporter)."""
    end = _iso(instant)
    return {
        "all": {"end_date": end},
        "last-7d": {"start_date": _iso(instant - 7 * DAY), "end_date": end},
        "sales": {"group_ids": SALES, "exclude_system_users": "true", "end_date": end},
        "cs": {"group_ids": CS, "end_date": end},
        "no-staff": {"exclude_system_users": "true", "end_date": end},
        "sdr": {"group_ids": SDR, "end_date": end},
    }


def _written(path: Path) -> dict[tuple[str, str, int], dict[str, float]]:
    """(scenario, cohort, instant) -> the values in the file, named as :func:`_as_metrics`."""
    out: dict[tuple[str, str, int], dict[str, float]] = {}
    for family in text_string_to_metric_families(path.read_text()):
        for s in family.samples:
            if "cohort" not in s.labels:
                continue
            name = s.name + (f"/{s.labels['rank']}" if "rank" in s.labels else "")
            key = (s.labels["scenario"], s.labels["cohort"], int(float(s.timestamp)))
            out.setdefault(key, {})[name] = s.value
    return out


def _kinds(api: HistoryAPI) -> dict[str, int]:
    return {kind: len(api.of_kind(kind)) for kind in ("summary", "participants", "members")}


def test_cohorts_one_pull_serves_cost_fewer_requests_and_equal_the_summaries(
        api: HistoryAPI, tmp_path: Path, key_env: None) -> None:
    config = write_config(tmp_path / "c.yaml", api.base_url, extra_cohorts=MANY_COHORTS)
    output = tmp_path / "h.om"
    until = midnight(1)
    code, out, err = run([f"--config.file={config}", "--since=6d", f"--until={until}",
                          f"--output={output}"])
    assert code == 0, err
    instants = [until - d * DAY for d in range(6, -1, -1)]
    one_per_target = 2 * 6 * 7
    assert f"one summary per target and instant: {one_per_target} requests" in out
    assert "(all, sales, cs, no-staff, sdr): 35 summaries, or 5 proof summaries" in out
    # Per scenario: 5 proofs at the newest instant, 7 one-page pulls and 7 last-7d
    # summaries; the 3 member lists once for the run.
    assert _kinds(api) == {"summary": 2 * (5 + 7), "participants": 2 * 7, "members": 3}
    assert len(api.seen) == 41 < one_per_target
    assert "requests: about 41 with participants pulls" in out
    assert "derived: 60 points of 10 cohorts from 14 participants pulls" in out
    written = _written(output)
    for scenario in SCENARIOS:
        for instant in instants:
            for cohort, query in _queries(instant).items():
                want = _as_metrics(api.expected(scenario, query))
                assert written[(scenario, cohort, instant)] == want, (scenario, cohort, instant)
    assert len(written) == one_per_target


def test_a_cohort_the_pull_does_not_reproduce_is_written_from_summaries(
        api: HistoryAPI, tmp_path: Path, key_env: None,
        caplog: pytest.LogCaptureFixture) -> None:
    skewed = {"group_ids": SALES}
    api.set_summary_skew(SCENARIOS[0], "average_best_score", 2.0, when=skewed)
    config = write_config(tmp_path / "c.yaml", api.base_url, extra_cohorts=MANY_COHORTS)
    output = tmp_path / "h.om"
    until = midnight(1)
    code, out, err = run([f"--config.file={config}", "--since=6d", f"--until={until}",
                          f"--output={output}"])
    assert code == 0, err
    assert f"scenario={SCENARIOS[0]} cohort=sales: not reproduced" in out
    assert "average_best_score derived=" in out
    assert any("average_best_score" in r.getMessage() and r.levelname == "WARNING"
               for r in caplog.records)
    # Its summary is asked at every instant; the other cohorts are still derived.
    sales_asked = [s for s in api.summaries()
                   if s.scenario == SCENARIOS[0] and s.query.get("group_ids") == SALES]
    assert len(sales_asked) == 7
    assert "derived: 54 points of 9 cohorts" in out
    written = _written(output)
    for instant in [until - d * DAY for d in range(7)]:
        for scenario in SCENARIOS:
            for cohort, query in _queries(instant).items():
                want = _as_metrics(api.expected(scenario, query))
                assert written[(scenario, cohort, instant)] == want, (scenario, cohort, instant)
        # What was written for the skewed cohort is the endpoint's skewed value.
        sales = _queries(instant)["sales"]
        assert written[(SCENARIOS[0], "sales", instant)]["exec_scenario_average_best_score"] \
            == api.expected(SCENARIOS[0], sales)["average_best_score"]


def test_planner_mode_summary_sends_only_summary_requests(api: HistoryAPI, tmp_path: Path,
                                                          key_env: None) -> None:
    config = write_config(tmp_path / "c.yaml", api.base_url, extra_cohorts=MANY_COHORTS)
    raw = yaml.safe_load(config.read_text())
    raw["planner"] = {"mode": "summary"}
    config.write_text(yaml.safe_dump(raw))
    output = tmp_path / "h.om"
    code, out, err = run([f"--config.file={config}", "--since=6d", f"--until={midnight(1)}",
                          f"--output={output}"])
    assert code == 0, err
    assert "requests: 84 summary requests (one per distinct as-of query)" in out
    assert _kinds(api) == {"summary": 84, "participants": 0, "members": 0}
    assert "derived:" not in out


@pytest.mark.parametrize("stop_after", [2, 6, 20, 35])
def test_a_stopped_derived_run_resumes_without_repeating_a_request(
        api: HistoryAPI, tmp_path: Path, key_env: None, monkeypatch: pytest.MonkeyPatch,
        stop_after: int) -> None:
    """Stopped among the member lists (2), the proofs (6), the pulls (20) or the last
    summaries (35): the rerun sends only what the journal lacks, and writes the same
    file as a run that was never stopped."""
    config = write_config(tmp_path / "c.yaml", api.base_url, extra_cohorts=MANY_COHORTS)
    output = tmp_path / "h.om"
    argv = [f"--config.file={config}", "--since=6d", f"--until={midnight(1)}",
            f"--output={output}"]
    with stopped_after(monkeypatch, stop_after):
        code, _, err = run(argv)
    assert code == 0 and "stopped:" in err and not output.exists()
    assert len(api.seen) == stop_after
    code, out, err = run(argv)
    assert code == 0, err
    assert f"{stop_after} already done" in out
    sent = [(s.path, tuple(sorted(s.query.items()))) for s in api.seen]
    assert len(sent) == len(set(sent)) == 41, "a finished request was sent again"
    resumed = output.read_bytes()
    # The same command from scratch writes the same file.
    fresh = tmp_path / "fresh.om"
    code, _, _ = run([*argv[:3], f"--output={fresh}"])
    assert code == 0 and fresh.read_bytes() == resumed


@pytest.mark.parametrize(("users", "pages", "derived"), [(150, 2, True), (350, 4, False)])
def test_the_page_count_from_the_first_pull_decides(tmp_path: Path, key_env: None, users: int,
                                                    pages: int, derived: bool) -> None:
    """150 participants: 2 pages per pull serve 4 cohorts, so the pulls are read page by
    page and the values still equal the summaries. 350: the first page says 4 pages,
    as many as the 4 summaries, so the run stops that pull and uses summaries."""
    from fakeapi import FakeExecAPI

    with FakeExecAPI(DEMO_API_KEY) as fake:
        until = midnight(1)
        sessions, config = _cold_call(fake, tmp_path, users, until)
        output = tmp_path / "h.om"
        code, out, err = run(_four_days(config, until, output))
        assert code == 0, err
        pulled = fake.requests_to("/participants")
        summaries = fake.requests_to("/summary")
        if derived:
            # One pull per instant, every page of it (fewer participants further back).
            assert len([r for r in pulled if r.query["page"] == "1"]) == 5
            assert len(pulled) == sum(
                math.ceil(len({s.user_id for s in sessions if s.time <= until - d * DAY}) / 100)
                for d in range(5))
            assert len([r for r in pulled if r.query["page"] == str(pages)]) >= 1
            assert len(summaries) == 4  # the proofs
            assert "derived: 16 points of 4 cohorts from 5 participants pulls" in out
        else:
            assert len(pulled) == 1  # the first page said 4 pages: no saving
            assert len(summaries) == 4 * 5
            assert f"{pages} pages per pull cost as much as the summaries" in out
        _assert_written_as_summaries(fake, output, [until - d * DAY for d in range(5)])


def _four_days(config: Path, until: int, output: Path) -> list[str]:
    """The backfill arguments of the cold-call tests: four daily points up to ``until``."""
    return [f"--config.file={config}", "--since=4d", f"--until={until}", f"--output={output}"]


def _cold_call(fake: Any, tmp_path: Path, users: int, until: int,
               gs_every: int = 3) -> tuple[list[Any], Path]:
    """``cold-call`` with ``users`` participants (every tenth staff, every ``gs_every``-th
    in group ``gs``) practising over the 9 days up to ``until``, and a configuration of
    its four cohorts that one pull serves: the sessions and the configuration's path."""
    from fakeapi import Session, User

    people = [User(f"u{i:04d}", f"p{i}@{'exec.com' if i % 10 == 0 else 'acme.com'}",
                   frozenset({"gs"} if i % gs_every == 0 else set())) for i in range(users)]
    fake.set_users([*people, User("late", "late@acme.com", frozenset())])
    sessions = [Session(u.id, until - (i % 9) * DAY - 3600 * (1 + j),
                        40 + (i * 7 + j * 13) % 60, 200 + i % 50)
                for i, u in enumerate(people) for j in range(1 + i % 3)]
    fake.set_sessions("cold-call", sessions)
    config = write_config(tmp_path / "c.yaml", fake.base_url, extra_cohorts=[
        {"name": "no-staff", "exclude_system_users": True},
        {"name": "gs", "group_ids": ["gs"]},
        {"name": "vip", "user_emails": ["p1@acme.com", "p2@acme.com"]}])
    raw = yaml.safe_load(config.read_text())
    raw["scenarios"] = [{"id": "cold-call"}]
    raw["cohorts"] = [c for c in raw["cohorts"] if c["name"] != "last-7d"]
    config.write_text(yaml.safe_dump(raw))
    return sessions, config


def _assert_written_as_summaries(fake: Any, output: Path, instants: list[int]) -> None:
    """Every ``cold-call`` cohort at ``instants`` in ``output`` is what the API's summary
    endpoint says now."""
    written = _written(output)
    for instant in instants:
        end = _iso(instant)
        for cohort, query in {
                "all": {"end_date": end},
                "no-staff": {"exclude_system_users": "true", "end_date": end},
                "gs": {"group_ids": "gs", "end_date": end},
                "vip": {"user_emails": "p1@acme.com,p2@acme.com", "end_date": end}}.items():
            answer = fake.summary("cold-call", query)
            want = _as_metrics(json.loads(answer.body))
            assert written[("cold-call", cohort, instant)] == want, (cohort, _iso(instant))


def test_a_pull_whose_pages_disagree_is_dropped_and_its_instant_uses_summaries(
        tmp_path: Path, key_env: None) -> None:
    """A session arrives late (logged a minute before the instant a day back) between
    the two pages of that instant's pull: its second page's ``total_count`` is one more
    than the first's. The pull is dropped whole, as the daemon drops one, and that
    instant's cohorts are written from summaries asked after the change; the other
    pulls still serve theirs. A rerun replays the journaled pages to the same verdict
    and sends nothing."""
    from fakeapi import FakeExecAPI, Session

    until = midnight(1)
    changed_at = until - DAY

    class LateSession(FakeExecAPI):
        def handle(self, request: Any) -> Any:
            answer = super().handle(request)
            if (request.path.endswith("/participants") and request.query.get("page") == "1"
                    and request.query.get("end_date") == _iso(changed_at)):
                self.add_sessions("cold-call", [Session("late", changed_at - 60, 77, 300)])
            return answer

    with LateSession(DEMO_API_KEY) as fake:
        sessions, config = _cold_call(fake, tmp_path, 150, until)
        output = tmp_path / "h.om"
        argv = _four_days(config, until, output)
        code, out, err = run(argv)
        assert code == 0, err
        assert (f"the participants pull as of {_iso(changed_at)} was not used" in out
                and "changed between pages (total_count 133 then 134" in out), out
        pulled = fake.requests_to("/participants")
        # Every page of every pull was read (two of the dropped one): nothing more.
        assert len([r for r in pulled if r.query["end_date"] == _iso(changed_at)]) == 2
        assert len(pulled) == sum(
            math.ceil(len({s.user_id for s in sessions if s.time <= until - d * DAY}) / 100)
            for d in range(5))
        summaries = fake.requests_to("/summary")
        assert len(summaries) == 4 + 4  # the proofs, and the dropped pull's instant
        assert {r.query["end_date"] for r in summaries} == {_iso(until), _iso(changed_at)}
        assert "derived: 12 points of 4 cohorts from 4 participants pulls" in out
        # The late session is in the summaries written for its instant; the instants
        # before it never had it (the newest one was written before it arrived).
        _assert_written_as_summaries(fake, output, [until - d * DAY for d in range(1, 5)])
        assert _written(output)[("cold-call", "all", changed_at)]["exec_scenario_participants"] \
            == 134
        _assert_a_rerun_repeats_nothing(fake, argv, output)


def _assert_a_rerun_repeats_nothing(fake: Any, argv: list[str], output: Path) -> None:
    """Running ``argv`` again sends no request (the journal answers) and writes the
    same file."""
    first = output.read_bytes()
    sent = len(fake.requests)
    code, _, err = run(argv)
    assert code == 0, err
    again = len(fake.requests) - sent  # a count: a request's repr carries its key
    assert again == 0, "the rerun asked the API again"
    assert output.read_bytes() == first


def test_a_member_list_whose_pages_disagree_is_refused_and_its_cohort_uses_summaries(
        tmp_path: Path, key_env: None) -> None:
    """The first page of group ``gs``'s member list (150 members, 2 pages) comes back
    one member short while its pagination still counts 150: the list is refused at that
    page, as the daemon refuses it (no second page is asked for), and the ``gs`` cohort
    is written from summaries at every instant while the others are derived. The
    journal keeps the page's size, so a rerun refuses the replayed page the same way
    and sends nothing."""
    from fakeapi import FakeExecAPI

    with FakeExecAPI(DEMO_API_KEY) as fake:
        until = midnight(1)
        _, config = _cold_call(fake, tmp_path, 150, until, gs_every=1)
        fake.set_list_fault("members", "short_page", times=1)
        output = tmp_path / "h.om"
        argv = _four_days(config, until, output)
        code, out, err = run(argv)
        assert code == 0, err
        assert "members of group gs: not readable (members of group gs: page 1 of 2 has " \
               "99 items, not 100" in out, out
        assert len(fake.requests_to("/workspace/members")) == 1
        gs_summaries = [r for r in fake.requests_to("/summary") if "group_ids" in r.query]
        assert len(gs_summaries) == 5
        assert "derived: 12 points of 3 cohorts from 5 participants pulls" in out
        _assert_written_as_summaries(fake, output, [until - d * DAY for d in range(5)])
        _assert_a_rerun_repeats_nothing(fake, argv, output)


def test_a_journal_from_before_page_sizes_were_kept_still_resumes(
        tmp_path: Path, key_env: None) -> None:
    """Journals written before the page lines carried ``page_size`` are read: their pages
    are checked by their own lengths, and a rerun sends nothing and writes the same
    file."""
    from fakeapi import FakeExecAPI

    with FakeExecAPI(DEMO_API_KEY) as fake:
        until = midnight(1)
        _, config = _cold_call(fake, tmp_path, 150, until)
        output = tmp_path / "h.om"
        argv = _four_days(config, until, output)
        code, _, err = run(argv)
        assert code == 0, err
        journal = output.with_name("h.om.journal")
        lines = [json.loads(line) for line in journal.read_text().splitlines()]
        paged = [line for line in lines if "page_size" in line]
        assert len(paged) > 5 and {line["page_size"] for line in paged} == {100}
        for line in paged:
            del line["page_size"]
        journal.write_text("".join(json.dumps(line) + "\n" for line in lines))
        first = output.read_bytes()
        sent = len(fake.requests)
        code, out, err = run(argv)
        assert code == 0, err
        again = len(fake.requests) - sent
        assert again == 0, "the rerun asked the API again"
        assert output.read_bytes() == first
        assert "derived: 16 points of 4 cohorts from 5 participants pulls" in out


# --- one ledger per workspace: the daemon and a backfill side by side --------------------


def test_a_daemon_and_a_backfill_on_one_state_file_share_the_quota(tmp_path: Path,
                                                                   key_env: None) -> None:
    """The daemon polls 4 targets every minute while a backfill of 44 requests runs on the
    same state file, against an API whose minute quota is the configured one (20): no
    429, the backfill finishes, every daemon target stays fresh, and every request of
    both is in the one ledger. One fake clock drives the API, the daemon and the backfill;
    the daemon runs whenever the backfill waits for the quota."""
    from exporter.config import ApiKey, load_config
    from exporter.daemon import Exporter
    from exporter.ledger import ledger_path

    clock = FakeClock(NOW)
    with HistoryAPI(requests_per_minute=20, requests_per_day=100_000, clock=clock) as api:
        config = write_config(tmp_path / "c.yaml", api.base_url, rpm=20)
        raw = yaml.safe_load(config.read_text())
        raw.update(refresh_interval="1m", planner={"mode": "summary"})
        config.write_text(yaml.safe_dump(raw))
        state = tmp_path / "state.json"
        daemon = Exporter(load_config(str(config)), ApiKey(DEMO_API_KEY, "test"), str(config),
                          str(state), clock)

        def run_daemon_until(until: float) -> None:
            for _ in range(10_000):  # bounded: a few requests a minute
                wake = daemon.poller.step()
                if wake > clock.now:
                    if wake >= until:
                        break
                    clock.now = wake
            clock.now = max(clock.now, until)

        def sleep(seconds: float) -> bool:  # the backfill waits: the daemon runs meanwhile
            run_daemon_until(clock.now + seconds)
            return False

        run_daemon_until(NOW + 30)  # the daemon's first fill, then it idles
        assert len(api.seen) == 4
        args = cli.build_parser().parse_args([
            "backfill", f"--config.file={config}", "--since=10d",
            f"--until={midnight(1, NOW)}", f"--output={tmp_path / 'h.om'}",
            f"--state.file={state}"])
        out, err = io.StringIO(), io.StringIO()
        code = backfill.main(args, now=clock.time, out=out, err=err, sleep=sleep)
        assert code == 0, err.getvalue()
        run_daemon_until(clock.now + 60)  # and it goes on after the backfill
        daemon.running.client.close()

    assert [s for s in api.seen if s.status != 200] == []  # no 429, nothing refused
    assert "the running exporter spent 4 requests" in out.getvalue()
    assert "sharing the quota: 4/minute and 5760/day stay free" in out.getvalue()
    # 12 at once (20 a minute, less the daemon's 4 in it and the 4 left free), then 32
    # at 16 a minute.
    assert "time at this budget: about 2m\n" in out.getvalue()
    backfilled = [s for s in api.seen if s.query.get("end_date") and s.time >= NOW + 30]
    assert len(backfilled) == 44
    times = sorted(s.time for s in api.seen)
    assert all(sum(1 for u in times if t - 60 < u <= t) <= 20 for t in times)
    assert clock.now - NOW > 120  # 44 + the daemon's requests need more than 2 minutes
    polled = [s.time for s in api.seen if not s.query.get("end_date")]
    assert len(polled) > 4 * 3  # the daemon kept polling while the backfill ran
    for target in daemon.store.snapshot().targets:
        assert target.up and target.last_success is not None
        assert clock.now - target.last_success <= 2 * 60, target.target.key  # fresh
    ledger = [float(t) for t in ledger_path(state).read_text().split()]
    assert sorted(round(s.time, 3) for s in api.seen) == sorted(ledger)


@pytest.mark.parametrize("daemon_knows", [False, True])
def test_a_member_list_costs_its_pages(tmp_path: Path, key_env: None,
                                       daemon_knows: bool) -> None:
    """4 cohorts over 2 instants: 8 summaries, or 4 proofs + 2 one-page pulls + the
    "gs" member list. At 1 page (7) the pull is cheaper; the list has 250 members, 3
    pages (9), so it is not. Known from the daemon's saved list, the plan says so and
    reads nothing; unknown, the run learns it from the list's first page and uses the
    summaries without reading the rest."""
    from fakeapi import FakeExecAPI, Session, User

    with FakeExecAPI(DEMO_API_KEY) as fake:
        until = midnight(1)
        people = [User(f"u{i:04d}", f"p{i}@acme.com", frozenset({"gs"} if i < 250 else set()))
                  for i in range(300)]
        fake.set_users(people)
        fake.set_sessions("cold-call", [Session(u.id, until - 3600 - i, 40 + i % 60, 200)
                                        for i, u in enumerate(people[::6])])
        config = write_config(tmp_path / "c.yaml", fake.base_url, extra_cohorts=[
            {"name": "no-staff", "exclude_system_users": True},
            {"name": "gs", "group_ids": ["gs"]},
            {"name": "vip", "user_emails": ["p1@acme.com"]}])
        raw = yaml.safe_load(config.read_text())
        raw["scenarios"] = [{"id": "cold-call"}]
        raw["cohorts"] = [c for c in raw["cohorts"] if c["name"] != "last-7d"]
        config.write_text(yaml.safe_dump(raw))
        argv = [f"--config.file={config}", "--since=1d", f"--until={until}",
                f"--output={tmp_path / 'h.om'}"]
        if daemon_knows:
            state = tmp_path / "state.json"
            state.write_text(json.dumps({"version": 1, "saved_at": time.time(), "targets": [],
                                         "members": {"gs": {"user_ids": [
                                             u.id for u in people[:250]], "at": time.time()}}}))
            argv.append(f"--state.file={state}")
        code, out, err = run(argv)
        assert code == 0, err
        members = fake.requests_to("/workspace/members")
        if daemon_knows:
            assert "requests: 8 summary requests" in out and "no scenario has cohorts" in out
            assert members == []
        else:
            assert "+ 1 member lists = 7 -> participants" in out
            assert [r.query["page"] for r in members] == ["1"]  # then no more
            assert "has 3 pages, so 9 requests against 8 summaries" in out
        assert fake.requests_to("/participants") == []
        assert len(fake.requests_to("/summary")) == 8


def test_the_time_estimate_counts_the_rolling_minute_in_whole_minutes() -> None:
    # Seen: "under a minute" printed for 101 requests at 54 a minute, which took 62 s.
    from exporter.backfill.plan import estimate_seconds

    budget = Budget(54, 900)
    assert estimate_seconds(54, budget, NOW) == 0  # one minute's room: at once
    assert estimate_seconds(101, budget, NOW) == 60
    assert estimate_seconds(109, budget, NOW) == 120
