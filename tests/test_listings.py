"""Skills and assignments: parsing, counting, the cheapest path, and the exporter
against the fake API over loopback (fake clock, poller stepped by hand)."""

from __future__ import annotations

import json
import logging
import math
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import FakeClock, make_key, metric_values, sample
from fakeapi import FakeExecAPI, summary_body

from exporter.cli import describe_plan
from exporter.client import BadRequest, InvalidResponse
from exporter.config import ApiKey, ConfigError, ListingConfig, load_config, parse_config
from exporter.daemon import Exporter
from exporter.listings import (
    STATUSES,
    AssignmentRow,
    Assignments,
    Skills,
    parse_assignment,
    parse_skill,
)

HOUR = 3600.0


# --- parsing --------------------------------------------------------------------------


def skill_item(slug: str = "objection-handling", **summary: Any) -> dict[str, Any]:
    body = {"participant_count": 18, "scored_participant_count": 15,
            "pct_proficient_plus": 40, "avg_score": 65.3}
    body.update(summary)
    return {"id": f"id-{slug}", "name": slug.replace("-", " ").title(), "slug": slug,
            "description": "x", "created_at": "2026-01-15T14:30:00Z",
            "proficiency_summary": body}


def test_skill_row_becomes_typed_values_with_ratio_from_percent() -> None:
    skill = parse_skill(skill_item())
    assert (skill.slug, skill.name) == ("objection-handling", "Objection Handling")
    assert (skill.participants, skill.scored_participants) == (18, 15)
    assert skill.proficient_ratio == pytest.approx(0.4)
    assert skill.average_score == pytest.approx(65.3)


def test_skill_nulls_are_none_and_slug_falls_back_to_id() -> None:
    skill = parse_skill(skill_item(pct_proficient_plus=None, avg_score=None))
    assert skill.proficient_ratio is None and skill.average_score is None
    assert skill.participants == 18
    bare = parse_skill({"id": "sk1", "name": None, "proficiency_summary": None})
    assert (bare.slug, bare.name, bare.participants) == ("sk1", "sk1", None)


@pytest.mark.parametrize("item, message", [
    ([], "not an object"),
    ({"id": 5, "slug": "a"}, "skill.id"),
    ({"name": "no id"}, "neither slug nor id"),
    (skill_item(participant_count="18"), "participant_count"),
    (skill_item(scored_participant_count=-1), "below 0"),
    (skill_item(participant_count=2.5), "whole number"),
    (skill_item(pct_proficient_plus=140), "outside 0-100"),
    (skill_item(avg_score=True), "avg_score"),
    ({"slug": "a", "proficiency_summary": [1]}, "not an object"),
])
def test_skill_wrong_types_are_invalid(item: Any, message: str) -> None:
    with pytest.raises(InvalidResponse, match=message):
        parse_skill(item)


def row(scenario_id: str, status: str, slug: str | None = None) -> dict[str, Any]:
    return {"id": f"a-{scenario_id}-{status}", "user": {"id": "u1"},
            "scenario": {"id": scenario_id, "name": "S", "slug": slug}, "status": status,
            "due_date": None, "best_score": None}


def test_assignment_rows_parse_and_unknown_status_is_not_counted() -> None:
    assert parse_assignment(row("id-1", "past_due", "s-1")) == AssignmentRow(
        "id-1", "s-1", "past_due", id="a-id-1-past_due")
    assert parse_assignment(row("id-1", "on_hold")).status is None
    for bad in ([], {"status": "completed"}, {"scenario": {"id": 3}, "status": "completed"},
                {"scenario": {"id": "x"}, "status": 2}):
        with pytest.raises(InvalidResponse):
            parse_assignment(bad)


# --- counting and the cheapest path ---------------------------------------------------------


def rows_of(*entries: tuple[str, str | None, str]) -> list[AssignmentRow]:
    return [AssignmentRow(sid, slug, status) for sid, slug, status in entries]


def assignments(polled: list[tuple[str, str | None]]) -> Assignments:
    return Assignments(ListingConfig(), day_budget=900, scenarios=lambda: polled)


def test_paging_counts_every_status_with_zeros_and_matches_slugs() -> None:
    # "by-uuid" is known by id; "by-slug" is configured by slug and matched by the
    # slug its rows carry; "other" is not polled and is ignored.
    listing = assignments([("by-uuid", "id-a"), ("by-slug", None)])
    job = listing.due(0.0)
    assert job is not None and job.label == "assignments page 1"
    listing.page_read(rows_of(("id-a", "a", "past_due"), ("id-a", "a", "past_due"),
                              ("id-b", "by-slug", "completed"), ("id-c", "other", "completed"),
                              ("id-b", "by-slug", "brand_new")), 1, 5.0)
    values = listing.values()
    assert values == {
        **{("by-uuid", s): 0 for s in STATUSES}, **{("by-slug", s): 0 for s in STATUSES},
        ("by-uuid", "past_due"): 2, ("by-slug", "completed"): 1,
    }
    assert listing.read_at == 5.0 and listing.due(5.0) is None


def test_the_cheapest_path_follows_the_last_reads_sizes() -> None:
    polled = [("s1", "id-1"), ("s2", "id-2")]  # counting costs 5 x 2 = 10 requests
    listing = assignments(polled)
    assert listing.plan(polled) == (False, 1)  # sizes unknown: page
    listing.due(0.0)
    # 1,000 rows (10 pages) of the two scenarios: 10 pages = 10 counts: page (tie).
    listing.page_read(rows_of(*[("id-1", None, "completed")] * 100), 10, 1.0)
    for page in range(2, 11):
        listing.page_read(rows_of(*[("id-2", None, "in_progress")] * 100), 10, float(page))
    assert listing.values()[("s2", "in_progress")] == 900
    assert listing.plan(polled) == (False, 10)
    # One more page's worth: counting is now cheaper.
    listing._rows = 1001
    assert listing.plan(polled) == (True, 10)
    listing._rows = 99
    assert listing.plan(polled) == (False, 1)


def test_a_scenario_without_known_id_forces_paging_until_rows_teach_it() -> None:
    polled: list[tuple[str, str | None]] = [("by-slug", None)]
    listing = assignments(polled)
    listing._rows = 100_000
    assert listing.plan(polled) == (False, 1)  # no id: page through everything
    listing.due(0.0)
    listing.page_read(rows_of(("id-x", "by-slug", "completed")), 1, 1.0)
    listing._rows = 100_000
    assert listing.plan(polled) == (True, 5)  # the rows taught its id


def test_counting_asks_one_count_per_scenario_and_status() -> None:
    polled = [("s1", "id-1")]
    listing = assignments(polled)
    listing._rows = 10_000
    for i, status in enumerate(STATUSES):
        job = listing.due(float(i))
        assert job is not None and job.key == ("count", "assignments", "s1", status)
        listing.counted("s1", status, i, float(i))
    assert listing.values() == {("s1", s): i for i, s in enumerate(STATUSES)}
    assert listing.counting is True and listing.read_at == 4.0


def test_a_long_paging_read_switches_to_counting_after_its_first_page() -> None:
    polled = [("s1", "id-1")]
    listing = assignments(polled)
    listing.due(0.0)
    listing.page_read(rows_of(*[("id-1", None, "completed")] * 100), 50, 1.0)
    job = listing.due(1.0)
    assert job is not None and job.key == ("count", "assignments", "s1", "not_started")
    assert listing.read_at is None  # nothing published from the abandoned pages


def test_listing_cost_is_capped_at_its_share_of_the_day_budget() -> None:
    listing = Skills(ListingConfig(interval="1m"), day_budget=900)
    # Every minute would be 1,440 requests a day: stretched to 25% of 900.
    assert listing.requests_per_day() == pytest.approx(225)
    assert listing.interval == pytest.approx(384)


# --- configuration ----------------------------------------------------------------------------


def test_config_sections_are_off_when_absent_and_on_with_defaults_when_present() -> None:
    config = parse_config({"scenarios": [{"id": "s"}]})
    assert config.skills is None and config.assignments is None
    config = parse_config({"scenarios": [{"id": "s"}], "skills": {},
                           "assignments": {"enabled": False, "interval": "2h"}})
    assert config.skills is not None
    assert (config.skills.enabled, config.skills.interval) == (True, 3600.0)
    assert config.assignments is not None and not config.assignments.enabled


def test_config_errors_name_the_field() -> None:
    with pytest.raises(ConfigError) as exc:
        parse_config({"scenarios": [{"id": "s"}], "skills": {"enabled": "yes", "every": "1h"},
                      "assignments": {"interval": 60}})
    assert set(exc.value.problems) == {
        "skills.enabled: must be true or false", "skills.every: unknown key",
        "assignments.interval: must be a duration such as '10s', '15m' or '7d', got 60"}


def test_config_check_shows_the_split() -> None:
    config = parse_config({"scenarios": [{"id": "a"}, {"id": "b"}], "refresh_interval": "1m",
                           "skills": {}, "assignments": {"interval": "30m"}})
    plan = describe_plan(config, None)
    assert "skills: on, every 1h" in plan and "about 24 requests/day" in plan
    assert "assignments: on, every 30m" in plan and "10 counts (5 statuses x 2 scenarios)" in plan
    assert "left for the targets: about 828 requests/day" in plan  # 900 - 24 - 48
    # 2 targets x 86400 / 828 = 208.7 s
    assert "effective refresh interval: 3m29s" in plan


# --- against the fake API ---------------------------------------------------------------------

SCENARIOS = [  # (id, slug): s-a is configured by slug, s-b by id, s-c by slug with no rows
    ("uuid-a", "s-a"), ("uuid-b", "s-b"), ("uuid-c", "s-c"), ("uuid-z", "unpolled")]
SKILLS = [skill_item(f"skill-{i:03d}", participant_count=i, scored_participant_count=i // 2,
                     pct_proficient_plus=i % 101, avg_score=float(i % 100))
          for i in range(130)]
SKILLS[7]["proficiency_summary"] = None
SKILLS[8]["proficiency_summary"]["avg_score"] = None


def make_assignments(counts: dict[tuple[str, str], int]) -> list[dict[str, Any]]:
    slugs = dict(SCENARIOS)
    items = []
    for (sid, status), n in counts.items():
        for i in range(n):
            items.append({"id": f"{sid}-{status}-{i}", "user": {"id": f"u{i}"},
                          "scenario": {"id": sid, "name": sid, "slug": slugs[sid]},
                          "status": status})
    return items


COUNTS = {("uuid-a", "completed"): 130, ("uuid-a", "past_due"): 12, ("uuid-a", "in_progress"): 3,
          ("uuid-b", "not_started"): 40, ("uuid-b", "did_not_pass"): 1,
          ("uuid-z", "past_due"): 60}


@pytest.fixture
def api(clock: FakeClock) -> Iterator[FakeExecAPI]:
    fake = FakeExecAPI(make_key(), clock=clock).start()
    for sid, slug in SCENARIOS:
        fake.set_summary(slug, summary_body())
        fake.set_summary(sid, summary_body())
    fake.set_skills(SKILLS)
    fake.set_assignments(make_assignments(COUNTS))
    try:
        yield fake
    finally:
        fake.stop()


def exporter_for(fake: FakeExecAPI, clock: FakeClock, state_file: str | None = None,
                 **extra: Any) -> Exporter:
    raw: dict[str, Any] = {
        "api": {"base_url": fake.base_url, "timeout": "2s",
                "rate_limit": {"requests_per_minute": 6000, "requests_per_day": 100_000,
                               "reserve": 0}},
        "refresh_interval": "1h",
        "scenarios": [{"id": "s-a"}, {"id": "uuid-b"}, {"id": "s-c"}],
        "skills": {"interval": "1h"},
        "assignments": {"interval": "1h"},
    }
    raw.update(extra)
    return Exporter(parse_config(raw), ApiKey(make_key(), "test"), None, state_file, clock)


def run_until(exporter: Exporter, clock: FakeClock, until: float) -> None:
    """Step the poller, moving the fake clock to each wake-up, up to ``until``."""
    for _ in range(10_000):
        wake = exporter.poller.step()
        if wake > until:
            clock.now = until
            return
        clock.now = max(clock.now, wake)
    raise AssertionError("the poller never went idle")


def scrape(exporter: Exporter) -> dict:
    return metric_values(exporter.exposition.render().decode())


def expected_counts(api_items: list[dict[str, Any]], label_of: dict[str, str]
                    ) -> dict[tuple[str, str], int]:
    listed = Counter((i["scenario"]["id"], i["status"]) for i in api_items)
    return {(label, status): listed[(sid, status)]
            for sid, label in label_of.items() for status in STATUSES}


LABELS = {"uuid-a": "s-a", "uuid-b": "uuid-b", "uuid-c": "s-c"}


def test_every_skill_and_scenario_status_equals_what_the_api_lists(
        api: FakeExecAPI, clock: FakeClock) -> None:
    exporter = exporter_for(api, clock)
    run_until(exporter, clock, clock.now + 60)
    values = scrape(exporter)
    for item in SKILLS:
        slug, summary = item["slug"], item["proficiency_summary"]
        assert sample(values, "exec_skill_info", skill=slug, name=item["name"]) == 1
        got = [sample(values, f"exec_skill_{m}", skill=slug) for m in
               ("participants", "scored_participants", "proficient_ratio", "average_score")]
        if summary is None:
            assert got == [None] * 4  # null summary: no samples, info only
            continue
        want = [summary["participant_count"], summary["scored_participant_count"],
                summary["pct_proficient_plus"] / 100, summary["avg_score"]]
        assert got == want, slug
    assert sample(values, "exec_skill_average_score", skill="skill-008") is None
    assert len([k for k in values if k[0] == "exec_skill_info"]) == 130

    want = expected_counts(make_assignments(COUNTS), LABELS)
    got = {(dict(k[1])["scenario"], dict(k[1])["status"]): v for k, v in values.items()
           if k[0] == "exec_assignments"}
    assert got == want  # zeros included, the unpolled scenario left out
    assert got[("s-c", "past_due")] == 0 and got[("s-a", "completed")] == 130
    for kind in ("skills", "assignments"):
        assert sample(values, "exec_exporter_discovery_last_success_timestamp_seconds",
                      kind=kind) is not None


def test_a_status_change_shows_up_within_the_interval(api: FakeExecAPI,
                                                       clock: FakeClock) -> None:
    exporter = exporter_for(api, clock)
    start = clock.now
    run_until(exporter, clock, start + 60)
    assert sample(scrape(exporter), "exec_assignments", scenario="uuid-b",
                  status="past_due") == 0
    changed = dict(COUNTS)
    changed[("uuid-b", "not_started")] -= 5
    changed[("uuid-b", "past_due")] = 5
    api.set_assignments(make_assignments(changed))
    run_until(exporter, clock, start + HOUR + 60)
    values = scrape(exporter)
    assert sample(values, "exec_assignments", scenario="uuid-b", status="past_due") == 5
    assert sample(values, "exec_assignments", scenario="uuid-b", status="not_started") == 35


def test_each_interval_costs_at_most_the_pages_needed(api: FakeExecAPI,
                                                       clock: FakeClock) -> None:
    exporter = exporter_for(api, clock)
    start = clock.now
    run_until(exporter, clock, start + 3 * HOUR - 1)
    all_rows = sum(COUNTS.values())  # 246
    for hour in range(3):
        sent = [r for r in api.listing_requests("assignments")
                if start + hour * HOUR <= r.time < start + (hour + 1) * HOUR]
        skills = [r for r in api.listing_requests("skills")
                  if start + hour * HOUR <= r.time < start + (hour + 1) * HOUR]
        assert len(skills) == math.ceil(len(SKILLS) / 100) == 2
        assert all(r.query["include"] == "proficiency" for r in skills)
        # s-a and s-c are configured by slug: the rows teach s-a's id, but s-c has no
        # rows, so its id stays unknown and every row of the workspace is read.
        assert len(sent) == math.ceil(all_rows / 100) == 3
        assert all("scenario_ids" not in r.query for r in sent)


def test_with_every_id_known_paging_is_filtered_to_the_polled_scenarios(
        api: FakeExecAPI, clock: FakeClock) -> None:
    exporter = exporter_for(api, clock, scenarios=[{"id": "s-a"}, {"id": "uuid-b"}])
    start = clock.now
    run_until(exporter, clock, start + 2 * HOUR - 1)
    polled_rows = sum(n for (sid, _), n in COUNTS.items() if sid in ("uuid-a", "uuid-b"))
    second = [r for r in api.listing_requests("assignments") if r.time >= start + HOUR]
    # 186 rows: 2 pages, fewer than the 10 counts and the 3 pages of the whole workspace.
    assert len(second) == math.ceil(polled_rows / 100) == 2
    assert all(r.query["scenario_ids"] == "uuid-a,uuid-b" for r in second)
    values = scrape(exporter)
    assert sample(values, "exec_assignments", scenario="s-a", status="completed") == 130
    assert sample(values, "exec_assignments", scenario="uuid-b", status="not_started") == 40


def test_a_big_workspace_is_counted_not_paged(api: FakeExecAPI, clock: FakeClock) -> None:
    # 2,000 rows of the one polled scenario (20 pages) against 5 counts.
    api.set_assignments(make_assignments({("uuid-a", "completed"): 1990,
                                          ("uuid-a", "past_due"): 10}))
    exporter = exporter_for(api, clock, scenarios=[{"id": "s-a"}])
    start = clock.now
    run_until(exporter, clock, start + 2 * HOUR - 1)
    first = [r for r in api.listing_requests("assignments") if r.time < start + HOUR]
    second = [r for r in api.listing_requests("assignments") if r.time >= start + HOUR]
    # First read: page 1 teaches the size and the id, then 5 counts (1 + 5 < 20 pages).
    assert len(first) == 6 and first[0].query["page_size"] == "100"
    assert [r.query["status"] for r in first[1:]] == list(STATUSES)
    assert all(r.query == {"scenario_ids": "uuid-a", "status": r.query["status"],
                           "page": "1", "page_size": "1"} for r in first[1:])
    # Then counting only: 5 requests an hour.
    assert len(second) == 5 and all(r.query["page_size"] == "1" for r in second)
    values = scrape(exporter)
    assert sample(values, "exec_assignments", scenario="s-a", status="completed") == 1990
    assert sample(values, "exec_assignments", scenario="s-a", status="past_due") == 10
    assert sample(values, "exec_assignments", scenario="s-a", status="in_progress") == 0


def test_a_failed_read_keeps_the_last_values_and_reports_itself(
        api: FakeExecAPI, clock: FakeClock) -> None:
    exporter = exporter_for(api, clock)
    start = clock.now
    run_until(exporter, clock, start + 60)
    before = scrape(exporter)
    read_at = sample(before, "exec_exporter_discovery_last_success_timestamp_seconds",
                     kind="assignments")
    api.set_list_fault("assignments", "500")
    api.set_list_fault("skills", "wrong_types")
    api.set_skills([])
    api.set_assignments([])
    run_until(exporter, clock, start + HOUR + 120)
    after = scrape(exporter)
    assert exporter.assignments is not None and exporter.assignments.error is not None
    assert exporter.skills is not None and "invalid_response" in (exporter.skills.error or "")
    for key, value in before.items():
        if key[0].startswith(("exec_assignments", "exec_skill_")):
            assert after.get(key) == value, key
    assert sample(after, "exec_exporter_discovery_last_success_timestamp_seconds",
                  kind="assignments") == read_at
    # Once the API answers again, the values follow it.
    api.set_list_fault("assignments", None)
    api.set_list_fault("skills", None)
    run_until(exporter, clock, start + 2 * HOUR + 120)
    again = scrape(exporter)
    assert sample(again, "exec_assignments", scenario="s-a", status="completed") == 0
    assert not [k for k in again if k[0] == "exec_skill_info"]


def test_listings_are_paid_for_before_the_targets_interval(api: FakeExecAPI,
                                                           clock: FakeClock) -> None:
    exporter = exporter_for(api, clock, api={
        "base_url": api.base_url, "rate_limit": {"requests_per_day": 1000, "reserve": 0}})
    run_until(exporter, clock, clock.now + 60)
    scheduler = exporter.scheduler
    # Skills: 2 pages an hour (48/day); assignments: 3 pages an hour (72/day).
    assert scheduler.listing_requests_per_day == pytest.approx(48 + 72)
    assert scheduler.poll_day_budget == pytest.approx(1000 - 120)


def test_disabled_listings_send_nothing_and_export_nothing(api: FakeExecAPI,
                                                           clock: FakeClock) -> None:
    exporter = exporter_for(api, clock, skills={"enabled": False}, assignments=None)
    run_until(exporter, clock, clock.now + 60)
    assert not api.listing_requests("skills") and not api.listing_requests("assignments")
    assert not [k for k in scrape(exporter) if k[0].startswith(("exec_skill", "exec_assign"))]


# --- the demo and reloads -----------------------------------------------------------------


def test_the_demo_serves_both_listings_and_past_due_grows(clock: FakeClock) -> None:
    from exporter.sim import DEMO_API_KEY, DEMO_SCENARIOS, SimulatedExecAPI, demo_config

    with SimulatedExecAPI(clock=clock, requests_per_minute=100_000) as simulated:
        raw = demo_config(simulated.base_url)
        raw["api"]["rate_limit"]["requests_per_minute"] = 6000
        exporter = Exporter(parse_config(raw), ApiKey(DEMO_API_KEY, "demo"), None, None, clock)
        start = clock.now
        run_until(exporter, clock, start + 30)
        values = scrape(exporter)
        first = {(dict(k[1])["scenario"], dict(k[1])["status"]): v
                 for k, v in values.items() if k[0] == "exec_assignments"}
        client = exporter.client
        # Every scenario x status equals what the API's own filters count.
        for (scenario, status), count in first.items():
            sid = next(s.id for s in DEMO_SCENARIOS if s.slug == scenario)
            total = client.list_page(
                "/scenarios/assignments",
                {"scenario_ids": sid, "status": status, "page_size": "1"}).total_count
            assert count == total, (scenario, status)
        assert len(first) == 5 * 5 and sum(first.values()) > 0
        assert sample(values, "exec_skill_info", skill="active-listening",
                      name="Active Listening") == 1
        assert sample(values, "exec_skill_proficient_ratio", skill="active-listening") is None
        assert 0 < (sample(values, "exec_skill_proficient_ratio", skill="discovery") or 0) <= 1
        # Due dates pass while the demo runs: past-due assignments grow.
        run_until(exporter, clock, start + 1200)
        later = scrape(exporter)
        past_due = sum(v for k, v in later.items()
                       if k[0] == "exec_assignments" and ("status", "past_due") in k[1])
        assert past_due > sum(v for k, v in first.items() if k[1] == "past_due")
        exporter.client.close()


def test_reload_starts_keeps_and_stops_listings(api: FakeExecAPI, clock: FakeClock,
                                                write_config: Any,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    key = make_key()
    monkeypatch.setenv("EXEC_API_KEY", key)
    def text(skills: str) -> str:
        return (f"api: {{base_url: '{api.base_url}', rate_limit: {{requests_per_minute: 6000,"
                f" requests_per_day: 100000, reserve: 0}}}}\n"
                f"refresh_interval: 1h\nscenarios: [{{id: s-a}}]\n{skills}")

    path = write_config(text("assignments: {interval: 1h}\n"))
    exporter = Exporter(load_config(path), ApiKey(key, "test"), str(path), None, clock)
    run_until(exporter, clock, clock.now + 60)
    before = exporter.assignments
    assert before is not None and exporter.skills is None
    path.write_text(text("assignments: {interval: 2h}\nskills: {}\n"))
    ok, message = exporter.reload()
    assert ok, message
    assert exporter.assignments is before and before.settings.interval == 7200
    assert before.read_at is not None and exporter.skills is not None
    run_until(exporter, clock, clock.now + 60)
    assert [k for k in scrape(exporter) if k[0] == "exec_skill_info"]
    path.write_text(text(""))
    assert exporter.reload()[0]
    values = scrape(exporter)
    assert not [k for k in values if k[0].startswith(("exec_skill", "exec_assignments"))]



def test_a_refused_filter_falls_back_to_paging_everything() -> None:
    polled = [("s1", "id-1")]
    listing = assignments(polled)
    listing._rows = 10_000
    job = listing.due(0.0)
    assert job is not None and job.key[0] == "count"
    listing._fail(BadRequest("HTTP 400 (invalid_request)", 400), 0.0)
    assert listing.plan(polled) == (False, 1)
    job = listing.due(3600.0)
    assert job is not None and job.label == "assignments page 1"
    assert listing.schedule.run is not None and listing.schedule.run.scenario_filter is None
    listing.page_read(rows_of(("id-1", None, "past_due")), 1, 3601.0)
    assert listing.values()[("s1", "past_due")] == 1


def test_a_restart_inside_the_interval_reads_no_listing_again(
        api: FakeExecAPI, clock: FakeClock, tmp_path: Path) -> None:
    """The state file keeps both listings' last reads: a restart inside their interval
    serves the same values and sends no request (issue: 7 listing requests went out)."""
    state = str(tmp_path / "state.json")
    raw: dict[str, Any] = {"scenarios": [{"id": "s-a", "name": "A"},
                                         {"id": "uuid-b", "name": "B"},
                                         {"id": "s-c", "name": "C"}]}
    first = exporter_for(api, clock, state_file=state, **raw)
    run_until(first, clock, clock.now + 60)
    before = {k: v for k, v in scrape(first).items()
              if k[0].startswith(("exec_skill", "exec_assignments"))
              or k[0] == "exec_exporter_discovery_last_success_timestamp_seconds"}
    assert len([k for k in before if k[0] == "exec_skill_info"]) == 130
    first._save_state(force=True)
    first.running.client.close()

    clock.advance(600)
    api.clear_requests()
    second = exporter_for(api, clock, state_file=state, **raw)
    try:
        after = {k: v for k, v in scrape(second).items() if k in before}
        assert after == before  # the values and when they were read, before any request
        run_until(second, clock, clock.now + 1800)  # still inside the hour
        assert api.requests == []
        run_until(second, clock, clock.now + HOUR)  # then read again, as usual
        assert api.listing_requests("skills") and api.listing_requests("assignments")
    finally:
        second.running.client.close()


def test_a_malformed_saved_listing_is_left_out_and_read_again(
        api: FakeExecAPI, clock: FakeClock, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    state = tmp_path / "state.json"
    first = exporter_for(api, clock, state_file=str(state))
    run_until(first, clock, clock.now + 60)
    first._save_state(force=True)
    first.running.client.close()
    doc = json.loads(state.read_bytes())
    doc["listings"]["skills"]["skills"][0][2] = "many"  # participants: not a number
    doc["listings"]["assignments"]["read_at"] = clock.now + 86400  # from the future
    state.write_text(json.dumps(doc))
    api.clear_requests()
    with caplog.at_level(logging.WARNING, logger="exporter.listings"):
        second = exporter_for(api, clock, state_file=str(state))
    try:
        assert "ignoring the saved skills read" in caplog.text
        assert "ignoring the saved assignments read" in caplog.text
        run_until(second, clock, clock.now + 60)  # both read again at once
        assert api.listing_requests("skills") and api.listing_requests("assignments")
    finally:
        second.running.client.close()
