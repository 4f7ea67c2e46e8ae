"""Discovery of scenarios and group cohorts, against the fake API over loopback.

The exporter runs in-process with a fake clock and its poller is stepped by
hand, so each test sees exactly which requests were sent and in what order.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import FakeClock, make_key, metric_values, sample
from fakeapi import FakeExecAPI, summary_body
from harness import InProcess, config_text, wait_until
from prometheus_client import generate_latest
from prometheus_client.registry import CollectorRegistry

from exporter.cli import describe_plan
from exporter.collector import SnapshotCollector
from exporter.config import ApiKey, load_config, parse_config
from exporter.daemon import Exporter

SCENARIOS = [{"id": f"uuid-{i:03d}", "slug": f"scenario-{i:03d}", "name": f"Scenario {i}",
              "visibility": "workspace"} for i in range(230)]
GROUPS = [{"id": "g-sales", "name": "Sales Team"}, {"id": "g-sdr", "name": "SDR Team"},
          {"id": "g-cs", "name": "Customer Success"}, {"id": "g-all", "name": "all"}]


@pytest.fixture
def api() -> Iterator[FakeExecAPI]:
    fake = FakeExecAPI(make_key()).start()
    for item in SCENARIOS:
        fake.set_summary(item["slug"], summary_body())
    fake.set_summary("explicit-one", summary_body(participant_count=7))
    fake.set_scenarios(SCENARIOS)
    fake.set_groups(GROUPS)
    try:
        yield fake
    finally:
        fake.stop()


def exporter_for(api: FakeExecAPI, clock: FakeClock, extra: dict[str, Any],
                 state_file: Path | None = None) -> Exporter:
    raw: dict[str, Any] = {
        "api": {"base_url": api.base_url, "timeout": "2s",
                "rate_limit": {"requests_per_minute": 6000, "requests_per_day": 10_000_000,
                               "reserve": 0}},
        "refresh_interval": "1h",
    }
    raw.update(extra)
    return Exporter(parse_config(raw), ApiKey(make_key(), "test"), None,
                    str(state_file) if state_file else None, clock)


def run(exporter: Exporter, clock: FakeClock, steps: int) -> None:
    """Step the poller ``steps`` times, moving the fake clock to each wake-up."""
    for _ in range(steps):
        wake = exporter.poller.step()
        clock.now = max(clock.now, wake)


def scrape(exporter: Exporter, clock: FakeClock) -> dict:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector(exporter.store, clock))
    return metric_values(generate_latest(registry).decode())


def target_keys(exporter: Exporter) -> list[tuple[str, str]]:
    return [s.target.key for s in exporter.store.snapshot().targets]


def test_scenarios_are_listed_page_by_page_with_filters(api: FakeExecAPI, clock: FakeClock) -> None:
    exporter = exporter_for(api, clock, {"discovery": {"scenarios": {
        "visibility": "workspace", "collection_ids": ["c1", "c2"], "skill_ids": ["s1"],
        "include_archived": True}}})
    api.set_scenarios([dict(s, collection_ids=["c1"], skill_ids=["s1"]) for s in SCENARIOS])
    run(exporter, clock, 3)
    listed = api.list_requests("scenarios")
    assert [r.query["page"] for r in listed] == ["1", "2", "3"]
    assert all(r.query["page_size"] == "100" for r in listed)
    assert listed[0].query["visibility"] == "workspace"
    assert listed[0].query["collection_ids"] == "c1,c2"
    assert listed[0].query["skill_ids"] == "s1"
    assert listed[0].query["include_archived"] == "true"
    assert len(target_keys(exporter)) == 230
    assert target_keys(exporter)[0] == ("scenario-000", "all")


def test_every_scenario_for_every_group_and_explicit_cohort(api: FakeExecAPI,
                                                           clock: FakeClock) -> None:
    exporter = exporter_for(api, clock, {
        "scenarios": [{"id": "explicit-one", "name": "Explicit"},
                      {"id": "scenario-005", "cohorts": ["all"]}],
        "cohorts": [{"name": "all"}],
        "discovery": {"scenarios": {"exclude": ["scenario-001", "uuid-002"]},
                      "group_cohorts": {"include": ["sales*", "SDR*", "all"],
                                        "exclude_system_users": True}},
        "max_targets": 5000,
    })
    run(exporter, clock, 4)  # 3 pages of scenarios, 1 of groups
    keys = target_keys(exporter)
    # Explicit first, as configured; an explicit cohort named like a group wins.
    assert keys[:4] == [("explicit-one", "all"), ("explicit-one", "Sales Team"),
                        ("explicit-one", "SDR Team"), ("scenario-005", "all")]
    discovered = keys[4:]
    slugs = sorted({k[0] for k in discovered})
    assert "scenario-001" not in slugs and "scenario-002" not in slugs
    assert "scenario-005" not in slugs  # merged with its explicit entry
    assert len(slugs) == 230 - 3
    assert discovered[:3] == [("scenario-000", "all"), ("scenario-000", "Sales Team"),
                              ("scenario-000", "SDR Team")]
    assert not any(k[1] == "Customer Success" for k in keys)

    run(exporter, clock, 40)
    sales = [r for r in api.requests_for("scenario-000")
             if r.query.get("group_ids") == "g-sales"]
    assert sales and sales[0].query["exclude_system_users"] == "true"
    v = scrape(exporter, clock)
    assert sample(v, "exec_scenario_info", scenario="scenario-000", name="Scenario 0",
                  id="uuid-000") == 1
    assert sample(v, "exec_scenario_info", scenario="scenario-005", name="Scenario 5",
                  id="uuid-005") == 1
    assert sample(v, "exec_scenario_participants", scenario="explicit-one",
                  cohort="Sales Team") == 7
    assert sample(v, "exec_exporter_discovery_last_success_timestamp_seconds",
                  kind="scenarios") is not None
    assert sample(v, "exec_exporter_discovery_last_success_timestamp_seconds",
                  kind="groups") is not None


def test_vanished_scenarios_and_groups_leave_at_next_discovery(api: FakeExecAPI,
                                                               clock: FakeClock) -> None:
    api.set_scenarios(SCENARIOS[:3])
    exporter = exporter_for(api, clock, {"discovery": {
        "interval": "1h", "scenarios": {}, "group_cohorts": {"include": ["Sales*", "SDR*"]}}})
    run(exporter, clock, 20)
    assert ("scenario-002", "SDR Team") in target_keys(exporter)
    api.set_scenarios([*SCENARIOS[:2], SCENARIOS[10]])
    api.set_groups(GROUPS[:1])
    clock.advance(3600)
    run(exporter, clock, 10)
    keys = target_keys(exporter)
    assert ("scenario-002", "all") not in keys
    assert ("scenario-010", "all") in keys
    assert not any(k[1] == "SDR Team" for k in keys)
    v = scrape(exporter, clock)
    assert not any(("scenario", "scenario-002") in labels for _, labels in v)


def test_failed_listing_keeps_the_last_lists(api: FakeExecAPI, clock: FakeClock) -> None:
    api.set_scenarios(SCENARIOS[:5])
    exporter = exporter_for(api, clock, {"discovery": {"interval": "1h", "scenarios": {}}})
    run(exporter, clock, 3)
    assert len(target_keys(exporter)) == 5
    api.set_list_fault("scenarios", "500")
    clock.advance(3600)
    run(exporter, clock, 3)
    assert len(target_keys(exporter)) == 5
    snapshot = exporter.store.snapshot()
    assert snapshot.discovery_error["scenarios"].startswith("server_error")
    assert "server_error" in exporter.discovery.errors["scenarios"]  # type: ignore[union-attr]


def test_max_targets_keeps_explicit_first_and_counts_the_rest(api: FakeExecAPI,
                                                              clock: FakeClock) -> None:
    exporter = exporter_for(api, clock, {
        "scenarios": [{"id": "explicit-one"}],
        "discovery": {"scenarios": {}}, "max_targets": 50})
    run(exporter, clock, 3)
    keys = target_keys(exporter)
    assert len(keys) == 50
    assert keys[0] == ("explicit-one", "all")
    assert keys[-1] == ("scenario-048", "all")
    assert sample(scrape(exporter, clock), "exec_exporter_targets_dropped") == 231 - 50


def test_listing_requests_count_against_the_budget(api: FakeExecAPI, clock: FakeClock) -> None:
    api.set_scenarios(SCENARIOS[:5])
    exporter = exporter_for(api, clock, {
        "api": {"base_url": api.base_url, "rate_limit": {"requests_per_day": 200}},
        "refresh_interval": "1m",
        "discovery": {"interval": "1h", "scenarios": {}, "group_cohorts": {}},
        # The discovery's listings alone (the planner's member lists are its own tests').
        "planner": {"mode": "summary"}})
    run(exporter, clock, 2)
    # Two lists, one page each, every hour: 48 requests/day are the discovery's.
    assert exporter.scheduler.listing_requests_per_day == 48
    targets = 5 * 4  # 5 scenarios x (all + 3 groups; the group named "all" yields)
    assert len(target_keys(exporter)) == targets
    assert exporter.scheduler.interval == pytest.approx(targets * 86400 / (180 - 48))
    assert exporter.budget.remaining(clock.now)[1] == 180 - 2
    start = clock.now
    run(exporter, clock, 600)
    assert clock.now - start > 86400  # more than a simulated day went by
    # Listings and polls together never exceed the day's budget in any 24 hours.
    ledger = exporter.budget.ledger(clock.now)
    assert 0.95 * 180 <= len(ledger) <= 180
    listings = [r for r in api.requests if "/analytics/" not in r.path]
    assert len(listings) >= 2 * 24  # re-read every hour


def test_lists_survive_a_restart_in_the_state_file(api: FakeExecAPI, clock: FakeClock,
                                                   tmp_path: Path) -> None:
    api.set_scenarios(SCENARIOS[:4])
    state = tmp_path / "state.json"
    first = exporter_for(api, clock, {"discovery": {"interval": "6h", "scenarios": {}}}, state)
    run(first, clock, 10)
    first._save_state(force=True)
    listed = len(api.list_requests("scenarios"))
    clock.advance(60)
    second = exporter_for(api, clock, {"discovery": {"interval": "6h", "scenarios": {}}}, state)
    assert len(target_keys(second)) == 4
    assert all(s.summary is not None for s in second.store.snapshot().targets)
    run(second, clock, 3)
    assert len(api.list_requests("scenarios")) == listed  # not re-read before the interval


def test_config_check_stays_offline_and_says_discovery_decides() -> None:
    config = parse_config({"discovery": {"interval": "6h", "scenarios": {"cohorts": ["all", "S*"]},
                                         "group_cohorts": {}}})
    plan = describe_plan(config, None)
    assert "the workspace's scenario list decides the targets at run time" in plan
    assert "discovery listings: about 8 requests/day" in plan
    assert "discovered scenarios get the cohorts all, S* (patterns are matched" in plan


def test_discovered_scenarios_get_exactly_the_listed_cohorts(api: FakeExecAPI,
                                                            clock: FakeClock) -> None:
    api.set_scenarios(SCENARIOS[:2])
    exporter = exporter_for(api, clock, {
        "scenarios": [{"id": "explicit-one"}],
        "discovery": {"scenarios": {"cohorts": ["all", "sales*"]}, "group_cohorts": {}}})
    run(exporter, clock, 2)
    keys = target_keys(exporter)
    # Before, every group cohort was added to the list: SDR Team and Customer Success too.
    assert [k for k in keys if k[0] == "scenario-000"] == [("scenario-000", "all"),
                                                           ("scenario-000", "Sales Team")]
    # An explicit scenario without a cohorts list still gets every cohort.
    assert len([k for k in keys if k[0] == "explicit-one"]) == 4
    assert len(keys) == 4 + 2 * 2


def test_non_ascii_slug_and_free_text_cohort_are_polled_and_labelled_as_written(
        api: FakeExecAPI, clock: FakeClock) -> None:
    api.set_scenarios([{"id": "uuid-ue", "slug": "überblick-ç", "name": "Überblick"}])
    api.set_summary("überblick-ç", summary_body(participant_count=3))
    api.set_summary("Équipe-Nord", summary_body(participant_count=4))
    api.set_groups([{"id": "g-emea", "name": "Sales/EMEA"}])
    exporter = exporter_for(api, clock, {
        "scenarios": [{"id": "Équipe-Nord", "cohorts": ["Équipe Nord"]}],
        "cohorts": [{"name": "Équipe Nord"}],
        "discovery": {"scenarios": {}, "group_cohorts": {}}})
    run(exporter, clock, 10)
    v = scrape(exporter, clock)
    assert sample(v, "exec_scenario_participants", scenario="überblick-ç",
                  cohort="Sales/EMEA") == 3
    assert sample(v, "exec_scenario_participants", scenario="Équipe-Nord",
                  cohort="Équipe Nord") == 4
    assert {r.query.get("group_ids") for r in api.requests_for("überblick-ç")} == {
        None, "g-emea"}


# --- display names of scenarios configured by slug or id ------------------------------------

NAMELESS = [{"id": "scenario-005"}, {"id": "uuid-007"}, {"id": "scenario-009", "name": "Own"}]


def info_names(values: dict) -> dict[str, str]:
    return {dict(labels)["scenario"]: dict(labels)["name"]
            for (name, labels) in values if name == "exec_scenario_info"}


def test_names_come_from_the_scenario_list_when_discovery_is_off(api: FakeExecAPI,
                                                                clock: FakeClock) -> None:
    for sid in ("uuid-007", "scenario-009"):
        api.set_summary(sid, summary_body())
    exporter = exporter_for(api, clock, {
        "api": {"base_url": api.base_url, "rate_limit": {"requests_per_day": 1000}},
        "scenarios": NAMELESS})
    assert info_names(scrape(exporter, clock)) == {
        "scenario-005": "", "uuid-007": "", "scenario-009": "Own"}
    start = clock.now
    run(exporter, clock, 3)
    # The targets' own requests first (a refused key shows on them), the list 5 min later.
    assert not api.list_requests("scenarios")
    run(exporter, clock, 4)  # to the list's turn, then its 3 pages
    assert [r.query["page"] for r in api.list_requests("scenarios")] == ["1", "2", "3"]
    assert clock.now >= start + 300
    # By slug or by id; a configured name wins over the list's.
    assert info_names(scrape(exporter, clock)) == {
        "scenario-005": "Scenario 5", "uuid-007": "Scenario 7", "scenario-009": "Own"}
    listed = api.list_requests("scenarios")
    assert [r.query["page"] for r in listed] == ["1", "2", "3"]
    assert listed[0].query["include_archived"] == "true"  # a configured one may be archived
    # Once a day, inside the listing share (a quarter of the day budget) by far, and not
    # taken out of the targets' budget: the interval is the one --config.check prints.
    assert exporter.scheduler.listing_requests_per_day == 0
    assert exporter.scheduler.interval == 3600
    start = clock.now
    run(exporter, clock, 400)
    assert clock.now - start > 2 * 86400
    days = (clock.now - start) / 86400
    assert len(api.list_requests("scenarios")) <= 3 * (days + 1) <= 0.25 * 1000 * days
    assert not [k for k in target_keys(exporter) if k[0].startswith("scenario-0")
                and k[0] not in ("scenario-005", "scenario-009")]  # no target added


def test_no_list_is_read_when_every_scenario_is_named(api: FakeExecAPI,
                                                      clock: FakeClock) -> None:
    exporter = exporter_for(api, clock, {"scenarios": [{"id": "scenario-005", "name": "Five"}]})
    run(exporter, clock, 3)
    assert not api.list_requests("scenarios")
    assert info_names(scrape(exporter, clock)) == {"scenario-005": "Five"}


def test_learned_names_survive_a_restart(api: FakeExecAPI, clock: FakeClock,
                                         tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    config = {"scenarios": [{"id": "scenario-005"}]}
    first = exporter_for(api, clock, config, state)
    run(first, clock, 5)
    first._save_state(force=True)
    listed = len(api.list_requests("scenarios"))
    clock.advance(60)
    second = exporter_for(api, clock, config, state)
    assert info_names(scrape(second, clock)) == {"scenario-005": "Scenario 5"}
    run(second, clock, 3)
    assert len(api.list_requests("scenarios")) == listed  # not read again before a day


def test_the_landing_page_shows_the_learned_name(api: FakeExecAPI, tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(config_text(api.base_url, ["scenario-005"], refresh="1h"))
    with InProcess(path, api.api_key) as exporter:
        wait_until(lambda: api.requests_for("scenario-005"), 10, what="the first summary")
        exporter.advance(301)  # the list is read 5 minutes after start
        wait_until(lambda: "<td>Scenario 5</td>" in exporter.get("/").text, 10,
                   what="the learned name on the landing page")
        assert info_names(exporter.scrape()[0]) == {"scenario-005": "Scenario 5"}


def test_a_reload_that_adds_a_nameless_scenario_reads_the_names_at_once(
        api: FakeExecAPI, clock: FakeClock, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    def write(scenarios: list[dict[str, str]]) -> None:
        path.write_text(json.dumps({"api": {"base_url": api.base_url, "timeout": "2s"},
                                    "refresh_interval": "1h", "scenarios": scenarios}))

    monkeypatch.setenv("EXEC_API_KEY", make_key())
    path = tmp_path / "config.yaml"
    write([{"id": "scenario-005", "name": "Five"}])
    exporter = Exporter(load_config(path), ApiKey(make_key(), "test"), str(path), None, clock)
    run(exporter, clock, 3)
    assert exporter.discovery is None and not api.list_requests("scenarios")
    write([{"id": "scenario-005", "name": "Five"}, {"id": "scenario-006"}])
    assert exporter.reload()[0]
    run(exporter, clock, 5)
    assert len(api.list_requests("scenarios")) == 3  # at once, not 5 minutes later
    assert info_names(scrape(exporter, clock)) == {"scenario-005": "Five",
                                                   "scenario-006": "Scenario 6"}
