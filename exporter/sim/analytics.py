"""What the analytics endpoints compute from matching sessions, per the API's docs.

A participant's row: their session count, first and best score (best minus first is
the lift, in score points) and practice time. The summary is computed from the same
rows, rounded as the documented endpoint rounds, so a summary and a participants
table of the same filters always agree.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .world import Regrade, SessionLog

RANKS = ("gold", "silver", "bronze", "unranked")
_RANK_FLOORS = (90.0, 75.0, 50.0)  # the lowest score of each rank but the last


def rank_for(score: float) -> str:
    """The Exec rank for a 0-100 score: gold >= 90, silver >= 75, bronze >= 50."""
    return next((r for r, floor in zip(RANKS, _RANK_FLOORS, strict=False) if score >= floor),
                RANKS[-1])


@dataclass
class ParticipantRow:
    """One participant as both analytics endpoints report them."""

    user_id: str
    sessions: int
    first: float
    best: float
    seconds: float
    regraded: bool = False  # a matching session is under a re-graded rubric

    @property
    def lift(self) -> float:
        """Best minus first score, in points."""
        return self.best - self.first

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
SORT_COLUMNS = {"best_score": "best", "first_score": "first", "lift_percentage": "lift",
                "total_duration_seconds": "seconds", "session_count": "sessions"}


def participant_rows(log: SessionLog, matching: Sequence[int],
                     regrade: Regrade | None = None) -> list[ParticipantRow]:
    """The rows of the sessions at ``matching`` (indexes into ``log``, in time order),
    in the order of each user's first matching session."""
    rows: dict[str, ParticipantRow] = {}
    for i in matching:
        score, row = log.scores[i], rows.get(log.users[i])
        if row is None:
            row = rows[log.users[i]] = ParticipantRow(log.users[i], 1, score, score,
                                                      log.seconds[i])
        else:
            row.sessions += 1
            row.seconds += log.seconds[i]
            row.best = max(row.best, score)
        row.regraded = row.regraded or (regrade is not None and log.times[i] >= regrade.at)
    for row in rows.values():
        # A re-grade shows from the user's first session under the new rubric, so values
        # never move while counts stand still.
        if regrade is not None and row.regraded:
            row.best = max(0.0, row.best - regrade.points)
            row.first = max(0.0, row.first - regrade.points)
    return list(rows.values())


def summary_body(bests: list[float], firsts: list[float], sessions: int, seconds: float,
                 lifts: list[float] | None = None) -> dict[str, Any]:
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
            {"rank": rank, "count": counts[rank],
             "percentage": round(100 * counts[rank] / n, 1) if n else 0}
            for rank in RANKS
        ],
    }


def rows_summary(rows: Sequence[ParticipantRow]) -> dict[str, Any]:
    """The summary of the participants ``rows``."""
    return summary_body([r.best for r in rows], [r.first for r in rows],
                        sum(r.sessions for r in rows), math.fsum(r.seconds for r in rows),
                        lifts=[r.lift for r in rows])
