"""Tests of the simulated Exec API (exporter/sim/) and the test fake
(tests/fakeapi.py), over real HTTP on 127.0.0.1."""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import requests
from conftest import FakeClock, metric_values, sample
from fakeapi import FakeExecAPI, summary_body

from exporter.aggregate import Precision, aggregate, compare
from exporter.client import Summary, parse_member, parse_participant, parse_summary
from exporter.config import ApiKey, CohortConfig, parse_config
from exporter.daemon import Exporter
from exporter.landing import landing_page
from exporter.planner import cohort_filter, pull_query
from exporter.server import Web
from exporter.sim import (
    DEMO_API_KEY,
    DEMO_GROUPS,
    DEMO_SCENARIOS,
    DROP_SCENARIO_SLUG,
    RANKS,
    SALES_TEAM_GROUP_ID,
    APIRequest,
    HeaderDict,
    SimulatedExecAPI,
    demo_config,
    rank_for,
)

START = 1_780_000_000.0  # 2026-05-28T20:26:40Z
ACTIVE = [s for s in DEMO_SCENARIOS if not s.archived]
TIMEOUT = 5.0


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(START)


@pytest.fixture
def sim(clock: FakeClock) -> Iterator[SimulatedExecAPI]:
    api = SimulatedExecAPI(
        clock=clock, requests_per_minute=10_000, requests_per_day=100_000, drop_after=600
    ).start()
    yield api
    api.stop()


def get(
    api: SimulatedExecAPI | FakeExecAPI,
    path: str,
    params: dict[str, str] | None = None,
    key: str | None = DEMO_API_KEY,
    **kw: Any,
) -> requests.Response:
    headers = {"Authorization": f"Bearer {key}"} if key is not None else {}
    kw.setdefault("timeout", TIMEOUT)
    return requests.get(api.base_url + path, params=params, headers=headers, **kw)


def summary(api: SimulatedExecAPI, scenario: str, **params: str) -> dict[str, Any]:
    response = get(api, f"/scenarios/{scenario}/analytics/summary", params)
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"] == "application/json"
    body: dict[str, Any] = response.json()
    return body


def iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# --- the simulated API: auth and shape --------------------------------------


def test_bearer_key_is_checked(sim: SimulatedExecAPI) -> None:
    path = "/scenarios/renewal-negotiation/analytics/summary"
    for key in (None, "wrong", DEMO_API_KEY + "x"):
        response = get(sim, path, key=key)
        assert response.status_code == 401
        assert response.json() == {
            "error": {
                "type": "authentication_error",
                "code": "invalid_api_key",
                "message": "Invalid or inactive API key",
            }
        }
    assert get(sim, path).status_code == 200
    assert sim.request_count == 4


def test_summary_shape_and_invariants(sim: SimulatedExecAPI) -> None:
    for scenario in ACTIVE:
        body = summary(sim, scenario.slug)
        assert body == summary(sim, scenario.id), "slug and UUID name the same scenario"
        assert set(body) == {
            "participant_count",
            "total_sessions",
            "average_best_score",
            "average_best_rank",
            "average_lift_percentage",
            "total_practice_minutes",
            "average_session_duration_seconds",
            "score_distribution",
        }
        n = body["participant_count"]
        assert isinstance(n, int) and n > 5
        assert body["total_sessions"] >= n
        score = body["average_best_score"]
        assert 0 <= score <= 100 and round(score, 1) == score
        assert body["average_best_rank"] == rank_for(score)
        assert 0 <= body["average_lift_percentage"] <= 50
        assert isinstance(body["total_practice_minutes"], int)
        seconds = body["average_session_duration_seconds"]
        assert 60 <= seconds <= 1200
        dist = body["score_distribution"]
        assert [d["rank"] for d in dist] == list(RANKS)
        assert sum(d["count"] for d in dist) == n
        assert abs(sum(d["percentage"] for d in dist) - 100) < 0.5


def test_unpractised_scenario_has_nulls_not_zeros(sim: SimulatedExecAPI) -> None:
    body = summary(sim, "legacy-product-pitch")
    assert body["participant_count"] == 0
    assert body["average_best_score"] is None
    assert body["average_best_rank"] is None
    assert body["average_session_duration_seconds"] is None


def test_unknown_scenario_is_404(sim: SimulatedExecAPI) -> None:
    response = get(sim, "/scenarios/no-such-thing/analytics/summary")
    assert response.status_code == 404
    assert response.json()["error"] == {
        "type": "not_found",
        "code": "scenario_not_found",
        "message": "Scenario not found: no-such-thing",
    }
    assert get(sim, "/nowhere").status_code == 404


@pytest.mark.parametrize(
    "params",
    [
        {"start_date": "yesterday"},
        {"end_date": "2026-13-01T00:00:00Z"},
        {"exclude_system_users": "maybe"},
    ],
)
def test_bad_parameters_are_400(sim: SimulatedExecAPI, params: dict[str, str]) -> None:
    response = get(sim, "/scenarios/pricing-objection/analytics/summary", params)
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request"


# --- the simulated API: filters ---------------------------------------------


def test_group_filter_selects_a_subset(sim: SimulatedExecAPI) -> None:
    for scenario in ACTIVE:
        everyone = summary(sim, scenario.slug)
        sales = summary(sim, scenario.slug, group_ids=SALES_TEAM_GROUP_ID)
        assert 0 < sales["participant_count"] < everyone["participant_count"]
        assert sales["total_sessions"] < everyone["total_sessions"]
    nobody = summary(sim, "pricing-objection", group_ids="g-unknown")
    assert nobody["participant_count"] == 0


def test_exclude_system_users_drops_exec_staff(sim: SimulatedExecAPI) -> None:
    fewer = 0
    for scenario in ACTIVE:
        for extra in ({}, {"group_ids": SALES_TEAM_GROUP_ID}):
            kept = summary(sim, scenario.slug, **extra)["participant_count"]
            humans = summary(sim, scenario.slug, exclude_system_users="true", **extra)
            assert humans["participant_count"] <= kept
            fewer += humans["participant_count"] < kept
            explicit = summary(sim, scenario.slug, exclude_system_users="false", **extra)
            assert explicit["participant_count"] == kept
    assert fewer >= 3, "staff practise most scenarios, some of them in Sales Team"
    staff = summary(sim, "discovery-call-it-director", user_emails="qa.bot@exec.com")
    assert staff["participant_count"] <= 1
    dropped = summary(
        sim,
        "discovery-call-it-director",
        user_emails="qa.bot@exec.com",
        exclude_system_users="true",
    )
    assert dropped["participant_count"] == 0


def test_user_filters_are_unioned(sim: SimulatedExecAPI) -> None:
    slug = "cold-call-gatekeeper"
    staff = "demo.admin@exec.com,qa.bot@exec.com,solutions.engineer@exec.com,support@exec.com"
    by_email = summary(sim, slug, user_emails=staff)["participant_count"]
    assert 1 <= by_email <= 4
    with_unknown_id = summary(sim, slug, user_emails=staff, user_ids="u-nobody")
    assert with_unknown_id["participant_count"] == by_email
    assert summary(sim, slug, user_ids="u-nobody")["participant_count"] == 0


def test_date_window_reduces_sessions(sim: SimulatedExecAPI, clock: FakeClock) -> None:
    for scenario in ACTIVE:
        everyone = summary(sim, scenario.slug)
        week = summary(sim, scenario.slug, start_date=iso(clock.now - 7 * 86400))
        assert 0 < week["total_sessions"] < everyone["total_sessions"]
        assert week["participant_count"] < everyone["participant_count"]
        old = summary(sim, scenario.slug, end_date=iso(clock.now - 7 * 86400))
        assert old["total_sessions"] + week["total_sessions"] == everyone["total_sessions"]
    future = summary(sim, "renewal-negotiation", start_date=iso(clock.now + 86400))
    assert future["total_sessions"] == 0
    offset = summary(sim, "renewal-negotiation", start_date="2026-05-21T22:26:40+02:00")
    assert offset == summary(sim, "renewal-negotiation", start_date="2026-05-21T20:26:40Z")


def test_values_drift_slowly_and_counts_never_fall(sim: SimulatedExecAPI, clock: FakeClock) -> None:
    slug = "discovery-call-it-director"
    before = summary(sim, slug)
    grew = False
    for _ in range(12):
        clock.advance(300)
        after = summary(sim, slug)
        assert after["participant_count"] >= before["participant_count"]
        assert after["total_sessions"] >= before["total_sessions"]
        assert after["total_practice_minutes"] >= before["total_practice_minutes"]
        assert abs(after["average_best_score"] - before["average_best_score"]) < 3
        grew |= after["total_sessions"] > before["total_sessions"]
        before = after
    assert grew, "an hour of demo time brings new sessions"


def test_pricing_objection_drops_after_drop_after(sim: SimulatedExecAPI, clock: FakeClock) -> None:
    cohorts: list[dict[str, str]] = [
        {},
        {"group_ids": SALES_TEAM_GROUP_ID, "exclude_system_users": "true"},
    ]
    before = [summary(sim, DROP_SCENARIO_SLUG, **c)["average_best_score"] for c in cohorts]
    other = summary(sim, "renewal-negotiation")["average_best_score"]
    clock.advance(590)
    just_before = summary(sim, DROP_SCENARIO_SLUG)["average_best_score"]
    assert abs(just_before - before[0]) < 3
    clock.advance(10 + 180)  # three minutes after drop_after
    for cohort, was in zip(cohorts, before, strict=True):
        body = summary(sim, DROP_SCENARIO_SLUG, **cohort)
        assert was - body["average_best_score"] >= 15
        assert body["average_best_rank"] == rank_for(body["average_best_score"])
    clock.advance(3600)
    assert before[0] - summary(sim, DROP_SCENARIO_SLUG)["average_best_score"] >= 15
    assert abs(summary(sim, "renewal-negotiation")["average_best_score"] - other) < 5


def test_repeated_requests_answer_from_the_same_sessions(sim: SimulatedExecAPI,
                                                          clock: FakeClock) -> None:
    clock.advance(86400)  # a day of new sessions
    request = APIRequest(
        method="GET",
        path="/rest/v1/scenarios/cold-call-gatekeeper/analytics/summary",
        query={"exclude_system_users": "true"},
        headers=HeaderDict({"Authorization": f"Bearer {DEMO_API_KEY}"}),
        raw_path="/rest/v1/scenarios/cold-call-gatekeeper/analytics/summary",
    )
    first = sim.handle(request)  # generates the day's sessions once
    # Later answers come from the same generated sessions: identical, every time.
    for _ in range(20):
        again = sim.handle(request)
        assert again.status == 200 and again.body == first.body


# --- the simulated API: lists and rate limits --------------------------------


def test_scenario_list_paginates_and_filters(sim: SimulatedExecAPI) -> None:
    slugs: list[str] = []
    for page in (1, 2, 3, 4):
        body = get(sim, "/scenarios", {"page": str(page), "page_size": "2"}).json()
        assert body["pagination"] == {
            "page": page,
            "page_size": 2,
            "total_count": 5,
            "total_pages": 3,
        }
        slugs += [item["slug"] for item in body["data"]]
        for item in body["data"]:
            assert {"id", "name", "slug", "visibility", "difficulty", "created_at"} <= set(item)
    assert slugs == [s.slug for s in ACTIVE]
    archived = get(sim, "/scenarios", {"include_archived": "true"}).json()
    assert archived["pagination"]["total_count"] == 6
    private = get(sim, "/scenarios", {"visibility": "private"}).json()
    assert [s["slug"] for s in private["data"]] == ["executive-qbr-readout"]
    skills = get(sim, "/scenarios", {"include": "skills", "page_size": "1"}).json()
    assert skills["data"][0]["skills"][0]["name"] == "Discovery"
    for bad in ({"page_size": "101"}, {"page": "0"}, {"page": "x"}, {"visibility": "public"}):
        response = get(sim, "/scenarios", bad)
        assert response.status_code == 400
        assert response.json()["error"]["type"] == "invalid_request"


def test_group_list_paginates(sim: SimulatedExecAPI) -> None:
    first = get(sim, "/workspace/groups", {"page_size": "3"}).json()
    second = get(sim, "/workspace/groups", {"page_size": "3", "page": "2"}).json()
    assert first["pagination"]["total_pages"] == 2
    names = [g["name"] for g in first["data"] + second["data"]]
    assert names == [g.name for g in DEMO_GROUPS]
    assert first["data"][0] == {
        "id": SALES_TEAM_GROUP_ID,
        "name": "Sales Team",
        "created_at": "2024-02-01T09:00:00Z",
    }
    assert get(sim, "/workspace/groups").json()["pagination"]["page_size"] == 50


def test_rate_limit_per_minute(clock: FakeClock) -> None:
    with SimulatedExecAPI(clock=clock, requests_per_minute=5) as api:
        for i in range(5):
            clock.advance(1)
            assert get(api, "/workspace/groups").status_code == 200, i
        clock.advance(10)
        response = get(api, "/workspace/groups")
        assert response.status_code == 429
        error = response.json()["error"]
        assert error["type"] == "rate_limit_error"
        assert error["code"] == "rate_limit_exceeded"
        # The first request (at +1 s) leaves the window at +61 s; now is +15 s.
        assert error["retry_after"] == int(response.headers["Retry-After"]) == 46
        clock.advance(45)
        assert get(api, "/workspace/groups").status_code == 429
        clock.advance(1)
        assert get(api, "/workspace/groups").status_code == 200
        assert get(api, "/workspace/groups").status_code == 429
        assert api.request_count == 9


def test_rate_limit_per_day(clock: FakeClock) -> None:
    with SimulatedExecAPI(clock=clock, requests_per_day=3) as api:
        for _ in range(3):
            assert get(api, "/workspace/groups").status_code == 200
            clock.advance(120)
        response = get(api, "/workspace/groups")
        assert response.status_code == 429
        assert 86000 < response.json()["error"]["retry_after"] <= 86400 - 360 + 1
        clock.advance(86400)
        assert get(api, "/workspace/groups").status_code == 200


def test_demo_config_matches_the_simulation(sim: SimulatedExecAPI) -> None:
    config = demo_config(sim.base_url)
    assert config["api"] == {
        "base_url": sim.base_url,
        "timeout": "5s",
        "rate_limit": {"requests_per_minute": 60, "requests_per_day": 86400, "reserve": 0.1},
    }
    assert config["refresh_interval"] == "30s"
    assert [s["id"] for s in config["scenarios"]] == [s.slug for s in ACTIVE]
    assert all(s["name"] for s in config["scenarios"])
    assert [c["name"] for c in config["cohorts"]] == ["all", "sales", "last-7d"]
    assert config["cohorts"][1] == {
        "name": "sales",
        "group_ids": [SALES_TEAM_GROUP_ID],
        "exclude_system_users": True,
    }
    assert config["cohorts"][2]["window"] == "7d"
    assert DEMO_API_KEY not in repr(config)
    for scenario in config["scenarios"]:
        assert summary(sim, scenario["id"])["participant_count"] > 0


def test_demo_source_has_no_live_key_pattern() -> None:
    for module in Path(__file__).parents[1].joinpath("exporter", "sim").glob("*.py"):
        assert not re.search(r"exec_live_[A-Za-z0-9]{40}", module.read_text()), module
    assert not re.fullmatch(r"exec_live_[A-Za-z0-9]{40}", DEMO_API_KEY)


def test_refuses_non_loopback_hosts() -> None:
    with pytest.raises(ValueError):
        SimulatedExecAPI(host="0.0.0.0")


# --- derived cohorts: participants and members ------------------------------


def pages(api: SimulatedExecAPI, path: str, page_size: int, **params: str
          ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Every item of a paginated list, read ``page_size`` at a time, and each page's
    pagination object."""
    items: list[dict[str, Any]] = []
    seen: list[dict[str, Any]] = []
    for number in range(1, 200):
        response = get(api, path, {**params, "page": str(number), "page_size": str(page_size)})
        assert response.status_code == 200, response.text
        body = response.json()
        items += body["data"]
        seen.append(body["pagination"])
        if number >= body["pagination"]["total_pages"]:
            return items, seen
    raise AssertionError("pagination never ended")


def test_members_paginate_and_filter_by_group(sim: SimulatedExecAPI) -> None:
    everyone, paging = pages(sim, "/workspace/members", 40)
    assert [p["total_count"] for p in paging] == [94] * 3
    assert [p["total_pages"] for p in paging] == [3] * 3
    assert [p["page"] for p in paging] == [1, 2, 3]
    ids = [m["id"] for m in everyone]
    assert len(set(ids)) == len(ids) == 94
    assert get(sim, "/workspace/members").json()["pagination"]["page_size"] == 50
    member = parse_member(everyone[0])
    assert member.user_id == everyone[0]["id"] and member.email == everyone[0]["email"]
    sales, paging = pages(sim, "/workspace/members", 7, group_ids=SALES_TEAM_GROUP_ID)
    assert 20 < len(sales) < 94 and paging[0]["total_count"] == len(sales)
    staff = {m["email"] for m in sales if m["email"].endswith("@exec.com")}
    assert len(staff) == 2, "two staff accounts sit in Sales Team"
    both, _ = pages(sim, "/workspace/members", 100,
                    group_ids=f"{SALES_TEAM_GROUP_ID},{DEMO_GROUPS[1].id}")
    assert {m["id"] for m in sales} < {m["id"] for m in both}
    assert get(sim, "/workspace/members", {"group_ids": "g-unknown"}).json()["data"] == []
    for bad in ({"page_size": "101"}, {"page": "0"}, {"page_size": "x"}):
        response = get(sim, "/workspace/members", bad)
        assert response.status_code == 400, bad
        assert response.json()["error"]["code"] == "invalid_pagination"


def test_participants_paginate_sort_and_check_parameters(sim: SimulatedExecAPI) -> None:
    path = "/scenarios/cold-call-gatekeeper/analytics/participants"
    rows, paging = pages(sim, path, 9)
    n = summary(sim, "cold-call-gatekeeper")["participant_count"]
    assert len(rows) == n == paging[0]["total_count"] > 9
    assert paging[0]["total_pages"] == -(-n // 9) == len(paging)
    assert len({r["user"]["id"] for r in rows}) == n
    bests = [r["best_score"] for r in rows]
    assert bests == sorted(bests, reverse=True), "default sorting: -best_score"
    for row in rows:
        assert row["best_rank"] == rank_for(row["best_score"])
        assert row["first_rank"] == rank_for(row["first_score"])
        assert row["lift_percentage"] == round(row["best_score"] - row["first_score"], 1)
        parsed = parse_participant(row)
        assert parsed.session_count == row["session_count"] >= 1
    by_sessions, _ = pages(sim, path, 100, sorting="session_count")
    counts = [r["session_count"] for r in by_sessions]
    assert counts == sorted(counts) and sorted(map(str, by_sessions)) == sorted(map(str, rows))
    uuid_rows, _ = pages(sim, f"/scenarios/{ACTIVE[2].id}/analytics/participants", 100)
    assert uuid_rows == rows, "slug and UUID name the same scenario"
    for bad in ({"sorting": "name"}, {"page_size": "101"}, {"start_date": "yesterday"},
                {"exclude_system_users": "maybe"}):
        response = get(sim, path, bad)
        assert response.status_code == 400, bad
        assert response.json()["error"]["type"] == "invalid_request"
    missing = get(sim, "/scenarios/no-such-thing/analytics/participants")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "scenario_not_found"
    never = get(sim, "/scenarios/legacy-product-pitch/analytics/participants").json()
    assert never["data"] == [] and never["pagination"]["total_count"] == 0


def test_the_drop_does_not_depend_on_request_timing(clock: FakeClock) -> None:
    """The re-grade's retakes are drawn at once: a simulation asked every few seconds
    through the drop answers as one asked only at the end."""
    quiet = SimulatedExecAPI(clock=clock, requests_per_minute=10_000).start()
    with SimulatedExecAPI(clock=clock, requests_per_minute=10_000) as busy:
        try:
            for _ in range(100):
                clock.advance(7)
                summary(busy, DROP_SCENARIO_SLUG)
            for query in ({}, {"group_ids": SALES_TEAM_GROUP_ID},
                          {"end_date": iso(START + 650)}):
                assert summary(busy, DROP_SCENARIO_SLUG, **query) == summary(
                    quiet, DROP_SCENARIO_SLUG, **query)
        finally:
            quiet.stop()


# Cohorts beyond the demo's own: user lists (unioned), staff only, a fixed range.
EXTRA_COHORTS: list[dict[str, Any]] = [
    {"name": "staff-list", "user_emails": ["QA.Bot@exec.com", "support@exec.com"]},
    {"name": "humans", "exclude_system_users": True},
    {"name": "two-groups", "group_ids": [SALES_TEAM_GROUP_ID, DEMO_GROUPS[2].id]},
    {"name": "before-the-week", "end_date": iso(START - 7 * 86400)},
]


def derived_and_real(api: SimulatedExecAPI, clock: FakeClock, scenario: str,
                     cohort: CohortConfig) -> tuple[Summary, Summary]:
    """A cohort's summary as the exporter derives it (one pull of the scenario with the
    cohort's dates only, plus its groups' member lists) and as the endpoint gives it."""
    query = pull_query(cohort, clock.now)
    rows, _ = pages(api, f"/scenarios/{scenario}/analytics/participants", 100, **query)
    members = {}
    for group in cohort.group_ids:
        listed, _ = pages(api, "/workspace/members", 100, group_ids=group)
        members[group] = frozenset(parse_member(m).user_id for m in listed)
    kept = [r for r in map(parse_participant, rows) if cohort_filter(cohort).keeps(r, members)]
    real = parse_summary(summary(api, scenario, **cohort.query(clock.now)))
    precision = Precision()
    precision.observe(real)  # the exporter learns the rounding from the summaries it sees
    return aggregate(kept, precision), real


@pytest.mark.parametrize("offset", [0.0, 640.0, 700.0, 86400.0])
def test_aggregating_the_participants_gives_the_summary(
        sim: SimulatedExecAPI, clock: FakeClock, offset: float) -> None:
    """For every demo cohort (and a few more) of every scenario, what the exporter derives
    from the participant rows is the summary itself: counts, rounded averages, rank and
    rank counts exactly, before, during and after the pricing-objection drop."""
    config = parse_config({**demo_config(sim.base_url),
                           "cohorts": [*demo_config(sim.base_url)["cohorts"],
                                       *EXTRA_COHORTS]})
    clock.advance(offset)
    nonempty = 0
    for scenario in [s.slug for s in DEMO_SCENARIOS]:
        for cohort in config.cohorts:
            derived, real = derived_and_real(sim, clock, scenario, cohort)
            assert derived == real, (scenario, cohort.name)
            assert compare(derived, real, 0.0).match
            nonempty += bool(real.participants)
    assert nonempty > 5 * 5


def run_until(exporter: Exporter, clock: FakeClock, until: float) -> None:
    """Step the poller, moving the fake clock to each wake-up, up to ``until``."""
    for _ in range(100_000):
        wake = exporter.poller.step()
        if wake > until:
            clock.now = until
            return
        clock.now = max(clock.now, wake)
    raise AssertionError("the poller never went idle")


# 600 s is the demo's own; with a 900 s drop a cross-check lands inside the drop (a
# re-grade that moved values without new sessions made that check a mismatch).
@pytest.mark.parametrize("drop_after", [600.0, 900.0])
def test_the_demo_derives_cohorts_within_a_minute(
        clock: FakeClock, caplog: pytest.LogCaptureFixture, drop_after: float) -> None:
    """The demo as a new user starts it: its member list is read, participants pulls
    reproduce the summaries, and cohorts move to the participants source at once, with
    no warning in the log and no cross-check mismatch, through the pricing drop."""
    caplog.set_level(logging.INFO)
    with SimulatedExecAPI(clock=clock, drop_after=drop_after) as simulated:
        config = parse_config(demo_config(simulated.base_url))
        assert config.planner.mode == "auto"
        exporter = Exporter(config, ApiKey(DEMO_API_KEY, "demo"), None, None, clock)
        try:
            run_until(exporter, clock, START + 60)
            values = metric_values(exporter.exposition.render().decode())
            derived = {(dict(k[1])["scenario"], dict(k[1])["cohort"])
                       for k, v in values.items()
                       if k[0] == "exec_exporter_target_source" and v == 1
                       and ("source", "participants") in k[1]}
            # One pull serves "all" and "sales" of every scenario; "last-7d" needs a pull
            # of its own, no cheaper than its summary.
            assert derived == {(s["id"], c) for s in demo_config("")["scenarios"]
                               for c in ("all", "sales")}
            html = landing_page(Web(exporter.store, exporter.exposition, clock=clock.time,
                                    source=exporter.planner.source))
            assert "<th>Source</th>" in html
            assert html.count("<td>participants</td>") == len(derived) == 10
            members = [r for r in caplog.records if "members" in r.getMessage()]
            assert not [r.getMessage() for r in members if r.levelno >= logging.INFO]
            before = sample(values, "exec_scenario_average_best_score",
                            scenario=DROP_SCENARIO_SLUG, cohort="all")
            # Past the pricing drop, cross-checks keep agreeing and the derived values
            # show the drop.
            run_until(exporter, clock, START + drop_after + 900)
            counters = exporter.store.cross_checks()
            assert sum(v for (_, result), v in counters.items() if result == "match") >= 5
            assert sum(v for (_, result), v in counters.items() if result == "mismatch") == 0
            assert exporter.planner.source((DROP_SCENARIO_SLUG, "all")) == "participants"
            after = metric_values(exporter.exposition.render().decode())
            dropped = sample(after, "exec_scenario_average_best_score",
                             scenario=DROP_SCENARIO_SLUG, cohort="all")
            assert before is not None and dropped is not None and before - dropped >= 15
        finally:
            exporter.client.close()
    problems = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert problems == []


# --- the fake API ------------------------------------------------------------

KEY = "test-key"


@pytest.fixture
def fake() -> Iterator[FakeExecAPI]:
    api = FakeExecAPI(KEY).start()
    yield api
    api.stop()


def test_fake_serves_what_it_is_told_and_records(fake: FakeExecAPI) -> None:
    path = "/scenarios/s1/analytics/summary"
    assert get(fake, path, key=KEY).status_code == 404  # nothing set yet
    fake.set_summary("s1", summary_body())
    response = get(fake, path, {"group_ids": "g1,g2", "exclude_system_users": "true"}, key=KEY)
    assert response.status_code == 200
    assert response.json() == summary_body()
    assert response.json()["score_distribution"][1] == {
        "rank": "silver",
        "count": 18,
        "percentage": 40,
    }
    assert get(fake, path, key="wrong").status_code == 401
    assert len(fake.requests) == 3
    recorded = fake.requests_for("s1")[1]
    assert recorded.method == "GET"
    assert recorded.path == "/rest/v1/scenarios/s1/analytics/summary"
    assert recorded.query == {"group_ids": "g1,g2", "exclude_system_users": "true"}
    assert recorded.headers["authorization"] == f"Bearer {KEY}"
    assert recorded.time == pytest.approx(time.time(), abs=5)  # the wall clock
    fake.set_summary("s2", "not json at all", status=200)
    assert get(fake, "/scenarios/s2/analytics/summary", key=KEY).text == "not json at all"
    assert summary_body(average_best_score=None, total_sessions=...)["average_best_score"] is None
    assert "total_sessions" not in summary_body(total_sessions=...)


@pytest.mark.parametrize(
    ("fault", "status", "check"),
    [
        ("500", 500, lambda r: r.json()["error"]["type"] == "api_error"),
        ("503_html", 503, lambda r: r.text.startswith("<html>")),
        ("invalid_json", 200, lambda r: _not_json(r)),
        ("json_array", 200, lambda r: isinstance(r.json(), list)),
        ("wrong_types", 200, lambda r: r.json()["participant_count"] == "forty"),
        ("negative_count", 200, lambda r: r.json()["participant_count"] < 0),
        ("score_250", 200, lambda r: r.json()["average_best_score"] == 250),
        ("rank_platinum", 200, lambda r: r.json()["average_best_rank"] == "platinum"),
        ("401", 401, lambda r: r.json()["error"]["code"] == "invalid_api_key"),
        ("403", 403, lambda r: r.json()["error"]["code"] == "workspace_inactive"),
        ("404", 404, lambda r: r.json()["error"]["type"] == "not_found"),
        ("400", 400, lambda r: r.json()["error"]["type"] == "invalid_request"),
    ],
)
def test_fake_faults(fake: FakeExecAPI, fault: str, status: int, check: Any) -> None:
    fake.set_summary("s1", summary_body())
    fake.set_fault("s1", fault)
    response = get(fake, "/scenarios/s1/analytics/summary", key=KEY)
    assert response.status_code == status
    assert check(response)
    fake.set_fault("s1", None)
    assert get(fake, "/scenarios/s1/analytics/summary", key=KEY).json() == summary_body()


def _not_json(response: requests.Response) -> bool:
    try:
        response.json()
    except ValueError:
        return True
    return False


def test_fake_429_variants(fake: FakeExecAPI) -> None:
    path = "/scenarios/s1/analytics/summary"
    fake.set_fault("s1", "429_error_object", retry_after=12)
    response = get(fake, path, key=KEY)
    assert response.status_code == 429
    assert response.json()["error"]["retry_after"] == 12
    assert "Retry-After" not in response.headers
    fake.set_fault("s1", "429_top_level")
    response = get(fake, path, key=KEY)
    assert response.json()["retry_after"] == 30
    assert "retry_after" not in response.json()["error"]
    fake.set_fault("s1", "429_header", retry_after=7)
    response = get(fake, path, key=KEY)
    assert response.headers["Retry-After"] == "7"
    assert "retry_after" not in response.json()["error"]
    assert "retry_after" not in response.json()


def test_fake_fault_scope_and_times(fake: FakeExecAPI) -> None:
    for sid in ("a", "b"):
        fake.set_summary(sid, summary_body())
    fake.set_fault(None, "500")
    fake.set_fault("a", "403")
    assert get(fake, "/scenarios/a/analytics/summary", key=KEY).status_code == 403
    assert get(fake, "/scenarios/b/analytics/summary", key=KEY).status_code == 500
    fake.set_fault(None, None)  # clears every fault
    assert get(fake, "/scenarios/a/analytics/summary", key=KEY).status_code == 200
    fake.set_fault("b", "429_header", times=2)
    codes = [get(fake, "/scenarios/b/analytics/summary", key=KEY).status_code for _ in range(3)]
    assert codes == [429, 429, 200]
    with pytest.raises(ValueError):
        fake.set_fault("a", "teapot")


def test_fake_huge_body_is_streamed(fake: FakeExecAPI) -> None:
    fake.set_fault("s1", "huge_body")
    with get(fake, "/scenarios/s1/analytics/summary", key=KEY, stream=True) as response:
        assert response.status_code == 200
        assert int(response.headers["Content-Length"]) == 64 * 1024 * 1024
        received = 0
        for chunk in response.iter_content(64 * 1024):
            received += len(chunk)
            if received > 1 << 20:
                break
        assert received > 1 << 20


def test_fake_small_huge_body_is_complete_json(fake: FakeExecAPI) -> None:
    fake.set_fault("s1", "huge_body", size=200_000)
    response = get(fake, "/scenarios/s1/analytics/summary", key=KEY)
    assert len(response.content) == 200_000
    assert len(response.json()["padding"]) == 200_000 - len('{"padding": ""}')


def _request_in_background(api: FakeExecAPI, path: str, **kw: Any) -> threading.Thread:
    def run() -> None:
        try:
            response = get(api, path, key=KEY, **kw)
            if kw.get("stream"):
                for _ in response.iter_content(64 * 1024):
                    pass
        except requests.RequestException:
            pass  # the server went away mid-response: expected here

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_fake_stop_is_prompt_during_hang() -> None:
    api = FakeExecAPI(KEY).start()
    api.set_summary("s1", summary_body())
    api.set_fault("s1", "hang")  # 30 s by default
    thread = _request_in_background(api, "/scenarios/s1/analytics/summary")
    deadline = time.monotonic() + 2
    while not api.requests_for("s1") and time.monotonic() < deadline:
        time.sleep(0.01)
    assert api.requests_for("s1"), "the request reached the fake"
    _stops_before_the_fault_ends(api)
    thread.join(timeout=3)
    assert not thread.is_alive()


def _stops_before_the_fault_ends(api: FakeExecAPI) -> None:
    """stop() returns while the hang (30 s) or the 64 MiB body is still under way."""
    stopper = threading.Thread(target=api.stop, daemon=True)
    stopper.start()
    stopper.join(10)
    assert not stopper.is_alive(), "stop() waited for the fault to end"


def test_fake_stop_is_prompt_during_huge_body() -> None:
    api = FakeExecAPI(KEY).start()
    api.set_fault(None, "huge_body")
    # A slow reader: the server is mid-stream when stop() comes.
    thread = _request_in_background(api, "/scenarios/s1/analytics/summary", stream=True)
    time.sleep(0.2)
    _stops_before_the_fault_ends(api)
    thread.join(timeout=3)
    assert not thread.is_alive()


def test_fake_hang_with_short_seconds_then_answers(fake: FakeExecAPI) -> None:
    fake.set_summary("s1", summary_body())
    fake.set_fault("s1", "hang", seconds=0.3)
    t0 = time.monotonic()
    response = get(fake, "/scenarios/s1/analytics/summary", key=KEY)
    assert time.monotonic() - t0 >= 0.3
    assert response.json() == summary_body()
    with pytest.raises(requests.Timeout):
        get(fake, "/scenarios/s1/analytics/summary", key=KEY, timeout=0.1)


def test_fake_lists_paginate_and_record(fake: FakeExecAPI) -> None:
    fake.set_scenarios(
        [
            {"id": f"id{i}", "slug": f"sc-{i}", "name": f"S{i}", "visibility": "workspace"}
            for i in range(7)
        ]
        + [{"id": "old", "slug": "old", "name": "Old", "archived": True}]
    )
    fake.set_groups([{"id": "g1", "name": "Sales Team", "created_at": "2024-02-01T09:00:00Z"}])
    slugs: list[str] = []
    for page in (1, 2, 3):
        body = get(fake, "/scenarios", {"page": str(page), "page_size": "3"}, key=KEY).json()
        assert body["pagination"]["total_pages"] == 3
        slugs += [s["slug"] for s in body["data"]]
    assert slugs == [f"sc-{i}" for i in range(7)]
    everything = get(fake, "/scenarios", {"include_archived": "true"}, key=KEY).json()
    assert everything["pagination"]["total_count"] == 8
    assert get(fake, "/scenarios", {"page_size": "500"}, key=KEY).status_code == 400
    groups = get(fake, "/workspace/groups", key=KEY).json()
    assert groups["data"][0]["name"] == "Sales Team"
    assert [r.query.get("page") for r in fake.list_requests("scenarios")[:3]] == ["1", "2", "3"]
    assert len(fake.list_requests("groups")) == 1
    fake.set_list_fault("groups", "503_html")
    assert get(fake, "/workspace/groups", key=KEY).status_code == 503
    fake.set_list_fault("groups", None)
    assert get(fake, "/workspace/groups", key=KEY).status_code == 200
    fake.set_list_fault("scenarios", "429_error_object", retry_after=3)
    assert get(fake, "/scenarios", key=KEY).json()["error"]["retry_after"] == 3
    with pytest.raises(ValueError):
        fake.set_list_fault("scenarios", "score_250")
