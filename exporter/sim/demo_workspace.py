"""The demo workspace's catalog: its groups, scenarios, skills and people.

What ``exec-exporter demo`` serves is fixed here (seeded, so every run and
every test sees the same workspace); how its members practise over time is
:mod:`exporter.sim.demo`.
"""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass
from typing import Any

from .world import User


@dataclass(frozen=True)
class DemoGroup:
    """A workspace group of the demo workspace."""

    id: str
    name: str
    created_at: str

    def as_json(self) -> dict[str, Any]:
        """The group as GET /workspace/groups lists it."""
        return {"id": self.id, "name": self.name, "created_at": self.created_at}


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
}

# A skill no scenario trains: its proficiency shows what "nobody scored" looks like.
UNTRAINED_SKILL = ("s5k6i7l8l9s0", "Active Listening", "active-listening")
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
            "id": self.id,
            "name": self.name,
            "description": self.description,
            "slug": self.slug,
            "url": f"https://demo.app.exec.com/scenarios/{self.slug}",
            "difficulty": self.difficulty,
            "context": None,
            "objective": None,
            "language": "English",
            "visibility": self.visibility,
            "owner": {
                "id": "u7v8w9x0y1z2",
                "email": "jane.smith@acme.com",
                "first_name": "Jane",
                "last_name": "Smith",
            },
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
        primary = rng.choices(
            (SALES_TEAM_GROUP_ID, _SDR_GROUP_ID, _CS_GROUP_ID), weights=(45, 30, 25)
        )[0]
        member_of = {primary}
        if rng.random() < 0.15:
            member_of.add(rng.choice((SALES_TEAM_GROUP_ID, _SDR_GROUP_ID, _CS_GROUP_ID)))
        if primary == SALES_TEAM_GROUP_ID and leaders < 6 and rng.random() < 0.3:
            member_of.add(_LEADERSHIP_GROUP_ID)
            leaders += 1
        uid = "u" + "".join(rng.choice(alphabet) for _ in range(11))
        users.append(User(uid, f"{first}.{last}@acme.com".lower(), frozenset(member_of)))
    for i, email in enumerate(_SYSTEM_EMAILS):
        uid = "u" + "".join(rng.choice(alphabet) for _ in range(11))
        # Two staff accounts sit in Sales Team, so excluding system users
        # visibly changes that cohort.
        groups = frozenset({SALES_TEAM_GROUP_ID}) if i < 2 else frozenset()
        users.append(User(uid, email, groups))
    return users
