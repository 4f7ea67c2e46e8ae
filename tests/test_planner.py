"""The planner against the fake API's session log: proof, derivation, cross-checks.

The real Exporter (scheduler, poller, store, planner) is stepped on a fake clock
against the fake API over loopback; the fake computes summaries and participant
rows from the same sessions, so a derived value can be checked against the
summary endpoint's answer for the same filters.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import FakeClock, make_key, metric_values, sample
from fakeapi import FakeExecAPI, Session, User

from exporter.cli import describe_plan
from exporter.client import ExecClient, Page, ParticipantRow
from exporter.config import ApiKey, PlannerConfig, parse_config
from exporter.daemon import Exporter
from exporter.planner import Planner, choose, offline_plan, pages_for
from exporter.server import Web, landing_page
from exporter.state import decode, encode
from exporter.store import Store
from exporter.targets import build_targets

DAY = 86400.0
COHORTS: list[dict[str, Any]] = [
    {"name": "all"},
    {"name": "g1", "group_ids": ["g1"]},
    {"name": "g2-humans", "group_ids": ["g2"], "exclude_system_users": True},
    {"name": "emails", "user_emails": ["user3@acme.com", "USER5@acme.com"],
     "user_ids": ["u007"]},
    {"name": "no-staff", "exclude_system_users": True},
    {"name": "last-7d", "window": "7d"},
    {"name": "last-7d-g3", "window": "7d", "group_ids": ["g3"]},
]
KEYS = [("pitch", c["name"]) for c in COHORTS]


def session_log(users: int, now: float, seed: int = 3) -> tuple[list[User], list[Session]]:
    rng = random.Random(seed)
    people = [User(f"u{i:03d}", f"user{i}@{'exec.com' if i % 9 == 0 else 'acme.com'}",
                   frozenset({f"g{i % 4}"} | ({f"g{(i + 1) % 4}"} if i % 5 == 0 else set())))
              for i in range(users)]
    sessions = [Session(u.id, now - rng.uniform(0, 20 * DAY), float(rng.randint(30, 100)),
                        float(rng.randint(60, 900)))
                for u in people for _ in range(rng.randint(1, 5))]
    return people, sessions


def config(base_url: str, planner: dict[str, Any] | None = None, per_day: int = 864_000,
           cohorts: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {
        "api": {"base_url": base_url, "timeout": "2s",
                "rate_limit": {"requests_per_minute": 6000, "requests_per_day": per_day,
                               "reserve": 0}},
        "refresh_interval": "10m",
        "scenarios": [{"id": "pitch"}],
        "cohorts": cohorts or COHORTS,
        "planner": planner or {},
    }


class Rig:
    """An Exporter stepped by hand on a fake clock (no threads, no sleeping)."""

    def __init__(self, fake: FakeExecAPI, clock: FakeClock, raw: dict[str, Any]) -> None:
        self.fake = fake
        self.clock = clock
        self.exporter = Exporter(parse_config(raw), ApiKey(fake.api_key, "test"), None,
                                 clock=clock)

    def run(self, seconds: float, max_steps: int = 20_000) -> None:
        end = self.clock.now + seconds
        for _ in range(max_steps):
            wake = self.exporter.poller.step()
            if wake > self.clock.now:
                if wake >= end:
                    self.clock.now = end
                    return
                self.clock.now = wake
        raise AssertionError("the poller never waited")

    def value(self, key: tuple[str, str]) -> Any:
        state = self.exporter.store.get(key)
        assert state is not None
        return state.summary

    def source(self, key: tuple[str, str]) -> str:
        return self.exporter.planner.source(key)

    def truth(self, key: tuple[str, str]) -> Any:
        """What the summary endpoint says now for ``key``'s filters."""
        cohort = self.exporter.config.cohort(key[1])
        client = ExecClient(self.fake.base_url, self.fake.api_key, timeout=5)
        try:
            return client.summary(key[0], cohort.query(self.clock.now))
        finally:
            client.close()

    def close(self) -> None:
        self.exporter.running.client.close()


@pytest.fixture
def fake(clock: FakeClock) -> Iterator[FakeExecAPI]:
    api = FakeExecAPI(make_key(), clock=clock).start()
    people, sessions = session_log(60, clock.now)
    api.set_users(people)
    api.set_sessions("pitch", sessions)
    yield api
    api.stop()


def test_cohorts_are_proven_then_derived_and_equal_the_summary(
        fake: FakeExecAPI, clock: FakeClock) -> None:
    rig = Rig(fake, clock, config(fake.base_url))
    try:
        # The first fill: every target's summary, the two pulls (all time, last 7 days),
        # the member lists of g1, g2, g3.
        rig.run(5)
        assert all(rig.source(k) == "participants" for k in KEYS)
        assert len(fake.requests_to("/summary")) == len(KEYS)
        assert sorted(r.query["group_ids"] for r in fake.requests_to("/members")) == [
            "g1", "g2", "g3"]
        pulls = fake.requests_to("/participants")
        assert len(pulls) == 2
        assert sorted("start_date" in r.query for r in pulls) == [False, True]
        # Proven: two pulls a cycle instead of seven summaries.
        assert rig.exporter.planner.plan.recurring == 2
        fake.clear_requests()
        rig.run(3600)
        pulls = fake.requests_to("/participants")
        checks = fake.requests_to("/summary")
        assert 12 <= len(pulls) <= 14  # two every 10 minutes
        # Only cross-checks asked the summary endpoint, and they all agreed.
        counters = rig.exporter.planner.counters()
        assert counters[("pitch", "match")] == len(checks) > 0
        assert counters[("pitch", "mismatch")] == 0
        for key in KEYS:
            assert rig.value(key) == rig.truth(key), key

        # New sessions: the next pulls show them, still equal to the summary endpoint.
        fake.add_sessions("pitch", [Session("u001", clock.now - 5, 99.0, 300.0),
                                    Session("u059", clock.now - 5, 12.0, 100.0)])
        rig.run(700)
        for key in KEYS:
            assert rig.value(key) == rig.truth(key), key
        assert rig.value(("pitch", "all")).sessions == rig.truth(("pitch", "all")).sessions
    finally:
        rig.close()


def test_summary_mode_sends_only_summary_requests(fake: FakeExecAPI, clock: FakeClock) -> None:
    rig = Rig(fake, clock, config(fake.base_url, {"mode": "summary"}))
    try:
        rig.run(1800)
        paths = {r.path.rsplit("/", 1)[-1] for r in fake.requests}
        assert paths == {"summary"}
        assert len(fake.requests) == 3 * len(KEYS)  # the fill, then every 10 minutes
        assert all(rig.source(k) == "summary" for k in KEYS)
        assert rig.exporter.planner.requests_per_cycle(600) == len(KEYS)
    finally:
        rig.close()


def test_a_field_the_pull_cannot_reproduce_keeps_the_summary(
        fake: FakeExecAPI, clock: FakeClock, caplog: pytest.LogCaptureFixture) -> None:
    fake.set_summary_skew("pitch", "average_best_score", 0.5)
    rig = Rig(fake, clock, config(fake.base_url))
    try:
        with caplog.at_level(logging.WARNING, logger="exporter.planner"):
            rig.run(5)
        assert all(rig.source(k) == "summary" for k in KEYS)
        assert "does not reproduce its summary (average_best_score derived=" in caplog.text
        fake.clear_requests()
        rig.run(1800)
        # Nothing proven: the pulls would only add requests, so none are sent.
        assert fake.requests_to("/participants") == []
        assert len(fake.requests_to("/summary")) == 3 * len(KEYS)
        for key in KEYS:
            assert rig.value(key) == rig.truth(key)
    finally:
        rig.close()


def test_a_cross_check_mismatch_sends_the_scenario_back_to_summaries(
        fake: FakeExecAPI, clock: FakeClock, caplog: pytest.LogCaptureFixture) -> None:
    rig = Rig(fake, clock, config(fake.base_url))
    try:
        rig.run(5)
        assert all(rig.source(k) == "participants" for k in KEYS)
        # The summary's formula for one field changes behind the exporter's back.
        fake.set_summary_skew("pitch", "average_lift_percentage", 1.0)
        with caplog.at_level(logging.WARNING, logger="exporter.planner"):
            rig.run(300)
        assert rig.exporter.planner.counters()[("pitch", "mismatch")] == 1
        assert "cross-check scenario=pitch" in caplog.text
        assert "average_score_lift derived=" in caplog.text
        assert all(rig.source(k) == "summary" for k in KEYS)
        # At once (not by the age of the suspect values) every exported value follows
        # the summary endpoint again.
        fake.clear_requests()
        rig.run(5)
        for key in KEYS:
            assert rig.value(key) == rig.truth(key), key
        rig.run(700)
        assert fake.requests_to("/participants") == []  # fallback_for: 24h
        # After the fallback the scenario is tried again (and refused again here).
        rig.run(DAY)
        assert fake.requests_to("/participants")
        assert all(rig.source(k) == "summary" for k in KEYS)
    finally:
        rig.close()


def test_a_group_never_read_uses_summaries(fake: FakeExecAPI, clock: FakeClock) -> None:
    fake.set_list_fault("members", "500")
    rig = Rig(fake, clock, config(fake.base_url))
    try:
        rig.run(600)
        grouped = {("pitch", "g1"), ("pitch", "g2-humans"), ("pitch", "last-7d-g3")}
        # last-7d shares its pull with last-7d-g3 alone: 1 page + 1 summary is no saving.
        grouped.add(("pitch", "last-7d"))
        for key in KEYS:
            assert rig.source(key) == ("summary" if key in grouped else "participants"), key
        # Once the lists can be read, those cohorts are proven too.
        fake.set_list_fault("members", None)
        rig.run(1200)
        assert all(rig.source(k) == "participants" for k in KEYS)
    finally:
        rig.close()


def test_a_pull_of_many_pages_counts_each_page(clock: FakeClock) -> None:
    with FakeExecAPI(make_key(), clock=clock) as api:
        people, sessions = session_log(250, clock.now)
        api.set_users(people)
        api.set_sessions("pitch", sessions)
        rig = Rig(api, clock, config(api.base_url, per_day=200, cohorts=COHORTS[:5]))
        try:
            rig.run(5)
            pages = [r.query["page"] for r in api.requests_to("/participants")]
            assert pages == ["1", "2", "3"]
            assert all(rig.source(k) == "participants" for k in KEYS[:5])
            assert [j.cost for j in rig.exporter.running.jobs] == [3]
            # The interval counts the three pages: 3 x 86400 / (200 - lists - checks).
            planner = rig.exporter.planner
            spare = 200 - planner.requests_per_day()
            assert rig.exporter.scheduler.interval == pytest.approx(3 * DAY / spare)
            for key in KEYS[:5]:
                assert rig.value(key) == rig.truth(key)
        finally:
            rig.close()


def test_plan_metrics(fake: FakeExecAPI, clock: FakeClock) -> None:
    rig = Rig(fake, clock, config(fake.base_url))
    try:
        rig.run(600)
        # Everything in the store: rendered with the cached page, not per scrape.
        values = metric_values(rig.exporter.exposition.render().decode())
        assert sample(values, "exec_exporter_target_source", scenario="pitch",
                      cohort="g1", source="participants") == 1
        assert sample(values, "exec_exporter_target_source", scenario="pitch",
                      cohort="g1", source="summary") == 0
        assert sample(values, "exec_exporter_cross_checks_total", scenario="pitch",
                      result="mismatch") == 0
        assert sample(values, "exec_exporter_cross_checks_total", scenario="pitch",
                      result="match") >= 1
        per_cycle = sample(values, "exec_exporter_plan_requests_per_cycle")
        assert per_cycle is not None and 2 < per_cycle < len(KEYS)
    finally:
        rig.close()


def test_member_lists_are_kept_in_the_state_file() -> None:
    members = {"g1": (frozenset({"u1", "u2"}), 1000.0)}
    saved = decode(encode(Store().snapshot(), 2000.0, members=members), 2000.0)
    assert saved.members == members
    # A list from the future is not trusted.
    assert decode(encode(Store().snapshot(), 2000.0, members=members), 500.0).members == {}


def test_choose_and_the_offline_plan() -> None:
    assert choose(8, 8, 1) == "participants"
    assert choose(1, 1, 1) == "summary"  # a tie keeps the summary
    assert choose(3, 1, 1) == "summary"  # saves nothing: 1 page + 2 summaries
    assert choose(8, 5, 3) == "participants"  # 3 pages + 3 summaries < 8
    assert [pages_for(n) for n in (0, 40, 100, 101, 250)] == [1, 1, 1, 2, 3]
    raw = config("http://127.0.0.1:9", cohorts=COHORTS)
    raw["scenarios"] = [{"id": "a"}, {"id": "b", "cohorts": ["all", "last-7d"]}]
    plan = offline_plan(build_targets(parse_config(raw)), PlannerConfig())
    assert [(g.scenario, g.summary_cost, g.participants_cost, g.source) for g in plan.groups] == [
        ("a", 5, 1, "participants"), ("a", 2, 1, "participants"),
        ("b", 1, 1, "summary"), ("b", 1, 1, "summary")]
    assert plan.member_groups == ("g1", "g2", "g3")
    assert (plan.summary_cost, plan.chosen_cost) == (9, 4)


def test_landing_page_shows_each_targets_source(fake: FakeExecAPI, clock: FakeClock) -> None:
    fake.set_list_fault("members", "500")
    rig = Rig(fake, clock, config(fake.base_url))
    try:
        rig.run(5)
        exporter = rig.exporter
        page = landing_page(Web(exporter.store, exporter.exposition, clock=clock,
                                source=exporter.planner.source))
        assert "<th>Source</th>" in page
        assert "<td>emails</td><td>participants</td>" in page
        assert "<td>g1</td><td>summary</td>" in page
    finally:
        rig.close()


def test_config_check_prints_both_costs_per_scenario() -> None:
    raw = config("http://127.0.0.1:9")
    text = describe_plan(parse_config(raw), None)
    assert ("pitch (all time): 5 cohorts; summary 5 requests/cycle, participants 1 "
            "(1 page + 0 summaries) -> participants") in text
    assert "pitch (last 7d): 2 cohorts; summary 2 requests/cycle, participants 1" in text
    assert "requests per cycle: 7 on summary requests" in text
    assert "2 with the plan" in text
    raw["planner"] = {"mode": "summary"}
    text = describe_plan(parse_config(raw), None)
    assert "planner: summary (one summary request per target)" in text
    assert "participants" not in text


def test_a_reload_that_changes_a_cohorts_filters_proves_it_again(
        fake: FakeExecAPI, clock: FakeClock) -> None:
    rig = Rig(fake, clock, config(fake.base_url))
    try:
        rig.run(5)
        assert rig.source(("pitch", "emails")) == "participants"
        changed = [dict(c) for c in COHORTS]
        changed[3] = {"name": "emails", "user_emails": ["user8@acme.com"]}
        exporter = rig.exporter
        exporter.config = parse_config(config(fake.base_url, cohorts=changed))
        exporter.running = exporter._build(exporter.config, exporter.running.client,
                                           exporter.key)
        assert rig.source(("pitch", "emails")) == "summary"
        assert rig.source(("pitch", "all")) == "participants"
        rig.run(700)  # its summary, then the next pull: proven again, with the new filter
        assert rig.source(("pitch", "emails")) == "participants"
        assert rig.value(("pitch", "emails")) == rig.truth(("pitch", "emails"))
        assert rig.value(("pitch", "emails")).participants == 1
    finally:
        rig.close()


def test_a_pull_of_n_pages_holds_n_paces_of_the_schedule() -> None:
    from exporter.budget import Budget
    from exporter.jobs import Job
    from exporter.scheduler import Scheduler

    def job(key: str, cost: int) -> Job:
        return Job(kind="x", key=key, fetch=lambda c, n: None, apply=lambda a, t: None,
                   cost=cost)

    scheduler = Scheduler(Budget(60, 100), refresh_interval=60.0)
    scheduler.set_jobs([job("pull", 3), job("summary", 1)])
    assert scheduler.interval == pytest.approx(4 * DAY / 100)  # 3 pages + 1 summary
    now = 1_000_000.0
    for key in ("pull", "summary"):  # the first fill: no pacing
        scheduler.sent(key, now)
        scheduler.succeeded(key, now)
    # Afterwards a one-request job holds one pace, the pull (its follow-up pages come
    # right after page 1) three.
    assert scheduler._paced(now) == pytest.approx(now + scheduler.spacing)
    scheduler.sent("pull", now + 10)
    assert scheduler._paced(now + 10) == pytest.approx(now + 10 + 3 * scheduler.spacing)


def test_a_pull_starts_when_the_budget_has_room_for_all_its_pages() -> None:
    from exporter.budget import GRACE, Budget

    budget = Budget(minute_limit=10, day_limit=5, sent=[100.0, 200.0, 300.0])
    assert budget.next_allowed(400.0) == 400.0
    assert budget.next_allowed(400.0, 2) == 400.0
    # Three pages need the request of t=100 to leave the 24 h window first.
    assert budget.next_allowed(400.0, 3) == 100.0 + DAY + GRACE
    assert budget.next_allowed(400.0, 4) == 200.0 + DAY + GRACE


def test_inconsistent_pulls_are_dropped_then_the_scenario_uses_summaries(
        caplog: pytest.LogCaptureFixture) -> None:
    cfg = parse_config(config("http://127.0.0.1:9", cohorts=COHORTS[:5]))
    targets = build_targets(cfg)
    store = Store()
    store.set_targets(targets)
    planner = Planner(cfg.planner, store, members={"g1": (["u1"], 900.0),
                                                   "g2": (["u2"], 900.0)})
    planner.configure(cfg.planner, 900, 600)
    pull = next(j for j in planner.jobs(targets, 1000.0) if j.kind == "participants")
    first = ParticipantRow("u1", "a@acme.com", 1, 50.0, 60.0, 10.0, 100.0)
    second = ParticipantRow("u2", "b@acme.com", 1, 70.0, 80.0, 10.0, 100.0)
    with caplog.at_level(logging.INFO, logger="exporter.planner"):
        for i in range(3):
            now = 1000.0 + i
            pull.apply(({}, Page((first,), 1, 2, 2)), now)
            follow = planner.due(now)
            assert follow is not None and follow.key[-1] == 2  # page 2, back to back
            # u1 again on page 2: the order moved under the pull (u2 never seen).
            follow.apply(Page((first,), 2, 2, 2), now)
    assert "rows moved between pages" in caplog.text
    assert "3 pulls in a row were inconsistent" in caplog.text
    assert [j.kind for j in planner.jobs(targets, 1010.0)] == ["summary"] * 5
    # A consistent pull is kept (and counts its pages).
    planner = Planner(cfg.planner, store, members={"g1": (["u1"], 900.0),
                                                   "g2": (["u2"], 900.0)})
    pull = next(j for j in planner.jobs(targets, 1000.0) if j.kind == "participants")
    pull.apply(({}, Page((first,), 1, 2, 2)), 1000.0)
    follow = planner.due(1000.0)
    assert follow is not None
    follow.apply(Page((second,), 2, 2, 2), 1000.0)
    assert planner.plan.groups[0].pages == 1  # the plan is rebuilt on the next jobs() call
    assert [j.cost for j in planner.jobs(targets, 1001.0) if j.kind == "participants"] == [2]
