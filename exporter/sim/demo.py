"""The simulated Exec API behind ``exec-exporter demo``: the demo workspace over time.

:class:`SimulatedExecAPI` serves the :class:`DemoWorld` over real HTTP on loopback
with the Exec rate limits, so the demo exercises the exporter's real client, budget
and error handling. The workspace is seeded (every run and every test sees the same):

* users (some of them ``@exec.com`` staff) in groups, with practice sessions over
  the past 90 days and new ones arriving as the clock moves, so every query filter
  genuinely works and counts only ever grow;
* every live scenario is assigned to its audience with a due date, the status
  following the sessions (so past-due assignments grow while the demo runs); skills'
  proficiency is computed from the sessions of the scenarios that train them;
* ``pricing-objection`` loses about 20 points of average best score shortly after
  ``drop_after`` seconds (:class:`DemoWorld`), so the score-drop alert fires.
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NamedTuple

from .analytics import ParticipantRow, participant_rows, rank_for
from .endpoints import DAY, ExecAPI
from .world import Regrade, ScenarioListing, SessionLog, User, World


class DemoGroup(NamedTuple):
    """A workspace group of the demo workspace (``_asdict()`` is its JSON)."""

    id: str
    name: str
    created_at: str


SALES_TEAM_GROUP_ID = "g1h2i3j4k5l6"
_CS_GROUP_ID = "g7h8i9j0k1l2"
_SDR_GROUP_ID = "g3m4n5o6p7q8"
_LEADERSHIP_GROUP_ID = "g9r0s1t2u3v4"

DEMO_GROUPS: tuple[DemoGroup, ...] = (
    DemoGroup(SALES_TEAM_GROUP_ID, "Sales Team", "2024-02-01T09:00:00Z"),
    DemoGroup(_CS_GROUP_ID, "Customer Success", "2024-02-15T14:30:00Z"),
    DemoGroup(_SDR_GROUP_ID, "SDR Team", "2024-03-04T08:15:00Z"),
    DemoGroup(_LEADERSHIP_GROUP_ID, "Sales Leadership", "2024-04-22T16:45:00Z"),
)

_COLLECTION_FOUNDATIONS = "c1o2l3l4e5c6"
_COLLECTION_CS = "c7o8l9l0e1c2"
SKILLS = {
    "s1k2i3l4l5s6": ("Discovery", "discovery"),
    "s7k8i9l0l1s2": ("Objection Handling", "objection-handling"),
    "s3k4i5l6l7s8": ("Negotiation", "negotiation"),
    "s9k0i1l2l3s4": ("Executive Presence", "executive-presence"),
    # No scenario trains it: its proficiency shows what "nobody scored" looks like.
    "s5k6i7l8l9s0": ("Active Listening", "active-listening"),
}
SKILL_CREATED = "2024-01-10T09:00:00Z"
# Assignments: passing needs silver; five attempts below it do not pass.
PASS_SCORE = 75.0
MAX_ATTEMPTS = 5
PROFICIENT_SCORE = 75.0  # a scored user is "proficient or better" from here
SCORED_AFTER = 3  # observations a user needs for a proficiency score

NAMESPACE = uuid.UUID("5b0f7a52-3c1e-4d6b-9a0e-6e1f2d3c4b5a")


@dataclass(frozen=True)
class DemoScenario:
    """A scenario of the demo workspace and the knobs of its simulation."""

    slug: str
    name: str
    description: str
    difficulty: str
    visibility: str = "workspace"
    archived: bool = False
    collection_ids: tuple[str, ...] = ()
    skill_ids: tuple[str, ...] = ()
    audience: tuple[str, ...] = ()  # groups whose members practise it
    first_score: float = 60.0  # mean score of a first attempt
    session_minutes: float = 6.0  # mean session duration
    sessions_per_hour: float = 6.0  # arrival rate of new sessions (0: frozen)
    created_at: str = "2024-05-01T10:00:00Z"
    updated_at: str = "2025-01-15T12:00:00Z"

    @property
    def id(self) -> str:
        """A stable UUID: the API accepts it as well as the slug."""
        return str(uuid.uuid5(NAMESPACE, self.slug))

    def as_json(self) -> dict[str, Any]:
        """The scenario as GET /scenarios lists it (OpenAPI ``Scenario``), ``skills``
        included."""
        return {
            "id": self.id, "name": self.name, "description": self.description,
            "slug": self.slug, "url": f"https://demo.app.exec.com/scenarios/{self.slug}",
            "difficulty": self.difficulty, "context": None, "objective": None,
            "language": "English", "visibility": self.visibility,
            "owner": {"id": "u7v8w9x0y1z2", "email": "jane.smith@acme.com",
                      "first_name": "Jane", "last_name": "Smith"},
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "skills": [{"id": sid, "name": SKILLS[sid][0], "slug": SKILLS[sid][1]}
                       for sid in self.skill_ids],
        }


DROP_SCENARIO_SLUG = "pricing-objection"
DROP_POINTS = 20.0
# After drop_after, every participant of the drop scenario retakes it within this many
# seconds; a user's scores are re-graded with their first session under the new rubric.
DROP_RAMP_SECONDS = 90.0

DEMO_SCENARIOS: tuple[DemoScenario, ...] = (
    DemoScenario("discovery-call-it-director", "Discovery Call with IT Director",
                 "Practice handling objections from skeptical IT buyers", "medium",
                 collection_ids=(_COLLECTION_FOUNDATIONS,), skill_ids=("s1k2i3l4l5s6",),
                 audience=(SALES_TEAM_GROUP_ID, _SDR_GROUP_ID), first_score=62.0,
                 session_minutes=6.0, created_at="2024-01-15T10:30:00Z",
                 updated_at="2024-02-01T14:20:00Z"),
    DemoScenario("renewal-negotiation", "Renewal Negotiation",
                 "Defend a renewal against a procurement-led discount push", "hard",
                 collection_ids=(_COLLECTION_CS,), skill_ids=("s3k4i5l6l7s8", "s7k8i9l0l1s2"),
                 audience=(_CS_GROUP_ID, SALES_TEAM_GROUP_ID), first_score=55.0,
                 session_minutes=8.0, sessions_per_hour=4.0),
    DemoScenario("cold-call-gatekeeper", "Cold Call: Getting Past the Gatekeeper",
                 "Earn a transfer to the decision maker in under two minutes", "easy",
                 collection_ids=(_COLLECTION_FOUNDATIONS,), skill_ids=("s7k8i9l0l1s2",),
                 audience=(_SDR_GROUP_ID, SALES_TEAM_GROUP_ID), first_score=66.0,
                 session_minutes=3.5, sessions_per_hour=9.0),
    DemoScenario(DROP_SCENARIO_SLUG, "Handling a Pricing Objection",
                 "Hold value when the buyer says the price is too high", "medium",
                 collection_ids=(_COLLECTION_FOUNDATIONS,),
                 skill_ids=("s7k8i9l0l1s2", "s3k4i5l6l7s8"),
                 audience=(SALES_TEAM_GROUP_ID, _CS_GROUP_ID), first_score=64.0,
                 session_minutes=5.0),
    DemoScenario("executive-qbr-readout", "Executive QBR Readout",
                 "Present quarterly results to a skeptical CFO", "very_hard",
                 visibility="private", collection_ids=(_COLLECTION_CS,),
                 skill_ids=("s9k0i1l2l3s4",), audience=(_CS_GROUP_ID, _LEADERSHIP_GROUP_ID),
                 first_score=52.0, session_minutes=11.0, sessions_per_hour=3.0),
    # Archived and never practised: listed only with include_archived=true,
    # and its summary shows what "nobody practised" looks like (nulls).
    DemoScenario("legacy-product-pitch", "Legacy Product Pitch (2023)",
                 "Retired pitch for the 2023 product line", "easy", archived=True,
                 skill_ids=("s1k2i3l4l5s6",), sessions_per_hour=0.0,
                 created_at="2023-03-01T09:00:00Z", updated_at="2023-11-30T17:00:00Z"),
)

_FIRST_NAMES = (
    "Ava", "Ben", "Chloe", "Dan", "Elena", "Farid", "Grace", "Hugo", "Isla", "Jon",
    "Kira", "Liam", "Maya", "Noah", "Olga", "Priya", "Quinn", "Raj", "Sofia", "Tom",
    "Uma", "Victor", "Wen", "Ximena", "Yusuf", "Zoe", "Marco", "Lena", "Omar", "Hana",
)  # fmt: skip
_LAST_NAMES = (
    "Adams", "Baker", "Chen", "Diaz", "Evans", "Fischer", "Garcia", "Haddad", "Ito",
    "Johnson", "Kowalski", "Lopez", "Moreau", "Nguyen", "Okafor", "Patel", "Rossi",
    "Schmidt", "Tanaka", "Walsh",
)  # fmt: skip
_SYSTEM_EMAILS = (
    "demo.admin@exec.com", "qa.bot@exec.com", "solutions.engineer@exec.com", "support@exec.com",
)  # fmt: skip
_WORKSPACE_USERS = 90


def make_users(rng: random.Random) -> list[User]:
    """The demo's 90 members and 4 Exec staff accounts, drawn from ``rng``."""
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
    names = rng.sample([(f, la) for f in _FIRST_NAMES for la in _LAST_NAMES], _WORKSPACE_USERS)
    users: list[User] = []
    leaders = 0
    for first, last in names:
        teams = (SALES_TEAM_GROUP_ID, _SDR_GROUP_ID, _CS_GROUP_ID)
        primary = rng.choices(teams, weights=(45, 30, 25))[0]
        member_of = {primary}
        if rng.random() < 0.15:
            member_of.add(rng.choice(teams))
        if primary == SALES_TEAM_GROUP_ID and leaders < 6 and rng.random() < 0.3:
            member_of.add(_LEADERSHIP_GROUP_ID)
            leaders += 1
        uid = "u" + "".join(rng.choice(alphabet) for _ in range(11))
        users.append(User(uid, f"{first}.{last}@acme.com".lower(), frozenset(member_of)))
    for i, email in enumerate(_SYSTEM_EMAILS):
        uid = "u" + "".join(rng.choice(alphabet) for _ in range(11))
        # Two staff accounts sit in Sales Team: excluding system users changes that cohort.
        groups = frozenset({SALES_TEAM_GROUP_ID}) if i < 2 else frozenset()
        users.append(User(uid, email, groups))
    return users


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
        best = {r.user_id: r.best for r in participant_rows(self.log, range(len(self.log.times)))}
        for when, idx in planned:
            score, duration = self._attempt(idx)
            user_id = self.users[idx].id
            # A retake under the stricter rubric does not beat the user's best: the
            # average falls by the full DROP_POINTS (a newcomer's first try might).
            self.log.append(when, user_id, min(score, best.get(user_id, score)), duration)


class DemoWorld(World):
    """The demo workspace from ``start``, sessions generated as the clock reaches them.

    ``pricing-objection`` is re-graded at ``drop_at``: the API averages each
    participant's *best* score, which a few bad sessions could never pull down, so
    every participant retakes it within DROP_RAMP_SECONDS and each user's scores fall
    by DROP_POINTS from their first session under the new rubric.
    """

    def __init__(self, start: float, seed: int = 7, drop_at: float | None = None) -> None:
        super().__init__()
        rng = random.Random(seed)
        self._user_list = make_users(rng)
        self.set_users(self._user_list)
        self.set_items("groups", [g._asdict() for g in DEMO_GROUPS])
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
        return [{"id": sid, "name": name, "slug": slug,
                 "description": f"{name} in customer conversations.",
                 "created_at": SKILL_CREATED,
                 "proficiency_summary": _proficiency(
                     [practice[s.slug] for s in DEMO_SCENARIOS if sid in s.skill_ids])}
                for sid, (name, slug) in sorted(SKILLS.items(), key=lambda item: item[1])]

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
    """The :class:`DemoWorld` served with the Exec rate limits, on loopback; it starts
    at ``clock()`` and ``pricing-objection`` drops ``drop_after`` seconds later."""

    def __init__(self, api_key: str = DEMO_API_KEY, host: str = "127.0.0.1", port: int = 0,
                 requests_per_minute: int = 60, requests_per_day: int = 86_400,
                 clock: Callable[[], float] = time.time, seed: int = 7,
                 drop_after: float = 600.0) -> None:
        start = clock()
        super().__init__(DemoWorld(start, seed, start + drop_after), api_key, host, port,
                         requests_per_minute, requests_per_day, clock)


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
        "api": {"base_url": base_url, "timeout": "5s", "rate_limit": {
            "requests_per_minute": 60, "requests_per_day": 86400, "reserve": 0.1}},
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
