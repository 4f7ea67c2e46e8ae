"""A fake Exec API with months of session history, for the backfill tests.

The demo's simulated workspace (:class:`exporter.demo.SimulatedExecAPI`)
already answers the summary endpoint from a seeded session log (90 days of
past sessions) honouring ``start_date``, ``end_date`` and every filter, and it
enforces rolling minute and day limits with real 429s. This subclass records
every request with the status it got, and answers "what would the API say for
this query" in-process (:meth:`HistoryAPI.expected`), without using up quota,
so a test can compare what Prometheus stored with the API's own answer.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from typing import Any

from exporter.demo import APIRequest, APIResponse, SimulatedExecAPI


@dataclass(frozen=True)
class Seen:
    """One request as the fake received it, and the status it answered."""

    path: str
    scenario: str | None
    query: dict[str, str]
    status: int
    time: float


class HistoryAPI(SimulatedExecAPI):
    """:class:`SimulatedExecAPI` that records requests and can answer queries directly."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.seen: list[Seen] = []
        self._seen_lock = threading.Lock()

    def handle(self, request: APIRequest) -> APIResponse:
        response = super().handle(request)
        scenario = None
        match request.segments:
            case ["scenarios", sid, "analytics", "summary"]:
                scenario = sid
        with self._seen_lock:
            self.seen.append(Seen(request.path, scenario, dict(request.query), response.status,
                                  self.clock()))
        return response

    def summaries(self) -> list[Seen]:
        """The summary requests received, in order."""
        with self._seen_lock:
            return [s for s in self.seen if s.scenario is not None]

    def expected(self, scenario: str, query: dict[str, str]) -> dict[str, Any]:
        """The summary body the API gives for ``query``, computed without a request."""
        with self._lock:
            response = self._summary(scenario, query, self.clock())
        assert response.status == 200, response.body
        assert isinstance(response.body, bytes)
        body: dict[str, Any] = json.loads(response.body)
        return body
