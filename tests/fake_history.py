"""A fake Exec API with months of session history, for the backfill tests.

The demo's simulated workspace (:class:`exporter.sim.SimulatedExecAPI`) answers the
summary endpoint, the participants table and the member lists from one seeded session
log (90 days of past sessions) honouring every filter, and it enforces rolling minute
and day limits with real 429s. This subclass records every request with the status it
got, can skew one summary field behind the client's back, and answers "what would the
API say for this query" in-process (:meth:`HistoryAPI.expected`), without using up
quota, so a test can compare what Prometheus stored with the API's own answer.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from typing import Any

from fakeapi import SummarySkews

from exporter.sim import APIRequest, APIResponse, SimulatedExecAPI
from exporter.sim.endpoints import route


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
        self.skews = SummarySkews()

    def set_summary_skew(self, scenario: str, field: str | None, delta: float = 0.0,
                         when: dict[str, str] | None = None) -> None:
        """Skew one summary field of ``scenario`` (see :class:`fakeapi.SummarySkews`);
        ``field=None`` clears."""
        self.skews.set(scenario, field, delta, when)

    def handle(self, request: APIRequest) -> APIResponse:
        """The simulation's answer (skewed where asked), recorded with its status."""
        response = super().handle(request)
        kind, scenario = route(request.segments) or ("list", None)
        if kind != "summary":
            kind = kind if kind in ("participants", "members") else "list"
            scenario = None
        elif response.status == 200:
            assert scenario is not None
            response = APIResponse.json(200, self.skews.apply(scenario, request.query,
                                                              json.loads(response.body)))
        with self._seen_lock:
            self.seen.append(Seen(request.path, scenario, dict(request.query), response.status,
                                  self.clock(), kind))
        return response

    def summaries(self) -> list[Seen]:
        """The summary requests received, in order."""
        return self.of_kind("summary")

    def of_kind(self, kind: str) -> list[Seen]:
        """The requests of one kind (summary, participants, members, list) received."""
        with self._seen_lock:
            return [s for s in self.seen if s.kind == kind]

    def expected(self, scenario: str, query: dict[str, str]) -> dict[str, Any]:
        """The summary body the API gives for ``query``, computed without a request."""
        response = self.summary(scenario, query)
        assert response.status == 200, response.body
        return self.skews.apply(scenario, query, json.loads(response.body))
