"""The collector's families, parsed back with prometheus_client's parser."""

from __future__ import annotations

from conftest import FakeClock, metric_values, sample
from harness import series
from prometheus_client import generate_latest
from prometheus_client.registry import CollectorRegistry

from exporter.client import REASONS, Summary, parse_summary
from exporter.collector import SnapshotCollector
from exporter.config import CohortConfig, parse_config
from exporter.store import Store, TargetState
from exporter.targets import Target, build_targets

FULL = parse_summary({
    "participant_count": 45, "total_sessions": 128, "average_best_score": 74.2,
    "average_best_rank": "silver", "average_lift_percentage": 18.5,
    "total_practice_minutes": 742, "average_session_duration_seconds": 348,
    "score_distribution": [{"rank": "gold", "count": 12}, {"rank": "silver", "count": 18},
                           {"rank": "unranked", "count": 5}],
})


def setup(clock: FakeClock, max_staleness: str | None = None):
    raw = {"scenarios": [{"id": "disc", "name": "Discovery call"}, {"id": "renew"}],
           "cohorts": [{"name": "all"}, {"name": "sales", "group_ids": ["g1"]}]}
    if max_staleness:
        raw["max_staleness"] = max_staleness
    config = parse_config(raw)
    store = Store()
    store.set_targets(build_targets(config))
    store.set_max_staleness(config.max_staleness)
    store.record_schedule(900.0, {})
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector(store, clock))
    return config, store, registry


def scrape(registry: CollectorRegistry) -> dict:
    return metric_values(generate_latest(registry).decode())


def test_values_names_and_units(clock: FakeClock) -> None:
    _, store, registry = setup(clock)
    store.record_success(("disc", "all"), FULL, clock.now)
    v = scrape(registry)
    labels = {"scenario": "disc", "cohort": "all"}
    assert sample(v, "exec_scenario_participants", **labels) == 45
    assert sample(v, "exec_scenario_sessions", **labels) == 128
    assert sample(v, "exec_scenario_average_best_score", **labels) == 74.2
    assert sample(v, "exec_scenario_average_score_lift", **labels) == 18.5
    assert sample(v, "exec_scenario_practice_seconds", **labels) == 742 * 60
    assert sample(v, "exec_scenario_average_session_duration_seconds", **labels) == 348
    ranks = {r: sample(v, "exec_scenario_average_best_rank", rank=r, **labels)
             for r in ("gold", "silver", "bronze", "unranked")}
    assert ranks == {"gold": 0, "silver": 1, "bronze": 0, "unranked": 0}
    counts = {r: sample(v, "exec_scenario_rank_participants", rank=r, **labels)
              for r in ("gold", "silver", "bronze", "unranked")}
    assert counts == {"gold": 12, "silver": 18, "bronze": 0, "unranked": 5}
    assert sample(v, "exec_scenario_info", scenario="disc", name="Discovery call",
                  id="disc") == 1
    assert sample(v, "exec_exporter_target_up", **labels) == 1
    assert sample(v, "exec_exporter_target_last_success_timestamp_seconds",
                  **labels) == clock.now
    # A target never polled has self-metrics but no data.
    assert sample(v, "exec_exporter_target_up", scenario="renew", cohort="all") == 0
    assert sample(v, "exec_scenario_participants", scenario="renew", cohort="all") is None
    assert sample(v, "exec_exporter_targets") == 4
    assert sample(v, "exec_exporter_refresh_interval_seconds") == 900
    assert sample(v, "exec_exporter_build_info", version=__import__("exporter").__version__) == 1


def test_null_fields_produce_no_sample(clock: FakeClock) -> None:
    _, store, registry = setup(clock)
    store.record_success(("renew", "all"), Summary(participants=0, sessions=0), clock.now)
    v = scrape(registry)
    labels = {"scenario": "renew", "cohort": "all"}
    assert sample(v, "exec_scenario_participants", **labels) == 0
    assert sample(v, "exec_scenario_average_best_score", **labels) is None
    assert sample(v, "exec_scenario_rank_participants", rank="gold", **labels) is None
    assert sample(v, "exec_scenario_average_best_rank", rank="gold", **labels) is None
    # No display name known: the info series is there, with an empty name.
    assert sample(v, "exec_scenario_info", scenario="renew", name="", id="renew") == 1


def test_failures_keep_last_values_and_count_per_target_without_reason(clock: FakeClock) -> None:
    _, store, registry = setup(clock)
    key = ("disc", "sales")
    store.record_success(key, FULL, clock.now)
    store.record_failure(key, "server_error", "HTTP 500", clock.now + 1)
    store.record_failure(key, "server_error", "HTTP 500", clock.now + 2)
    store.record_failure(key, "timeout", "no answer", clock.now + 3)
    v = scrape(registry)
    labels = {"scenario": "disc", "cohort": "sales"}
    assert sample(v, "exec_exporter_target_up", **labels) == 0
    assert sample(v, "exec_scenario_average_best_score", **labels) == 74.2
    assert series(v, "exec_exporter_target_errors_total")[
        (("cohort", "sales"), ("scenario", "disc"))] == 3
    # Only while down, only the last reason.
    assert series(v, "exec_exporter_target_last_error") == {
        (("cohort", "sales"), ("reason", "timeout"), ("scenario", "disc")): 1}
    store.record_success(key, FULL, clock.now + 4)
    v = scrape(registry)
    assert series(v, "exec_exporter_target_last_error") == {}
    assert sample(v, "exec_exporter_target_errors_total", **labels) == 3


def test_stale_data_stops_but_self_metrics_stay(clock: FakeClock) -> None:
    _, store, registry = setup(clock, max_staleness="45m")
    key = ("disc", "all")
    store.record_success(key, FULL, clock.now)
    clock.advance(45 * 60)
    assert sample(scrape(registry), "exec_scenario_participants", scenario="disc",
                  cohort="all") == 45
    clock.advance(1)
    v = scrape(registry)
    assert sample(v, "exec_scenario_participants", scenario="disc", cohort="all") is None
    assert sample(v, "exec_exporter_target_up", scenario="disc", cohort="all") == 1
    assert sample(v, "exec_exporter_target_last_success_timestamp_seconds",
                  scenario="disc", cohort="all") is not None


def test_default_staleness_is_three_intervals(clock: FakeClock) -> None:
    _, store, registry = setup(clock)
    store.record_success(("disc", "all"), FULL, clock.now)
    clock.advance(3 * 900 - 1)
    assert sample(scrape(registry), "exec_scenario_sessions", scenario="disc", cohort="all")
    clock.advance(2)
    assert sample(scrape(registry), "exec_scenario_sessions", scenario="disc",
                  cohort="all") is None


def test_removed_targets_vanish(clock: FakeClock) -> None:
    config, store, registry = setup(clock)
    for target in build_targets(config):
        store.record_success(target.key, FULL, clock.now)
    store.set_targets([t for t in build_targets(config) if t.scenario != "renew"])
    v = scrape(registry)
    assert not any(("scenario", "renew") in labels for _, labels in v)
    assert sample(v, "exec_scenario_participants", scenario="disc", cohort="sales") == 45


def test_workspace_pause_shows_every_target_down_while_it_lasts(clock: FakeClock) -> None:
    config, store, registry = setup(clock)
    store.record_success(("disc", "all"), FULL, clock.now)
    store.record_failure(("renew", "all"), "not_found", "HTTP 404", clock.now)
    # The one target whose own request met the 401 counts nothing: not its fault.
    store.record_failure(("disc", "sales"), "unauthorized", "HTTP 401", clock.now)
    store.record_schedule(900.0, {}, pause=("unauthorized", clock.now + 30))
    v = scrape(registry)
    assert series(v, "exec_exporter_api_paused") == {
        (("reason", "rate_limited"),): 0, (("reason", "unauthorized"),): 1,
        (("reason", "forbidden"),): 0}
    for target in build_targets(config):
        labels = {"scenario": target.scenario, "cohort": target.cohort.name}
        assert sample(v, "exec_exporter_target_up", **labels) == 0
        assert sample(v, "exec_exporter_target_last_error", reason="unauthorized",
                      **labels) == 1
    assert len(series(v, "exec_exporter_target_last_error")) == len(build_targets(config))
    assert sum(series(v, "exec_exporter_target_errors_total").values()) == 1  # the 404
    assert sample(v, "exec_scenario_participants", scenario="disc", cohort="all") == 45

    store.record_schedule(900.0, {}, pause=None)  # the probe got through
    v = scrape(registry)
    assert sum(series(v, "exec_exporter_api_paused").values()) == 0
    assert sample(v, "exec_exporter_target_up", scenario="disc", cohort="all") == 1
    assert series(v, "exec_exporter_target_last_error") == {
        (("cohort", "all"), ("reason", "not_found"), ("scenario", "renew")): 1}


def test_series_per_target_by_scope(clock: FakeClock) -> None:
    """At most 14 data series and 5 self-metric series per target, plus last_error
    while down; nothing per target grows with the number of reasons or kinds."""
    _, store, registry = setup(clock)
    key = ("disc", "all")
    store.record_success(key, FULL, clock.now)

    def per_target() -> tuple[int, int]:
        data = own = 0
        for name, labels in scrape(registry):
            if {("cohort", "all"), ("scenario", "disc")} <= set(labels):
                if name.startswith("exec_scenario_"):
                    data += 1
                else:
                    own += 1
        return data, own

    assert per_target() == (14, 5)
    for reason in ("timeout", "server_error", "not_found", "bad_request", "invalid_response",
                   "connection"):
        store.record_failure(key, reason, "x", clock.now)
    assert per_target() == (14, 6)  # down: last_error too


def test_api_requests_by_kind_errors_by_reason_and_histogram(clock: FakeClock) -> None:
    _, store, registry = setup(clock)
    store.record_request("summary", "200", 0.08)
    store.record_request("cross_check", "200", 0.3)  # a cross-check is a summary request
    store.record_request("members", "429", 0.01, "rate_limited")
    store.record_request("list_groups", "error", 10.0, "timeout")
    v = scrape(registry)
    assert sample(v, "exec_exporter_api_requests_total", kind="summary", code="200") == 2
    assert sample(v, "exec_exporter_api_requests_total", kind="members", code="429") == 1
    assert sample(v, "exec_exporter_api_requests_total", kind="groups", code="error") == 1
    assert sample(v, "exec_exporter_errors_total", reason="rate_limited") == 1
    assert sample(v, "exec_exporter_errors_total", reason="timeout") == 1
    assert sample(v, "exec_exporter_errors_total", reason="unauthorized") == 0
    assert sample(v, "exec_exporter_api_request_duration_seconds_count", kind="summary") == 2
    assert sample(v, "exec_exporter_api_request_duration_seconds_bucket", kind="summary",
                  le="0.1") == 1
    assert sample(v, "exec_exporter_api_request_duration_seconds_bucket", kind="groups",
                  le="+Inf") == 1
    assert sample(v, "exec_exporter_api_request_duration_seconds_sum", kind="groups") == 10.0
    assert sample(v, "exec_exporter_api_request_duration_seconds_count", kind="skills") == 0


def test_counters_start_at_zero_for_every_reason_kind_and_known_code(clock: FakeClock) -> None:
    config, store, registry = setup(clock)
    v = scrape(registry)
    assert REASONS == ("timeout", "connection", "rate_limited", "unauthorized", "forbidden",
                       "not_found", "server_error", "bad_request", "invalid_response")
    for target in build_targets(config):
        labels = {"scenario": target.scenario, "cohort": target.cohort.name}
        assert sample(v, "exec_exporter_target_errors_total", **labels) == 0
    for reason in REASONS:
        assert sample(v, "exec_exporter_errors_total", reason=reason) == 0
    kinds = ("summary", "participants", "members", "scenarios", "groups", "skills",
             "assignments")
    for kind in kinds:
        for code in ("200", "400", "401", "403", "404", "429", "error"):
            assert sample(v, "exec_exporter_api_requests_total", kind=kind, code=code) == 0
    store.record_failure(("disc", "all"), "timeout", "no answer", clock.now)
    store.record_request("summary", "503", 0.2, "server_error")
    v = scrape(registry)
    assert len(series(v, "exec_exporter_target_errors_total")) == len(build_targets(config))
    assert sample(v, "exec_exporter_target_errors_total", scenario="disc", cohort="all") == 1
    assert sample(v, "exec_exporter_api_requests_total", kind="summary", code="503") == 1
    assert sample(v, "exec_exporter_api_requests_total", kind="summary", code="200") == 0
    assert len(series(v, "exec_exporter_api_requests_total")) == len(kinds) * 7 + 1


def test_errors_by_reason_from_an_older_state_file_are_summed(clock: FakeClock) -> None:
    config, store, registry = setup(clock)
    target = build_targets(config)[0]
    restored = TargetState(target=target, errors={"legacy": 4, "timeout": 2})
    store.set_targets(build_targets(config), restored={target.key: restored}, forget={target.key})
    v = scrape(registry)
    assert sample(v, "exec_exporter_target_errors_total", scenario="disc", cohort="all") == 6


def test_scenario_info_for_every_polled_scenario_at_all_times(clock: FakeClock) -> None:
    config, store, registry = setup(clock, max_staleness="45m")
    discovered = Target("renew-call", CohortConfig(name="all"), "Renewal call",
                        "0b1e2c3d-0000-4000-8000-000000000004")
    unnamed_uuid = Target("5f2a0c1e-0000-4000-8000-000000000009", CohortConfig(name="all"))
    store.set_targets([*build_targets(config), discovered, unnamed_uuid])
    expected = {
        (("id", "disc"), ("name", "Discovery call"), ("scenario", "disc")): 1.0,
        (("id", "renew"), ("name", ""), ("scenario", "renew")): 1.0,
        (("id", discovered.scenario_uuid), ("name", "Renewal call"),
         ("scenario", "renew-call")): 1.0,
        (("id", unnamed_uuid.scenario), ("name", ""), ("scenario", unnamed_uuid.scenario)): 1.0,
    }
    assert series(scrape(registry), "exec_scenario_info") == expected  # never polled
    store.record_success(("disc", "all"), FULL, clock.now)
    store.record_failure(("renew-call", "all"), "server_error", "HTTP 502", clock.now)
    assert series(scrape(registry), "exec_scenario_info") == expected
    clock.advance(46 * 60)  # the data of disc/all is stale now
    v = scrape(registry)
    assert sample(v, "exec_scenario_participants", scenario="disc", cohort="all") is None
    assert series(v, "exec_scenario_info") == expected


def test_max_staleness_is_exported(clock: FakeClock) -> None:
    _, store, registry = setup(clock)
    assert sample(scrape(registry), "exec_exporter_max_staleness_seconds") == 3 * 900
    store.record_schedule(1800.0, {})  # the interval stretched: the default follows
    assert sample(scrape(registry), "exec_exporter_max_staleness_seconds") == 3 * 1800
    _, store, registry = setup(clock, max_staleness="2h")
    assert sample(scrape(registry), "exec_exporter_max_staleness_seconds") == 7200


def test_a_max_staleness_shorter_than_the_cycle_never_drops_healthy_data(clock: FakeClock) -> None:
    # max_staleness 10m with targets refreshed every 15 minutes: every healthy target
    # would lose its data for 5 minutes of each cycle. The limit is two intervals.
    _, store, registry = setup(clock, max_staleness="10m")
    store.record_success(("disc", "all"), FULL, clock.now)
    clock.advance(15 * 60)  # due now, not yet refreshed
    v = scrape(registry)
    assert sample(v, "exec_exporter_max_staleness_seconds") == 2 * 900
    assert sample(v, "exec_scenario_participants", scenario="disc", cohort="all") == 45


def test_a_shrinking_interval_keeps_the_old_limit_until_data_can_catch_up(
        clock: FakeClock) -> None:
    """The cause of ExecExporterDataStale firing for a moment in a healthy run: when the
    effective interval shrinks (a proven plan needs fewer requests per cycle, a reload
    or discovery drops targets), 3 x the new interval can be shorter than the age of
    data fetched on the old cycle: its series vanished until its next refresh, and the
    alert (which reads the same limit) fired. The old limit now stays in force for two
    new intervals, time for stalest-first pacing to refresh the old cycle's data."""
    _, store, registry = setup(clock)
    store.record_schedule(900.0, {}, at=clock.now)
    store.record_success(("disc", "all"), FULL, clock.now)
    clock.advance(800)
    store.record_schedule(100.0, {}, at=clock.now)  # 3 x 100 s < 800 s of age
    v = scrape(registry)
    assert sample(v, "exec_exporter_max_staleness_seconds") == 2700
    assert sample(v, "exec_scenario_participants", scenario="disc", cohort="all") == 45
    clock.advance(200)
    assert sample(scrape(registry), "exec_exporter_max_staleness_seconds") == 2700
    clock.advance(1)  # two new intervals have passed: the new limit applies
    v = scrape(registry)
    assert sample(v, "exec_exporter_max_staleness_seconds") == 300
    assert sample(v, "exec_scenario_participants", scenario="disc", cohort="all") is None
    # Growing is immediate (never a reason to drop data).
    store.record_schedule(1000.0, {}, at=clock.now)
    assert sample(scrape(registry), "exec_exporter_max_staleness_seconds") == 3000


def test_a_reload_that_shrinks_the_interval_keeps_every_series(
        clock: FakeClock, tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """End to end on the daemon: 8 targets on 180 requests a day (interval 64 min),
    data 55 minutes old, then a reload down to 2 targets (interval 16 min, 3 x 16 min
    < 55 min). Before the fix both targets' data vanished at the reload."""
    import json

    from fakeapi import FakeExecAPI, summary_body
    from harness import make_key

    from exporter.config import ApiKey, load_config
    from exporter.daemon import Exporter

    key = make_key()
    monkeypatch.setenv("EXEC_API_KEY", key)
    api = FakeExecAPI(key, clock=clock.time).start()
    try:
        scenarios = [f"s{i}" for i in range(8)]
        for scenario in scenarios:
            api.set_summary(scenario, summary_body())
        path = tmp_path / "config.yaml"

        def write(count: int) -> None:
            path.write_text(json.dumps({
                "api": {"base_url": api.base_url, "rate_limit": {"requests_per_day": 200}},
                "refresh_interval": "15m", "planner": {"mode": "summary"},
                "scenarios": [{"id": s} for s in scenarios[:count]]}))

        write(8)
        exporter = Exporter(load_config(str(path)), ApiKey(key, "test"), str(path), None, clock)
        until = clock.now + 3300
        for _ in range(1000):  # the first fill, then nothing is due for an hour
            wake = exporter.poller.step()
            if wake > until:
                break
            clock.now = max(clock.now, wake)
        clock.now = until
        v = metric_values(exporter.exposition.render().decode())
        assert len(series(v, "exec_scenario_participants")) == 8
        assert sample(v, "exec_exporter_refresh_interval_seconds") == 3840
        write(2)
        assert exporter.reload() == (True, "configuration reloaded")
        exporter.poller._adopt(clock.now)  # as its next step does
        v = metric_values(exporter.exposition.render().decode())
        assert sample(v, "exec_exporter_refresh_interval_seconds") == 960
        assert sample(v, "exec_exporter_max_staleness_seconds") == 3 * 3840
        assert len(series(v, "exec_scenario_participants")) == 2
    finally:
        api.stop()


def test_a_first_fill_keeps_no_limit_from_a_passing_interval(clock: FakeClock) -> None:
    """At a fresh start the interval moves while the plan settles (listings sized,
    cohorts proven) before any data exists: nothing is kept from a moment's longer
    interval, which held max_staleness at 6 x the interval for 15 hours (seen)."""
    _, store, registry = setup(clock)
    store.record_schedule(17723.0, {}, at=clock.now)  # a moment's interval, no data yet
    clock.advance(0.1)
    store.record_schedule(8861.5, {}, at=clock.now)
    assert sample(scrape(registry), "exec_exporter_max_staleness_seconds") == 3 * 8861.5
