"""Aggregation of participant rows into cohort summaries, against hand-computed tables."""

from __future__ import annotations

import random
import time
from dataclasses import replace

import pytest
from conftest import make_key
from fakeapi import FakeExecAPI, Session, User

from exporter.aggregate import (
    CohortFilter,
    Precision,
    aggregate,
    compare,
    decimals_of,
    is_system_user,
    rank_for,
)
from exporter.client import ExecClient, ParticipantRow, Summary


def row(uid: str, email: str | None, sessions: int, first: float | None, best: float | None,
        lift: float | None, seconds: float) -> ParticipantRow:
    return ParticipantRow(uid, email, sessions, first, best, lift, seconds)


# user     email              sessions first best lift seconds
ROWS = [
    row("u1", "a@acme.com", 4, 55, 88, 33, 1240),
    row("u2", "b@acme.com", 2, 70, 92, 22, 600),
    row("u3", "staff@EXEC.com", 1, 95, 95, 0, 200),
    row("u4", "c@acme.com", 3, 40, 49, 9, 900),
    row("u5", "d@acme.com", 1, None, None, None, 100),  # no graded session
]
MEMBERS = {"g-sales": frozenset({"u1", "u4", "u5"}), "g-cs": frozenset({"u2"})}
# What an endpoint that gives averages with one decimal and whole practice minutes
# teaches Precision (the hand-computed values below are rounded that way).
SEEN = {"average_best_score": 1, "average_score_lift": 1, "practice_minutes": 0,
        "average_session_duration_seconds": 1}


def derive(rows: list[ParticipantRow]) -> Summary:
    return aggregate(rows, Precision(seen=dict(SEEN)))


def cohort_rows(cohort: CohortFilter) -> list[ParticipantRow]:
    return [r for r in ROWS if cohort.keeps(r, MEMBERS)]


def test_everyone() -> None:
    # 4 graded participants; 4+2+1+3 = 10 sessions; best (88+92+95+49)/4 = 81.0 silver;
    # lift (33+22+0+9)/4 = 16.0; 1240+600+200+900 = 2940 s = 49 min; 2940/10 = 294 s.
    assert derive(cohort_rows(CohortFilter())) == Summary(
        participants=4, sessions=10, average_best_score=81.0, average_best_rank="silver",
        average_score_lift=16.0, practice_seconds=49 * 60.0,
        average_session_duration_seconds=294.0,
        rank_participants={"gold": 2, "silver": 1, "bronze": 0, "unranked": 1})


def test_system_users_are_excluded_case_insensitively() -> None:
    # u1, u2, u4: 9 sessions; 229/3 = 76.33 -> 76.3 silver; 64/3 = 21.33 -> 21.3;
    # 2740 s = 45.67 min -> 46 min; 2740/9 = 304.44 -> 304.4 s.
    summary = derive(cohort_rows(CohortFilter.of(exclude_system_users=True)))
    assert summary == Summary(
        participants=3, sessions=9, average_best_score=76.3, average_best_rank="silver",
        average_score_lift=21.3, practice_seconds=46 * 60.0,
        average_session_duration_seconds=304.4,
        rank_participants={"gold": 1, "silver": 1, "bronze": 0, "unranked": 1})
    assert is_system_user("staff@EXEC.com") and not is_system_user("exec.com@acme.com")
    assert not is_system_user(None)


def test_group_members_only() -> None:
    # u1, u4 (u5 has no graded session): 7 sessions; (88+49)/2 = 68.5 bronze; lift 21.0;
    # 2140 s = 35.67 min -> 36 min; 2140/7 = 305.71 -> 305.7 s.
    summary = derive(cohort_rows(CohortFilter.of(group_ids=["g-sales"])))
    assert summary == Summary(
        participants=2, sessions=7, average_best_score=68.5, average_best_rank="bronze",
        average_score_lift=21.0, practice_seconds=36 * 60.0,
        average_session_duration_seconds=305.7,
        rank_participants={"gold": 0, "silver": 1, "bronze": 0, "unranked": 1})
    # Two groups: members of either.
    both = CohortFilter.of(group_ids=["g-sales", "g-cs"])
    assert [r.user_id for r in cohort_rows(both)] == ["u1", "u2", "u4", "u5"]


def test_user_ids_and_emails_are_unioned_and_narrowed_by_groups() -> None:
    # u2 by email (any case), u3 by id: 3 sessions; 93.5 gold; lift 11.0;
    # 800 s = 13.33 min -> 13 min; 800/3 = 266.67 -> 266.7 s.
    cohort = CohortFilter.of(user_ids=["u3"], user_emails=["B@acme.com"])
    assert derive(cohort_rows(cohort)) == Summary(
        participants=2, sessions=3, average_best_score=93.5, average_best_rank="gold",
        average_score_lift=11.0, practice_seconds=13 * 60.0,
        average_session_duration_seconds=266.7,
        rank_participants={"gold": 2, "silver": 0, "bronze": 0, "unranked": 0})
    narrowed = CohortFilter.of(user_ids=["u1", "u2"], group_ids=["g-cs"])
    assert [r.user_id for r in cohort_rows(narrowed)] == ["u2"]


def test_empty_cohort_has_zero_counts_and_no_averages() -> None:
    for rows in ([], [row("u5", "d@acme.com", 1, None, None, None, 100)]):
        assert derive(rows) == Summary(
            participants=0, sessions=0, average_best_score=None, average_best_rank=None,
            average_score_lift=None, practice_seconds=0.0,
            average_session_duration_seconds=None,
            rank_participants={"gold": 0, "silver": 0, "bronze": 0, "unranked": 0})


def test_lift_from_scores_when_the_row_leaves_it_out() -> None:
    # (80-60 + 70-70)/2 = 10.0; a row with neither lift nor first score adds no sample.
    rows = [row("a", None, 1, 60, 80, None, 60), row("b", None, 1, 70, 70, None, 60),
            row("c", None, 1, None, 90, None, 60)]
    assert derive(rows).average_score_lift == 10.0
    assert derive([row("c", None, 1, None, 90, None, 60)]).average_score_lift is None


def test_rank_comes_from_the_rounded_average() -> None:
    # (90 + 89.92)/2 = 89.96, shown as 90.0: gold, like the score the endpoint shows.
    summary = derive([row("a", None, 1, 90, 90, 0, 60), row("b", None, 1, 89.92, 89.92, 0, 60)])
    assert (summary.average_best_score, summary.average_best_rank) == (90.0, "gold")
    assert [rank_for(s) for s in (90, 89.9, 75, 74.9, 50, 49.9, 0)] == [
        "gold", "silver", "silver", "bronze", "bronze", "unranked", "unranked"]


def test_precision_is_learned_never_assumed() -> None:
    precision = Precision()
    rows = cohort_rows(CohortFilter.of(exclude_system_users=True))
    # Nothing seen, nothing assumed (and a field never seen is never exported from a
    # pull: no summary proved it).
    assert aggregate(rows, precision).average_session_duration_seconds == 304.444
    # The OpenAPI example's whole duration (348): derived durations follow it at once.
    precision.observe(Summary(average_session_duration_seconds=348.0, average_best_score=74.2))
    assert aggregate(rows, precision).average_session_duration_seconds == 304.0
    assert aggregate(rows, precision).average_best_score == 76.3
    # A decimal once seen stays: a value that happens to be whole does not lower it.
    precision.observe(Summary(average_session_duration_seconds=12.5))
    precision.observe(Summary(average_session_duration_seconds=300.0))
    assert aggregate(rows, precision).average_session_duration_seconds == 304.4
    assert [decimals_of(v) for v in (348.0, 74.2, 18.25, 1 / 3)] == [0, 1, 2, 3]


def test_compare_at_the_precision_the_summary_shows() -> None:
    # A derived 347.6 s against the endpoint's whole 348: the same value at its precision.
    derived = Summary(participants=1, sessions=1, average_session_duration_seconds=347.6)
    assert compare(derived, replace(derived, average_session_duration_seconds=348.0),
                   tolerance=0.1).match
    assert not compare(derived, replace(derived, average_session_duration_seconds=349.0),
                       tolerance=0.1).match


BASE = derive(ROWS)


def test_compare_match_within_tolerance() -> None:
    close = Summary(**{**BASE.to_json(), "average_best_score": 81.1,
                       "average_session_duration_seconds": 293.9})
    result = compare(BASE, close, tolerance=0.1)
    assert result.match


def test_compare_counts_differ_is_a_disagreement() -> None:
    later = Summary(**{**BASE.to_json(), "sessions": 11, "average_best_score": 85.0})
    result = compare(BASE, later, tolerance=0.1)
    assert not result.counts_agree and not result.match


@pytest.mark.parametrize(("field", "value", "named"), [
    ("average_best_score", 81.3, "average_best_score"),
    ("average_score_lift", None, "average_score_lift"),
    ("practice_seconds", 50 * 60.0, "practice_minutes"),
    ("average_best_rank", "gold", "average_best_rank"),
    ("rank_participants", {"gold": 3, "silver": 0, "bronze": 0, "unranked": 1},
     "rank_participants"),
])
def test_compare_mismatch_names_the_field(field: str, value: object, named: str) -> None:
    other = Summary(**{**BASE.to_json(), field: value})
    result = compare(BASE, other, tolerance=0.1)
    assert result.counts_agree and not result.match
    assert [d.field for d in result.differences] == [named]
    assert named in result.describe()


# --- against the fake API: one session log, two endpoints -----------------------------

DAY = 86400.0


def session_log(seed: int, users: int, now: float) -> tuple[list[User], list[Session]]:
    """Users in four groups (some in two), a few staff, 1-6 integer-scored sessions each."""
    rng = random.Random(seed)
    people = []
    for i in range(users):
        groups = {f"g{i % 4}"} | ({f"g{(i + 1) % 4}"} if i % 7 == 0 else set())
        domain = "exec.com" if i % 11 == 0 else "acme.com"
        people.append(User(f"u{i:03d}", f"user{i}@{domain}", frozenset(groups)))
    sessions = [Session(u.id, now - rng.uniform(0, 30 * DAY), float(rng.randint(20, 100)),
                        float(rng.randint(60, 900)))
                for u in people for _ in range(rng.randint(1, 6))]
    return people, sessions


def test_derived_equals_summary_on_the_same_session_log() -> None:
    now = time.time()
    people, sessions = session_log(7, 250, now)
    cohorts = {
        "all": ({}, CohortFilter()),
        "g1": ({"group_ids": "g1"}, CohortFilter.of(group_ids=["g1"])),
        "g2+g3": ({"group_ids": "g2,g3"}, CohortFilter.of(group_ids=["g2", "g3"])),
        "emails": ({"user_emails": "user1@acme.com,USER2@acme.com", "user_ids": "u003"},
                   CohortFilter.of(user_emails=["user1@acme.com", "USER2@acme.com"],
                                   user_ids=["u003"])),
        "no-staff": ({"exclude_system_users": "true"},
                     CohortFilter.of(exclude_system_users=True)),
        "nobody": ({"user_ids": "u999"}, CohortFilter.of(user_ids=["u999"])),
    }
    with FakeExecAPI(make_key()) as fake:
        fake.set_users(people)
        fake.set_sessions("pitch", sessions)
        client = ExecClient(fake.base_url, make_key(), timeout=5)
        members: dict[str, frozenset[str]] = {}
        for group in ("g0", "g1", "g2", "g3"):
            page = client.members({"group_ids": group, "page": "1", "page_size": "100"})
            members[group] = frozenset(m.user_id for m in page.items)
        pulled: list[int] = []
        for dates in ({}, {"start_date": "2000-01-01T00:00:00Z"},
                      {"start_date": _iso(now - 7 * DAY)}):
            rows: list[ParticipantRow] = []
            page_no, pages = 1, 1
            while page_no <= pages:
                page = client.participants("pitch", {**dates, "page": str(page_no),
                                                     "page_size": "100"})
                rows.extend(page.items)
                pages, page_no = page.total_pages, page_no + 1
            assert len({r.user_id for r in rows}) == len(rows) == page.total_count
            precision = Precision()
            summaries = {name: client.summary("pitch", {**query, **dates})
                         for name, (query, _) in cohorts.items()}
            for summary in summaries.values():
                precision.observe(summary)
            for name, (_, cohort) in cohorts.items():
                derived = aggregate([r for r in rows if cohort.keeps(r, members)], precision)
                assert derived == summaries[name], (name, dates)
            pulled.append(pages)
        assert pulled[:2] == [3, 3]  # 250 participants: three pages of 100
        assert summaries["all"].participants  # the 7-day pull is not empty
        client.close()


def _iso(at: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at))
