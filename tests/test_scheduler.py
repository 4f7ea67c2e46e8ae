"""The scheduler on a fake clock: simulated days in milliseconds, no sleeping."""

from __future__ import annotations

import bisect
import itertools
import logging
import random
import statistics
from collections.abc import Callable
from dataclasses import replace

import pytest
from conftest import FakeClock

from exporter.budget import DAY, MINUTE, Budget
from exporter.client import (
    ApiError,
    NotFound,
    RateLimited,
    Summary,
    Timeout,
    Unauthorized,
    UpstreamError,
)
from exporter.config import parse_config
from exporter.jobs import Job, Running, summary_job
from exporter.scheduler import Key, Poller, Scheduler, effective_interval
from exporter.store import Store
from exporter.targets import build_targets

Outcome = Callable[[Key, float], ApiError | None]


def keys(n: int) -> list[Key]:
    return [(f"s{i}", "all") for i in range(n)]


def jobs(keys: list[Key]) -> list[Job]:
    """Recurring jobs that stand for targets: the simulation runs no request."""
    def never(*args: object) -> None:
        raise AssertionError("the simulation sends nothing")
    return [Job(kind="summary", key=k, fetch=never, apply=never) for k in keys]


def make(n: int, refresh: float = 900, per_minute: int = 54, per_day: int = 900,
         ledger: list[float] | None = None) -> Scheduler:
    scheduler = Scheduler(Budget(per_minute, per_day, ledger or []), refresh,
                          rng=random.Random(1))
    scheduler.set_jobs(jobs(keys(n)))
    return scheduler


def simulate(scheduler: Scheduler, start: float, seconds: float,
             outcome: Outcome | None = None,
             took: Callable[[Key], float] | None = None) -> list[tuple[float, Key]]:
    """Run the decide loop over ``seconds`` of fake time; return (time, target) sent.
    ``took`` says how long a request to a target lasts (default: no time)."""
    now, end = start, start + seconds
    sent: list[tuple[float, Key]] = []
    for _ in range(10_000_000):  # bounded
        if now >= end:
            break
        decision = scheduler.decide(now)
        if decision.key is None:
            assert decision.wake_at > now, "a wait must move time forward"
            now = decision.wake_at
            continue
        scheduler.sent(decision.key, now)
        sent.append((now, decision.key))
        error = outcome(decision.key, now) if outcome else None
        if took is not None:
            now += took(decision.key)
        if error is None:
            scheduler.succeeded(decision.key, now)
        else:
            scheduler.failed(decision.key, error, now)
    return sent


def max_in_window(times: list[float], window: float) -> int:
    times = sorted(times)
    return max((bisect.bisect_right(times, t + window - 1e-9) - i
                for i, t in enumerate(times)), default=0)


def gaps_per_target(sent: list[tuple[float, Key]], after: float) -> list[float]:
    last: dict[Key, float] = {}
    gaps = []
    for at, key in sent:
        if key in last and last[key] >= after:
            gaps.append(at - last[key])
        last[key] = at
    return gaps


def test_effective_interval_arithmetic() -> None:
    assert effective_interval(20, 900, 900, 54) == 1920
    assert effective_interval(5, 900, 900, 54) == 900
    assert effective_interval(10, 1, 86400, 60) == 10
    assert effective_interval(100, 60, 1_000_000, 54) == pytest.approx(100 * 60 / 54)


def test_a_day_of_100_targets_stays_in_budget_and_refreshes_on_time() -> None:
    scheduler = make(100)
    interval = scheduler.interval
    assert interval == pytest.approx(100 * 86400 / 900)
    start = 1_790_000_000.0
    sent = simulate(scheduler, start, 2 * DAY)
    times = [t for t, _ in sent]
    assert max_in_window(times, DAY) <= 900
    assert max_in_window(times, MINUTE) <= 54
    # The first fill goes as fast as the minute budget allows: 100 targets in two minutes.
    assert sum(1 for t in times if t < start + 2 * MINUTE) == 100
    # Steady state (after the first cycle): every target every interval, within 5%.
    gaps = gaps_per_target(sent, after=start + 2 * interval)
    assert gaps, "no steady-state refreshes observed"
    assert min(gaps) >= interval * 0.95
    assert max(gaps) <= interval * 1.05
    # The budget is used, not hoarded: the second day sends (nearly) the whole budget.
    second_day = [t for t in times if t >= start + DAY]
    assert len(second_day) >= 0.95 * 900


def test_ten_targets_on_one_request_per_second() -> None:
    # 86,400/day with 10% reserve: 77,760/day and 54/min; 10 targets wanted every second.
    scheduler = make(10, refresh=1, per_minute=54, per_day=77_760)
    assert scheduler.interval == pytest.approx(10 * 86400 / 77_760)  # ~11.1 s
    sent = simulate(scheduler, 0.0, 3600)
    times = [t for t, _ in sent]
    rate = sum(1 for t in times if t >= 600) / 3000
    assert 0.7 <= rate <= 1.1
    assert max_in_window(times, MINUTE) <= 54
    gaps = gaps_per_target(sent, after=600)
    assert statistics.median(gaps) == pytest.approx(scheduler.interval, rel=0.05)


def test_fill_is_stalest_first_and_then_paced() -> None:
    scheduler = make(3, refresh=60, per_minute=60, per_day=86400)
    sent = simulate(scheduler, 0.0, 62)
    assert [k for _, k in sent[:3]] == keys(3)
    assert [t for t, _ in sent[:3]] == [0.0, 0.0, 0.0]
    # Then each is refreshed one interval after its last attempt.
    assert [t for t, _ in sent[3:]] == [60.0, 61.0]


def test_rate_limited_pauses_every_request_until_retry_after() -> None:
    scheduler = make(5, refresh=10, per_minute=600, per_day=864000)
    throttled = {"until": 0.0}

    def outcome(key: Key, at: float) -> ApiError | None:
        if at == 30.0 or (30.0 < at < throttled["until"]):
            throttled["until"] = at + 120
            return RateLimited("HTTP 429", retry_after=120)
        return None

    sent = simulate(scheduler, 0.0, 400, outcome)
    times = [t for t, _ in sent]
    inside = [t for t in times if 30.0 < t < 150.0]
    assert inside == []
    assert any(150.0 <= t < 152 for t in times)


def test_unauthorized_pauses_and_probes_with_growing_waits() -> None:
    scheduler = make(20, refresh=1, per_minute=600, per_day=864000)
    sent = simulate(scheduler, 0.0, 1800, lambda key, at: Unauthorized("HTTP 401", 401))
    times = [t for t, _ in sent]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert gaps[:5] == [30.0, 60.0, 120.0, 240.0, 300.0]
    assert all(g == 300.0 for g in gaps[4:])
    assert sum(1 for t in times if t < 30) == 1  # at most one request in the first 30 s


def test_access_restored_resumes_polling() -> None:
    scheduler = make(3, refresh=10, per_minute=600, per_day=864000)
    sent = simulate(scheduler, 0.0, 200,
                    lambda key, at: Unauthorized("HTTP 401", 401) if at < 50 else None)
    # Probes at 0 and 30 s fail; the one at 90 s gets through and the first fill
    # resumes at once: the refused requests were not the targets' attempts.
    assert [t for t, _ in sent if t <= 90] == [0.0, 30.0, 90.0, 90.0, 90.0]
    assert scheduler.pause is None
    after = [t for t, _ in sent if t >= 90]
    assert len(after) >= 3 * (110 // 10)


def test_not_found_backs_off_that_target_alone() -> None:
    scheduler = make(3, refresh=10, per_minute=600, per_day=864000)
    gone: Key = ("s1", "all")
    sent = simulate(scheduler, 0.0, 7200,
                    lambda key, at: NotFound("HTTP 404", 404) if key == gone else None)
    gone_times = [t for t, k in sent if k == gone]
    others = [t for t, k in sent if k != gone]
    gaps = [b - a for a, b in itertools.pairwise(gone_times)]
    # Growing (a slot may go to a healthy target first: 0.1 s at this pace).
    assert gaps[:4] == pytest.approx([10.0, 20.0, 40.0, 80.0], abs=0.5)
    assert max(gaps) <= 3600.0
    assert len(others) >= 2 * 7200 / 10 * 0.95  # the others carry on


def test_server_errors_back_off_exponentially_with_jitter_capped_at_interval() -> None:
    scheduler = make(2, refresh=60, per_minute=600, per_day=864000)
    broken: Key = ("s0", "all")
    sent = simulate(scheduler, 0.0, 1200,
                    lambda key, at: UpstreamError("HTTP 500", 500) if key == broken else None)
    times = [t for t, k in sent if k == broken]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert 5 <= gaps[0] <= 10 and 10 <= gaps[1] <= 20 and 20 <= gaps[2] <= 40
    assert max(gaps) <= 60.0
    healthy = [t for t, k in sent if k != broken]
    assert len(healthy) >= 1200 / 60 - 1


def test_restored_targets_are_due_by_age_no_fill_burst() -> None:
    budget = Budget(54, 900)
    scheduler = Scheduler(budget, 900, rng=random.Random(1))
    now = 1_790_000_000.0
    ages = {k: now - 100 * i for i, k in enumerate(keys(5))}  # 0, 100, ..., 400 s old
    scheduler.set_jobs(jobs(keys(5)), restored=ages)
    sent = simulate(scheduler, now, 450)
    # Nothing is due until its data reaches the interval's age (the oldest at +500 s).
    assert sent == []
    sent = simulate(scheduler, now, 1000)
    assert [k for _, k in sent] == list(reversed(keys(5)))  # oldest data first


def test_restored_ledger_counts_against_the_day() -> None:
    now = 1_790_000_000.0
    spent = [now - 3600 + i for i in range(900)]  # a crash loop spent the day an hour ago
    scheduler = make(5, ledger=spent)
    sent = simulate(scheduler, now, DAY)
    assert sent and sent[0][0] >= spent[0] + DAY
    times = spent + [t for t, _ in sent]
    assert max_in_window(times, DAY) <= 900


def test_five_percent_failures_never_overrun() -> None:
    rng = random.Random(5)
    scheduler = make(100)
    sent = simulate(scheduler, 0.0, 2 * DAY,
                    lambda key, at: UpstreamError("HTTP 503", 503) if rng.random() < 0.05
                    else None)
    times = [t for t, _ in sent]
    assert max_in_window(times, DAY) <= 900
    assert max_in_window(times, MINUTE) <= 54


def test_target_changes_keep_times_of_unchanged_targets() -> None:
    scheduler = make(2, refresh=60, per_minute=600, per_day=864000)
    simulate(scheduler, 0.0, 1)
    before = scheduler.times(("s0", "all")).last_success
    scheduler.set_jobs(jobs([("s0", "all"), ("new", "all")]))
    assert scheduler.times(("s0", "all")).last_success == before
    assert scheduler.times(("new", "all")).filling
    assert scheduler.decide(2.0).key == ("new", "all")


class FakeClient:
    """Stands in for ExecClient in Poller tests: counts calls, returns a summary."""

    def __init__(self, error: ApiError | None = None) -> None:
        self.calls: list[tuple[str, dict[str, str]]] = []
        self.error = error

    def summary(self, scenario: str, params: dict[str, str]) -> Summary:
        self.calls.append((scenario, params))
        if self.error is not None:
            raise self.error
        return Summary(participants=len(self.calls), average_best_score=80.0)


def test_poller_records_outcomes_in_the_store(clock: FakeClock) -> None:
    config = parse_config({"scenarios": [{"id": "a"}, {"id": "b"}],
                           "cohorts": [{"name": "week", "window": "7d"}],
                           "refresh_interval": "1m",
                           "api": {"rate_limit": {"requests_per_day": 86400}}})
    targets = {t.key: t for t in build_targets(config)}
    store = Store()
    store.set_targets(targets.values())
    scheduler = Scheduler(Budget(54, 77760), 60)
    client = FakeClient()
    running = Running(client=client,  # type: ignore[arg-type]
                      jobs=tuple(summary_job(t, store) for t in targets.values()),
                      refresh_interval=60, minute_budget=54, day_budget=77760)
    poller = Poller(scheduler, lambda: running, store, clock)
    for _ in range(10):
        wake = poller.step()
        clock.now = max(clock.now, wake)
    assert [c[0] for c in client.calls[:2]] == ["a", "b"]
    assert client.calls[0][1]["start_date"]  # the window became a start_date
    state = store.get(("a", "week"))
    assert state is not None and state.up and state.summary is not None
    assert store.snapshot().api_requests == {("summary", "200"): len(client.calls)}

    client.error = Unauthorized("HTTP 401 (authentication_error)", 401)
    clock.now = max(clock.now, poller.step())
    clock.now = max(clock.now, poller.step())
    snapshot = store.snapshot()
    # Workspace-wide: counted once by reason and shown through the pause (the daemon
    # hands the scheduler's view to the store); no target's own state changes.
    assert scheduler.pause is not None and scheduler.pause.reason == "unauthorized"
    assert snapshot.errors == {"unauthorized": 1}
    assert snapshot.api_requests[("summary", "401")] == 1
    assert all(s.up and s.last_error is None for s in snapshot.targets)
    assert all(s.summary is not None for s in snapshot.targets)  # last good values stay


def test_failing_targets_cannot_starve_healthy_ones() -> None:
    # Refresh every 10 s, three targets; two hang until their timeout every time.
    # Retries are capped at the interval, but the healthy target must still be
    # refreshed about every interval.
    scheduler = make(3, refresh=10, per_minute=600, per_day=864000)
    broken = {("s0", "all"), ("s1", "all")}
    sent = simulate(scheduler, 0.0, 600,
                    lambda key, at: Timeout("no answer") if key in broken else None,
                    took=lambda key: 6.0 if key in broken else 0.01)  # each hangs 6 s
    healthy = [t for t, k in sent if k == ("s2", "all")]
    gaps = [b - a for a, b in itertools.pairwise(healthy)]
    assert len(healthy) >= 40
    assert max(gaps) <= 10 + 2 * 6.0 + 1


def test_a_429_during_the_first_fill_resumes_the_fill_after_the_pause() -> None:
    # 10 targets, the API throttles the 4th request: the refused target and the six
    # never tried are all fetched as soon as the pause ends, not an interval later.
    scheduler = make(10, refresh=1200, per_minute=54, per_day=86400)
    calls = {"n": 0}

    def outcome(key: Key, at: float) -> ApiError | None:
        calls["n"] += 1
        return RateLimited("HTTP 429", retry_after=60) if calls["n"] == 4 else None

    sent = simulate(scheduler, 0.0, 120, outcome)
    refused = sent[3][1]
    after = [(t, k) for t, k in sent if t >= 60]
    assert [t for t, _ in sent[:4]] == [0.0] * 4
    assert not [t for t, _ in sent if 0 < t < 60]
    # The fill resumes at the end of the pause: 7 requests at once (refused one included).
    assert [t for t, _ in after] == [60.0] * 7
    assert refused in {k for _, k in after}
    assert all(scheduler.times(k).last_success is not None for k in keys(10))


def test_a_workspace_refusal_does_not_count_as_the_targets_attempt() -> None:
    scheduler = make(2, refresh=600, per_minute=600, per_day=864000)
    key = scheduler.decide(0.0).key
    assert key is not None
    scheduler.sent(key, 0.0)
    scheduler.failed(key, Unauthorized("HTTP 401", 401), 0.5)
    assert scheduler.times(key).filling  # still part of the first fill
    scheduler.sent(key, 31.0)
    scheduler.failed(key, UpstreamError("HTTP 500", 500), 31.5)
    assert scheduler.times(key).last_attempt == 31.0  # a target's own fault counts


def test_a_raising_handler_is_counted_logged_once_and_polling_goes_on(
        clock: FakeClock, caplog: pytest.LogCaptureFixture) -> None:
    config = parse_config({"scenarios": [{"id": "a"}, {"id": "b"}], "refresh_interval": "1m",
                           "api": {"rate_limit": {"requests_per_day": 86400}}})
    targets = {t.key: t for t in build_targets(config)}
    store = Store()
    store.set_targets(targets.values())
    client = FakeClient()

    def broken(summary: Summary, at: float) -> None:
        raise KeyError("a bug in a handler")

    jobs = tuple(summary_job(t, store) for t in targets.values())
    jobs = (replace(jobs[0], apply=broken, fail=broken), *jobs[1:])  # type: ignore[arg-type]
    running = Running(client=client, jobs=jobs,  # type: ignore[arg-type]
                      refresh_interval=60, minute_budget=54, day_budget=77760)
    poller = Poller(Scheduler(Budget(54, 77760), 60), lambda: running, store, clock)
    with caplog.at_level(logging.ERROR, logger="exporter.scheduler"):
        for _ in range(4):
            clock.now = max(clock.now, poller.step())
    snapshot = store.snapshot()
    assert [c[0] for c in client.calls[:2]] == ["a", "b"]  # b still polled after a raised
    assert sum(snapshot.api_requests.values()) == len(client.calls)
    assert snapshot.api_requests[("summary", "200")] == len(client.calls)
    assert store.get(("b", "all")).up  # type: ignore[union-attr]
    tries = [c[0] for c in client.calls].count("a")
    raised = [r for r in caplog.records if "kind=summary scenario=a" in r.getMessage()]
    assert len(raised) == 2 * tries  # per try: the handler, then its failure handler
    assert snapshot.errors == {"invalid_response": tries}
