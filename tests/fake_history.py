"""A fake Exec API with months of session history, for the backfill tests.

The demo's simulated workspace (:class:`exporter.demo.SimulatedExecAPI`)
already answers the summary endpoint from a seeded session log (90 days of
past sessions) honouring ``start_date``, ``end_date`` and every filter, and it
enforces rolling minute and day limits with real 429s. This subclass records
every request with the status it got, answers the two endpoints the derived
cohorts need from the *same* session log (``GET
/scenarios/{id}/analytics/participants`` and ``GET /workspace/members``, within
the same rate limits), can skew one summary field behind the client's back,
and answers "what would the API say for this query" in-process
(:meth:`HistoryAPI.expected`), without using up quota, so a test can compare
what Prometheus stored with the API's own answer.
"""

from __future__ import annotations

import bisect
import json
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from exporter.demo import (
    APIRequest,
    APIResponse,
    SimulatedExecAPI,
    bad_request_response,
    not_found_response,
    paginate,
    parse_bool,
    parse_datetime,
    rank_for,
    split_list,
)


@dataclass(frozen=True)
class Seen:
    """One request as the fake received it, and the status it answered."""

    path: str
    scenario: str | None  # set for summary requests
    query: dict[str, str]
    status: int
    time: float
    kind: str = "summary"  # summary | participants | members | list


class HistoryAPI(SimulatedExecAPI):
    """:class:`SimulatedExecAPI` that records requests, serves participants and member
    lists from the same session log, and can answer summary queries directly.

    The demo's rubric change (``pricing-objection`` re-graded ``drop_after`` seconds
    after start) is pushed out of reach: the participants table here knows nothing
    of it, and the tests do not use that scenario.
    """

    def __init__(self, **kw: Any) -> None:
        kw.setdefault("drop_after", 10 * 365 * 86400.0)
        super().__init__(**kw)
        self.seen: list[Seen] = []
        self._seen_lock = threading.Lock()
        # scenario -> (the query items a skewed request has, field, delta)
        self._skew: dict[str, list[tuple[dict[str, str], str, float]]] = {}

    def set_summary_skew(self, scenario: str, field: str | None, delta: float = 0.0,
                         when: dict[str, str] | None = None) -> None:
        """Change the summary's formula for one field of ``scenario`` behind the client's
        back: ``field`` (a summary body key) gets ``delta`` added, in every answer whose
        query has the items of ``when`` (one cohort's filters, say; default every
        query). The participants table is unchanged. ``field=None`` clears."""
        with self._seen_lock:
            if field is None:
                self._skew.pop(scenario, None)
            else:
                self._skew.setdefault(scenario, []).append((dict(when or {}), field, delta))

    def handle(self, request: APIRequest) -> APIResponse:
        # The demo authenticates, counts the rate limits and answers what it knows; the
        # two derived-cohort endpoints it does not know come back as its generic
        # "Not found: <path>" 404, only after auth and limits admitted them.
        response = super().handle(request)
        kind, scenario = "list", None
        match request.segments:
            case ["scenarios", sid, "analytics", "summary"]:
                kind, scenario = "summary", sid
                if response.status == 200:
                    response = self._skewed(sid, request.query, response)
            case ["scenarios", sid, "analytics", "participants"]:
                kind = "participants"
                if _generic_404(response):
                    with self._lock:
                        response = self._participants(sid, request.query, self.clock())
            case ["workspace", "members"]:
                kind = "members"
                if _generic_404(response):
                    with self._lock:
                        response = self._members(request.query)
        with self._seen_lock:
            self.seen.append(Seen(request.path, scenario, dict(request.query), response.status,
                                  self.clock(), kind))
        return response

    def _skewed(self, scenario: str, query: Mapping[str, str],
                response: APIResponse) -> APIResponse:
        with self._seen_lock:
            skew = [(name, delta) for when, name, delta in self._skew.get(scenario, [])
                    if all(query.get(k) == v for k, v in when.items())]
        if not skew:
            return response
        assert isinstance(response.body, bytes)
        body = json.loads(response.body)
        for name, delta in skew:
            if isinstance(body.get(name), int | float):
                body[name] = round(body[name] + delta, 1)
        return APIResponse.json(200, body)

    def _participants(self, scenario: str, query: Mapping[str, str],
                      now: float) -> APIResponse:
        """One page of the participants table, from the session log the summary uses."""
        sim = self._sims.get(scenario)
        if sim is None:
            return not_found_response(f"Scenario not found: {scenario}", "scenario_not_found")
        try:
            start = parse_datetime(query["start_date"]) if query.get("start_date") else None
            end = parse_datetime(query["end_date"]) if query.get("end_date") else None
            exclude = parse_bool(query.get("exclude_system_users") or "false")
        except ValueError:
            return bad_request_response("Invalid filter")
        allowed = self._select_users(query, exclude)
        sim.extend_to(now)
        upper = now if end is None else min(now, end)
        lo = 0 if start is None else bisect.bisect_left(sim.times, start)
        hi = bisect.bisect_right(sim.times, upper)
        per_user: dict[int, list[tuple[float, float]]] = {}
        for i in range(lo, hi):
            u = sim.user_idx[i]
            if allowed is None or u in allowed:
                per_user.setdefault(u, []).append((sim.scores[i], sim.durations[i]))
        rows = []
        for u, log in per_user.items():
            user = self._users[u]
            first, best = log[0][0], max(s for s, _ in log)
            rows.append({
                "user": {"id": user.id, "email": user.email, "first_name": "F",
                         "last_name": "L"},
                "session_count": len(log),
                "first_score": first, "first_rank": rank_for(first),
                "best_score": best, "best_rank": rank_for(best),
                "lift_percentage": best - first,
                "total_duration_seconds": sum(d for _, d in log),
            })
        # The endpoint's default order: -best_score (ties by user: stable pages).
        rows.sort(key=lambda r: (-r["best_score"], r["user"]["id"]))
        return paginate(rows, query)

    def _members(self, query: Mapping[str, str]) -> APIResponse:
        groups = set(split_list(query.get("group_ids")))
        items = [{"id": u.id, "email": u.email, "first_name": "F", "last_name": "L",
                  "role": "member", "created_at": "2024-01-15T10:30:00Z"}
                 for u in sorted(self._users, key=lambda u: u.id)
                 if not groups or u.group_ids & groups]
        return paginate(items, query)

    def summaries(self) -> list[Seen]:
        """The summary requests received, in order."""
        with self._seen_lock:
            return [s for s in self.seen if s.kind == "summary"]

    def of_kind(self, kind: str) -> list[Seen]:
        """The requests of one kind (summary, participants, members, list) received."""
        with self._seen_lock:
            return [s for s in self.seen if s.kind == kind]

    def expected(self, scenario: str, query: dict[str, str]) -> dict[str, Any]:
        """The summary body the API gives for ``query``, computed without a request."""
        with self._lock:
            response = self._summary(scenario, query, self.clock())
        assert response.status == 200, response.body
        response = self._skewed(scenario, query, response)
        assert isinstance(response.body, bytes)
        body: dict[str, Any] = json.loads(response.body)
        return body


def _generic_404(response: APIResponse) -> bool:
    return response.status == 404 and isinstance(response.body, bytes) \
        and b"Not found: " in response.body
