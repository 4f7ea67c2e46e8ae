"""The simulated Exec API's endpoints (all ``GET`` below ``/rest/v1``), answering from a
:class:`~.world.World`: the bearer key is checked (401), the request counted against
the rolling minute and day limits (429 with ``retry_after``), then answered."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

from .analytics import SORT_COLUMNS, ParticipantRow, participant_rows, rows_summary
from .loopback import APIRequest, APIResponse, LoopbackAPIServer
from .protocol import (
    UNAUTHORIZED,
    Refused,
    RollingLimiter,
    bearer_ok,
    error_response,
    one_of,
    paginate,
    parse_bool,
    query_value,
    split_list,
)
from .world import World, matching_sessions

DAY = 86_400.0
ASSIGNMENT_STATUSES = ("not_started", "in_progress", "completed", "past_due", "did_not_pass")


def route(segments: list[str] | None) -> tuple[str, str | None] | None:
    """The endpoint a path's segments name (an :class:`ExecAPI` method) and the scenario
    in it, or None for an unknown path."""
    match segments:
        case ["scenarios", "assignments"] | ["scenarios"] | ["skills"]:
            return segments[-1], None
        case ["scenarios", scenario, "analytics", ("summary" | "participants") as kind]:
            return kind, scenario
        case ["workspace", ("members" | "groups") as kind]:
            return kind, None
    return None


class ExecAPI(LoopbackAPIServer):
    """The Exec API simulated over a :class:`World`, on loopback.

    ``requests_per_minute``/``requests_per_day`` of None leave that limit out.
    Time comes from ``clock`` (epoch seconds), so tests can move it.
    """

    def __init__(self, world: World, api_key: str, host: str = "127.0.0.1", port: int = 0,
                 requests_per_minute: int | None = None, requests_per_day: int | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        super().__init__(host, port)
        self.world = world
        self.api_key = api_key
        self.clock = clock
        self._limiter = RollingLimiter([
            (window, limit) for window, limit in ((60.0, requests_per_minute),
                                                  (DAY, requests_per_day)) if limit is not None])
        self.request_count = 0  # every request received, whatever its answer

    def handle(self, request: APIRequest) -> APIResponse:
        """Authenticate, rate-limit and answer one request."""
        with self.world.lock:
            self.request_count += 1
        if not bearer_ok(request, self.api_key):
            return error_response(*UNAUTHORIZED)
        with self.world.lock:
            retry_after = self._limiter.acquire(self.clock())
        if retry_after is not None:
            return error_response(429, "rate_limit_error", "rate_limit_exceeded",
                                  f"Rate limit exceeded. Retry after {retry_after} seconds.",
                                  retry_after=retry_after,
                                  headers={"Retry-After": str(retry_after)})
        if request.method != "GET":
            return error_response(405, "invalid_request", "method_not_allowed",
                                  "Method not allowed")
        found = route(request.segments)
        if found is None:
            return error_response(404, "not_found", "not_found", f"Not found: {request.path}")
        kind, scenario = found
        endpoint = getattr(self, kind)
        args = (request.query,) if scenario is None else (scenario, request.query)

        def respond() -> APIResponse:
            try:
                response: APIResponse = endpoint(*args)
                return response
            except Refused as refusal:
                return refusal.response

        return self.answer(request, kind, scenario, respond)

    def answer(self, request: APIRequest, kind: str, scenario: str | None,
               respond: Callable[[], APIResponse]) -> APIResponse:
        """Answer a routed request (a hook for fakes that alter answers)."""
        return respond()

    def summary(self, scenario: str, query: Mapping[str, str]) -> APIResponse:
        """GET /scenarios/{id}/analytics/summary."""
        return APIResponse.json(200, rows_summary(self._rows(scenario, query)))

    def participants(self, scenario: str, query: Mapping[str, str]) -> APIResponse:
        """GET /scenarios/{id}/analytics/participants: the rows behind the summary of
        the same filters, sorted (default ``-best_score``, ties by user id) and paged."""
        rows = self._rows(scenario, query)
        sorting = query_value(query, "sorting", one_of(*SORT_COLUMNS, *(
            f"-{c}" for c in SORT_COLUMNS)), "-best_score")
        rows.sort(key=lambda r: r.user_id)
        rows.sort(key=lambda r: getattr(r, SORT_COLUMNS[sorting.removeprefix("-")]),
                  reverse=sorting.startswith("-"))
        users = {u.id: u.as_json() for u in self.world.users()}
        unknown = {"email": None, "first_name": None, "last_name": None}
        return paginate([row.as_json(users.get(row.user_id) or {"id": row.user_id, **unknown})
                         for row in rows], query)

    def _rows(self, scenario: str, query: Mapping[str, str]) -> list[ParticipantRow]:
        """The participant rows of ``scenario`` under the query's filters (an unknown
        scenario refused before a bad filter)."""
        with self.world.lock:
            now = self.clock()
            log = self.world.session_log(scenario, now)
            if log is None:
                raise Refused(error_response(404, "not_found", "scenario_not_found",
                                             f"Scenario not found: {scenario}"))
            matching = matching_sessions(query, log, now, self.world.users())
            return participant_rows(log, matching, self.world.regrades.get(scenario))

    def members(self, query: Mapping[str, str]) -> APIResponse:
        """GET /workspace/members, optionally only the members of ``group_ids``."""
        groups = split_list(query.get("group_ids"))
        return paginate([u.as_member_json() for u in self.world.listed_members()
                         if not groups or u.groups & groups], query)

    def groups(self, query: Mapping[str, str]) -> APIResponse:
        """GET /workspace/groups."""
        return paginate(self.world.groups(), query)

    def scenarios(self, query: Mapping[str, str]) -> APIResponse:
        """GET /scenarios with ``include_archived``, ``visibility``, ``collection_ids``,
        ``skill_ids`` and ``include=skills``."""
        archived = query_value(query, "include_archived", parse_bool, False)
        visibility = query_value(query, "visibility", one_of("private", "workspace"), None)
        collections = split_list(query.get("collection_ids"))
        skills = split_list(query.get("skill_ids"))
        hidden = () if "skills" in split_list(query.get("include")) else ("skills",)
        return paginate([
            _without(s.item, hidden) for s in self.world.scenarios()
            if (archived or not s.archived) and visibility in (None, s.visibility)
            and (not collections or collections & s.collection_ids)
            and (not skills or skills & s.skill_ids)], query)

    def skills(self, query: Mapping[str, str]) -> APIResponse:
        """GET /skills; each skill's ``proficiency_summary`` with ``include=proficiency``."""
        hidden = () if "proficiency" in split_list(query.get("include")) else (
            "proficiency_summary",)
        return paginate([_without(item, hidden) for item in self.world.skills(self.clock())],
                        query)

    def assignments(self, query: Mapping[str, str]) -> APIResponse:
        """GET /scenarios/assignments with the ``scenario_ids`` and ``status`` filters."""
        ids = split_list(query.get("scenario_ids"))
        statuses = split_list(query_value(query, "status",
                                          one_of(*ASSIGNMENT_STATUSES, many=True), ""))
        return paginate([item for item in self.world.assignments(self.clock())
                         if (not ids or (item.get("scenario") or {}).get("id") in ids)
                         and (not statuses or item.get("status") in statuses)], query)


def _without(item: dict[str, object], keys: tuple[str, ...]) -> dict[str, object]:
    return {k: v for k, v in item.items() if k not in keys} if keys else item
