"""Cohort summaries derived from the participants table: pure functions, no I/O.

:class:`CohortFilter` keeps a cohort's rows of a pull, :func:`aggregate` turns them
into the :class:`~exporter.client.Summary` the summary endpoint would give (its
formulas, inferred from the API's field descriptions, are in
docs/derived-cohorts.md) and :func:`compare` says whether it reproduces a real one.
How the endpoint rounds is learned (:class:`Precision`), never assumed.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from .client import RANKS, ParticipantRow, Summary

SYSTEM_EMAIL_SUFFIX = "@exec.com"  # the API's system users (exclude_system_users)
# The lowest score of each rank but the last, in the order of RANKS.
RANK_FLOORS = (90.0, 75.0, 50.0)

SUMMARY_FIELDS = tuple(Summary.__slots__)
# The fields the endpoint rounds (its decimals are learned, see Precision).
ROUNDED_FIELDS = ("average_best_score", "average_score_lift", "practice_minutes",
                  "average_session_duration_seconds")
MAX_DECIMALS = 3


def rank_for(score: float) -> str:
    """The Exec rank of a 0-100 score: gold >= 90, silver >= 75, bronze >= 50."""
    for rank, floor in zip(RANKS, RANK_FLOORS, strict=False):
        if score >= floor:
            return rank
    return RANKS[-1]


def is_system_user(email: str | None) -> bool:
    """Whether ``email`` belongs to Exec staff (what ``exclude_system_users`` drops)."""
    return email is not None and email.lower().endswith(SYSTEM_EMAIL_SUFFIX)


def decimals_of(value: float) -> int:
    """How many decimals ``value`` shows (74.2 -> 1, 348 -> 0), at most 3."""
    for places in range(MAX_DECIMALS + 1):
        if math.isclose(value, round(value, places), abs_tol=1e-9):
            return places
    return MAX_DECIMALS


@dataclass
class Precision:
    """The decimals the summary endpoint gives each rounded field: the most any real
    summary showed (a whole value does not lower it); a field never seen is not rounded.
    Not thread-safe: the poller thread owns it."""

    seen: dict[str, int] = field(default_factory=dict)

    def observe(self, summary: Summary) -> None:
        """Learn from one real summary."""
        for name, value in _rounded_values(summary).items():
            if value is not None:
                self.seen[name] = max(self.seen.get(name, 0), decimals_of(value))

    def decimals(self, name: str) -> int:
        """The decimals to round ``name`` to (MAX_DECIMALS while never seen)."""
        return self.seen.get(name, MAX_DECIMALS)


def given_fields(summary: Summary) -> frozenset[str]:
    """The fields ``summary`` gave (not null): only those are proven by it."""
    return frozenset(name for name in SUMMARY_FIELDS if getattr(summary, name) is not None)


def _rounded_values(summary: Summary) -> dict[str, float | None]:
    minutes = None if summary.practice_seconds is None else summary.practice_seconds / 60.0
    return {"average_best_score": summary.average_best_score,
            "average_score_lift": summary.average_score_lift,
            "practice_minutes": minutes,
            "average_session_duration_seconds": summary.average_session_duration_seconds}


@dataclass(frozen=True)
class CohortFilter:
    """Which participant rows a cohort keeps, as the summary endpoint's filters do: the
    user ids and emails unioned, narrowed to members of any listed group, ``@exec.com``
    dropped with ``exclude_system_users``. Dates select the pull, not the rows."""

    user_ids: frozenset[str] = frozenset()
    user_emails: frozenset[str] = frozenset()  # lower case
    group_ids: tuple[str, ...] = ()
    exclude_system_users: bool = False

    @classmethod
    def of(cls, user_ids: Iterable[str] = (), user_emails: Iterable[str] = (),
           group_ids: Iterable[str] = (), exclude_system_users: bool | None = None,
           ) -> CohortFilter:
        """A filter from a cohort's fields (``CohortConfig`` has the same names)."""
        return cls(frozenset(user_ids), frozenset(e.lower() for e in user_emails),
                   tuple(dict.fromkeys(group_ids)), bool(exclude_system_users))

    def keeps(self, row: ParticipantRow, members: Mapping[str, frozenset[str]]) -> bool:
        """Whether the cohort counts ``row``; ``members`` maps a group id to the
        user ids in it (every group of :attr:`group_ids` must be there)."""
        if self.exclude_system_users and is_system_user(row.email):
            return False
        if self.user_ids or self.user_emails:
            email = row.email.lower() if row.email is not None else None
            if row.user_id not in self.user_ids and email not in self.user_emails:
                return False
        if self.group_ids:
            return any(row.user_id in members[g] for g in self.group_ids)
        return True


def aggregate(rows: Iterable[ParticipantRow], precision: Precision | None = None) -> Summary:
    """The summary of ``rows`` (one cohort's participants), rounded as the endpoint
    rounds. An empty cohort has zero counts and no averages (no sample)."""
    precision = precision or Precision()
    kept = [r for r in rows if r.best_score is not None]
    n = len(kept)
    sessions = sum(r.session_count for r in kept)
    seconds = sum(r.duration_seconds for r in kept)
    counts = dict.fromkeys(RANKS, 0)
    bests: list[float] = []
    lifts: list[float] = []
    for row in kept:
        assert row.best_score is not None
        bests.append(row.best_score)
        counts[rank_for(row.best_score)] += 1
        lift = row.lift
        if lift is None and row.first_score is not None:
            lift = row.best_score - row.first_score
        if lift is not None:
            lifts.append(lift)

    def rounded(name: str, value: float) -> float:
        return float(round(value, precision.decimals(name)))

    score = rounded("average_best_score", math.fsum(bests) / n) if n else None
    minutes = rounded("practice_minutes", seconds / 60.0)
    return Summary(
        participants=n,
        sessions=sessions,
        average_best_score=score,
        average_best_rank=rank_for(score) if score is not None else None,
        average_score_lift=(rounded("average_score_lift", math.fsum(lifts) / len(lifts))
                            if lifts else None),
        practice_seconds=minutes * 60.0,
        average_session_duration_seconds=(
            rounded("average_session_duration_seconds", seconds / sessions)
            if sessions else None),
        rank_participants=counts,
    )


@dataclass(frozen=True)
class Difference:
    """One field where a derived summary and the endpoint's disagree."""

    field: str
    derived: object
    summary: object


@dataclass(frozen=True)
class Comparison:
    """A derived summary against the endpoint's: ``counts_agree`` False when they
    counted other participants or sessions, else ``differences`` beyond tolerance."""

    counts_agree: bool
    differences: tuple[Difference, ...] = ()

    @property
    def match(self) -> bool:
        """Same sessions and every field within tolerance."""
        return self.counts_agree and not self.differences

    def describe(self) -> str:
        """``field derived=x summary=y`` for each difference, for the log."""
        return ", ".join(f"{d.field} derived={d.derived!r} summary={d.summary!r}"
                         for d in self.differences)


def compare(derived: Summary, summary: Summary, tolerance: float) -> Comparison:
    """Compare ``derived`` with the endpoint's ``summary``: participants and sessions
    decide whether both saw the same data; then rank counts and the rank must be
    equal and the averages (points, seconds, minutes) within ``tolerance``."""
    if (derived.participants, derived.sessions) != (summary.participants, summary.sessions):
        return Comparison(False, (Difference("participants/sessions",
                                             (derived.participants, derived.sessions),
                                             (summary.participants, summary.sessions)),))
    differences: list[Difference] = []
    ours, theirs = _rounded_values(derived), _rounded_values(summary)
    for name in ROUNDED_FIELDS:
        a, b = ours[name], theirs[name]
        if a is None or b is None:
            if (a is None) != (b is None):
                differences.append(Difference(name, a, b))
        elif (abs(a - b) > tolerance + 1e-9
              and not math.isclose(round(a, decimals_of(b)), b, abs_tol=1e-9)):
            # Beyond tolerance, and not the same value at the summary's own precision.
            differences.append(Difference(name, a, b))
    if derived.average_best_rank != summary.average_best_rank:
        differences.append(Difference("average_best_rank", derived.average_best_rank,
                                      summary.average_best_rank))
    ours_ranks, theirs_ranks = dict(derived.rank_participants or {}), summary.rank_participants
    if theirs_ranks is not None and ours_ranks != dict(theirs_ranks):
        differences.append(Difference("rank_participants", ours_ranks, dict(theirs_ranks)))
    return Comparison(True, tuple(differences))
