"""The simulated Exec API behind ``exec-exporter demo``.

:class:`SimulatedExecAPI` serves the demo workspace (:mod:`.demo_workspace`) over
real HTTP on loopback, so the demo exercises the exporter's real client, budget and
error handling rather than a shortcut, with the Exec rate limits (rolling minute
and rolling day). Its :class:`DemoWorld`:

* a seeded population of users (some of them ``@exec.com`` staff), in groups,
  with practice sessions spread over the past 90 days and new sessions
  arriving slowly as the clock moves, so every query filter genuinely works
  and counts only ever grow;
* every scenario is assigned to its audience with a due date; an assignment's
  status follows the simulated sessions (completed at silver or better, did
  not pass after five attempts below it, past due once the due date passes),
  so past-due assignments grow while the demo runs; skills' proficiency is
  computed from the sessions of the scenarios that train them;
* ``pricing-objection`` loses about 20 points of average best score shortly
  after ``drop_after`` seconds (a re-graded rubric that shows as everyone
  retakes it, so values only move with new sessions), so the score-drop
  alert has something to catch.
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from .analytics import ParticipantRow, participant_rows, rank_for
from .demo_workspace import (
    DEMO_GROUPS,
    DEMO_SCENARIOS,
    DROP_POINTS,
    DROP_RAMP_SECONDS,
    DROP_SCENARIO_SLUG,
    MAX_ATTEMPTS,
    NAMESPACE,
    PASS_SCORE,
    PROFICIENT_SCORE,
    SALES_TEAM_GROUP_ID,
    SCORED_AFTER,
    SKILL_CREATED,
    SKILLS,
    UNTRAINED_SKILL,
    DemoScenario,
    make_users,
)
from .endpoints import DAY, ExecAPI
from .world import Regrade, ScenarioListing, SessionLog, User, World

# Deliberately not in the real key format, so it can never be mistaken for a
# live key (nor trip a secret scanner).
DEMO_API_KEY = "exec_demo_key_not_secret"

_HISTORY_SECONDS = 90 * DAY
# New sessions stop arriving this long after the start: the cost of a summary
# grows with the number of sessions and must stay far below 10 ms.
_GROWTH_HORIZON = 14 * DAY
_SLOT_SECONDS = 60.0


@dataclass
class _Learner:
    """One user's skill on one scenario: attempt n scores about
    ``base + gain * (1 - 0.55**n)``."""

    base: float
    gain: float
    attempts: int = 0


class _ScenarioSim:
    """The session history of one scenario, extended lazily as time passes.

    Sessions are generated from one seeded random stream in time order into a
    :class:`SessionLog`. Not thread-safe: the caller holds the world's lock.
    """

    def __init__(self, scenario: DemoScenario, users: list[User], start: float,
                 rng: random.Random, regrade_at: float | None = None) -> None:
        self.scenario = scenario
        self.regrade_at = regrade_at
        self.retakes_planned = False
        self.users = users
        self.start = start
        self.rng = rng
        self.log = SessionLog()
        self.learners: dict[int, _Learner] = {}
        audience = set(scenario.audience)
        self.eligible = [i for i, u in enumerate(users)
                         if audience and (u.system or u.groups & audience)]
        self.newcomers: list[int] = []
        self.next_slot = 0
        if self.eligible:
            self._make_history()

    def _attempt(self, idx: int) -> tuple[float, float]:
        """The score and duration of user ``idx``'s next session."""
        learner = self.learners.get(idx)
        if learner is None:
            if self.users[idx].system:
                # Staff know the rubric: high scores, little to learn.
                learner = _Learner(base=self.rng.gauss(86, 4), gain=self.rng.uniform(2, 6))
            else:
                learner = _Learner(base=self.rng.gauss(self.scenario.first_score, 9),
                                   gain=self.rng.uniform(14, 32))
            self.learners[idx] = learner
        mean = learner.base + learner.gain * (1 - 0.55**learner.attempts)
        learner.attempts += 1
        score = float(round(min(100.0, max(0.0, self.rng.gauss(mean, 4)))))
        minutes = self.scenario.session_minutes * (0.5 if self.users[idx].system else 1.0)
        duration = float(round(max(60.0, self.rng.gauss(minutes * 60, 70))))
        return score, duration

    def _append(self, when: float, idx: int) -> None:
        self.log.append(when, self.users[idx].id, *self._attempt(idx))

    def _make_history(self) -> None:
        rng = self.rng
        participants = [i for i in self.eligible if rng.random() < 0.55]
        chosen = set(participants)
        self.newcomers = [i for i in self.eligible if i not in chosen]
        rng.shuffle(self.newcomers)
        planned: list[tuple[float, int]] = []
        for idx in participants:
            count = rng.choices((1, 2, 3, 4, 5, 6), weights=(16, 22, 22, 18, 12, 10))[0]
            planned += [(self.start - rng.uniform(0, _HISTORY_SECONDS), idx)
                        for _ in range(count)]
        for when, idx in sorted(planned):
            self._append(when, idx)

    def extend_to(self, now: float) -> None:
        """Generate the sessions that happen up to ``now`` (bounded by the horizon)."""
        rate = self.scenario.sessions_per_hour
        if rate <= 0 or not self.eligible:
            return
        probability = min(1.0, rate * _SLOT_SECONDS / 3600.0)
        last_slot = int(min(now - self.start, _GROWTH_HORIZON) // _SLOT_SECONDS)
        participants = sorted(self.learners)
        while self.next_slot <= last_slot:
            slot = self.next_slot
            self.next_slot += 1
            self._plan_retakes(slot)
            when = self.start + (slot + self.rng.random()) * _SLOT_SECONDS
            if self.rng.random() >= probability:
                continue
            if self.newcomers and (not participants or self.rng.random() < 0.25):
                idx = self.newcomers.pop()
                participants.append(idx)
            else:
                idx = self.rng.choice(participants)
            self._append(when, idx)

    def _plan_retakes(self, slot: int) -> None:
        """In the slot of the re-grade, draw and log every participant's retake at once
        (a session later than "now" does not count yet): the history stays the same
        whatever the request timing."""
        if (self.regrade_at is None or self.retakes_planned
                or self.start + (slot + 1) * _SLOT_SECONDS <= self.regrade_at):
            return
        self.retakes_planned = True
        planned = sorted((self.regrade_at + self.rng.uniform(0, DROP_RAMP_SECONDS), idx)
                         for idx in sorted(self.learners))
        best: dict[str, float] = {}
        for user_id, score in zip(self.log.users, self.log.scores, strict=True):
            best[user_id] = max(best.get(user_id, 0.0), score)
        for when, idx in planned:
            score, duration = self._attempt(idx)
            user_id = self.users[idx].id
            # A retake under the stricter rubric does not beat the user's best: the
            # average falls by the full DROP_POINTS (a newcomer's first try might).
            self.log.append(when, user_id, min(score, best.get(user_id, score)), duration)


class DemoWorld(World):
    """The demo workspace over time: sessions are generated as the clock reaches them.

    The simulation starts at ``start``; ``pricing-objection`` is re-graded at
    ``drop_at``: the API averages each participant's *best* score, so a few bad new
    sessions could never pull it down; every participant retakes it within
    DROP_RAMP_SECONDS instead, and each user's scores fall by DROP_POINTS from their
    first session under the new rubric.
    """

    def __init__(self, start: float, seed: int = 7, drop_at: float | None = None) -> None:
        super().__init__()
        rng = random.Random(seed)
        self._user_list = make_users(rng)
        self.set_users(self._user_list)
        self.set_items("groups", [g.as_json() for g in DEMO_GROUPS])
        self._scenarios = [
            ScenarioListing(s.as_json(), s.archived, s.visibility, frozenset(s.collection_ids),
                            frozenset(s.skill_ids)) for s in DEMO_SCENARIOS]
        self._sims: dict[str, _ScenarioSim] = {}
        self._due_dates = _due_dates(self._user_list, start, random.Random(seed + 1))
        for n, scenario in enumerate(DEMO_SCENARIOS):
            # One stream per scenario: adding a scenario does not reshuffle the others.
            regrade_at = drop_at if scenario.slug == DROP_SCENARIO_SLUG else None
            sim = _ScenarioSim(scenario, self._user_list, start,
                               random.Random(seed * 1000 + n), regrade_at)
            self._sims[scenario.slug] = self._sims[scenario.id] = sim
            if regrade_at is not None:
                self.regrades[scenario.slug] = self.regrades[scenario.id] = Regrade(
                    regrade_at, DROP_POINTS)

    def session_log(self, scenario: str, now: float) -> SessionLog | None:
        """The sessions of a scenario (by slug or id) up to ``now``."""
        with self.lock:
            sim = self._sims.get(scenario)
            if sim is None:
                return None
            sim.extend_to(now)
            return sim.log

    def _practice(self, scenario: DemoScenario, now: float) -> dict[str, ParticipantRow]:
        """User id -> their sessions of ``scenario`` so far (scores as logged)."""
        log = self.session_log(scenario.slug, now)
        assert log is not None
        return {row.user_id: row for row in participant_rows(log, log.span(None, now))}

    def skills(self, now: float) -> list[dict[str, Any]]:
        """The skills, alphabetical by name; proficiency from the sessions so far."""
        with self.lock:
            practice = {s.slug: self._practice(s, now) for s in DEMO_SCENARIOS}
        skills = [(sid, name, slug) for sid, (name, slug) in SKILLS.items()]
        return [{"id": sid, "name": name, "slug": slug,
                 "description": f"{name} in customer conversations.",
                 "created_at": SKILL_CREATED,
                 "proficiency_summary": _proficiency(
                     [practice[s.slug] for s in DEMO_SCENARIOS if sid in s.skill_ids])}
                for sid, name, slug in sorted([*skills, UNTRAINED_SKILL], key=lambda s: s[1])]

    def assignments(self, now: float) -> list[dict[str, Any]]:
        """Every member (staff practise, but are not assigned) of every live scenario's
        audience, with a status that follows their sessions."""
        rows = []
        for scenario in DEMO_SCENARIOS:
            if scenario.archived:
                continue
            with self.lock:
                practice = self._practice(scenario, now)
            for idx in self._sims[scenario.slug].eligible:
                user = self._user_list[idx]
                if not user.system:
                    rows.append(_assignment_json(scenario, user, practice.get(user.id),
                                                 self._due_dates[(scenario.slug, idx)], now))
        return rows


class SimulatedExecAPI(ExecAPI):
    """The simulated Exec API of ``exec-exporter demo``, on loopback.

    Serves the :class:`DemoWorld` with the Exec rate limits (rolling minute and day).
    The simulation starts at ``clock()`` when constructed, and ``pricing-objection``
    drops about 20 points ``drop_after`` seconds later.
    """

    def __init__(self, api_key: str = DEMO_API_KEY, host: str = "127.0.0.1", port: int = 0,
                 requests_per_minute: int = 60, requests_per_day: int = 86_400,
                 clock: Callable[[], float] = time.time, seed: int = 7,
                 drop_after: float = 600.0) -> None:
        self.start_time = clock()
        self.drop_at = self.start_time + drop_after
        world = DemoWorld(self.start_time, seed, self.drop_at)
        super().__init__(world, api_key, host, port, requests_per_minute, requests_per_day,
                         clock)


def _due_dates(users: Sequence[User], start: float,
               rng: random.Random) -> dict[tuple[str, int], float]:
    """A due date per (scenario, user): from three weeks ago to five weeks ahead, and a
    few within the demo's first hour, so past-due assignments grow while it runs."""
    return {(scenario.slug, idx): start + (rng.uniform(60, 3600) if rng.random() < 0.08
                                           else rng.uniform(-21 * DAY, 35 * DAY))
            for scenario in DEMO_SCENARIOS for idx in range(len(users))}


def _assignment_json(scenario: DemoScenario, user: User, practice: ParticipantRow | None,
                     due: float, now: float) -> dict[str, Any]:
    """An assignment whose status follows the sessions: completed at silver or better,
    did not pass after five attempts below it, past due once ``due`` passes."""
    attempts, best = (practice.sessions, practice.best) if practice else (0, None)
    if best is not None and best >= PASS_SCORE:
        status = "completed"
    elif attempts >= MAX_ATTEMPTS:
        status = "did_not_pass"
    else:
        status = "past_due" if now > due else "in_progress" if attempts else "not_started"
    return {
        "id": "a" + uuid.uuid5(NAMESPACE, f"{scenario.slug}/{user.id}").hex[:11],
        "user": user.as_json(),
        "scenario": {"id": scenario.id, "name": scenario.name, "slug": scenario.slug},
        "status": status,
        "due_date": datetime.fromtimestamp(due, UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "best_score": best,
        "best_rank": rank_for(best) if best is not None else None,
        "attempt_count": attempts,
        "attempt_min": 1,
        "attempt_max": MAX_ATTEMPTS,
        "rank_min": "silver",
        "program": None,
        "created_at": scenario.created_at,
    }


def _proficiency(practice: Sequence[Mapping[str, ParticipantRow]]) -> dict[str, Any]:
    """A SkillProficiencySummary over the users who practised the skill's scenarios:
    scored after three sessions, proficient at 75 or more (their best scores' mean)."""
    sessions: dict[str, int] = {}
    bests: dict[str, list[float]] = {}
    for rows in practice:
        for user_id, row in rows.items():
            sessions[user_id] = sessions.get(user_id, 0) + row.sessions
            bests.setdefault(user_id, []).append(row.best)
    scored = [sum(bests[u]) / len(bests[u]) for u in sessions if sessions[u] >= SCORED_AFTER]
    return {
        "participant_count": len(sessions),
        "scored_participant_count": len(scored),
        "pct_proficient_plus": (round(100 * sum(s >= PROFICIENT_SCORE for s in scored)
                                      / len(scored)) if scored else None),
        "avg_score": round(sum(scored) / len(scored), 1) if scored else None,
    }


def demo_config(base_url: str) -> dict[str, Any]:
    """The built-in configuration of ``exec-exporter demo``, as the raw dict a
    YAML file would give (the key is passed separately, never in the config)."""
    return {
        "api": {
            "base_url": base_url,
            "timeout": "5s",
            "rate_limit": {
                "requests_per_minute": 60,
                "requests_per_day": 86400,
                "reserve": 0.1,
            },
        },
        "refresh_interval": "30s",
        "scenarios": [{"id": s.slug, "name": s.name} for s in DEMO_SCENARIOS if not s.archived],
        "cohorts": [
            {"name": "all"},
            {"name": "sales", "group_ids": [SALES_TEAM_GROUP_ID], "exclude_system_users": True},
            {"name": "last-7d", "window": "7d"},
        ],
        # Every minute, so the dashboard's new rows fill and move while you watch.
        "skills": {"interval": "1m"},
        "assignments": {"interval": "1m"},
    }
