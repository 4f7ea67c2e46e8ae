"""What the analytics endpoints compute from matching sessions, per the API's docs.

A participant's row: their session count, first and best score (best minus
first is the lift, in score points) and practice time. The summary is computed
from the same rows, rounded as the documented endpoint rounds (averages to one
decimal, practice to whole minutes), so a summary and a participants table of
the same filters always agree. Ranks: gold >= 90, silver >= 75, bronze >= 50,
unranked below.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..client import RANKS  # the rank names live in one place
from .world import Regrade, SessionLog

# The lowest score of each rank but the last, in the order of RANKS.
_RANK_FLOORS = (90.0, 75.0, 50.0)


def rank_for(score: float) -> str:
    """The Exec rank for a 0-100 score: gold >= 90, silver >= 75, bronze >= 50."""
    for rank, floor in zip(RANKS, _RANK_FLOORS, strict=False):
        if score >= floor:
            return rank
    return RANKS[-1]


@dataclass(frozen=True)
class ParticipantRow:
    """One participant as both analytics endpoints report them."""

    user_id: str
    sessions: int
    first: float
    best: float
    lift: float
    seconds: float

    def as_json(self, user: dict[str, Any]) -> dict[str, Any]:
        """A ScenarioParticipantEntry, ``user`` being the nested user object."""
        return {
            "user": user,
            "session_count": self.sessions,
            "first_score": self.first,
            "first_rank": rank_for(self.first),
            "best_score": self.best,
            "best_rank": rank_for(self.best),
            "lift_percentage": self.lift,
            "total_duration_seconds": self.seconds,
        }


# The participants endpoint's ``sorting`` values (without the "-") and the row field.
SORT_COLUMNS = {
    "best_score": "best",
    "first_score": "first",
    "lift_percentage": "lift",
    "total_duration_seconds": "seconds",
    "session_count": "sessions",
}


@dataclass
class _Tally:
    sessions: int
    first: float
    best: float
    seconds: float
    regraded: bool = False  # a matching session is under a re-graded rubric


def participant_rows(log: SessionLog, matching: Sequence[int],
                     regrade: Regrade | None = None) -> list[ParticipantRow]:
    """The rows of the sessions at ``matching`` (indexes into ``log``, in time order),
    in the order of each user's first matching session."""
    tallies: dict[str, _Tally] = {}
    users, scores, seconds, times = log.users, log.scores, log.seconds, log.times
    for i in matching:
        score = scores[i]
        tally = tallies.get(users[i])
        if tally is None:
            tally = tallies[users[i]] = _Tally(1, score, score, seconds[i])
        else:
            tally.sessions += 1
            tally.seconds += seconds[i]
            tally.best = max(tally.best, score)
        if regrade is not None and times[i] >= regrade.at:
            tally.regraded = True
    rows = []
    for user_id, tally in tallies.items():
        # A user's values change only with a session of theirs (a re-grade shows with
        # their first session under the new rubric), so values never move while counts
        # stand still.
        penalty = regrade.points if regrade is not None and tally.regraded else 0.0
        best = max(0.0, tally.best - penalty)
        first = max(0.0, tally.first - penalty)
        rows.append(ParticipantRow(user_id, tally.sessions, first, best, best - first,
                                   tally.seconds))
    return rows


def summary_body(
    bests: list[float],
    firsts: list[float],
    sessions: int,
    seconds: float,
    lifts: list[float] | None = None,
) -> dict[str, Any]:
    """A ScenarioAnalyticsSummary body, rounded as the documented endpoint rounds
    (averages to one decimal, practice to whole minutes); ``lifts`` defaults to each
    participant's best minus first."""
    n = len(bests)
    if lifts is None:
        lifts = [b - f for b, f in zip(bests, firsts, strict=True)]
    counts = dict.fromkeys(RANKS, 0)
    for b in bests:
        counts[rank_for(b)] += 1
    average = round(math.fsum(bests) / n, 1) if n else None
    return {
        "participant_count": n,
        "total_sessions": sessions,
        "average_best_score": average,
        # From the rounded score, so rank and score never disagree at a boundary.
        "average_best_rank": rank_for(average) if average is not None else None,
        "average_lift_percentage": round(math.fsum(lifts) / n, 1) if n else None,
        "total_practice_minutes": round(seconds / 60),
        "average_session_duration_seconds": round(seconds / sessions, 1) if sessions else None,
        "score_distribution": [
            {
                "rank": rank,
                "count": counts[rank],
                "percentage": round(100 * counts[rank] / n, 1) if n else 0,
            }
            for rank in RANKS
        ],
    }


def rows_summary(rows: Sequence[ParticipantRow]) -> dict[str, Any]:
    """The summary of the participants ``rows``."""
    return summary_body(
        [r.best for r in rows],
        [r.first for r in rows],
        sum(r.sessions for r in rows),
        math.fsum(r.seconds for r in rows),
        lifts=[r.lift for r in rows],
    )
