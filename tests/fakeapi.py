"""A fake Exec API for the test suite: real HTTP on loopback, driven by tests.

Tests say what the summary endpoint returns per scenario
(:meth:`FakeExecAPI.set_summary`), inject faults (:meth:`FakeExecAPI.set_fault`),
serve scenario and group lists, and read back every request received
(:attr:`FakeExecAPI.requests`). It is the simulated Exec API
(:class:`exporter.sim.ExecAPI` over a :class:`exporter.sim.World`: the session log,
the filters, paging and the envelopes are the simulation's), plus what only
tests need: canned and skewed summaries, faults, constant traffic, a request
record. :meth:`FakeExecAPI.stop` is prompt even while a "hang" or "huge_body"
response is in progress.

Faults (``set_fault`` / ``set_list_fault``):

========================  ====================================================
``"500"``                 500 with an ``api_error`` envelope
``"503_html"``            503 with an HTML body (``text/html``)
``"invalid_json"``        200, a truncated JSON document
``"json_array"``          200, a JSON array instead of an object
``"wrong_types"``         200, ``participant_count: "forty"`` (lists: ``data`` not a list)
``"negative_count"``      200, ``participant_count: -3``
``"score_250"``           200, ``average_best_score: 250``
``"rank_platinum"``       200, ``average_best_rank: "platinum"``
``"hang"``                waits ``seconds`` (default 30, or until stop()), then
                          answers normally
``"huge_body"``           200, ``size`` bytes (default 64 MiB) streamed with a
                          correct Content-Length
``"trickle_headers"``     the normal answer, its status line and headers sent
                          one byte every ``interval`` s (default 0.5), then the
                          body at once
``"trickle_body"``        the normal answer, status line and headers at once,
                          then the body one byte every ``interval`` s
``"429_error_object"``    429, ``retry_after`` (default 30) inside ``error``
``"429_top_level"``       429, ``retry_after`` at the top level of the body
``"429_header"``          429, ``retry_after`` only as a ``Retry-After`` header
``"401"``                 ``authentication_error/invalid_api_key``
``"403"``                 ``authorization_error/workspace_inactive``
``"404"``                 ``not_found/scenario_not_found``
``"400"``                 ``invalid_request/invalid_parameter``
========================  ====================================================

Every fault also takes ``times=N``: it applies to the next N matching
requests only, then clears itself (a 429 then a success, for instance).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

from exporter.sim import APIRequest, APIResponse, ExecAPI, HeaderDict, Session, User, World
from exporter.sim.endpoints import route
from exporter.sim.loopback import RequestHandler
from exporter.sim.protocol import FORBIDDEN, UNAUTHORIZED, error_response

__all__ = ["FAULTS", "LIST_FAULTS", "FakeExecAPI", "RecordedRequest", "Session", "User",
           "summary_body"]

HUGE_BODY_SIZE = 64 * 1024 * 1024
_CHUNK = 64 * 1024

SUMMARY_FAULTS = frozenset({"wrong_types", "negative_count", "score_250", "rank_platinum"})
LIST_FAULTS = frozenset({
    "500", "503_html", "invalid_json", "json_array", "wrong_types", "hang", "huge_body",
    "trickle_headers", "trickle_body", "429_error_object", "429_top_level", "429_header",
    "401", "403", "404", "400", "short_page",
})  # fmt: skip
FAULTS = LIST_FAULTS | SUMMARY_FAULTS
# The lists set_list_fault takes.
_LISTS = frozenset({"scenarios", "groups", "skills", "assignments", "members", "participants"})


def summary_body(**overrides: Any) -> dict[str, Any]:
    """The OpenAPI example summary (45 participants, 74.2 silver, ...),
    with ``overrides`` applied (a key set to ... is removed)."""
    body: dict[str, Any] = {
        "participant_count": 45,
        "total_sessions": 128,
        "average_best_score": 74.2,
        "average_best_rank": "silver",
        "average_lift_percentage": 18.5,
        "total_practice_minutes": 742,
        "average_session_duration_seconds": 348,
        "score_distribution": [
            {"rank": "gold", "count": 12, "percentage": 26.7},
            {"rank": "silver", "count": 18, "percentage": 40},
            {"rank": "bronze", "count": 10, "percentage": 22.2},
            {"rank": "unranked", "count": 5, "percentage": 11.1},
        ],
    }
    for key, value in overrides.items():
        if value is ...:
            body.pop(key, None)
        else:
            body[key] = value
    return body


class SummarySkews:
    """Summary fields whose formula changed behind the client's back: a skew adds its
    ``delta`` to one field of a scenario's summaries whose query has the items of its
    ``when`` (default: every query). The participants table is unchanged."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._skews: dict[str, list[tuple[dict[str, str], str, float]]] = {}

    def set(self, scenario: str, field: str | None, delta: float = 0.0,
            when: dict[str, str] | None = None) -> None:
        """Skew ``field`` of ``scenario`` by ``delta``; ``field=None`` clears its skews."""
        with self._lock:
            if field is None:
                self._skews.pop(scenario, None)
            else:
                self._skews.setdefault(scenario, []).append((dict(when or {}), field, delta))

    def apply(self, scenario: str, query: dict[str, str], body: dict[str, Any]
              ) -> dict[str, Any]:
        """``body`` (a summary answered to ``query``) with the skews that apply to it."""
        with self._lock:
            skews = [(name, delta) for when, name, delta in self._skews.get(scenario, [])
                     if all(query.get(k) == v for k, v in when.items())]
        for name, delta in skews:
            if isinstance(body.get(name), int | float):
                body[name] = round(body[name] + delta, 1)
        return body


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the fake received it."""

    method: str
    path: str  # percent-decoded, without the query string
    query: dict[str, str]  # last value wins for a repeated parameter
    headers: dict[str, str]  # as sent; lookups are case-insensitive
    time: float  # from the fake's clock (time.time by default)
    scenario_id: str | None = None  # set for summary requests


@dataclass
class _Fault:
    name: str
    params: dict[str, Any] = field(default_factory=dict)
    remaining: int | None = None  # None: until cleared


@dataclass
class _StreamedResponse(APIResponse):
    """An answer whose body is generated chunk by chunk (never held whole)."""

    chunks: Iterable[bytes] = ()
    content_length: int = 0


@dataclass
class _TrickledResponse(APIResponse):
    """An answer written a byte at a time: the head, the body, or both."""

    head_interval: float = 0.0
    body_interval: float = 0.0


class _FaultHandler(RequestHandler):
    """The simulation's handler, plus what only tests need: streamed bodies (64 MiB and
    more, never held whole) and the byte-by-byte writes of the trickle faults."""

    def write_response(self, response: APIResponse) -> None:
        stopping = self.server.api.stopping
        if isinstance(response, _StreamedResponse):
            self.send_response(response.status)
            self.send_header("Content-Type", response.content_type)
            self.send_header("Content-Length", str(response.content_length))
            self.end_headers()
            for chunk in response.chunks:
                if stopping.is_set():
                    break
                self.wfile.write(chunk)
            return
        if not isinstance(response, _TrickledResponse):
            super().write_response(response)
            return
        phrase = HTTPStatus(response.status).phrase
        head = [f"HTTP/1.1 {response.status} {phrase}",
                f"Content-Type: {response.content_type}",
                f"Content-Length: {len(response.body)}"]
        head += [f"{name}: {value}" for name, value in response.headers.items()]
        raw_head = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1")
        # Whatever the client does, this connection carries no second request.
        self.close_connection = True
        for part, interval in ((raw_head, response.head_interval),
                               (response.body, response.body_interval)):
            if interval <= 0:
                self.wfile.write(part)
                continue
            for i in range(len(part)):
                self.wfile.write(part[i : i + 1])  # wfile is unbuffered
                if stopping.wait(interval):  # stop() must not wait for the trickle
                    return


def _huge_body(size: int, stopping: threading.Event) -> Iterator[bytes]:
    """``size`` bytes of valid JSON, generated chunk by chunk (never held whole)."""
    head, tail = b'{"padding": "', b'"}'
    yield head
    left = size - len(head) - len(tail)
    filler = b"x" * _CHUNK
    while left > 0 and not stopping.is_set():
        n = min(left, _CHUNK)
        yield filler[:n]
        left -= n
    yield tail


class FakeExecAPI(ExecAPI):
    """A fake Exec API with fault injection, on loopback.

    The summary endpoint answers what :meth:`set_summary` set for that scenario
    id (whatever the query, so for every cohort); otherwise, for a scenario with a
    session log (:meth:`set_sessions`), the simulation's answer; it 404s other
    scenarios. Every request is recorded, then the bearer key is checked (401 when
    wrong), then faults apply (a scenario's own fault before the global one). No
    rate limit: tests inject 429s as faults.
    """

    handler_class = _FaultHandler

    def __init__(self, api_key: str, host: str = "127.0.0.1", port: int = 0,
                 clock: Callable[[], float] = time.time) -> None:
        super().__init__(World(), api_key, host, port, clock=clock)
        self._lock = threading.Lock()
        self.requests: list[RecordedRequest] = []
        self._summaries: dict[str, tuple[int, dict[str, Any] | list[Any] | str | bytes]] = {}
        self._faults: dict[str | None, _Fault] = {}
        self._list_faults: dict[str, _Fault] = {}
        self.skews = SummarySkews()
        self._shape: dict[str, tuple[frozenset[str], frozenset[str]]] = {}
        # Constant traffic: (scenario, users in turn, clock mover, seconds a request takes).
        self._traffic: tuple[str, list[str], Callable[[float], None], float] | None = None
        self._traffic_count = 0

    # --- test controls --------------------------------------------------

    def set_summary(
        self, scenario_id: str, body: dict[str, Any] | list[Any] | str | bytes, status: int = 200
    ) -> None:
        """What the summary endpoint returns for ``scenario_id`` (every cohort).

        A dict or list is sent as JSON; a str or bytes is sent as it is (still
        labelled ``application/json``)."""
        with self._lock:
            self._summaries[scenario_id] = (status, body)

    def set_fault(self, scenario_id: str | None, fault: str | None, **kw: Any) -> None:
        """Inject ``fault`` for one scenario, or every scenario when None.

        ``fault=None`` clears: the scenario's fault, or with ``scenario_id=None``
        every fault. Keywords: ``seconds`` (hang), ``retry_after`` (429s),
        ``size`` (huge_body), ``interval`` (trickles: seconds between bytes),
        ``times`` (apply to the next N requests only)."""
        with self._lock:
            if fault is None:
                if scenario_id is None:
                    self._faults.clear()
                else:
                    self._faults.pop(scenario_id, None)
                return
            self._faults[scenario_id] = _make_fault(fault, FAULTS, kw)

    def set_scenarios(self, items: list[dict[str, Any]]) -> None:
        """Items served by GET /scenarios as given (their ``skills`` only with
        ``include=skills``), paginated. ``visibility``, ``include_archived`` (items with
        a truthy ``archived`` key are hidden by default), ``collection_ids`` and
        ``skill_ids`` (matched against the items' optional ``collection_ids``/
        ``skill_ids``/``skills`` keys) filter them."""
        self.world.set_items("scenarios", items)

    def set_groups(self, items: list[dict[str, Any]]) -> None:
        """Items served by GET /workspace/groups, paginated."""
        self.world.set_items("groups", items)

    def set_skills(self, items: list[dict[str, Any]]) -> None:
        """Items served by GET /skills, paginated; their ``proficiency_summary`` is
        sent only with ``include=proficiency``."""
        self.world.set_items("skills", items)

    def set_assignments(self, items: list[dict[str, Any]]) -> None:
        """Items served by GET /scenarios/assignments, paginated, filtered by
        ``scenario_ids`` (against ``item["scenario"]["id"]``) and ``status``."""
        self.world.set_items("assignments", items)

    def set_users(self, users: list[User]) -> None:
        """The workspace members (GET /workspace/members, by id, filtered by
        ``group_ids``)."""
        self.world.set_users(sorted(users, key=lambda u: u.id))

    def set_sessions(self, scenario_id: str, sessions: list[Session]) -> None:
        """A session log for ``scenario_id``: from now on its summary (unless
        :meth:`set_summary` set one) and its participants table are both computed from
        these sessions, with the summary endpoint's filters."""
        self.world.set_sessions(scenario_id, sessions)

    def add_sessions(self, scenario_id: str, sessions: list[Session]) -> None:
        """New sessions arrive for ``scenario_id``."""
        self.world.add_sessions(scenario_id, sessions)

    def set_summary_skew(self, scenario_id: str, field: str | None, delta: float = 0.0,
                         when: dict[str, str] | None = None) -> None:
        """Change the summary's formula for one field behind the exporter's back (see
        :class:`SummarySkews`); ``field=None`` clears the scenario's skews."""
        self.skews.set(scenario_id, field, delta, when)

    def set_summary_shape(self, scenario_id: str, drop: tuple[str, ...] = (),
                          whole: tuple[str, ...] = ()) -> None:
        """How the summary endpoint shapes its answers for ``scenario_id``: body keys it
        leaves out (``drop``: a summary without ``score_distribution``, which no field
        is marked required) and keys it gives as whole numbers (``whole``: the OpenAPI
        example's ``average_session_duration_seconds: 348``)."""
        with self._lock:
            self._shape[scenario_id] = (frozenset(drop), frozenset(whole))

    def set_traffic(self, scenario_id: str | None, user_ids: list[str] | None = None,
                    advance: Callable[[float], None] | None = None,
                    seconds: float = 1.0) -> None:
        """Constant traffic: every request takes ``seconds`` (``advance`` moves the clock
        the fake shares with the exporter) and during each one a new session of
        ``scenario_id``, by the next of ``user_ids`` in turn, is completed at the moment
        the request is answered. ``scenario_id=None`` stops it."""
        with self._lock:
            if scenario_id is None or not user_ids or advance is None:
                self._traffic = None
            else:
                self._traffic = (scenario_id, list(user_ids), advance, seconds)

    def freeze_members(self, frozen: bool) -> None:
        """Member lists that lag the groups (eventual consistency): while frozen, GET
        /workspace/members answers each group's members as they were when frozen, while
        summaries and participants follow the live groups."""
        self.world.freeze_members(frozen)

    def move_user(self, user_id: str, groups: frozenset[str]) -> None:
        """``user_id`` now belongs to ``groups`` (and no other group)."""
        self.world.move_user(user_id, groups)

    def set_list_fault(self, which: str, fault: str | None, **kw: Any) -> None:
        """Inject (or clear, with None) a fault on ``"scenarios"``, ``"groups"``,
        ``"skills"``, ``"assignments"``, ``"members"`` (GET /workspace/members) or
        ``"participants"`` (every scenario's participants table, its summaries
        unharmed)."""
        if which not in _LISTS:
            raise ValueError(f"which must be one of {sorted(_LISTS)}, not {which!r}")
        with self._lock:
            if fault is None:
                self._list_faults.pop(which, None)
            else:
                self._list_faults[which] = _make_fault(fault, LIST_FAULTS, kw)

    # --- what was received -----------------------------------------------

    def requests_to(self, suffix: str) -> list[RecordedRequest]:
        """The requests whose path ends with ``suffix`` ("/summary", "/participants",
        "/workspace/members")."""
        with self._lock:
            return [r for r in self.requests if r.path.endswith(suffix)]

    def requests_for(self, scenario_id: str) -> list[RecordedRequest]:
        """The summary requests received for ``scenario_id``."""
        with self._lock:
            return [r for r in self.requests if r.scenario_id == scenario_id]

    def list_requests(self, which: str) -> list[RecordedRequest]:
        """The requests received for the ``"scenarios"`` or ``"groups"`` list."""
        return self.requests_to({"scenarios": "/scenarios", "groups": "/workspace/groups"}[which])

    def listing_requests(self, which: str) -> list[RecordedRequest]:
        """The requests received for ``"skills"`` or ``"assignments"``."""
        return self.requests_to({"skills": "/skills",
                                 "assignments": "/scenarios/assignments"}[which])

    def clear_requests(self) -> None:
        """Forget the recorded requests."""
        with self._lock:
            self.requests.clear()

    # --- serving --------------------------------------------------------

    def handle(self, request: APIRequest) -> APIResponse:
        """Record, let the request's time pass, then answer as the simulation does
        (authenticate, route), faults applied."""
        kind, scenario = route(request.segments) or ("", None)
        with self._lock:
            self.requests.append(RecordedRequest(
                request.method, request.path, dict(request.query), HeaderDict(request.headers),
                self.clock(), scenario if kind == "summary" else None))
        self._pass_time()
        return super().handle(request)

    def answer(self, request: APIRequest, kind: str, scenario: str | None,
               respond: Callable[[], APIResponse]) -> APIResponse:
        """The simulation's answer, unless a fault or a canned summary replaces it."""
        if kind == "summary":
            assert scenario is not None
            fault = self._take_fault(self._faults, scenario, None)
            return self._apply(fault, lambda: self._summary(scenario, request.query, respond),
                               scenario, summary=True)
        if kind == "participants":
            assert scenario is not None
            fault = (self._take_fault(self._list_faults, "participants")
                     or self._take_fault(self._faults, scenario, None))
            return self._apply(fault, respond, scenario)
        return self._apply(self._take_fault(self._list_faults, kind), respond, kind)

    def _pass_time(self) -> None:
        """Constant traffic: the request takes its time, a session completes meanwhile."""
        with self._lock:
            traffic = self._traffic
            self._traffic_count += 1
            count = self._traffic_count
        if traffic is None:
            return
        scenario_id, users, advance, seconds = traffic
        advance(seconds)
        self.add_sessions(scenario_id, [Session(users[count % len(users)], self.clock(),
                                                float(40 + count * 7 % 60), 120.0)])

    def _take_fault(self, faults: dict[Any, _Fault], *keys: str | None) -> _Fault | None:
        """The first fault set under ``keys``, counting down a ``times`` limit."""
        with self._lock:
            for key in keys:
                fault = faults.get(key)
                if fault is None:
                    continue
                if fault.remaining is not None:
                    fault.remaining -= 1
                    if fault.remaining <= 0:
                        del faults[key]
                return fault
        return None

    def _summary(self, scenario_id: str, query: dict[str, str],
                 respond: Callable[[], APIResponse]) -> APIResponse:
        """The canned summary, else the simulation's with this scenario's skew and shape."""
        with self._lock:
            entry = self._summaries.get(scenario_id)
        if entry is not None:
            status, body = entry
            if isinstance(body, bytes):
                return APIResponse(status, body)
            if isinstance(body, str):
                return APIResponse(status, body.encode())
            return APIResponse.json(status, body)
        answer = respond()
        if answer.status != 200:
            return answer
        body = json.loads(answer.body)
        body = self.skews.apply(scenario_id, query, body)
        with self._lock:
            drop, whole = self._shape.get(scenario_id, (frozenset(), frozenset()))
        for name in drop:
            body.pop(name, None)
        for name in whole:
            if isinstance(body.get(name), int | float):
                body[name] = round(body[name])
        return APIResponse.json(200, body)

    def _apply(
        self,
        fault: _Fault | None,
        normal: Callable[[], APIResponse],
        subject: str,
        summary: bool = False,
    ) -> APIResponse:
        """The response for ``fault``; ``normal()`` builds the unfaulted one."""
        if fault is None:
            return normal()
        name, kw = fault.name, fault.params
        retry_after = kw.get("retry_after", 30)
        match name:
            case "500":
                return error_response(500, "api_error", "internal_error", "Internal server error")
            case "503_html":
                html = b"<html><body><h1>503 Service Temporarily Unavailable</h1></body></html>"
                return APIResponse(503, html, content_type="text/html")
            case "invalid_json":
                return APIResponse(200, b'{"participant_count": 45, "total_sessions": ')
            case "json_array":
                return APIResponse.json(200, [summary_body()])
            case "wrong_types" if summary:
                return APIResponse.json(200, summary_body(participant_count="forty"))
            case "wrong_types":
                return APIResponse.json(200, {"data": "nope", "pagination": None})
            case "negative_count":
                return APIResponse.json(200, summary_body(participant_count=-3))
            case "score_250":
                return APIResponse.json(200, summary_body(average_best_score=250))
            case "rank_platinum":
                return APIResponse.json(200, summary_body(average_best_rank="platinum"))
            case "hang":
                # Wait on the stop event, not sleep(): stop() must not wait 30 s.
                self.stopping.wait(float(kw.get("seconds", 30)))
                return normal()
            case "huge_body":
                size = int(kw.get("size", HUGE_BODY_SIZE))
                return _StreamedResponse(200, chunks=_huge_body(size, self.stopping),
                                         content_length=size)
            case "trickle_headers" | "trickle_body":
                answer = normal()
                assert isinstance(answer.body, bytes)
                interval = float(kw.get("interval", 0.5))
                on_head = name == "trickle_headers"
                return _TrickledResponse(answer.status, answer.body, answer.headers,
                                         content_type=answer.content_type,
                                         head_interval=interval if on_head else 0.0,
                                         body_interval=0.0 if on_head else interval)
            case "429_error_object" | "429_header":
                in_error = name == "429_error_object"
                return error_response(
                    429, "rate_limit_error", "rate_limit_exceeded", "Rate limit exceeded",
                    retry_after=retry_after if in_error else None,
                    headers=None if in_error else {"Retry-After": str(retry_after)})
            case "429_top_level":
                envelope = json.loads(error_response(
                    429, "rate_limit_error", "rate_limit_exceeded", "Rate limit exceeded").body)
                return APIResponse.json(429, {**envelope, "retry_after": retry_after})
            case "401":
                return error_response(*UNAUTHORIZED)
            case "403":
                return error_response(*FORBIDDEN)
            case "404":
                return error_response(404, "not_found", "scenario_not_found",
                                      f"Scenario not found: {subject}")
            case "400":
                return error_response(400, "invalid_request", "invalid_parameter",
                                      "Invalid request parameters")
            case "short_page":
                # An eventually consistent list: the page lost its last item after the
                # total was counted (its pagination still says the full size).
                answer = normal()
                assert isinstance(answer.body, bytes)
                body = json.loads(answer.body)
                body["data"] = body["data"][:-1]
                return APIResponse.json(answer.status, body)
        raise AssertionError(f"unhandled fault {name!r}")


def _make_fault(name: str, allowed: frozenset[str], kw: dict[str, Any]) -> _Fault:
    if name not in allowed:
        raise ValueError(f"unknown fault {name!r}; one of {sorted(allowed)}")
    params = dict(kw)
    times = params.pop("times", None)
    unknown = set(params) - {"seconds", "retry_after", "size", "interval"}
    if unknown:
        raise ValueError(f"unknown fault options {sorted(unknown)}")
    if times is not None and times < 1:
        raise ValueError("times must be at least 1")
    return _Fault(name, params, times)
