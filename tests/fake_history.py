"""A fake Exec API with months of session history, for the backfill tests.

The demo's simulated workspace (:class:`exporter.sim.SimulatedExecAPI`)
answers the summary endpoint, the participants table and the member lists
from one seeded session log (90 days of past sessions) honouring ``start_date``,
``end_date`` and every filter, and it enforces rolling minute and day limits
with real 429s. This subclass records every request with the status it got,
can skew one summary field behind the client's back, and answers "what would
the API say for this query" in-process (:meth:`HistoryAPI.expected`), without
using up quota, so a test can compare what Prometheus stored with the API's own
answer.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from exporter.sim import APIRequest, APIResponse, SimulatedExecAPI


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
    """:class:`SimulatedExecAPI` that records requests, can skew summaries and can
    answer summary queries directly.

    The demo's rubric change (``pricing-objection`` re-graded ``drop_after`` seconds
    after start) is pushed out of reach: the tests do not use that scenario.
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
        """The simulation's answer (skewed where asked), recorded with its status."""
        response = super().handle(request)
        kind, scenario = "list", None
        match request.segments:
            case ["scenarios", sid, "analytics", "summary"]:
                kind, scenario = "summary", sid
                if response.status == 200:
                    response = self._skewed(sid, request.query, response)
            case ["scenarios", _, "analytics", "participants"]:
                kind = "participants"
            case ["workspace", "members"]:
                kind = "members"
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
        response = self.summary(scenario, query)
        assert response.status == 200, response.body
        response = self._skewed(scenario, query, response)
        assert isinstance(response.body, bytes)
        body: dict[str, Any] = json.loads(response.body)
        return body

