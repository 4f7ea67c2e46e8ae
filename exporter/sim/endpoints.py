"""The simulated Exec API's endpoints, answering from a :class:`~.world.World`.

Served (all ``GET`` below ``/rest/v1``): the scenario analytics summary and
participants table, the scenario list, workspace groups and members, skills
(with proficiency) and scenario assignments. Every request is checked for the
bearer key (401), then counted against the rolling minute and day limits (429
with ``retry_after``), then answered; list answers are paged.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping

from .analytics import SORT_COLUMNS, ParticipantRow, participant_rows, rows_summary
from .loopback import APIRequest, APIResponse, LoopbackAPIServer
from .protocol import (
    RollingLimiter,
    bad_request_response,
    bearer_ok,
    error_response,
    not_found_response,
    paginate,
    parse_bool,
    rate_limited_response,
    split_list,
    unauthorized_response,
)
from .world import FilterError, SessionFilter, World

DAY = 86_400.0
ASSIGNMENT_STATUSES = ("not_started", "in_progress", "completed", "past_due", "did_not_pass")

# What a request asks for: the endpoint's kind ("summary", "participants", "members",
# "scenarios", "groups", "skills", "assignments"), the scenario in its path if any,
# and how to answer it.
Endpoint = tuple[str, str | None, Callable[[], APIResponse]]


class ExecAPI(LoopbackAPIServer):
    """The Exec API simulated over a :class:`World`, on loopback.

    ``requests_per_minute``/``requests_per_day`` of None leave that limit out.
    Time comes from ``clock`` (epoch seconds), so tests can move it.
    """

    def __init__(
        self,
        world: World,
        api_key: str,
        host: str = "127.0.0.1",
        port: int = 0,
        requests_per_minute: int | None = None,
        requests_per_day: int | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(host, port)
        self.world = world
        self.api_key = api_key
        self.clock = clock
        limits = [(window, limit) for window, limit in
                  ((60.0, requests_per_minute), (DAY, requests_per_day)) if limit is not None]
        self._limiter = RollingLimiter(limits)
        self._count_lock = threading.Lock()
        self._request_count = 0

    @property
    def request_count(self) -> int:
        """Every request received, whatever its answer."""
        with self._count_lock:
            return self._request_count

    def handle(self, request: APIRequest) -> APIResponse:
        """Authenticate, rate-limit and answer one request."""
        with self._count_lock:
            self._request_count += 1
        if not bearer_ok(request, self.api_key):
            return unauthorized_response()
        with self.world.lock:
            retry_after = self._limiter.acquire(self.clock())
        if retry_after is not None:
            return rate_limited_response(retry_after)
        if request.method != "GET":
            return error_response(405, "invalid_request", "method_not_allowed",
                                  "Method not allowed")
        endpoint = self.endpoint(request)
        if endpoint is None:
            return not_found_response(f"Not found: {request.path}")
        return self.answer(*endpoint)

    def answer(self, kind: str, scenario: str | None,
               respond: Callable[[], APIResponse]) -> APIResponse:
        """Answer a routed request (a hook for fakes that alter answers)."""
        return respond()

    def endpoint(self, request: APIRequest) -> Endpoint | None:
        """The endpoint ``request`` asks for, or None for an unknown path."""
        query = request.query
        match request.segments:
            case ["scenarios", "assignments"]:
                return "assignments", None, lambda: self.assignments(query)
            case ["scenarios", sid, "analytics", "summary"]:
                return "summary", sid, lambda: self.summary(sid, query)
            case ["scenarios", sid, "analytics", "participants"]:
                return "participants", sid, lambda: self.participants(sid, query)
            case ["scenarios"]:
                return "scenarios", None, lambda: self.scenarios(query)
            case ["workspace", "members"]:
                return "members", None, lambda: self.members(query)
            case ["workspace", "groups"]:
                return "groups", None, lambda: paginate(self.world.groups(), query)
            case ["skills"]:
                return "skills", None, lambda: self.skills(query)
        return None

    # --- analytics ------------------------------------------------------------------

    def summary(self, scenario: str, query: Mapping[str, str]) -> APIResponse:
        """GET /scenarios/{id}/analytics/summary."""
        rows = self._rows(scenario, query)
        if isinstance(rows, APIResponse):
            return rows
        return APIResponse.json(200, rows_summary(rows))

    def participants(self, scenario: str, query: Mapping[str, str]) -> APIResponse:
        """GET /scenarios/{id}/analytics/participants: the rows behind the summary of
        the same filters, sorted (default ``-best_score``, ties by user id) and paged."""
        rows = self._rows(scenario, query)
        if isinstance(rows, APIResponse):
            return rows
        sorting = query.get("sorting") or "-best_score"
        column = SORT_COLUMNS.get(sorting.removeprefix("-"))
        if column is None:
            return bad_request_response(f"Invalid sorting: {sorting}")
        rows.sort(key=lambda r: r.user_id)
        rows.sort(key=lambda r: getattr(r, column), reverse=sorting.startswith("-"))
        world = self.world
        items = []
        for row in rows:
            user = world.user(row.user_id)
            nested = user.as_json() if user is not None else {
                "id": row.user_id, "email": None, "first_name": None, "last_name": None}
            items.append(row.as_json(nested))
        return paginate(items, query)

    def _rows(self, scenario: str, query: Mapping[str, str]
              ) -> list[ParticipantRow] | APIResponse:
        """The participant rows of ``scenario`` under the query's filters, or the error
        (an unknown scenario before a bad filter)."""
        world = self.world
        with world.lock:
            now = self.clock()
            log = world.session_log(scenario, now)
            if log is None:
                return not_found_response(f"Scenario not found: {scenario}",
                                          "scenario_not_found")
            try:
                selection = SessionFilter.from_query(query)
            except FilterError as exc:
                return bad_request_response(str(exc))
            matching = selection.sessions(log, now, world.users())
            return participant_rows(log, matching, world.regrade(scenario))

    # --- lists ------------------------------------------------------------------------

    def members(self, query: Mapping[str, str]) -> APIResponse:
        """GET /workspace/members, optionally only the members of ``group_ids``."""
        groups = set(split_list(query.get("group_ids")))
        items = [u.as_member_json() for u in self.world.listed_members()
                 if not groups or u.groups & groups]
        return paginate(items, query)

    def scenarios(self, query: Mapping[str, str]) -> APIResponse:
        """GET /scenarios with ``include_archived``, ``visibility``, ``collection_ids``,
        ``skill_ids`` and ``include=skills``."""
        try:
            include_archived = parse_bool(query.get("include_archived") or "false")
        except ValueError:
            return bad_request_response(f"Invalid include_archived: {query['include_archived']}")
        visibility = query.get("visibility") or None
        if visibility not in (None, "private", "workspace"):
            return bad_request_response(f"Invalid visibility: {visibility}")
        collections = set(split_list(query.get("collection_ids")))
        skills = set(split_list(query.get("skill_ids")))
        include_skills = "skills" in split_list(query.get("include"))
        kept = [
            s.with_skills if include_skills else s.item
            for s in self.world.scenarios()
            if (include_archived or not s.archived)
            and (visibility is None or s.visibility == visibility)
            and (not collections or collections & s.collection_ids)
            and (not skills or skills & s.skill_ids)
        ]
        return paginate(kept, query)

    def skills(self, query: Mapping[str, str]) -> APIResponse:
        """GET /skills; each skill's ``proficiency_summary`` with ``include=proficiency``."""
        proficiency = "proficiency" in split_list(query.get("include"))
        items = self.world.skills(self.clock(), proficiency)
        if not proficiency:
            items = [{k: v for k, v in item.items() if k != "proficiency_summary"}
                     for item in items]
        return paginate(items, query)

    def assignments(self, query: Mapping[str, str]) -> APIResponse:
        """GET /scenarios/assignments with the ``scenario_ids`` and ``status`` filters."""
        wanted_ids = frozenset(split_list(query.get("scenario_ids")))
        wanted_status = set(split_list(query.get("status")))
        unknown = wanted_status - set(ASSIGNMENT_STATUSES)
        if unknown:
            return bad_request_response(f"Invalid status: {','.join(sorted(unknown))}")
        items = [item for item in self.world.assignments(self.clock(), wanted_ids)
                 if (not wanted_ids or (item.get("scenario") or {}).get("id") in wanted_ids)
                 and (not wanted_status or item.get("status") in wanted_status)]
        return paginate(items, query)
