"""The simulated workspace: users, groups, scenarios, a session log, skills, assignments.

A :class:`World` is what every simulated endpoint answers from. The analytics
endpoints read its session log through :func:`matching_sessions`, the one place the
summary's filters are given their meaning, taken from the API's documentation:

* ``user_ids`` and ``user_emails`` are unioned (a session matches either);
* ``group_ids`` keeps the sessions of members of any listed group, membership as it
  stands when the request is answered;
* ``exclude_system_users=true`` drops users whose email ends in ``@exec.com``;
* ``start_date`` and ``end_date`` bound the session time, both inclusive; a session
  after the world's "now" never counts.

Membership changes over time (:meth:`World.move_user`); the member list can lag the
groups (:meth:`World.freeze_members`), as an eventually consistent listing does.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .protocol import parse_bool, parse_datetime, query_value, split_list

SYSTEM_EMAIL_DOMAIN = "@exec.com"
MEMBER_SINCE = "2024-02-01T09:00:00Z"  # every simulated member joined then


@dataclass(frozen=True)
class User:
    """A workspace member and the groups they belong to now."""

    id: str
    email: str
    groups: frozenset[str] = frozenset()

    @property
    def system(self) -> bool:
        """Exec staff: what ``exclude_system_users`` drops."""
        return self.email.lower().endswith(SYSTEM_EMAIL_DOMAIN)

    def as_json(self) -> dict[str, Any]:
        """The user as the analytics and assignment rows nest it (names from the
        email's ``first.last@`` part)."""
        first, _, last = self.email.split("@")[0].partition(".")
        return {"id": self.id, "email": self.email, "first_name": first.capitalize(),
                "last_name": last.capitalize()}

    def as_member_json(self) -> dict[str, Any]:
        """A WorkspaceMember: the schema's flat shape, ``id`` being the user id."""
        return {**self.as_json(), "role": "staff" if self.system else "member",
                "created_at": MEMBER_SINCE}


@dataclass(frozen=True)
class Session:
    """One graded practice session."""

    user_id: str
    time: float  # epoch seconds, when it was completed
    score: float  # 0-100
    seconds: float  # its duration


@dataclass(frozen=True)
class Regrade:
    """A rubric change: from ``at``, every user with a session under the new rubric
    has all their scores shown ``points`` lower."""

    at: float
    points: float


@dataclass(frozen=True)
class ScenarioListing:
    """A scenario as GET /scenarios lists it (``skills`` shown only with
    ``include=skills``), and what that list's filters read."""

    item: dict[str, Any]  # the Scenario JSON
    archived: bool = False
    visibility: str | None = None
    collection_ids: frozenset[str] = frozenset()
    skill_ids: frozenset[str] = frozenset()

    @classmethod
    def of(cls, item: Mapping[str, Any]) -> ScenarioListing:
        """A listing of ``item``, its facets read from optional keys (``archived``,
        ``visibility``, ``collection_ids``, ``skill_ids``/``skills``)."""
        skills = {str(i) for i in item.get("skill_ids") or ()}
        skills |= {str(s.get("id")) for s in item.get("skills") or () if isinstance(s, dict)}
        return cls(dict(item), bool(item.get("archived")), item.get("visibility"),
                   frozenset(item.get("collection_ids") or ()), frozenset(skills))


class SessionLog:
    """One scenario's sessions in time order (parallel lists: cheap to scan)."""

    def __init__(self, sessions: Iterable[Session] = ()) -> None:
        self.times: list[float] = []
        self.users: list[str] = []
        self.scores: list[float] = []
        self.seconds: list[float] = []
        for session in sorted(sessions, key=lambda s: s.time):
            self.append(session.time, session.user_id, session.score, session.seconds)

    def append(self, when: float, user_id: str, score: float, seconds: float) -> None:
        """Log a session; one earlier than the last goes to its place in time."""
        at = bisect.bisect_right(self.times, when)
        self.times.insert(at, when)
        self.users.insert(at, user_id)
        self.scores.insert(at, score)
        self.seconds.insert(at, seconds)

    def span(self, start: float | None, end: float) -> range:
        """Indexes of the sessions with ``start <= time <= end``."""
        lo = 0 if start is None else bisect.bisect_left(self.times, start)
        return range(lo, bisect.bisect_right(self.times, end))


def matching_sessions(query: Mapping[str, str], log: SessionLog, now: float,
                      users: Iterable[User]) -> list[int]:
    """Indexes into ``log`` of the sessions the summary's filters in ``query`` keep, in
    time order; a bad value is refused with a 400 naming its parameter."""
    no_date: float | None = None
    start = query_value(query, "start_date", parse_datetime, no_date)
    end = query_value(query, "end_date", parse_datetime, no_date)
    exclude_system_users = query_value(query, "exclude_system_users", parse_bool, False)
    user_ids, group_ids = split_list(query.get("user_ids")), split_list(query.get("group_ids"))
    emails = {e.lower() for e in split_list(query.get("user_emails"))}
    users = list(users)
    allowed: set[str] | None = None  # None: everyone's sessions
    if user_ids or emails:
        # A user_ids entry counts even for a user the member list does not know.
        allowed = set(user_ids) | {u.id for u in users if u.email.lower() in emails}
    if group_ids:
        members = {u.id for u in users if u.groups & group_ids}
        allowed = members if allowed is None else allowed & members
    # An unknown user has no email, so is not staff.
    barred = {u.id for u in users if u.system} if exclude_system_users else set()
    span = log.span(start, now if end is None else min(now, end))
    if allowed is None and not barred:
        return list(span)
    who = log.users
    if allowed is None:
        return [i for i in span if who[i] not in barred]
    allowed -= barred
    return [i for i in span if who[i] in allowed]


class World:
    """A workspace held in memory; thread-safe through :attr:`lock`.

    Listed items are kept as their JSON; a world that computes them (the demo's)
    overrides the readers. :attr:`regrades` holds each scenario's rubric change.
    """

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.regrades: dict[str, Regrade] = {}
        self._users: dict[str, User] = {}
        self._frozen_members: list[User] | None = None
        self._logs: dict[str, SessionLog] = {}
        self._scenarios: list[ScenarioListing] = []
        self._lists: dict[str, list[dict[str, Any]]] = {
            "groups": [], "skills": [], "assignments": []}

    def set_users(self, users: Iterable[User]) -> None:
        """The workspace members, in the order the member list gives them."""
        with self.lock:
            self._users = {u.id: u for u in users}

    def users(self) -> Sequence[User]:
        """Every member, with their groups as they stand now."""
        with self.lock:
            return list(self._users.values())

    def move_user(self, user_id: str, groups: frozenset[str]) -> None:
        """``user_id`` now belongs to ``groups`` (and no other group)."""
        with self.lock:
            user = self._users[user_id]
            self._users[user_id] = User(user.id, user.email, frozenset(groups))

    def freeze_members(self, frozen: bool) -> None:
        """While frozen, the member list answers the members as they were when frozen
        (an eventually consistent list that lags); filters follow the live groups."""
        with self.lock:
            self._frozen_members = list(self._users.values()) if frozen else None

    def listed_members(self) -> Sequence[User]:
        """The members as the member list shows them (lagging while frozen)."""
        with self.lock:
            return list(self._users.values() if self._frozen_members is None
                        else self._frozen_members)

    def set_sessions(self, scenario: str, sessions: Iterable[Session]) -> None:
        """The session log of ``scenario`` (which now exists for the analytics)."""
        with self.lock:
            self._logs[scenario] = SessionLog(sessions)

    def add_sessions(self, scenario: str, sessions: Iterable[Session]) -> None:
        """New sessions of ``scenario``."""
        with self.lock:
            log = self._logs.setdefault(scenario, SessionLog())
            for s in sessions:
                log.append(s.time, s.user_id, s.score, s.seconds)

    def session_log(self, scenario: str, now: float) -> SessionLog | None:
        """The sessions of ``scenario`` up to ``now``, or None for an unknown one."""
        with self.lock:
            return self._logs.get(scenario)

    def set_items(self, which: str, items: Iterable[Mapping[str, Any]]) -> None:
        """The JSON items of a list: ``scenarios`` (see :meth:`ScenarioListing.of`),
        ``groups``, ``skills`` (with ``proficiency_summary``) or ``assignments``."""
        with self.lock:
            if which == "scenarios":
                self._scenarios = [ScenarioListing.of(item) for item in items]
            elif which in self._lists:
                self._lists[which] = [dict(item) for item in items]
            else:
                raise ValueError(f"unknown list {which!r}; one of {sorted(self._lists)}")

    def scenarios(self) -> list[ScenarioListing]:
        """Every scenario, archived ones too."""
        with self.lock:
            return list(self._scenarios)

    def groups(self) -> list[dict[str, Any]]:
        """The workspace groups."""
        with self.lock:
            return list(self._lists["groups"])

    def skills(self, now: float) -> list[dict[str, Any]]:
        """The skills at ``now``, each with its ``proficiency_summary``."""
        with self.lock:
            return list(self._lists["skills"])

    def assignments(self, now: float) -> list[dict[str, Any]]:
        """The assignments as they stand at ``now``."""
        with self.lock:
            return list(self._lists["assignments"])
