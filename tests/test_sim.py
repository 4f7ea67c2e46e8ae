"""Tests of the simulated Exec API's world model (exporter/sim/), over real HTTP on
127.0.0.1: the summary filters as the API documents them, the session log, the
member list that lags, and the oracle's independence from the code under test."""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from conftest import FakeClock

from exporter.sim import ExecAPI, Session, User, World

START = 1_780_000_000.0  # 2026-05-28T20:26:40Z
KEY = "sim-test-key"
SCENARIO = "s1"
SALES, CS = "g-sales", "g-cs"
ANA = User("u1", "ana.lee@acme.com", frozenset({SALES}))
BEN = User("u2", "ben.ito@acme.com", frozenset({SALES, CS}))
STAFF = User("u3", "qa.bot@EXEC.com", frozenset({SALES}))  # the domain in any case
CLEO = User("u4", "cleo.diaz@acme.com", frozenset({CS}))


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(START)


@pytest.fixture
def world() -> World:
    world = World()
    world.set_users([ANA, BEN, STAFF, CLEO])
    world.set_sessions(SCENARIO, [
        Session(ANA.id, START - 3000, 60.0, 100.0),
        Session(ANA.id, START - 1000, 80.0, 200.0),
        Session(BEN.id, START - 2000, 92.0, 300.0),
        Session(STAFF.id, START - 500, 95.0, 60.0),
        Session(CLEO.id, START - 100, 40.0, 120.0),
        Session(CLEO.id, START + 600, 99.0, 120.0),  # not completed yet
    ])
    return world


@pytest.fixture
def api(world: World, clock: FakeClock) -> Iterator[ExecAPI]:
    with ExecAPI(world, KEY, clock=clock, requests_per_minute=1000) as served:
        yield served


def get(api: ExecAPI, path: str, **params: str) -> requests.Response:
    return requests.get(f"{api.base_url}{path}", params=params, timeout=5,
                        headers={"Authorization": f"Bearer {KEY}"})


def summary(api: ExecAPI, **params: str) -> dict[str, Any]:
    answer = get(api, f"/scenarios/{SCENARIO}/analytics/summary", **params)
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    return body


def participants(api: ExecAPI, **params: str) -> dict[str, dict[str, Any]]:
    answer = get(api, f"/scenarios/{SCENARIO}/analytics/participants", **params)
    assert answer.status_code == 200, answer.text
    return {row["user"]["id"]: row for row in answer.json()["data"]}


def test_the_summary_is_the_rows_of_the_sessions_completed_so_far(api: ExecAPI) -> None:
    body = summary(api)
    # Ana best 80 first 60, Ben 92, staff 95, Cleo 40 (her 99 is still in the future).
    assert body["participant_count"] == 4
    assert body["total_sessions"] == 5
    assert body["average_best_score"] == round((80 + 92 + 95 + 40) / 4, 1)
    assert body["average_lift_percentage"] == round(20 / 4, 1)
    assert body["total_practice_minutes"] == round(780 / 60)
    assert {d["rank"]: d["count"] for d in body["score_distribution"]} == {
        "gold": 2, "silver": 1, "bronze": 0, "unranked": 1}
    assert participants(api)[ANA.id]["lift_percentage"] == 20.0


def test_a_session_counts_once_the_clock_reaches_it(api: ExecAPI, clock: FakeClock) -> None:
    clock.advance(600)
    assert summary(api)["total_sessions"] == 6
    assert participants(api)[CLEO.id]["best_score"] == 99.0


def test_user_ids_and_user_emails_are_unioned(api: ExecAPI) -> None:
    # Emails match whatever their case; an id the member list does not know still counts.
    body = summary(api, user_ids=f"{BEN.id},u-unknown", user_emails="ANA.LEE@acme.com")
    assert body["participant_count"] == 2
    assert set(participants(api, user_ids=BEN.id, user_emails=ANA.email)) == {ANA.id, BEN.id}


def test_groups_intersect_the_user_filters_and_staff_are_excluded(api: ExecAPI) -> None:
    assert set(participants(api, group_ids=SALES)) == {ANA.id, BEN.id, STAFF.id}
    assert set(participants(api, group_ids=f"{SALES},{CS}")) == {ANA.id, BEN.id, STAFF.id,
                                                                  CLEO.id}
    assert set(participants(api, group_ids=CS, user_emails=ANA.email)) == set()
    assert set(participants(api, group_ids=SALES, exclude_system_users="true")) == {
        ANA.id, BEN.id}


def test_dates_bound_the_sessions_inclusively(api: ExecAPI) -> None:
    rows = participants(api, start_date="2026-05-28T19:36:40Z",  # START - 3000: Ana's first
                        end_date="2026-05-28T20:10:00Z")  # START - 1000: her second
    assert set(rows) == {ANA.id, BEN.id}
    assert rows[ANA.id]["session_count"] == 2
    later = participants(api, start_date="2026-05-28T19:36:41Z")
    # Without her first session, Ana's first score is her 80.
    assert later[ANA.id]["first_score"] == 80.0


def test_a_late_session_takes_its_place_in_time(api: ExecAPI, world: World) -> None:
    """A session logged after later ones is still its user's first by time."""
    world.add_sessions(SCENARIO, [Session(BEN.id, START - 9000, 50.0, 60.0)])
    row = participants(api)[BEN.id]
    assert (row["first_score"], row["best_score"], row["session_count"]) == (50.0, 92.0, 2)


def test_filters_follow_live_groups_while_the_member_list_lags(api: ExecAPI,
                                                              world: World) -> None:
    world.freeze_members(True)
    world.move_user(CLEO.id, frozenset({SALES}))
    listed = {m["id"] for m in get(api, "/workspace/members", group_ids=SALES).json()["data"]}
    assert CLEO.id not in listed  # the list lags
    assert CLEO.id in participants(api, group_ids=SALES)  # the filter does not
    world.freeze_members(False)
    listed = {m["id"] for m in get(api, "/workspace/members", group_ids=SALES).json()["data"]}
    assert CLEO.id in listed


def test_an_unknown_scenario_is_404_before_a_bad_filter_is_400(api: ExecAPI) -> None:
    answer = get(api, "/scenarios/nope/analytics/summary", start_date="garbage")
    assert answer.status_code == 404
    assert answer.json()["error"]["code"] == "scenario_not_found"
    answer = get(api, f"/scenarios/{SCENARIO}/analytics/summary", start_date="garbage")
    assert answer.status_code == 400
    assert "start_date" in answer.json()["error"]["message"]


def test_the_rate_limit_answers_429_with_retry_after(world: World, clock: FakeClock) -> None:
    with ExecAPI(world, KEY, clock=clock, requests_per_minute=2) as api:
        assert [get(api, "/workspace/groups").status_code for _ in range(2)] == [200, 200]
        limited = get(api, "/workspace/groups")
        assert limited.status_code == 429
        assert limited.json()["error"]["retry_after"] == 60
        assert limited.headers["Retry-After"] == "60"
        clock.advance(60)
        assert get(api, "/workspace/groups").status_code == 200
        assert api.request_count == 4


def test_the_oracle_shares_no_code_with_the_code_under_test() -> None:
    """The simulation imports nothing of the exporter's aggregation or planning."""
    forbidden = ("aggregate", "planner", "plan", "jobs", "targets", "collector")
    for module in Path(__file__).parents[1].joinpath("exporter", "sim").glob("*.py"):
        for node in ast.walk(ast.parse(module.read_text())):
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""] + [a.name for a in node.names]
                assert not any(part in forbidden for name in names
                               for part in name.split(".")), (module.name, names)
    loaded = subprocess.run(
        [sys.executable, "-c", "import sys, exporter.sim; print(sorted(sys.modules))"],
        capture_output=True, text=True, check=True, timeout=60).stdout
    assert "exporter.aggregate" not in loaded and "exporter.planner" not in loaded
