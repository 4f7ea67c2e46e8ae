"""The fault matrix, over real HTTP: every way the Exec API can fail, one at a time.

One exporter (in-process, 1 s refresh, 1 s API timeout, max_staleness 1 h) polls
three scenarios x two cohorts on the fault-injecting fake API. Each test puts
one fault on one scenario and checks that:

* that scenario's targets go down (``exec_exporter_target_up`` 0) with the
  contract's reason (``exec_exporter_target_last_error{reason}``), and count it
  (``exec_exporter_target_errors_total``, ``exec_exporter_errors_total{reason}``);
* their last good values are still exported;
* the other scenarios stay up, keep refreshing and count no errors;
* /metrics answers every scrape, hang and trickles included (each scrape is a
  bounded request: a scrape that hangs fails the test);
* the target recovers by itself once the fault is cleared.

No assertion is a timing threshold: the tests assert outcomes, counters and that
requests completed, within generous bounded waits (the numbers live in benchmarks/).

Workspace-wide faults (401, 403, 429) and connection refused have their own
tests with the contract's own expectations. Waits that would take real time
(the 30 s auth probe, backoffs, max_staleness) are skipped by moving the
exporter's clock forward, never by sleeping.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from fakeapi import FakeExecAPI, summary_body
from harness import (
    InProcess,
    OffsetClock,
    Values,
    config_text,
    make_key,
    sample,
    status_kib,
    wait_until,
)

FAULTY = "discovery-call"  # two cohorts; the workspace-wide faults go here
HEALTHY = ("pricing-objection", "renewal-negotiation")
COHORTS = ("all", "sales")
# Per-target faults and the reason each must be reported with. In the matrix run
# each gets its own scenario (cohort "all" only) and all are injected at once.
MATRIX = {
    "500": "server_error",
    "503_html": "server_error",
    "invalid_json": "invalid_response",
    "json_array": "invalid_response",
    "wrong_types": "invalid_response",
    "negative_count": "invalid_response",
    "score_250": "invalid_response",
    "rank_platinum": "invalid_response",
    "hang": "timeout",
    "huge_body": "invalid_response",
    "404": "not_found",
    "400": "bad_request",
}
MATRIX_SCENARIOS = {fault: f"fault-{fault}" for fault in MATRIX}
PARTICIPANTS = {FAULTY: 45, HEALTHY[0]: 12, HEALTHY[1]: 7,
                **{s: 20 + i for i, s in enumerate(MATRIX_SCENARIOS.values())}}
TARGETS = [(FAULTY, c) for c in COHORTS] + [(s, c) for s in HEALTHY for c in COHORTS] + [
    (s, "all") for s in MATRIX_SCENARIOS.values()]


@dataclass
class Env:
    """The fake API and the exporter."""

    api: FakeExecAPI
    exporter: InProcess

    def scrape(self) -> Values:
        # A bounded request (5 s): a scrape stuck behind the poller raises.
        return self.exporter.scrape()[0]

    def up(self, values: Values, scenario: str, cohort: str = "all") -> float | None:
        return sample(values, "exec_exporter_target_up", scenario=scenario, cohort=cohort)

    def errors(self, values: Values, scenario: str, cohort: str = "all") -> float:
        return sample(values, "exec_exporter_target_errors_total", scenario=scenario,
                      cohort=cohort) or 0.0

    def last_error(self, values: Values, scenario: str, cohort: str = "all") -> str | None:
        """The reason a target is down with (its only last_error series), if any."""
        reasons = [dict(labels)["reason"] for (name, labels), v in values.items()
                   if name == "exec_exporter_target_last_error" and v == 1
                   and ("scenario", scenario) in labels and ("cohort", cohort) in labels]
        assert len(reasons) <= 1, reasons
        return reasons[0] if reasons else None

    def failed_with(self, values: Values, scenario: str, reason: str, before: Values,
                    cohort: str = "all") -> bool:
        """Down with ``reason``, its own error count grown since ``before``."""
        return (self.up(values, scenario, cohort) == 0
                and self.last_error(values, scenario, cohort) == reason
                and self.errors(values, scenario, cohort) > self.errors(before, scenario, cohort))

    def all_errors(self, values: Values, scenario: str) -> float:
        return sum(v for (name, labels), v in values.items()
                   if name == "exec_exporter_target_errors_total"
                   and ("scenario", scenario) in labels)

    def last_success(self, values: Values, scenario: str, cohort: str = "all") -> float:
        value = sample(values, "exec_exporter_target_last_success_timestamp_seconds",
                       scenario=scenario, cohort=cohort)
        assert value is not None
        return value

    def all_up(self) -> Values | None:
        values = self.scrape()
        ok = all(self.up(values, s, c) == 1 for s, c in TARGETS)
        return values if ok else None


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    key = make_key()
    clock = OffsetClock()  # shared: the fake records request times on the exporter's clock
    api = FakeExecAPI(key, clock=clock.time).start()
    for scenario, count in PARTICIPANTS.items():
        api.set_summary(scenario, summary_body(participant_count=count))
    path = tmp_path_factory.mktemp("faults") / "config.yaml"
    scenarios: list[str | dict[str, object]] = [FAULTY, *HEALTHY]
    scenarios += [{"id": s, "cohorts": ["all"]} for s in MATRIX_SCENARIOS.values()]
    cohorts = ["all", {"name": "sales", "group_ids": "[g1h2i3j4k5l6]"}]
    path.write_text(config_text(api.base_url, scenarios, cohorts, extra="max_staleness: 1h\n"))
    exporter = InProcess(path, key, clock=clock)
    try:
        yield Env(api, exporter)
    finally:
        exporter.stop()
        api.stop()


@pytest.fixture
def healthy(env: Env) -> Iterator[Env]:
    """Every target up with data before the test; no fault left behind after it."""
    env.api.set_fault(None, None)
    wait_until(env.all_up, 10, what="every target up")
    yield env
    env.api.set_fault(None, None)


# --- the per-target matrix: every fault at once, each on its own scenario -------


@dataclass
class MatrixRun:
    """What one run of the matrix observed."""

    before: Values
    down: Values  # every faulty target down
    failing_since: float
    tries: dict[str, int]  # summary requests per faulty scenario while faulted
    window: float
    recovered: bool
    rss_growth_kib: int
    scrapes_answered: int  # while every fault was on
    scrapes_failed: int


@pytest.fixture(scope="module")
def matrix(env: Env) -> MatrixRun:
    """Inject every per-target fault, each on its own scenario, then clear them all."""
    env.api.set_fault(None, None)
    wait_until(env.all_up, 10, what="every target up")
    before = env.scrape()
    rss_before = status_kib("self", "VmRSS")
    started = env.exporter.clock.time()
    for fault, scenario in MATRIX_SCENARIOS.items():
        env.api.set_fault(scenario, fault, **({"seconds": 30} if fault == "hang" else {}))

    def all_down() -> Values | None:
        values = env.scrape()
        done = all(env.failed_with(values, scenario, MATRIX[fault], before)
                   for fault, scenario in MATRIX_SCENARIOS.items())
        return values if done else None

    down = wait_until(all_down, 10, what="every faulty target down")
    failing_since = env.exporter.clock.time()
    # Keep the faults on a while longer, scraping all the time (at least a few scrapes,
    # however slow the machine): every one must be answered.
    answered = failed = 0
    while env.exporter.clock.time() < started + 4 or answered + failed < 3:
        try:
            env.scrape()
            answered += 1
        except requests.RequestException:
            failed += 1
        time.sleep(0.05)
    window = env.exporter.clock.time() - started
    tries = {fault: len([r for r in env.api.requests_for(scenario) if r.time >= started])
             for fault, scenario in MATRIX_SCENARIOS.items()}
    healthy_refreshed = env.scrape()
    rss_after = status_kib("self", "VmRSS")
    env.api.set_fault(None, None)
    cleared = env.exporter.clock.time()
    env.exporter.advance(60)  # skip the 404/400 backoffs (1 s, 2 s, 4 s ...)

    def recovered() -> bool:
        values = env.scrape()
        return all(env.up(values, s, c) == 1 and env.last_success(values, s, c) > cleared
                   for s, c in TARGETS)

    ok = True
    try:
        wait_until(recovered, 10, what="every faulty target to recover")
    except AssertionError:
        ok = False
    del healthy_refreshed
    return MatrixRun(before, down, failing_since, tries, window, ok,
                     rss_after - rss_before, answered, failed)


@pytest.mark.parametrize(("fault", "reason"), MATRIX.items())
def test_fault_marks_only_its_target_down(env: Env, matrix: MatrixRun, fault: str,
                                          reason: str) -> None:
    scenario = MATRIX_SCENARIOS[fault]
    values = matrix.down
    assert env.failed_with(values, scenario, reason, matrix.before)
    # Counted under its own reason, workspace-wide.
    assert (sample(values, "exec_exporter_errors_total", reason=reason) or 0) > (
        sample(matrix.before, "exec_exporter_errors_total", reason=reason) or 0)
    # Its last good values are still exported (max_staleness is 1 h).
    assert sample(values, "exec_scenario_participants", scenario=scenario,
                  cohort="all") == PARTICIPANTS[scenario]
    assert sample(values, "exec_scenario_rank_participants", scenario=scenario,
                  cohort="all", rank="gold") == 12


def test_fault_matrix_leaves_other_scenarios_alone(env: Env, matrix: MatrixRun) -> None:
    values = matrix.down
    for scenario in (FAULTY, *HEALTHY):
        for cohort in COHORTS:
            assert env.up(values, scenario, cohort) == 1
        assert env.all_errors(values, scenario) == env.all_errors(matrix.before, scenario)


def test_fault_matrix_keeps_metrics_answering(matrix: MatrixRun) -> None:
    # Scrapes went on all along (each one bounded), while requests hung or trickled
    # and while a 64 MiB body was offered: the poller never blocks /metrics.
    assert matrix.scrapes_failed == 0, matrix
    assert matrix.scrapes_answered >= 3, matrix


def test_fault_matrix_recovers_by_itself(matrix: MatrixRun) -> None:
    assert matrix.recovered


def test_64_mib_body_is_not_read_into_memory(env: Env, matrix: MatrixRun) -> None:
    assert matrix.tries["huge_body"] >= 2, matrix.tries  # offered several times
    assert matrix.rss_growth_kib < 24 * 1024, f"RSS grew by {matrix.rss_growth_kib} KiB"
    assert env.exporter.get("/-/healthy").status_code == 200


def test_not_found_backs_off_growing_while_others_refresh(healthy: Env) -> None:
    """404: 1 s, 2 s, 4 s ... (up to an hour) for that target alone. The clock is
    moved forward in small steps so a minute of schedule passes in a few seconds."""
    env = healthy
    clock = env.exporter.clock
    started = clock.time()
    env.api.set_fault(FAULTY, "404")
    for _ in range(120):
        env.exporter.advance(0.5)
        # 10 clock seconds a real second: slow enough for the poller to keep up on a
        # loaded machine, or its lag (not the backoff) would set the gaps.
        time.sleep(0.05)
    tries = [r.time - started for r in env.api.requests_for(FAULTY)
             if r.time >= started and "group_ids" not in r.query]  # cohort "all"
    healthy_tries = [r.time - started for r in env.api.requests_for(HEALTHY[1])
                     if r.time >= started]
    values = env.scrape()
    env.api.set_fault(FAULTY, None)
    assert env.up(values, FAULTY) == 0
    assert env.last_error(values, FAULTY) == "not_found" and env.errors(values, FAULTY) >= 1
    # 60 s of schedule: tries at about 0, 1, 3, 7, 15, 31 s -> at most 7.
    assert 3 <= len(tries) <= 7, tries
    gaps = [b - a for a, b in itertools.pairwise(tries)]
    assert all(later >= earlier * 1.5 for earlier, later in itertools.pairwise(gaps)), gaps
    # The healthy target (due every clock second) refreshed all along, not only before
    # or after: within each of the two longest waits between the faulty one's retries.
    for earlier, later in itertools.pairwise(tries[-3:]):
        assert any(earlier < t < later for t in healthy_tries), (earlier, later, healthy_tries)
    assert env.up(values, HEALTHY[1]) == 1
    env.exporter.advance(120)
    wait_until(env.all_up, 10, what="recovery after the 404 cleared")


def check_target_fault(env: Env, fault: str, reason: str, **kw: object) -> None:
    """The per-target contract for ``fault`` on FAULTY (both cohorts), then recovery."""
    before = env.scrape()
    errors_before = {s: env.all_errors(before, s) for s in HEALTHY}
    env.api.set_fault(FAULTY, fault, **kw)

    def down() -> Values | None:
        values = env.scrape()
        done = all(env.failed_with(values, FAULTY, reason, before, c) for c in COHORTS)
        return values if done else None

    values = wait_until(down, 10, what=f"{FAULTY} down with reason {reason}")
    # Both cohorts have failed; from a little later on retries are in full swing and
    # the healthy targets must still get their turn.
    failing_since = env.exporter.clock.time() + 1.5
    for cohort in COHORTS:
        assert sample(values, "exec_scenario_participants", scenario=FAULTY,
                      cohort=cohort) == PARTICIPANTS[FAULTY]

    def others_refreshed() -> bool:
        values = env.scrape()
        return all(env.last_success(values, s, c) > failing_since
                   for s in HEALTHY for c in COHORTS)

    wait_until(others_refreshed, 4, what="healthy targets refreshed during the fault")
    values = env.scrape()
    for scenario in HEALTHY:
        for cohort in COHORTS:
            assert env.up(values, scenario, cohort) == 1
        assert env.all_errors(values, scenario) == errors_before[scenario]
    env.api.set_fault(FAULTY, None)
    cleared = env.exporter.clock.time()
    wait_until(lambda: all(env.last_success(env.scrape(), FAULTY, c) > cleared
                           for c in COHORTS), 10, what="recovery")


def test_healthy_targets_keep_refreshing_while_two_others_hang(healthy: Env) -> None:
    """Two hanging targets (2 x 1 s timeout per round, more than the 1 s backoff cap)
    must not starve the healthy ones: retries take their turn."""
    check_target_fault(healthy, "hang", "timeout", seconds=30)


@pytest.mark.parametrize("fault", ["trickle_headers", "trickle_body"])
def test_trickling_upstream_is_a_timeout(healthy: Env, fault: str) -> None:
    """One byte every 0.5 s never trips a per-read timeout, but api.timeout (1 s) is a
    deadline for the whole answer: a timeout, not a ~30 s wait per request."""
    check_target_fault(healthy, fault, "timeout")


def test_reload_answers_while_the_api_trickles(healthy: Env,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    env = healthy
    monkeypatch.setenv("EXEC_API_KEY", make_key())  # a reload reads the key again
    set_at = env.exporter.clock.time()
    env.api.set_fault(FAULTY, "trickle_headers")
    wait_until(lambda: [r for r in env.api.requests_for(FAULTY) if r.time >= set_at], 5,
               what="a trickled request in flight")
    # Bounded: a reload stuck behind the trickle (~30 s per request) fails here.
    response = env.exporter.post("/-/reload", timeout=5)
    assert response.status_code == 200, response.text
    env.api.set_fault(FAULTY, None)


@pytest.mark.parametrize("fault", ["invalid_json", "wrong_types"])
def test_200_with_a_broken_body_counts_under_code_200(healthy: Env, fault: str) -> None:
    """exec_exporter_api_requests_total{code} is the answer's status; "error" is kept for
    requests that got no answer (timeouts, connection failures)."""
    env = healthy
    before = env.scrape()
    env.api.set_fault(FAULTY, fault)

    def counted() -> Values | None:
        values = env.scrape()
        grew = all(env.failed_with(values, FAULTY, "invalid_response", before, c)
                   for c in COHORTS)
        return values if grew else None

    after = wait_until(counted, 10, what=f"{fault} counted as invalid_response")
    env.api.set_fault(FAULTY, None)

    def delta(name: str, **labels: str) -> float:
        """The growth of ``name`` summed over every series with ``labels``."""
        def total(values: Values) -> float:
            return sum(v for (n, ls), v in values.items()
                       if n == name and set(labels.items()) <= set(ls))
        return total(after) - total(before)

    invalid = delta("exec_exporter_errors_total", reason="invalid_response")
    assert invalid > 0
    no_answer = sum(delta("exec_exporter_errors_total", reason=reason)
                    for reason in ("timeout", "connection"))
    assert delta("exec_exporter_api_requests_total", code="error") == no_answer
    assert delta("exec_exporter_api_requests_total", kind="summary", code="200") >= invalid


@pytest.mark.parametrize("form", ["429_error_object", "429_top_level", "429_header"])
def test_429_pauses_every_request_until_retry_after(healthy: Env, form: str) -> None:
    env = healthy
    retry_after = 1  # the API's smallest; the exporter refreshes ~16 targets a second
    before = env.scrape()
    set_at = env.exporter.clock.time()
    # One 429, then normal answers: the pause alone must keep requests back.
    env.api.set_fault(FAULTY, form, retry_after=retry_after, times=1)

    def limited() -> bool:
        values = env.scrape()
        return (sample(values, "exec_exporter_errors_total", reason="rate_limited") or 0) > (
            sample(before, "exec_exporter_errors_total", reason="rate_limited") or 0)

    wait_until(limited, 10, what="a 429 to be counted")
    first = min(r.time for r in env.api.requests_for(FAULTY) if r.time >= set_at)
    time.sleep(retry_after + 0.5)
    inside = [r for r in env.api.requests if first <= r.time < first + retry_after - 0.05]
    # Every request pauses, not only the faulty scenario's: the 429 is the only one.
    assert len(inside) == 1, [(r.scenario_id, r.time - first) for r in inside]
    values = env.scrape()
    assert sample(values, "exec_exporter_api_requests_total", kind="summary", code="429")
    # A 429 is no target's own failure: no target counts it.
    assert all(env.errors(values, s, c) == env.errors(before, s, c) for s, c in TARGETS)
    for scenario in HEALTHY:
        assert env.up(values, scenario) == 1
    wait_until(env.all_up, 10, what="recovery after the pause")


@pytest.mark.parametrize(("fault", "reason"), [("401", "unauthorized"), ("403", "forbidden")])
def test_auth_failure_pauses_everything_and_probes(healthy: Env, fault: str, reason: str) -> None:
    env = healthy
    before = env.scrape()
    set_at = env.exporter.clock.time()
    env.api.set_fault(FAULTY, fault)

    def all_down() -> Values | None:
        values = env.scrape()
        # The pause is workspace-wide: every target is down with its reason, the refused
        # request is counted once by reason, and no target counts it as its own.
        grown = (sample(values, "exec_exporter_errors_total", reason=reason) or 0) - (
            sample(before, "exec_exporter_errors_total", reason=reason) or 0)
        ok = (all(env.up(values, s, c) == 0 and env.last_error(values, s, c) == reason
                  for s, c in TARGETS)
              and sample(values, "exec_exporter_api_paused", reason=reason) == 1
              and grown == 1
              and all(env.errors(values, s, c) == env.errors(before, s, c) for s, c in TARGETS))
        return values if ok else None

    values = wait_until(all_down, 10, what=f"every target down with {reason}")
    # Data stays while access is refused.
    assert sample(values, "exec_scenario_participants", scenario=HEALTHY[0],
                  cohort="all") == PARTICIPANTS[HEALTHY[0]]
    first = min(r.time for r in env.api.requests_for(FAULTY) if r.time >= set_at)
    time.sleep(max(0.0, first + 1.5 - env.exporter.clock.time()))
    refused = [r for r in env.api.requests if r.time >= first]
    # One refused request, then a 30 s wait before the probe: nothing else meanwhile.
    assert len(refused) == 1, [(r.scenario_id, r.time - first) for r in refused]
    assert env.exporter.get("/-/healthy").status_code == 200
    # Access comes back: the probe (after 30 s; skipped by moving the clock) finds it.
    env.api.set_fault(FAULTY, None)
    env.exporter.advance(31)
    wait_until(env.all_up, 10, what=f"recovery after {fault} cleared")


def test_connection_refused_then_recovery(healthy: Env) -> None:
    env = healthy
    before = env.scrape()
    env.api.stop()  # the port is closed: every connection is refused
    try:

        def all_down() -> Values | None:
            values = env.scrape()
            ok = all(env.failed_with(values, s, "connection", before, c) for s, c in TARGETS)
            return values if ok else None

        values = wait_until(all_down, 10, what="every target down with reason connection")
        for scenario, cohort in TARGETS:
            assert sample(values, "exec_scenario_participants", scenario=scenario,
                          cohort=cohort) == PARTICIPANTS[scenario]
    finally:
        env.api.start()  # same port
    wait_until(env.all_up, 10, what="recovery once the API listens again")


def test_last_good_values_expire_after_max_staleness(healthy: Env) -> None:
    env = healthy
    env.api.set_fault(FAULTY, "500")
    wait_until(lambda: env.up(env.scrape(), FAULTY) == 0, 10, what=f"{FAULTY} down")
    env.exporter.advance(3601)  # past max_staleness (1 h); healthy targets refresh at once

    def expired() -> Values | None:
        values = env.scrape()
        gone = sample(values, "exec_scenario_participants", scenario=FAULTY,
                      cohort="all") is None
        fresh = sample(values, "exec_scenario_participants", scenario=HEALTHY[0],
                       cohort="all") == PARTICIPANTS[HEALTHY[0]]
        return values if gone and fresh else None

    values = wait_until(expired, 10, what="stale data to stop being exported")
    # Data series gone, self-metrics (and the scenario's info series) kept.
    assert not [n for (n, labels), _ in values.items()
                if n.startswith("exec_scenario_") and n != "exec_scenario_info"
                and ("scenario", FAULTY) in labels]
    assert [n for (n, labels), _ in values.items()
            if n == "exec_scenario_info" and ("scenario", FAULTY) in labels]
    assert env.up(values, FAULTY) == 0
    assert sample(values, "exec_exporter_target_last_success_timestamp_seconds",
                  scenario=FAULTY, cohort="all") is not None
    assert env.last_error(values, FAULTY) == "server_error" and env.errors(values, FAULTY) > 0
    env.api.set_fault(FAULTY, None)
    wait_until(env.all_up, 10, what="recovery")
    values = env.scrape()
    assert sample(values, "exec_scenario_participants", scenario=FAULTY,
                  cohort="all") == PARTICIPANTS[FAULTY]


def test_fault_that_clears_itself_recovers_quickly(healthy: Env, tmp_path: Path) -> None:
    """A single 503 (``times=1``) costs one retry, not an interval."""
    env = healthy
    before = env.scrape()
    env.api.set_fault(FAULTY, "503_html", times=1)
    wait_until(lambda: env.all_errors(env.scrape(), FAULTY) > env.all_errors(before, FAULTY),
               10, what="the 503 to be counted")
    wait_until(env.all_up, 5, what="recovery after one 503")
