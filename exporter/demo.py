"""The simulated Exec API behind ``exec-exporter demo``.

:class:`SimulatedExecAPI` serves the endpoints the exporter uses (the
scenario analytics summary and participants table, the scenario list, the
workspace group and member lists, the skills list with proficiency and the
scenario assignments) over real HTTP on
loopback, so the demo exercises the exporter's real client, budget and error
handling rather than a shortcut. It checks the bearer key,
enforces the Exec rate limits (rolling minute and rolling day) with the
documented 429 envelope, and answers from a simulated workspace:

* a seeded population of users (some of them ``@exec.com`` staff), in groups,
  with practice sessions spread over the past 90 days and new sessions
  arriving slowly as the clock moves, so every query filter genuinely works
  and counts only ever grow;
* the summary and the participants table (one row per user) are computed from
  the same rows, rounded as the documented endpoint rounds, so cohorts derived
  from a participants pull reproduce the summary and the exporter's planner
  can show them (``planner.mode: auto``);
* every scenario is assigned to its audience with a due date; an assignment's
  status follows the simulated sessions (completed at silver or better, did
  not pass after five attempts below it, past due once the due date passes),
  so past-due assignments grow while the demo runs; skills' proficiency is
  computed from the sessions of the scenarios that train them;
* ``pricing-objection`` loses about 20 points of average best score shortly
  after ``drop_after`` seconds (a re-graded rubric that shows as everyone
  retakes it, so values only move with new sessions), so the score-drop
  alert has something to catch.

The HTTP plumbing (:class:`LoopbackAPIServer`, :class:`APIRequest`,
:class:`APIResponse` and the small response helpers) is shared with the test
suite's fault-injecting fake (``tests/fakeapi.py``).
"""

from __future__ import annotations

import bisect
import contextlib
import hmac
import ipaddress
import json
import logging
import math
import random
import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Self
from urllib.parse import parse_qs, unquote, urlsplit

from .client import RANKS  # the rank names live in one place

__all__ = [
    "API_PREFIX",
    "DEMO_API_KEY",
    "DEMO_GROUPS",
    "DEMO_SCENARIOS",
    "DROP_SCENARIO_SLUG",
    "RANKS",
    "SALES_TEAM_GROUP_ID",
    "APIRequest",
    "APIResponse",
    "DemoGroup",
    "DemoScenario",
    "LoopbackAPIServer",
    "SimulatedExecAPI",
    "demo_config",
    "rank_for",
]

log = logging.getLogger(__name__)

API_PREFIX = "/rest/v1"

# Deliberately not in the real key format, so it can never be mistaken for a
# live key (nor trip a secret scanner).
DEMO_API_KEY = "exec_demo_key_not_secret"

DAY = 86_400.0

# The lowest score of each rank but the last, in the order of RANKS.
_RANK_FLOORS = (90.0, 75.0, 50.0)


def rank_for(score: float) -> str:
    """The Exec rank for a 0-100 score: gold >= 90, silver >= 75, bronze >= 50."""
    for rank, floor in zip(RANKS, _RANK_FLOORS, strict=False):
        if score >= floor:
            return rank
    return RANKS[-1]


# --- HTTP plumbing shared with tests/fakeapi.py ------------------------------


class HeaderDict(dict[str, str]):
    """A plain dict of request headers as sent, looked up case-insensitively."""

    def _key(self, key: str) -> str:
        if not super().__contains__(key):
            lowered = key.lower()
            for k in self:
                if k.lower() == lowered:
                    return k
        return key

    def __getitem__(self, key: str) -> str:
        return super().__getitem__(self._key(key))

    def __contains__(self, key: object) -> bool:
        return super().__contains__(self._key(key) if isinstance(key, str) else key)

    def get(self, key: str, default: Any = None) -> Any:
        return super().get(self._key(key), default)


@dataclass(frozen=True)
class APIRequest:
    """One parsed HTTP request as the API implementations see it."""

    method: str
    path: str  # URL path, percent-decoded, without the query string
    query: dict[str, str]  # last value wins for a repeated parameter
    headers: HeaderDict
    raw_query: str = ""
    raw_path: str = field(default="", compare=False)  # as received, still percent-encoded

    @property
    def segments(self) -> list[str] | None:
        """Path segments below ``/rest/v1``, or None for a path outside the API."""
        raw = urlsplit(self.raw_path).path if self.raw_path else self.path
        if raw != API_PREFIX and not raw.startswith(API_PREFIX + "/"):
            return None
        rest = raw[len(API_PREFIX) :].strip("/")
        return [unquote(s) for s in rest.split("/")] if rest else []


@dataclass
class APIResponse:
    """What to send back."""

    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str = "application/json"

    @classmethod
    def json(cls, status: int, payload: Any, headers: Mapping[str, str] | None = None) -> Self:
        """A JSON response."""
        return cls(status, json.dumps(payload).encode(), dict(headers or {}))


def error_response(
    status: int,
    type_: str,
    code: str | None,
    message: str,
    *,
    retry_after: int | None = None,
    headers: Mapping[str, str] | None = None,
) -> APIResponse:
    """The Exec error envelope ``{"error": {"type", "code", "message"}}``."""
    error: dict[str, Any] = {"type": type_}
    if code is not None:
        error["code"] = code
    error["message"] = message
    if retry_after is not None:
        error["retry_after"] = retry_after
    return APIResponse.json(status, {"error": error}, headers)


def unauthorized_response() -> APIResponse:
    """The 401 the Exec API sends for a wrong, missing or inactive key."""
    return error_response(
        401, "authentication_error", "invalid_api_key", "Invalid or inactive API key"
    )


def not_found_response(message: str, code: str | None = "not_found") -> APIResponse:
    """A 404 envelope."""
    return error_response(404, "not_found", code, message)


def bad_request_response(message: str, code: str = "invalid_parameter") -> APIResponse:
    """A 400 ``invalid_request`` envelope."""
    return error_response(400, "invalid_request", code, message)


def rate_limited_response(retry_after: int) -> APIResponse:
    """A 429 with ``retry_after`` in the error object and as a header."""
    return error_response(
        429,
        "rate_limit_error",
        "rate_limit_exceeded",
        f"Rate limit exceeded. Retry after {retry_after} seconds.",
        retry_after=retry_after,
        headers={"Retry-After": str(retry_after)},
    )


def bearer_ok(request: APIRequest, api_key: str) -> bool:
    """True when the request carries ``Authorization: Bearer <api_key>``."""
    value = request.headers.get("Authorization") or ""
    scheme, _, token = value.partition(" ")
    if scheme.lower() != "bearer":
        return False
    # Constant time, as a real server would compare secrets.
    return hmac.compare_digest(token.strip().encode(), api_key.encode())


def parse_bool(value: str) -> bool:
    """``true``/``false`` (any case); anything else raises ValueError."""
    lowered = value.strip().lower()
    if lowered == "true":
        return True
    if lowered == "false":
        return False
    raise ValueError(f"not a boolean: {value!r}")


def parse_datetime(value: str) -> float:
    """An ISO 8601 date-time as epoch seconds (naive means UTC); ValueError if bad."""
    parsed = datetime.fromisoformat(value.strip())
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


def split_list(value: str | None) -> list[str]:
    """A comma-separated query value as a list, blanks dropped."""
    if not value:
        return []
    return [part.strip() for part in value.split(",") if part.strip()]


MAX_PAGE_SIZE = 100
DEFAULT_PAGE_SIZE = 50


def paginate(items: Sequence[Any], query: Mapping[str, str]) -> APIResponse:
    """One page of ``items`` in the Exec list shape, or a 400 for bad paging.

    ``page`` is 1-indexed; ``page_size`` defaults to 50 and may not exceed 100.
    A page past the end is empty (not an error)."""
    try:
        page = int(query.get("page", "1"))
        page_size = int(query.get("page_size", str(DEFAULT_PAGE_SIZE)))
    except ValueError:
        return bad_request_response("Invalid pagination parameters", "invalid_pagination")
    if page < 1 or not 1 <= page_size <= MAX_PAGE_SIZE:
        return bad_request_response("Invalid pagination parameters", "invalid_pagination")
    total = len(items)
    start = (page - 1) * page_size
    return APIResponse.json(
        200,
        {
            "data": list(items[start : start + page_size]),
            "pagination": {
                "page": page,
                "page_size": page_size,
                "total_count": total,
                "total_pages": math.ceil(total / page_size),
            },
        },
    )


class _Handler(BaseHTTPRequestHandler):
    """Turns HTTP into :class:`APIRequest` and an :class:`APIResponse` back into HTTP."""

    server: _Server
    # Keep-alive like the real API, so the exporter's connection pool is exercised.
    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes; without TCP_NODELAY, Nagle's
    # algorithm and the client's delayed ACK add ~40 ms to every keep-alive answer.
    disable_nagle_algorithm = True
    # An idle keep-alive connection must not hold a thread for ever; longer
    # than a polling client's usual gap, so reused connections are rarely stale.
    timeout = 75
    server_version = "ExecSimulated/1.0"
    sys_version = ""

    def setup(self) -> None:
        super().setup()
        self.server.track(self.connection, True)

    def finish(self) -> None:
        try:
            super().finish()
        except OSError:
            pass  # the peer (or stop()) already closed the socket
        finally:
            self.server.track(self.connection, False)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)

    def _dispatch(self) -> None:
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = 0
        if length > 0:
            # Drain a request body so the connection stays usable (bounded).
            self.rfile.read(min(length, 1 << 20))
        split = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(split.query, keep_blank_values=True).items()}
        request = APIRequest(
            method=self.command,
            path=unquote(split.path),
            query=query,
            headers=HeaderDict(self.headers.items()),
            raw_query=split.query,
            raw_path=split.path,
        )
        try:
            response = self.server.api.handle(request)
        except Exception:  # a bug in a simulator must not kill the connection silently
            log.exception("simulated API failed on %s %s", self.command, self.path)
            response = error_response(500, "api_error", "internal_error", "Internal server error")
        self._send(response)

    def _send(self, response: APIResponse) -> None:
        self._send_chunks(response, len(response.body), (response.body,))

    def _send_chunks(self, response: APIResponse, length: int, chunks: Iterable[bytes]) -> None:
        try:
            self.send_response(response.status)
            self.send_header("Content-Type", response.content_type)
            self.send_header("Content-Length", str(length))
            for name, value in response.headers.items():
                self.send_header(name, value)
            self.end_headers()
            for chunk in chunks:
                if self.server.stopping.is_set():
                    break
                self.wfile.write(chunk)
        except OSError:
            # The client gave up (timeout, body limit) or stop() closed the socket.
            self.close_connection = True
        if self.server.stopping.is_set():
            self.close_connection = True

    do_GET = _dispatch
    do_POST = _dispatch
    do_PUT = _dispatch
    do_PATCH = _dispatch
    do_DELETE = _dispatch


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # Handler threads are daemons; server_close() must not wait for a hung one.
    block_on_close = False

    def __init__(self, address: tuple[str, int], api: LoopbackAPIServer, family: int) -> None:
        self.address_family = family
        self.api = api
        self.stopping = api.stopping
        self._connections: set[socket.socket] = set()
        self._conn_lock = threading.Lock()
        super().__init__(address, _Handler)

    def track(self, conn: socket.socket, alive: bool) -> None:
        with self._conn_lock:
            if alive:
                self._connections.add(conn)
            else:
                self._connections.discard(conn)

    def close_connections(self) -> None:
        with self._conn_lock:
            conns = list(self._connections)
        for conn in conns:
            # shutdown (not close) wakes a thread blocked on the socket without
            # racing it for the file descriptor; the handler closes it itself.
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)


class LoopbackAPIServer:
    """An HTTP API served on a loopback address from a daemon thread.

    Subclasses implement :meth:`handle`. :attr:`stopping` is set by :meth:`stop`;
    long-running handlers (hangs, streamed bodies) wait on it so a stop is prompt.
    Usable as a context manager.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        if host == "localhost":
            host = "127.0.0.1"
        address = ipaddress.ip_address(host)
        # A simulator with a published key has no business on a real interface.
        if not address.is_loopback:
            raise ValueError(f"refusing to serve on non-loopback address {host}")
        self._host = host
        self._family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
        self._port = port
        self.stopping = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def handle(self, request: APIRequest) -> APIResponse:
        """Answer one request. Runs on a handler thread: must be thread-safe."""
        raise NotImplementedError

    def start(self) -> Self:
        """Bind and serve in a daemon thread; returns self."""
        if self._server is not None:
            return self
        self.stopping.clear()
        self._server = _Server((self._host, self._port), self, self._family)
        self._port = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"{type(self).__name__}:{self._port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving: wakes waiting handlers, closes sockets, joins (bounded)."""
        server, thread = self._server, self._thread
        if server is None:
            return
        self.stopping.set()
        server.shutdown()
        server.close_connections()
        server.server_close()
        if thread is not None:
            thread.join(timeout=2.0)
        self._server = None
        self._thread = None

    @property
    def port(self) -> int:
        """The bound port (after :meth:`start`)."""
        return self._port

    @property
    def base_url(self) -> str:
        """The API base URL, e.g. ``http://127.0.0.1:PORT/rest/v1``."""
        host = f"[{self._host}]" if self._family == socket.AF_INET6 else self._host
        return f"http://{host}:{self._port}{API_PREFIX}"

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


# --- the simulated workspace -------------------------------------------------


@dataclass(frozen=True)
class DemoGroup:
    """A workspace group of the demo workspace."""

    id: str
    name: str
    created_at: str

    def as_json(self) -> dict[str, Any]:
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
_SKILLS = {
    "s1k2i3l4l5s6": ("Discovery", "discovery"),
    "s7k8i9l0l1s2": ("Objection Handling", "objection-handling"),
    "s3k4i5l6l7s8": ("Negotiation", "negotiation"),
    "s9k0i1l2l3s4": ("Executive Presence", "executive-presence"),
}

# A skill no scenario trains: its proficiency shows what "nobody scored" looks like.
_UNTRAINED_SKILL = ("s5k6i7l8l9s0", "Active Listening", "active-listening")
_SKILL_CREATED = "2024-01-10T09:00:00Z"
# Assignments: passing needs silver; five attempts below it do not pass.
_PASS_SCORE = 75.0
_MAX_ATTEMPTS = 5
_PROFICIENT_SCORE = 75.0  # a scored user is "proficient or better" from here
_SCORED_AFTER = 3  # observations a user needs for a proficiency score

_NAMESPACE = uuid.UUID("5b0f7a52-3c1e-4d6b-9a0e-6e1f2d3c4b5a")


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
        return str(uuid.uuid5(_NAMESPACE, self.slug))

    def as_json(self, include_skills: bool = False) -> dict[str, Any]:
        """The scenario as GET /scenarios lists it (OpenAPI ``Scenario``)."""
        item: dict[str, Any] = {
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
        }
        if include_skills:
            item["skills"] = [
                {"id": sid, "name": _SKILLS[sid][0], "slug": _SKILLS[sid][1]}
                for sid in self.skill_ids
            ]
        return item


DROP_SCENARIO_SLUG = "pricing-objection"
DROP_POINTS = 20.0
# After drop_after, every participant of the drop scenario retakes it within this many
# seconds; a user's scores are re-graded with their first session under the new rubric.
DROP_RAMP_SECONDS = 90.0

DEMO_SCENARIOS: tuple[DemoScenario, ...] = (
    DemoScenario(
        "discovery-call-it-director",
        "Discovery Call with IT Director",
        "Practice handling objections from skeptical IT buyers",
        "medium",
        collection_ids=(_COLLECTION_FOUNDATIONS,),
        skill_ids=("s1k2i3l4l5s6",),
        audience=(SALES_TEAM_GROUP_ID, _SDR_GROUP_ID),
        first_score=62.0,
        session_minutes=6.0,
        created_at="2024-01-15T10:30:00Z",
        updated_at="2024-02-01T14:20:00Z",
    ),
    DemoScenario(
        "renewal-negotiation",
        "Renewal Negotiation",
        "Defend a renewal against a procurement-led discount push",
        "hard",
        collection_ids=(_COLLECTION_CS,),
        skill_ids=("s3k4i5l6l7s8", "s7k8i9l0l1s2"),
        audience=(_CS_GROUP_ID, SALES_TEAM_GROUP_ID),
        first_score=55.0,
        session_minutes=8.0,
        sessions_per_hour=4.0,
    ),
    DemoScenario(
        "cold-call-gatekeeper",
        "Cold Call: Getting Past the Gatekeeper",
        "Earn a transfer to the decision maker in under two minutes",
        "easy",
        collection_ids=(_COLLECTION_FOUNDATIONS,),
        skill_ids=("s7k8i9l0l1s2",),
        audience=(_SDR_GROUP_ID, SALES_TEAM_GROUP_ID),
        first_score=66.0,
        session_minutes=3.5,
        sessions_per_hour=9.0,
    ),
    DemoScenario(
        DROP_SCENARIO_SLUG,
        "Handling a Pricing Objection",
        "Hold value when the buyer says the price is too high",
        "medium",
        collection_ids=(_COLLECTION_FOUNDATIONS,),
        skill_ids=("s7k8i9l0l1s2", "s3k4i5l6l7s8"),
        audience=(SALES_TEAM_GROUP_ID, _CS_GROUP_ID),
        first_score=64.0,
        session_minutes=5.0,
    ),
    DemoScenario(
        "executive-qbr-readout",
        "Executive QBR Readout",
        "Present quarterly results to a skeptical CFO",
        "very_hard",
        visibility="private",
        collection_ids=(_COLLECTION_CS,),
        skill_ids=("s9k0i1l2l3s4",),
        audience=(_CS_GROUP_ID, _LEADERSHIP_GROUP_ID),
        first_score=52.0,
        session_minutes=11.0,
        sessions_per_hour=3.0,
    ),
    # Archived and never practised: listed only with include_archived=true,
    # and its summary shows what "nobody practised" looks like (nulls).
    DemoScenario(
        "legacy-product-pitch",
        "Legacy Product Pitch (2023)",
        "Retired pitch for the 2023 product line",
        "easy",
        archived=True,
        skill_ids=("s1k2i3l4l5s6",),
        sessions_per_hour=0.0,
        created_at="2023-03-01T09:00:00Z",
        updated_at="2023-11-30T17:00:00Z",
    ),
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
_HISTORY_SECONDS = 90 * DAY
# New sessions stop arriving this long after the start: the cost of a summary
# grows with the number of sessions and must stay far below 10 ms.
_GROWTH_HORIZON = 14 * DAY
_SLOT_SECONDS = 60.0


@dataclass(frozen=True)
class _User:
    id: str
    email: str
    group_ids: frozenset[str]

    @property
    def system(self) -> bool:
        # The API's definition of a system user (exclude_system_users).
        return self.email.endswith("@exec.com")


def _make_users(rng: random.Random) -> list[_User]:
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
    names = rng.sample([(f, la) for f in _FIRST_NAMES for la in _LAST_NAMES], _WORKSPACE_USERS)
    users: list[_User] = []
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
        users.append(_User(uid, f"{first}.{last}@acme.com".lower(), frozenset(member_of)))
    for i, email in enumerate(_SYSTEM_EMAILS):
        uid = "u" + "".join(rng.choice(alphabet) for _ in range(11))
        # Two staff accounts sit in Sales Team, so excluding system users
        # visibly changes that cohort.
        groups = frozenset({SALES_TEAM_GROUP_ID}) if i < 2 else frozenset()
        users.append(_User(uid, email, groups))
    return users


@dataclass
class _Learner:
    """One user's skill on one scenario: attempt n scores about
    ``base + gain * (1 - 0.55**n)``."""

    base: float
    gain: float
    attempts: int = 0


class _ScenarioSim:
    """The session history of one scenario, extended lazily as time passes.

    Sessions are parallel lists sorted by time, generated from one seeded
    random stream in time order, so the history is the same whatever the
    request timing. Not thread-safe: the caller holds a lock.
    """

    def __init__(
        self,
        scenario: DemoScenario,
        users: list[_User],
        start: float,
        rng: random.Random,
        regrade_at: float | None = None,
    ) -> None:
        self.scenario = scenario
        self.regrade_at = regrade_at
        # (time, user, score, duration) of the retakes after the re-grade, not yet logged.
        self.retakes: deque[tuple[float, int, float, float]] | None = None
        self.users = users
        self.start = start
        self.rng = rng
        self.times: list[float] = []
        self.user_idx: list[int] = []
        self.scores: list[float] = []
        self.durations: list[float] = []
        self.learners: dict[int, _Learner] = {}
        audience = set(scenario.audience)
        self.eligible = (
            [i for i, u in enumerate(users) if u.system or u.group_ids & audience]
            if audience
            else []
        )
        self.newcomers: list[int] = []
        self.next_slot = 0
        self._make_history()

    def _learner(self, idx: int) -> _Learner:
        learner = self.learners.get(idx)
        if learner is None:
            if self.users[idx].system:
                # Staff know the rubric: high scores, little to learn.
                learner = _Learner(base=self.rng.gauss(86, 4), gain=self.rng.uniform(2, 6))
            else:
                learner = _Learner(
                    base=self.rng.gauss(self.scenario.first_score, 9),
                    gain=self.rng.uniform(14, 32),
                )
            self.learners[idx] = learner
        return learner

    def _attempt(self, idx: int) -> tuple[float, float]:
        learner = self._learner(idx)
        mean = learner.base + learner.gain * (1 - 0.55**learner.attempts)
        learner.attempts += 1
        score = float(round(min(100.0, max(0.0, self.rng.gauss(mean, 4)))))
        minutes = self.scenario.session_minutes * (0.5 if self.users[idx].system else 1.0)
        duration = float(round(max(60.0, self.rng.gauss(minutes * 60, 70))))
        return score, duration

    def _make_history(self) -> None:
        if not self.eligible:
            return
        rng = self.rng
        participants = [i for i in self.eligible if rng.random() < 0.55]
        chosen = set(participants)
        self.newcomers = [i for i in self.eligible if i not in chosen]
        rng.shuffle(self.newcomers)
        planned: list[tuple[float, int]] = []
        for idx in participants:
            count = rng.choices((1, 2, 3, 4, 5, 6), weights=(16, 22, 22, 18, 12, 10))[0]
            for _ in range(count):
                planned.append((self.start - rng.uniform(0, _HISTORY_SECONDS), idx))
        planned.sort()
        for when, idx in planned:
            self._append(when, idx)

    def _append(self, when: float, idx: int, attempt: tuple[float, float] | None = None
                ) -> None:
        score, duration = attempt or self._attempt(idx)
        self.times.append(when)
        self.user_idx.append(idx)
        self.scores.append(score)
        self.durations.append(duration)

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
            self._log_retakes(before=when)
            self._append(when, idx)
        # No later slot can log a session before the next slot starts.
        self._log_retakes(before=self.start + self.next_slot * _SLOT_SECONDS)

    def _plan_retakes(self, slot: int) -> None:
        """In the slot of the re-grade, draw every participant's retake (time and result)
        at once: the history stays the same whatever the request timing."""
        if (self.regrade_at is None or self.retakes is not None
                or self.start + (slot + 1) * _SLOT_SECONDS <= self.regrade_at):
            return
        planned = sorted(
            (self.regrade_at + self.rng.uniform(0, DROP_RAMP_SECONDS), idx)
            for idx in sorted(self.learners)
        )
        best: dict[int, float] = {}
        for idx, score in zip(self.user_idx, self.scores, strict=True):
            best[idx] = max(best.get(idx, 0.0), score)
        retakes = deque[tuple[float, int, float, float]]()
        for when, idx in planned:
            score, duration = self._attempt(idx)
            # A retake under the stricter rubric does not beat the user's best: the
            # average falls by the full DROP_POINTS (a newcomer's first try might).
            retakes.append((when, idx, min(score, best.get(idx, score)), duration))
        self.retakes = retakes

    def _log_retakes(self, before: float) -> None:
        while self.retakes and self.retakes[0][0] < before:
            when, idx, score, duration = self.retakes.popleft()
            self._append(when, idx, (score, duration))

    def tallies(
        self, now: float, allowed: set[int] | None, start: float | None, end: float | None
    ) -> dict[int, _Tally]:
        """Per user index, the matching sessions' count, first and best score and time,
        in the order of each user's first matching session."""
        self.extend_to(now)
        upper = now if end is None else min(now, end)
        lo = 0 if start is None else bisect.bisect_left(self.times, start)
        hi = bisect.bisect_right(self.times, upper)
        out: dict[int, _Tally] = {}
        users, scores, durations = self.user_idx, self.scores, self.durations
        regrade_at = self.regrade_at
        for i in range(lo, hi):
            u = users[i]
            if allowed is not None and u not in allowed:
                continue
            s = scores[i]
            tally = out.get(u)
            if tally is None:
                tally = out[u] = _Tally(1, s, s, durations[i])
            else:
                tally.sessions += 1
                tally.seconds += durations[i]
                tally.best = max(tally.best, s)
            if regrade_at is not None and self.times[i] >= regrade_at:
                tally.regraded = True
        return out

    def rows(
        self, now: float, allowed: set[int] | None, start: float | None, end: float | None
    ) -> list[_Row]:
        """Every matching participant's row, the values both endpoints report."""
        return [_row(u, t) for u, t in self.tallies(now, allowed, start, end).items()]

    def summary(
        self, now: float, allowed: set[int] | None, start: float | None, end: float | None
    ) -> dict[str, Any]:
        """The ScenarioAnalyticsSummary of the sessions that match: computed from the
        same rows as the participants table, so the two always agree."""
        rows = self.rows(now, allowed, start, end)
        return _summary_body(
            [r.best for r in rows],
            [r.first for r in rows],
            sum(r.sessions for r in rows),
            math.fsum(r.seconds for r in rows),
            lifts=[r.lift for r in rows],
        )


@dataclass
class _Tally:
    """One user's matching sessions (scores are the simulation's whole points)."""

    sessions: int
    first: float
    best: float
    seconds: float
    # A matching session is under the re-graded rubric: every score of the user is.
    regraded: bool = False


@dataclass(frozen=True)
class _Row:
    """One participant as both analytics endpoints report them (after a re-grade)."""

    user: int
    sessions: int
    first: float
    best: float
    lift: float
    seconds: float


def _row(user: int, tally: _Tally) -> _Row:
    # A user's values change only with a session of theirs (the re-grade shows with
    # their retake), so whatever a cohort keeps, its values never move while its
    # counts stand still: the exporter's cross-checks can tell new sessions from a
    # wrong derivation. Scores are whole points: both endpoints average the same numbers.
    penalty = DROP_POINTS if tally.regraded else 0.0
    best = max(0.0, tally.best - penalty)
    first = max(0.0, tally.first - penalty)
    return _Row(user, tally.sessions, first, best, best - first, tally.seconds)


def _summary_body(
    bests: list[float],
    firsts: list[float],
    sessions: int,
    seconds: float,
    lifts: list[float] | None = None,
) -> dict[str, Any]:
    """A ScenarioAnalyticsSummary body, rounded as the documented endpoint rounds
    (averages to one decimal, practice to whole minutes); ``lifts`` defaults to each
    participant's best minus first."""
    n = len(bests)
    if lifts is None:
        lifts = [b - f for b, f in zip(bests, firsts, strict=True)]
    counts = dict.fromkeys(RANKS, 0)
    for b in bests:
        counts[rank_for(b)] += 1
    # fsum, as exporter.aggregate sums: the same numbers round the same way.
    average = round(math.fsum(bests) / n, 1) if n else None
    return {
        "participant_count": n,
        "total_sessions": sessions,
        "average_best_score": average,
        # From the rounded score, so rank and score never disagree at a boundary.
        "average_best_rank": rank_for(average) if average is not None else None,
        "average_lift_percentage": round(math.fsum(lifts) / n, 1) if n else None,
        "total_practice_minutes": round(seconds / 60),
        "average_session_duration_seconds": round(seconds / sessions, 1) if sessions else None,
        "score_distribution": [
            {
                "rank": rank,
                "count": counts[rank],
                "percentage": round(100 * counts[rank] / n, 1) if n else 0,
            }
            for rank in RANKS
        ],
    }


class _RollingLimiter:
    """Rolling-window request limits (the Exec API's minute and day quotas)."""

    def __init__(self, limits: Sequence[tuple[float, int]]) -> None:
        for _, limit in limits:
            if limit < 1:
                raise ValueError("rate limits must be at least 1")
        self._windows = [(window, limit, deque[float]()) for window, limit in limits]

    def acquire(self, now: float) -> int | None:
        """Count a request at ``now``; None if allowed, else seconds until a slot frees."""
        wait = 0.0
        for window, limit, stamps in self._windows:
            while stamps and stamps[0] <= now - window:
                stamps.popleft()
            if len(stamps) >= limit:
                wait = max(wait, stamps[-limit] + window - now)
        if wait > 0:
            return max(1, math.ceil(wait))
        for _, _, stamps in self._windows:
            stamps.append(now)
        return None


class SimulatedExecAPI(LoopbackAPIServer):
    """A simulated Exec API on loopback for ``exec-exporter demo``.

    Serves ``GET /rest/v1/scenarios/{id}/analytics/summary`` and
    ``.../analytics/participants``, ``GET /rest/v1/scenarios``,
    ``GET /rest/v1/workspace/groups`` and ``/workspace/members``, ``GET
    /rest/v1/skills`` and ``/scenarios/assignments`` from a seeded
    simulated workspace (see the module docstring), checks the bearer key and
    enforces ``requests_per_minute`` / ``requests_per_day`` over rolling windows
    with a 429 carrying ``retry_after`` in the error object and a
    ``Retry-After`` header. Time comes from ``clock`` (epoch seconds), so tests
    can move it; the simulation starts at ``clock()`` when constructed, and
    ``pricing-objection`` drops about 20 points ``drop_after`` seconds later.
    """

    def __init__(
        self,
        api_key: str = DEMO_API_KEY,
        host: str = "127.0.0.1",
        port: int = 0,
        requests_per_minute: int = 60,
        requests_per_day: int = 86_400,
        clock: Callable[[], float] = time.time,
        seed: int = 7,
        drop_after: float = 600.0,
    ) -> None:
        super().__init__(host, port)
        self.api_key = api_key
        self.clock = clock
        self.start_time = clock()
        self.drop_at = self.start_time + drop_after
        self._limiter = _RollingLimiter([(60.0, requests_per_minute), (DAY, requests_per_day)])
        self._lock = threading.Lock()
        self._request_count = 0
        rng = random.Random(seed)
        self._users = _make_users(rng)
        self._email_index = {u.email.lower(): i for i, u in enumerate(self._users)}
        self._id_index = {u.id: i for i, u in enumerate(self._users)}
        self._sims: dict[str, _ScenarioSim] = {}
        self._due_dates = _due_dates(self._users, self.start_time, random.Random(seed + 1))
        for n, scenario in enumerate(DEMO_SCENARIOS):
            # One stream per scenario: adding a scenario does not reshuffle the others.
            # The score drop: the API averages each participant's *best* score, so a few
            # bad new sessions could never pull it down. The demo models a tightened
            # rubric instead: the scenario is re-graded at drop_at, every participant
            # retakes it within DROP_RAMP_SECONDS, and each user's scores fall by
            # DROP_POINTS from their first session under the new rubric.
            regrade_at = self.drop_at if scenario.slug == DROP_SCENARIO_SLUG else None
            sim = _ScenarioSim(
                scenario,
                self._users,
                self.start_time,
                random.Random(seed * 1000 + n),
                regrade_at,
            )
            self._sims[scenario.slug] = sim
            self._sims[scenario.id] = sim

    @property
    def request_count(self) -> int:
        """Every request received, whatever its answer."""
        with self._lock:
            return self._request_count

    def handle(self, request: APIRequest) -> APIResponse:
        """Authenticate, rate-limit and route one request."""
        with self._lock:
            self._request_count += 1
        if not bearer_ok(request, self.api_key):
            return unauthorized_response()
        with self._lock:
            now = self.clock()
            retry_after = self._limiter.acquire(now)
            if retry_after is not None:
                return rate_limited_response(retry_after)
            segments = request.segments
            if request.method != "GET":
                return error_response(
                    405, "invalid_request", "method_not_allowed", "Method not allowed"
                )
            match segments:
                case ["scenarios", scenario_id, "analytics", "summary"]:
                    return self._summary(scenario_id, request.query, now)
                case ["scenarios", scenario_id, "analytics", "participants"]:
                    return self._participants(scenario_id, request.query, now)
                case ["workspace", "members"]:
                    return self._members(request.query)
                case ["scenarios"]:
                    return self._scenarios(request.query)
                case ["workspace", "groups"]:
                    return paginate([g.as_json() for g in DEMO_GROUPS], request.query)
                case ["skills"]:
                    return self._skills(request.query, now)
                case ["scenarios", "assignments"]:
                    return self._assignments(request.query, now)
            return not_found_response(f"Not found: {request.path}")

    def _summary(self, scenario_id: str, query: Mapping[str, str], now: float) -> APIResponse:
        selection = self._selection(scenario_id, query, now)
        if isinstance(selection, APIResponse):
            return selection
        return APIResponse.json(200, selection.sim.summary(now, *selection.args))

    def _participants(
        self, scenario_id: str, query: Mapping[str, str], now: float
    ) -> APIResponse:
        """GET /scenarios/{id}/analytics/participants: the rows behind the summary of
        the same filters, sorted (default ``-best_score``, ties by user id) and paged."""
        selection = self._selection(scenario_id, query, now)
        if isinstance(selection, APIResponse):
            return selection
        sorting = query.get("sorting") or "-best_score"
        column = _SORT_COLUMNS.get(sorting.removeprefix("-"))
        if column is None:
            return bad_request_response(f"Invalid sorting: {sorting}")
        rows = selection.sim.rows(now, *selection.args)
        users = self._users
        rows.sort(key=lambda r: users[r.user].id)
        rows.sort(key=lambda r: getattr(r, column), reverse=sorting.startswith("-"))
        return paginate([_participant_json(users[r.user], r) for r in rows], query)

    def _members(self, query: Mapping[str, str]) -> APIResponse:
        """GET /workspace/members, optionally only the members of ``group_ids``."""
        groups = set(split_list(query.get("group_ids")))
        items = [_member_json(u) for u in self._users if not groups or u.group_ids & groups]
        return paginate(items, query)

    def _selection(
        self, scenario_id: str, query: Mapping[str, str], now: float
    ) -> _Selection | APIResponse:
        """The scenario and the parsed filters both analytics endpoints share, or an error."""
        sim = self._sims.get(scenario_id)
        if sim is None:
            return not_found_response(f"Scenario not found: {scenario_id}", "scenario_not_found")
        try:
            start = parse_datetime(query["start_date"]) if query.get("start_date") else None
        except ValueError:
            return bad_request_response(f"Invalid start_date: {query['start_date']}")
        try:
            end = parse_datetime(query["end_date"]) if query.get("end_date") else None
        except ValueError:
            return bad_request_response(f"Invalid end_date: {query['end_date']}")
        try:
            exclude_system = parse_bool(query.get("exclude_system_users") or "false")
        except ValueError:
            return bad_request_response(
                f"Invalid exclude_system_users: {query['exclude_system_users']}"
            )
        allowed = self._select_users(query, exclude_system)
        return _Selection(sim, (allowed, start, end))

    def _select_users(self, query: Mapping[str, str], exclude_system: bool) -> set[int] | None:
        """Indexes of the users the filters allow; None means everyone."""
        ids = split_list(query.get("user_ids"))
        emails = split_list(query.get("user_emails"))
        groups = set(split_list(query.get("group_ids")))
        allowed: set[int] | None = None
        if ids or emails:
            # The API unions user_ids and user_emails.
            allowed = {self._id_index[i] for i in ids if i in self._id_index}
            allowed |= {
                self._email_index[e.lower()] for e in emails if e.lower() in self._email_index
            }
        if groups:
            members = {i for i, u in enumerate(self._users) if u.group_ids & groups}
            allowed = members if allowed is None else allowed & members
        if exclude_system:
            humans = {i for i, u in enumerate(self._users) if not u.system}
            allowed = humans if allowed is None else allowed & humans
        return allowed

    def _scenarios(self, query: Mapping[str, str]) -> APIResponse:
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
        items = [
            s.as_json(include_skills)
            for s in DEMO_SCENARIOS
            if (include_archived or not s.archived)
            and (visibility is None or s.visibility == visibility)
            and (not collections or collections & set(s.collection_ids))
            and (not skills or skills & set(s.skill_ids))
        ]
        return paginate(items, query)


    def _practice(self, now: float) -> dict[str, dict[int, tuple[int, float]]]:
        """Per scenario slug: user index -> (sessions so far, best score)."""
        out: dict[str, dict[int, tuple[int, float]]] = {}
        for scenario in DEMO_SCENARIOS:
            sim = self._sims[scenario.slug]
            sim.extend_to(now)
            stats: dict[int, tuple[int, float]] = {}
            hi = bisect.bisect_right(sim.times, now)
            for u, score in zip(sim.user_idx[:hi], sim.scores[:hi], strict=True):
                count, best = stats.get(u, (0, 0.0))
                stats[u] = (count + 1, max(best, score))
            out[scenario.slug] = stats
        return out

    def _skills(self, query: Mapping[str, str], now: float) -> APIResponse:
        """GET /skills, alphabetical by name; proficiency with ``include=proficiency``."""
        practice = self._practice(now) if "proficiency" in split_list(query.get("include")) \
            else None
        skills = [(sid, name, slug) for sid, (name, slug) in _SKILLS.items()]
        skills.append(_UNTRAINED_SKILL)
        items = []
        for sid, name, slug in sorted(skills, key=lambda s: s[1]):
            item: dict[str, Any] = {"id": sid, "name": name, "slug": slug,
                                    "description": f"{name} in customer conversations.",
                                    "created_at": _SKILL_CREATED}
            if practice is not None:
                item["proficiency_summary"] = _proficiency(
                    [practice[s.slug] for s in DEMO_SCENARIOS if sid in s.skill_ids])
            items.append(item)
        return paginate(items, query)

    def _assignments(self, query: Mapping[str, str], now: float) -> APIResponse:
        """GET /scenarios/assignments with the ``scenario_ids`` and ``status`` filters."""
        wanted_ids = set(split_list(query.get("scenario_ids")))
        wanted_status = set(split_list(query.get("status")))
        unknown = wanted_status - set(ASSIGNMENT_STATUSES)
        if unknown:
            return bad_request_response(f"Invalid status: {','.join(sorted(unknown))}")
        practice = self._practice(now)
        rows = []
        for scenario in DEMO_SCENARIOS:
            if scenario.archived or (wanted_ids and scenario.id not in wanted_ids):
                continue
            stats = practice[scenario.slug]
            for idx in self._sims[scenario.slug].eligible:
                user = self._users[idx]
                if user.system:
                    continue  # staff practise, but are not assigned
                due = self._due_dates[(scenario.slug, idx)]
                attempts, best = stats.get(idx, (0, 0.0))
                status = _status(attempts, best, due, now)
                if wanted_status and status not in wanted_status:
                    continue
                rows.append(_assignment_json(scenario, user, status, due, attempts,
                                             best if attempts else None))
        return paginate(rows, query)


@dataclass(frozen=True)
class _Selection:
    """A scenario's simulation and the arguments of its ``rows``/``summary`` calls:
    (allowed users, start, end)."""

    sim: _ScenarioSim
    args: tuple[set[int] | None, float | None, float | None]


# The participants endpoint's ``sorting`` values (without the "-") and the row field.
_SORT_COLUMNS = {
    "best_score": "best",
    "first_score": "first",
    "lift_percentage": "lift",
    "total_duration_seconds": "seconds",
    "session_count": "sessions",
}


def _user_json(user: _User) -> dict[str, Any]:
    first, _, last = user.email.split("@")[0].partition(".")
    return {"id": user.id, "email": user.email, "first_name": first.capitalize(),
            "last_name": last.capitalize()}


def _participant_json(user: _User, row: _Row) -> dict[str, Any]:
    """A ScenarioParticipantEntry."""
    return {
        "user": _user_json(user),
        "session_count": row.sessions,
        "first_score": row.first,
        "first_rank": rank_for(row.first),
        "best_score": row.best,
        "best_rank": rank_for(row.best),
        "lift_percentage": row.lift,
        "total_duration_seconds": row.seconds,
    }


def _member_json(user: _User) -> dict[str, Any]:
    """A WorkspaceMember: the schema's flat shape, ``id`` being the user id."""
    return {**_user_json(user), "role": "staff" if user.system else "member",
            "created_at": _MEMBER_SINCE}


_MEMBER_SINCE = "2024-02-01T09:00:00Z"


ASSIGNMENT_STATUSES = ("not_started", "in_progress", "completed", "past_due", "did_not_pass")


def _due_dates(users: Sequence[_User], start: float,
               rng: random.Random) -> dict[tuple[str, int], float]:
    """A due date per (scenario, user): from three weeks ago to five weeks ahead, and a
    few within the demo's first hour, so past-due assignments grow while it runs."""
    out = {}
    for scenario in DEMO_SCENARIOS:
        for idx in range(len(users)):
            if rng.random() < 0.08:
                out[(scenario.slug, idx)] = start + rng.uniform(60, 3600)
            else:
                out[(scenario.slug, idx)] = start + rng.uniform(-21 * DAY, 35 * DAY)
    return out


def _status(attempts: int, best: float, due: float, now: float) -> str:
    if attempts and best >= _PASS_SCORE:
        return "completed"
    if attempts >= _MAX_ATTEMPTS:
        return "did_not_pass"
    if now > due:
        return "past_due"
    return "in_progress" if attempts else "not_started"


def _assignment_json(scenario: DemoScenario, user: _User, status: str, due: float,
                     attempts: int, best: float | None) -> dict[str, Any]:
    first, last = user.email.split("@")[0].split(".", 1)
    return {
        "id": "a" + uuid.uuid5(_NAMESPACE, f"{scenario.slug}/{user.id}").hex[:11],
        "user": {"id": user.id, "email": user.email, "first_name": first.capitalize(),
                 "last_name": last.capitalize()},
        "scenario": {"id": scenario.id, "name": scenario.name, "slug": scenario.slug},
        "status": status,
        "due_date": datetime.fromtimestamp(due, UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "best_score": best,
        "best_rank": rank_for(best) if best is not None else None,
        "attempt_count": attempts,
        "attempt_min": 1,
        "attempt_max": _MAX_ATTEMPTS,
        "rank_min": "silver",
        "program": None,
        "created_at": scenario.created_at,
    }


def _proficiency(practice: Sequence[Mapping[int, tuple[int, float]]]) -> dict[str, Any]:
    """A SkillProficiencySummary over the users who practised the skill's scenarios:
    scored after three sessions, proficient at 75 or more (their best scores' mean)."""
    sessions: dict[int, int] = {}
    bests: dict[int, list[float]] = {}
    for stats in practice:
        for idx, (count, best) in stats.items():
            sessions[idx] = sessions.get(idx, 0) + count
            bests.setdefault(idx, []).append(best)
    scored = [sum(bests[i]) / len(bests[i]) for i in sessions if sessions[i] >= _SCORED_AFTER]
    return {
        "participant_count": len(sessions),
        "scored_participant_count": len(scored),
        "pct_proficient_plus": (round(100 * sum(s >= _PROFICIENT_SCORE for s in scored)
                                      / len(scored)) if scored else None),
        "avg_score": round(sum(scored) / len(scored), 1) if scored else None,
    }


def demo_config(base_url: str) -> dict[str, Any]:
    """The built-in configuration of ``exec-exporter demo``, as the raw dict a
    YAML file would give (the key is passed separately, never in the config)."""
    return {
        "api": {
            "base_url": base_url,
            "timeout": "5s",
            "rate_limit": {
                "requests_per_minute": 60,
                "requests_per_day": 86400,
                "reserve": 0.1,
            },
        },
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
