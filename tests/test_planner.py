"""The planner against the fake API's session log: proof, derivation, cross-checks.

The real Exporter (scheduler, poller, store, planner) is stepped on a fake clock
against the fake API over loopback; the fake computes summaries and participant
rows from the same sessions, so a derived value can be checked against the
summary endpoint's answer for the same filters.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest
from conftest import FakeClock, make_key, metric_values, sample
from fakeapi import FakeExecAPI, Session, User

from exporter.aggregate import Comparison, Difference
from exporter.cli import describe_plan
from exporter.client import ExecClient, Page, ParticipantRow, Summary
from exporter.config import ApiKey, PlannerConfig, format_duration, parse_config
from exporter.daemon import Exporter
from exporter.discovery import Group
from exporter.jobs import summary_job
from exporter.landing import landing_page
from exporter.learned import fingerprint
from exporter.listings import Skills
from exporter.plan import checks_per_day, choose, derived_per_day, offline_plan, pages_for
from exporter.planner import Planner, judge
from exporter.scheduler import round_cost
from exporter.server import Web
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
        # Named: no scenario list read for a display name among the requests counted here.
        "scenarios": [{"id": "pitch", "name": "Pitch"}],
        "cohorts": cohorts or COHORTS,
        "planner": planner or {},
    }


class Rig:
    """An Exporter stepped by hand on a fake clock (no threads, no sleeping)."""

    def __init__(self, fake: FakeExecAPI, clock: FakeClock, raw: dict[str, Any],
                 state_file: str | None = None) -> None:
        self.fake = fake
        self.clock = clock
        self.exporter = Exporter(parse_config(raw), ApiKey(fake.api_key, "test"), None,
                                 state_file=state_file, clock=clock)

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
        cohort = self.exporter._targets[key].cohort
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
        # Only cross-checks asked the summary endpoint (each right after a pull, for
        # the pull's instant), and they all agreed.
        counters = rig.exporter.store.cross_checks()
        assert counters[("pitch", "match")] == len(checks) > 0
        assert ("pitch", "mismatch") not in counters
        pull_ends = {r.query["end_date"] for r in pulls}
        assert all(r.query["end_date"] in pull_ends for r in checks)
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
        with caplog.at_level(logging.INFO, logger="exporter.planner"):
            rig.run(5)
            # The first pull's paired proofs disagree: the summary's values, no verdict.
            assert "a paired proof disagrees (average_best_score derived=" in caplog.text
            assert all(rig.source(k) == "summary" for k in KEYS)
            for key in KEYS:
                assert rig.value(key) == rig.truth(key)
            rig.run(700)  # the second pull's proofs disagree too: refuted
        assert all(rig.source(k) == "summary" for k in KEYS)
        assert "in 2 paired checks in a row (average_best_score derived=" in caplog.text
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
        with caplog.at_level(logging.INFO, logger="exporter.planner"):
            # The next pull's cross-check disagrees (the target exports the summary at
            # once); the pull after it pairs a proof that disagrees too: refuted.
            rig.run(1300)
        assert rig.exporter.store.cross_checks()[("pitch", "mismatch")] == 1
        assert "a paired cross-check disagrees (average_score_lift derived=" in caplog.text
        assert "in 2 paired checks in a row (average_score_lift derived=" in caplog.text
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


def test_a_short_member_list_is_never_stored(fake: FakeExecAPI, clock: FakeClock) -> None:
    # Each group's list comes back one member short of its total_count (a list that lags):
    # before, the partial list was stored and the group's cohorts derived from it.
    fake.set_list_fault("members", "short_page", times=3)
    rig = Rig(fake, clock, config(fake.base_url))
    try:
        rig.run(30)
        assert len(fake.requests_to("/members")) == 3
        assert not rig.exporter.planner.state()["members"]  # none of the three lists kept
        grouped = {("pitch", "g1"), ("pitch", "g2-humans"), ("pitch", "last-7d-g3"),
                   ("pitch", "last-7d")}
        assert all(rig.source(k) == "summary" for k in grouped)
        # Read again, whole, a minute later: proven, and equal to the summary endpoint.
        rig.run(1200)
        assert len(fake.requests_to("/members")) == 6
        assert all(rig.source(k) == "participants" for k in KEYS)
        for key in KEYS:
            assert rig.value(key) == rig.truth(key), key
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
        rig.run(700)
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
    cfg = parse_config(config("http://127.0.0.1:9"))
    planner = Planner(cfg.planner, Store(), {"members": {"g1": {"user_ids": ["u2", "u1"],
                                                                "at": 1000.0, "pages": 2}}},
                      now=2000.0)
    planner.jobs(build_targets(cfg), 2000.0)
    saved = decode(encode(Store().snapshot(), 2000.0, planner=planner.state()), 2000.0)
    assert saved.planner["members"] == {"g1": {"user_ids": ["u1", "u2"], "at": 1000.0,
                                               "pages": 2}}
    # A list from the future is not trusted.
    assert Planner(cfg.planner, Store(), saved.planner, now=500.0).state()["members"] == {}
    # A file of the earlier format (members at the top level) still gives its lists.
    old = {"version": 1, "members": {"g1": {"user_ids": ["u1"], "at": 1000.0}}}
    assert decode(json.dumps(old).encode(), 2000.0).planner == {"members": old["members"]}


def test_choose_and_the_offline_plan() -> None:
    assert choose(8, 8, 1) == "participants"
    assert choose(1, 1, 1) == "summary"  # a tie keeps the summary
    assert choose(3, 1, 1) == "summary"  # saves nothing: 1 page + 2 summaries
    assert choose(8, 5, 3) == "participants"  # 3 pages + 3 summaries < 8
    assert [pages_for(n) for n in (0, 40, 100, 101, 250)] == [1, 1, 1, 2, 3]
    raw = config("http://127.0.0.1:9", cohorts=COHORTS)
    raw["scenarios"] = [{"id": "a"}, {"id": "b", "cohorts": ["all", "last-7d"]}]
    plan = offline_plan(build_targets(parse_config(raw)), PlannerConfig(), 600.0)
    # Participants: 1 page, plus the member lists (one page each, hourly, i.e. 1/6 of a
    # request per 10-minute cycle each) and the cross-checks (5% of what is sent).
    lists_a, lists_7d = 2 / 6, 1 / 6
    costs = [(g.scenario, g.summary_cost, g.participants_cost, g.source) for g in plan.groups]
    assert costs == [
        ("a", 5, pytest.approx((1 + lists_a) / 0.95), "participants"),
        ("a", 2, pytest.approx((1 + lists_7d) / 0.95), "participants"),
        ("b", 1, pytest.approx(1 / 0.95), "summary"), ("b", 1, pytest.approx(1 / 0.95), "summary")]
    assert plan.member_groups == ("g1", "g2", "g3")
    assert plan.summary_cost == 9
    assert plan.chosen_cost == pytest.approx((2 + lists_a + lists_7d) / 0.95 + 2)
    assert plan.recurring == 4  # two one-page pulls and two summaries
    # Refreshed every 90 minutes, an hourly member list costs 1.5 requests a cycle, more
    # than the summary it would save: the group cohorts keep their summaries.
    plan = offline_plan(build_targets(parse_config(raw)), PlannerConfig(), 5400.0)
    assert plan.groups[0].derived == ("all", "emails", "no-staff")
    assert plan.member_groups == ()


def test_a_rounds_cost_is_what_its_jobs_send_whatever_is_proven_refused_or_owed() -> None:
    """The plan's recurring requests (the interval's numerator, everywhere) are the
    requests its jobs send: proven targets ride the pull, owed ones add their paired
    proof to it, refused ones and a scenario in fallback send summaries."""
    raw = config("http://127.0.0.1:9")
    raw["scenarios"] = [{"id": "pitch", "name": "Pitch"}, {"id": "demo", "name": "Demo"}]
    settings = parse_config(raw)
    targets = build_targets(settings)
    cohorts = {t.key: t.cohort for t in targets}
    now = 50_000.0
    saved = {
        "members": {g: {"user_ids": ["u001"], "at": now - 60} for g in ("g1", "g2")},
        "proofs": [{"scenario": s, "cohort": c, "fingerprint": fingerprint(cohorts[(s, c)]),
                    "checked": now - 60, "given": ["participants", "sessions"]}
                   for s, c in (("pitch", "all"), ("pitch", "emails"), ("demo", "g1"))],
        "refused": [["pitch", "no-staff", now + 3600]],
        "fallback": {"demo": now + 3600},
        "pages": [["pitch", [None, None, None], 3]],
    }
    planner = Planner(settings.planner, Store(), saved, now=now)
    planner.configure(settings.planner, settings.api.rate_limit.day_budget, 600.0)
    jobs = planner.jobs(targets, now)
    plan = planner.plan
    kinds = [(job.kind, job.cost) for job in jobs if "pitch" in job.key[:2]]
    # pitch: no-staff (refused) and the 7-day cohorts on summaries, then the all-time
    # pull: 3 pages + 2 owed proofs (g1, g2-humans).
    assert kinds == [("summary", 1), ("summary", 1), ("summary", 1), ("participants", 5)]
    assert [(g.scenario, g.source, g.derived) for g in plan.groups] == [
        ("pitch", "participants", ("all", "emails")), ("pitch", "summary", ()),
        ("demo", "summary", ()), ("demo", "summary", ())]
    assert plan.recurring == round_cost(jobs) == 3 + 5 + 7
    # g3's list is worth reading (its cohort would make pitch's 7-day pull pay); the
    # fallback scenario reads none.
    assert plan.member_groups == ("g1", "g2", "g3")


def test_once_every_target_is_proven_the_daemon_runs_the_plan_the_check_printed(
        fake: FakeExecAPI, clock: FakeClock) -> None:
    raw = config(fake.base_url)
    rig = Rig(fake, clock, raw)
    try:
        rig.run(3 * 600)
        assert [rig.source(key) for key in KEYS] == ["participants"] * len(KEYS)
        settings = parse_config(raw)
        printed = offline_plan(build_targets(settings), settings.planner, 600.0)
        assert rig.exporter.planner.plan == printed
        rate = settings.api.rate_limit
        assert rig.exporter.planner.requests_per_day() == sum(derived_per_day(
            printed, {}, settings.planner, 600.0, rate.day_budget, rate.minute_budget,
            checked=True))
    finally:
        rig.close()


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
    # Every part of each way's cost: pages, summaries, member lists (g1 and g2 hourly:
    # 2/6 of a page per 10-minute cycle) and cross-checks (5% of what is sent).
    assert ("pitch (all time): 5 cohorts; summary 5 requests/cycle; participants 1.40 = "
            "1 page + 0 summaries + 0.33 member-list pages + 0.07 cross-checks "
            "-> participants") in text
    assert ("pitch (last 7d): 2 cohorts; summary 2 requests/cycle; participants 1.23 = "
            "1 page + 0 summaries + 0.17 member-list pages + 0.06 cross-checks") in text
    assert ("requests per cycle, everything included: summary plan 7 = 7 summaries") in text
    assert "chosen plan 2.63 = 2 pages + 0 summaries + 0.50 member-list pages" in text
    assert "effective refresh interval: 10m (600s), as configured (refresh_interval)" in text
    # 7 derived targets, 5% of (2 pulls x 144 + 72 list pages) / 0.95 = 18.9 checks a day.
    assert "each of the 7 derived targets is cross-checked about every 8h52m" in text
    # A tight day budget stretches it, and the check says which limit did.
    raw["api"]["rate_limit"]["requests_per_day"] = 300
    text = describe_plan(parse_config(raw), None)
    assert "stretched from refresh_interval 10m by the day budget" in text
    raw["planner"] = {"mode": "summary"}
    raw["cohorts"] = COHORTS[:1]
    text = describe_plan(parse_config(raw), None)
    assert "planner: summary (one summary request per target)" in text
    assert "participants" not in text
    assert "1 requests" not in text


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


def five_cohorts_planner() -> tuple[list[Any], Store, Planner, Any]:
    """A planner over five cohorts with g1 and g2's member lists known (read at 900),
    planned at 1000: its targets, store, and the participants pull job."""
    cfg = parse_config(config("http://127.0.0.1:9", cohorts=COHORTS[:5]))
    targets = build_targets(cfg)
    store = Store()
    store.set_targets(targets)
    lists = {"members": {"g1": {"user_ids": ["u1"], "at": 900.0},
                         "g2": {"user_ids": ["u2"], "at": 900.0}}}
    planner = Planner(cfg.planner, store, lists, now=1000.0)
    planner.configure(cfg.planner, 900, 600)
    pull = next(j for j in planner.jobs(targets, 1000.0) if j.kind == "participants")
    return targets, store, planner, pull


def test_inconsistent_pulls_are_dropped_then_the_scenario_uses_summaries(
        caplog: pytest.LogCaptureFixture) -> None:
    targets, _, planner, pull = five_cohorts_planner()
    first = ParticipantRow("u1", "a@acme.com", 1, 50.0, 60.0, 10.0, 100.0)
    second = ParticipantRow("u2", "b@acme.com", 1, 70.0, 80.0, 10.0, 100.0)
    with caplog.at_level(logging.INFO, logger="exporter.planner"):
        for i in range(3):
            now = 1000.0 + i
            pull.apply(({}, now, Page((first,), 1, 2, 2, page_size=1)), now)
            follow = planner.due(now)
            assert follow is not None and follow.key[-1] == 2  # page 2, back to back
            # u1 again on page 2: the order moved under the pull (u2 never seen).
            follow.apply(Page((first,), 2, 2, 2, page_size=1), now)
    assert "rows moved between pages" in caplog.text
    assert "3 pulls in a row were inconsistent" in caplog.text
    assert [j.kind for j in planner.jobs(targets, 1010.0)] == ["summary"] * 5
    # A consistent pull is kept (and counts its pages).
    targets, _, planner, pull = five_cohorts_planner()
    pull.apply(({}, 1000.0, Page((first,), 1, 2, 2, page_size=1)), 1000.0)
    follow = planner.due(1000.0)
    assert follow is not None
    follow.apply(Page((second,), 2, 2, 2, page_size=1), 1000.0)
    assert planner.plan.groups[0].pages == 1  # the plan is rebuilt on the next jobs() call
    # Two pages, and the five paired summaries the pull owes until its cohorts are proven.
    assert [j.cost for j in planner.jobs(targets, 1001.0) if j.kind == "participants"] == [7]


# --- issue 18: paired comparisons, drift, restarts, cost, generations, pruning --------

GROUPED = [("pitch", "g1"), ("pitch", "g2-humans"), ("pitch", "last-7d-g3")]


def quick(fake: FakeExecAPI, **planner: Any) -> dict[str, Any]:
    """Pulls every minute and many cross-checks: drift shows within minutes."""
    raw = config(fake.base_url, {"cross_check_share": 0.3, **planner})
    raw["refresh_interval"] = "1m"
    return raw


def test_constant_traffic_never_refutes_a_derivation(
        fake: FakeExecAPI, clock: FakeClock, caplog: pytest.LogCaptureFixture) -> None:
    """Sessions arrive during every request (each takes a second) and every few seconds
    besides: pull and paired summary are pinned to one end_date, so they still agree."""
    users = [f"u{i:03d}" for i in range(60)]
    fake.set_traffic("pitch", users, advance=clock.advance, seconds=1.0)
    rig = Rig(fake, clock, quick(fake))
    try:
        with caplog.at_level(logging.INFO, logger="exporter.planner"):
            for n in range(6 * 360):  # six hours, a session every ten seconds
                rig.run(10)
                fake.add_sessions("pitch", [Session(users[n % 60], clock.now, 77.0, 300.0)])
        checks = rig.exporter.store.cross_checks()
        assert checks[("pitch", "match")] > 100
        assert ("pitch", "mismatch") not in checks
        assert "disagrees" not in caplog.text
        assert [k for k in KEYS if rig.source(k) != "participants"] == []
        # Every paired summary carried the end_date of the pull just before it.
        last_end = None
        paired = 0
        for request in fake.requests:
            if request.path.endswith("/participants"):
                last_end = request.query["end_date"]
            elif request.path.endswith("/summary"):
                assert request.query["end_date"] == last_end
                paired += 1
        assert paired == checks[("pitch", "match")] + len(KEYS)  # and the first proofs
    finally:
        rig.close()


def test_a_member_list_that_lags_its_group_never_shows_a_wrong_value(
        fake: FakeExecAPI, clock: FakeClock, caplog: pytest.LogCaptureFixture) -> None:
    rig = Rig(fake, clock, quick(fake))
    try:
        rig.run(600)
        assert [k for k in KEYS if rig.source(k) != "participants"] == []
        # Members move between groups; the member list endpoint does not follow.
        fake.freeze_members(True)
        for uid in ("u001", "u005", "u009", "u013", "u017", "u021"):  # g1 -> g2
            fake.move_user(uid, frozenset({"g2"}))
        moved = [("pitch", "g1"), ("pitch", "g2-humans")]
        with caplog.at_level(logging.WARNING, logger="exporter.planner"):
            rig.run(900)  # a few minutes: each target's turn, then the second paired check
            for _ in range(360):  # then every scrape for an hour equals the endpoint
                for key in moved:
                    assert rig.value(key) == rig.truth(key), key
                rig.run(10)
        assert all(rig.source(k) == "summary" for k in moved)
        assert "a member list that lags its group?" in caplog.text
        # The others are still derived: the scenario did not fall back.
        assert rig.source(("pitch", "all")) == "participants"
        assert rig.source(("pitch", "emails")) == "participants"
    finally:
        rig.close()


def test_an_answer_for_an_edited_or_removed_cohort_is_dropped(
        caplog: pytest.LogCaptureFixture) -> None:
    targets, store, planner, pull = five_cohorts_planner()
    rows = (ParticipantRow("u1", "user3@acme.com", 2, 50.0, 60.0, 10.0, 100.0),)
    pull.apply(({}, 1000.0, Page(rows, 1, 1, 1)), 1000.0)
    in_flight = planner.due(1000.0)  # the paired summary of "all", asked
    assert in_flight is not None and in_flight.key == ("summary", "pitch", "all")
    # A reload while it is in flight: "all" now keeps one user, "g1" is gone.
    edited = parse_config(config("http://127.0.0.1:9", cohorts=[
        {"name": "all", "user_ids": ["u2"]}, *COHORTS[2:5]]))
    new_targets = build_targets(edited)
    store.set_targets(new_targets)
    planner.jobs(new_targets, 1001.0)
    with caplog.at_level(logging.INFO, logger="exporter.planner"):
        in_flight.apply(Summary(participants=1, sessions=2), 1002.0)
    assert sum("definition changed while it was asked" in r.getMessage()
               for r in caplog.records) == 1
    # A recurring summary job asked before the reload is dropped the same way.
    old_emails = summary_job(targets[3], store)
    emails_now = replace(targets[3], cohort=targets[3].cohort.model_copy(
        update={"user_emails": ["someone@acme.com"]}))
    store.set_targets([t if t.key != emails_now.key else emails_now for t in new_targets])
    old_emails.apply(Summary(participants=7, sessions=9), 1002.0)
    emails = store.get(("pitch", "emails"))
    assert emails is not None and emails.summary is None
    state = store.get(("pitch", "all"))
    assert state is not None and state.summary is None  # not labelled with new filters
    # The paired summaries still queued for the removed "g1" are never sent.
    asked = []
    while (job := planner.due(1003.0)) is not None:
        asked.append(job.key)
    assert ("summary", "pitch", "g1") not in asked
    # (and the edited "all", with no value under its new filters, is asked at once)
    assert asked == [("summary", "pitch", "g2-humans"), ("summary", "pitch", "emails"),
                     ("summary", "pitch", "no-staff"), ("summary", "pitch", "all")]


def test_a_field_the_summary_did_not_give_is_not_exported_from_a_pull(
        fake: FakeExecAPI, clock: FakeClock) -> None:
    # No score_distribution, durations in whole seconds (the OpenAPI example's 348).
    fake.set_summary_shape("pitch", drop=("score_distribution",),
                           whole=("average_session_duration_seconds",))
    rig = Rig(fake, clock, config(fake.base_url))
    try:
        rig.run(1300)  # proven at the first pull, then served by two more
        assert all(rig.source(k) == "participants" for k in KEYS)
        for key in KEYS:
            value, truth = rig.value(key), rig.truth(key)
            assert value.rank_participants is None  # never proven, never exported
            assert value == truth, key
            assert value.average_session_duration_seconds == round(
                value.average_session_duration_seconds)
        values = metric_values(rig.exporter.exposition.render().decode())
        assert not [k for k in values if k[0] == "exec_scenario_rank_participants"]
    finally:
        rig.close()


def test_a_restart_keeps_the_plan_the_interval_and_every_source(
        fake: FakeExecAPI, clock: FakeClock, tmp_path: Any) -> None:
    state = str(tmp_path / "state.json")
    raw = config(fake.base_url, per_day=400)
    first = Rig(fake, clock, raw, state)
    first.run(2100)  # proven, cross-checked; mid-interval, member lists not due yet
    before = (first.exporter.planner.plan, first.exporter.scheduler.interval,
              first.exporter.planner.sources())
    assert all(source == "participants" for _, source in before[2])
    values = {k: first.value(k) for k in KEYS}
    first.exporter._save_state(force=True)
    first.close()

    clock.advance(30)
    fake.clear_requests()
    second = Rig(fake, clock, raw, state)
    try:
        exporter = second.exporter
        assert (exporter.planner.plan, exporter.scheduler.interval,
                exporter.planner.sources()) == before
        assert {k: second.value(k) for k in KEYS} == values
        values_page = metric_values(exporter.exposition.render().decode())
        assert sample(values_page, "exec_exporter_refresh_interval_seconds") == before[1]
        second.run(60)  # inside the interval: nothing is due
        assert fake.requests == []
        second.run(before[1])  # then the pulls go on, still derived
        assert fake.requests_to("/participants")
        assert all(second.source(k) == "participants" for k in KEYS)
        for key in KEYS:  # rounded as the endpoint was seen rounding before the restart
            assert second.value(key) == second.truth(key), key
    finally:
        second.close()
    # A cohort edited while the exporter was down is proven again, the others are not.
    changed = [dict(c) for c in COHORTS]
    changed[3] = {"name": "emails", "user_emails": ["user8@acme.com"]}
    third = Rig(fake, clock, config(fake.base_url, per_day=400, cohorts=changed), state)
    try:
        assert third.source(("pitch", "emails")) == "summary"
        assert third.source(("pitch", "all")) == "participants"
    finally:
        third.close()


def test_a_large_group_list_refreshed_often_keeps_the_summaries(clock: FakeClock) -> None:
    """The issue's example: a 450-member group and 15-minute refreshes. Derived, the
    list alone (5 pages an hour) costs more than the summary it would save."""
    with FakeExecAPI(make_key(), clock=clock) as api:
        people = [User(f"u{i:03d}", f"user{i}@acme.com", frozenset({"g1"}))
                  for i in range(450)]
        api.set_users(people)
        api.set_sessions("pitch", [Session(u.id, clock.now - 100, 80.0, 60.0) for u in people])
        raw = config(api.base_url, cohorts=[{"name": "all"}, {"name": "g1",
                                                              "group_ids": ["g1"]}])
        raw["refresh_interval"] = "15m"
        rig = Rig(api, clock, raw)
        try:
            rig.run(1800)  # the first list read learns its five pages
            plan = rig.exporter.planner.plan
            assert plan.groups[0].source == "summary"
            assert plan.groups[0].participants_cost > plan.groups[0].summary_cost
            api.clear_requests()
            rig.run(DAY)
            assert {r.path.rsplit("/", 1)[-1] for r in api.requests} == {"summary"}
            assert len(api.requests) == 2 * 96  # two summaries every 15 minutes
        finally:
            rig.close()


def test_cross_checks_are_a_share_of_the_requests_actually_sent() -> None:
    # 8 recurring requests every 15 minutes and 96 list pages a day: 864 sent, 5% of
    # (864 + checks) is 45.5 checks a day, whatever the day quota.
    assert checks_per_day(0.05, 8, 96, 900, 100_000, 54) == pytest.approx(864 / 0.95 * 0.05)
    # A minute budget of 1 stretches the 8 requests to 8 minutes: still 15 minutes.
    assert checks_per_day(0.05, 8, 96, 900, 100_000, 1) == pytest.approx(864 / 0.95 * 0.05)
    # 30 recurring requests at 1 a minute: every 30 minutes, 1,440 + 96 sent a day.
    assert checks_per_day(0.05, 30, 96, 900, 100_000, 1) == pytest.approx(1536 / 0.95 * 0.05)
    # A day budget below what the plan wants: 5% of the day budget.
    assert checks_per_day(0.05, 30, 96, 900, 500, 60) == pytest.approx(25)
    assert checks_per_day(0.0, 30, 96, 900, 500, 60) == 0


def test_the_verdict_rule() -> None:
    agree = Comparison(True)
    counts = Comparison(False, (Difference("participants/sessions", (3, 4), (3, 5)),))
    assert judge(0, agree) == ("agree", 0)
    assert judge(1, agree) == ("agree", 0)
    assert judge(0, counts) == ("doubt", 1)
    assert judge(1, counts) == ("refuted", 2)


def test_removing_a_scenario_prunes_its_state(fake: FakeExecAPI, clock: FakeClock) -> None:
    fake.set_sessions("other", session_log(30, clock.now, seed=5)[1])
    raw = config(fake.base_url)
    raw["scenarios"] = [{"id": "pitch"}, {"id": "other"}]
    rig = Rig(fake, clock, raw)
    try:
        rig.run(12 * 3600)  # the cross-checks' round robin reaches "other" (34 a day)
        exporter = rig.exporter
        assert ("other", "match") in exporter.store.cross_checks()
        # A reload drops "other" and every group cohort.
        raw["scenarios"] = [{"id": "pitch"}]
        raw["cohorts"] = [c for c in COHORTS if "group_ids" not in c]
        exporter.config = parse_config(raw)
        exporter.running = exporter._build(exporter.config, exporter.running.client,
                                           exporter.key)
        assert {s for s, _ in exporter.store.cross_checks()} == {"pitch"}
        values = metric_values(exporter.exposition.render().decode())
        assert not [k for k in values if ("scenario", "other") in k[1]]
        kept = exporter.planner.state()
        assert kept["members"] == {}
        assert {p["scenario"] for p in kept["proofs"]} == {"pitch"}
        assert {p[0] for p in kept["pages"]} == {"pitch"}
        fake.clear_requests()
        rig.run(1800)
        assert not fake.requests_for("other")
        assert not fake.requests_to("/members")
    finally:
        rig.close()


def test_a_group_renamed_during_a_pull(fake: FakeExecAPI, clock: FakeClock) -> None:
    """Discovery renames a group cohort between a pull and its paired summaries: the
    old name's state and series go, the new name is proven again and exports the
    endpoint's values."""
    fake.set_groups([{"id": "g1", "name": "Sales"}, {"id": "g2", "name": "Support"}])
    raw = config(fake.base_url, {"cross_check_share": 0.3}, cohorts=[{"name": "all"}])
    raw["discovery"] = {"group_cohorts": {}}
    rig = Rig(fake, clock, raw)
    try:
        rig.run(1300)
        keys = [("pitch", "all"), ("pitch", "Sales"), ("pitch", "Support")]
        assert [rig.source(k) for k in keys] == ["participants"] * 3
        exporter = rig.exporter
        planner = exporter.planner
        for _ in range(1000):  # request by request, to a pull that queued Sales's check
            wake = exporter.poller.step()
            if any(p.target.key == ("pitch", "Sales") for p in planner._paired):
                break
            clock.now = max(clock.now, wake)
        assert [p.target.key for p in planner._paired] == [("pitch", "Sales")]
        assert exporter.discovery is not None
        lists = exporter.discovery.lists
        lists.groups = [Group("g1", "Sales EMEA"), Group("g2", "Support")]
        fake.clear_requests()
        exporter._on_lists(lists)
        renamed = ("pitch", "Sales EMEA")
        # The old name's queued check is dropped; the new name, with no value yet, has
        # its summary asked at once (its proof comes with the next pull).
        assert [p.target.key for p in planner._paired] == [renamed]
        rig.run(60)
        assert [(r.path.rsplit("/", 1)[-1], r.query.get("group_ids")) for r in fake.requests] == [
            ("summary", "g1")]
        assert rig.value(renamed) == rig.truth(renamed)
        assert rig.source(renamed) == "summary"
        rig.run(1300)
        assert exporter.store.get(("pitch", "Sales")) is None
        assert rig.source(renamed) == "participants"
        assert rig.value(renamed) == rig.truth(renamed)
        assert {p["cohort"] for p in exporter.planner.state()["proofs"]} == {
            "all", "Sales EMEA", "Support"}
        values = metric_values(exporter.exposition.render().decode())
        assert not [k for k in values if ("cohort", "Sales") in k[1]]
    finally:
        rig.close()


def test_a_failing_pull_still_sends_the_summaries_it_owes_once_per_interval(
        fake: FakeExecAPI, clock: FakeClock) -> None:
    fake.set_list_fault("participants", "500")
    rig = Rig(fake, clock, config(fake.base_url))
    try:
        rig.run(3600)
        # Every target has the endpoint's values, though no pull ever succeeded ...
        for key in KEYS:
            assert rig.value(key) == rig.truth(key), key
            assert rig.source(key) == "summary"
        # ... and the pull's quick retries (10 s, 20 s, ...) did not repeat them: at most
        # one summary per target per refresh_interval (10 minutes), the fill included.
        summaries = fake.requests_to("/summary")
        assert len(fake.requests_to("/participants")) > 12
        assert len(summaries) <= len(KEYS) * 7
    finally:
        rig.close()


def test_the_effective_interval_is_the_same_everywhere(
        fake: FakeExecAPI, clock: FakeClock, caplog: pytest.LogCaptureFixture) -> None:
    """The logs, the landing page, the metric and the scheduler show one interval,
    computed in one place, and say what set it."""
    raw = config(fake.base_url, per_day=200)
    with caplog.at_level(logging.INFO, logger="exporter"):
        rig = Rig(fake, clock, raw)
        try:
            rig.run(600)
            exporter = rig.exporter
            interval = exporter.scheduler.interval
            assert interval > 600  # 2 pulls on what 200 a day leaves: the day budget
            shown = format_duration(interval)
            plans = [r.getMessage() for r in caplog.records
                     if r.getMessage().startswith("plan: ")]
            assert plans[-1] == (f"plan: 7 of 7 targets derived; effective refresh interval "
                                 f"{shown} (stretched from refresh_interval 10m by the day "
                                 "budget)")
            values = metric_values(exporter.exposition.render().decode())
            assert sample(values, "exec_exporter_refresh_interval_seconds") == interval
            page = landing_page(Web(exporter.store, exporter.exposition, clock=clock))
            assert f"effective refresh interval {shown}" in page
        finally:
            rig.close()


def test_a_cohort_proven_while_empty_is_proven_again_once_it_has_averages(
        fake: FakeExecAPI, clock: FakeClock) -> None:
    people, _ = session_log(60, clock.now)
    fake.set_users([*people, User("u100", "new@acme.com")])
    cohorts = [*COHORTS[:5], {"name": "newcomer", "user_ids": ["u100"]}]
    rig = Rig(fake, clock, config(fake.base_url, cohorts=cohorts))
    key = ("pitch", "newcomer")
    try:
        rig.run(5)
        assert rig.source(key) == "participants"  # proven: 0 participants, no averages
        assert rig.value(key).average_best_score is None
        fake.add_sessions("pitch", [Session("u100", clock.now, 91.0, 200.0)])
        fake.clear_requests()
        rig.run(700)  # the next pull has averages the proof never saw: a paired proof
        asked = [r.query.get("user_ids") for r in fake.requests_to("/summary")]
        assert asked.count("u100") == 1
        assert rig.value(key) == rig.truth(key)
        assert rig.value(key).average_best_score == 91.0
        assert rig.source(key) == "participants"
    finally:
        rig.close()


def test_a_cohort_added_by_a_reload_after_a_restart_gets_its_value_at_once(
        fake: FakeExecAPI, clock: FakeClock, tmp_path: Any,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """After a restart no pull has run in this process yet, but the restored pulls keep
    their turn (an interval away): a cohort a reload adds to one of them is asked at
    once, as on a process that pulled before, not left without a value until then."""
    import yaml

    state = str(tmp_path / "state.json")
    raw = config(fake.base_url, per_day=400)
    first = Rig(fake, clock, raw, state)
    first.run(2100)
    first.exporter._save_state(force=True)
    first.close()
    clock.advance(30)
    second = Rig(fake, clock, raw, state)
    try:
        second.run(60)  # inside the interval: nothing is due
        added = {"name": "g1-humans", "group_ids": ["g1"], "exclude_system_users": True}
        path = tmp_path / "config.yaml"
        path.write_text(yaml.safe_dump(config(fake.base_url, per_day=400,
                                              cohorts=[*COHORTS, added])))
        monkeypatch.setenv("EXEC_API_KEY", fake.api_key)
        second.exporter.config_path = str(path)
        assert second.exporter.reload()[0]
        fake.clear_requests()
        second.run(60)
        key = ("pitch", "g1-humans")
        assert [r.query.get("group_ids") for r in fake.requests_to("/summary")] == ["g1"]
        assert second.value(key) == second.truth(key)
        assert not fake.requests_to("/participants")  # the pull keeps its turn
    finally:
        second.close()


def test_the_daemon_caps_cross_checks_by_the_day_budget_left_after_the_listings(
        fake: FakeExecAPI, clock: FakeClock) -> None:
    # A day budget the plan's requests exceed, and a skills listing read every 10
    # minutes, paid first: the daemon prices the cross-checks as --config.check does,
    # 5% of the budget the listing leaves, not of the whole day budget.
    raw = config(fake.base_url, per_day=400) | {"skills": {"interval": "10m"}}
    settings = parse_config(raw)
    left = 400 - Skills(settings.skills, 400).requests_per_day()
    assert left < 400
    rig = Rig(fake, clock, raw)
    try:
        rig.run(3 * 600)
        assert [rig.source(key) for key in KEYS] == ["participants"] * len(KEYS)
        lists, checks = derived_per_day(rig.exporter.planner.plan, {}, settings.planner, 600.0,
                                        left, 6000, checked=True)
        assert checks == pytest.approx(0.05 * left)
        assert rig.exporter.planner.requests_per_day() == pytest.approx(lists + checks)
        assert f"about {checks:.0f}/day" in describe_plan(settings, None)
    finally:
        rig.close()


def test_a_reload_during_a_member_list_backoff_saves_strict_json() -> None:
    """A reload asks every member list again now; a list backing off then is saved
    with a time strict JSON readers accept (it was -Infinity, which strict parsers refuse)."""
    import json
    import threading

    from exporter.client import UpstreamError
    from exporter.config import PlannerConfig
    from exporter.members import MemberLists

    def strict(constant: str) -> None:
        raise ValueError(f"not JSON: {constant}")

    lists = MemberLists(PlannerConfig(), threading.RLock(), lambda: None)
    job = lists.due(["g1"], 1000.0)
    assert job is not None
    job.fail(UpstreamError("HTTP 502", 502), 1000.0)
    lists.configure(PlannerConfig(), reread=True)
    saved = json.loads(json.dumps(lists.state()), parse_constant=strict)
    assert saved["member_retries"]["g1"]["failures"] == 1
    assert lists.due(["g1"], 1000.0) is not None  # still read again at once
