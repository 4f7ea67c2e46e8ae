"""The Exec API client: one HTTP call in, a typed :class:`Summary` or a typed error out.

Nothing downstream touches raw JSON. The client knows nothing of metrics or
schedules; callers time it and count what it returns.
"""

from __future__ import annotations

import contextlib
import email.utils
import json
import math
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import quote, urlencode

import requests
import urllib3
from requests.adapters import HTTPAdapter
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from . import __version__
from .connection_errors import describe_connection_error, endpoint

MAX_BODY_BYTES = 1 << 20  # a summary is a few hundred bytes; anything near 1 MiB is wrong
RANKS = ("gold", "silver", "bronze", "unranked")
DEFAULT_RETRY_AFTER = 60.0
MAX_RETRY_AFTER = 86400.0
T = TypeVar("T")


# --- errors ----------------------------------------------------------------


class ApiError(Exception):
    """A failed API call. ``reason`` is the contract's label value for it."""

    reason = "invalid_response"

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status

    @property
    def code(self) -> str:
        """The ``code`` label for exec_exporter_api_requests_total: the HTTP status of
        the answer that arrived (a 200 with a broken body included), ``"error"`` when
        none arrived whole (no connection, timeout, connection broken mid-body)."""
        return str(self.status) if self.status is not None else "error"


class Timeout(ApiError):
    """No answer within the timeout."""

    reason = "timeout"


class ConnectionFailed(ApiError):
    """The connection could not be made or broke."""

    reason = "connection"


class RateLimited(ApiError):
    """HTTP 429: every request must wait ``retry_after`` seconds."""

    reason = "rate_limited"

    def __init__(self, message: str, retry_after: float, status: int | None = 429) -> None:
        super().__init__(message, status)
        self.retry_after = retry_after


class Unauthorized(ApiError):
    """HTTP 401: the key is wrong or revoked (workspace-wide)."""

    reason = "unauthorized"


class Forbidden(ApiError):
    """HTTP 403: for example an inactive workspace (workspace-wide)."""

    reason = "forbidden"


class NotFound(ApiError):
    """HTTP 404: the scenario does not exist (this target only)."""

    reason = "not_found"


class BadRequest(ApiError):
    """HTTP 400 (or another 4xx): the API refused the parameters."""

    reason = "bad_request"


class UpstreamError(ApiError):
    """HTTP 5xx."""

    reason = "server_error"


class InvalidResponse(ApiError):
    """A body that is not what the API promises: wrong type, impossible value, too large."""

    reason = "invalid_response"


# Every reason label value, in the contract's order (the error counters start at 0 for each).
REASONS = tuple(error.reason for error in (Timeout, ConnectionFailed, RateLimited, Unauthorized,
                                           Forbidden, NotFound, UpstreamError, BadRequest,
                                           InvalidResponse))


# --- the summary -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Summary:
    """A scenario's analytics summary for one cohort. ``None`` means the API gave no value."""

    participants: int | None = None
    sessions: int | None = None
    average_best_score: float | None = None
    average_best_rank: str | None = None
    average_score_lift: float | None = None
    practice_seconds: float | None = None
    average_session_duration_seconds: float | None = None
    rank_participants: Mapping[str, int] | None = None

    def to_json(self) -> dict[str, Any]:
        """A JSON-safe dict (for the state file)."""
        out: dict[str, Any] = {}
        for name in self.__slots__:
            value = getattr(self, name)
            out[name] = dict(value) if isinstance(value, Mapping) else value
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Summary:
        """Rebuild from :meth:`to_json` output, re-validating every field."""
        fields = {name: data.get(name) for name in cls.__slots__}
        summary = cls(**fields)
        # Re-check the restored values with the same rules as the API's.
        _check_restored(summary)
        return summary


def _number(body: Mapping[str, Any], key: str, lo: float | None = None,
            hi: float | None = None, integer: bool = False) -> float | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidResponse(f"{key} is {type(value).__name__}, expected a number")
    if integer and isinstance(value, float) and not value.is_integer():
        raise InvalidResponse(f"{key} is {value!r}, expected a whole number")
    if not math.isfinite(value):
        raise InvalidResponse(f"{key} is not finite")
    if lo is not None and value < lo:
        raise InvalidResponse(f"{key} is {value!r}, below {lo:g}")
    if hi is not None and value > hi:
        raise InvalidResponse(f"{key} is {value!r}, above {hi:g}")
    return value


def _rank(value: object, key: str) -> str | None:
    if value is None:
        return None
    if value not in RANKS:
        raise InvalidResponse(f"{key} is {value!r}, not one of {', '.join(RANKS)}")
    return str(value)


def parse_summary(body: object) -> Summary:
    """Validate a decoded JSON body into a :class:`Summary`.

    Lenient on nulls, missing and unknown fields; strict on wrong types and
    impossible values, which raise :class:`InvalidResponse`.
    """
    if not isinstance(body, dict):
        raise InvalidResponse(f"expected a JSON object, got {type(body).__name__}")
    participants = _number(body, "participant_count", lo=0, integer=True)
    sessions = _number(body, "total_sessions", lo=0, integer=True)
    score = _number(body, "average_best_score", lo=0, hi=100)
    lift = _number(body, "average_lift_percentage", lo=-100, hi=100)
    minutes = _number(body, "total_practice_minutes", lo=0)
    duration = _number(body, "average_session_duration_seconds", lo=0)
    rank = _rank(body.get("average_best_rank"), "average_best_rank")
    distribution = body.get("score_distribution")
    ranks: dict[str, int] | None = None
    if distribution is not None:
        if not isinstance(distribution, list):
            raise InvalidResponse("score_distribution is not a list")
        ranks = dict.fromkeys(RANKS, 0)
        seen: set[str] = set()
        for i, item in enumerate(distribution):
            if not isinstance(item, dict):
                raise InvalidResponse(f"score_distribution[{i}] is not an object")
            name = _rank(item.get("rank"), f"score_distribution[{i}].rank")
            count = _number(item, "count", lo=0, integer=True)
            _number(item, "percentage", lo=0, hi=100)
            if name is None:
                raise InvalidResponse(f"score_distribution[{i}].rank is missing")
            if name in seen:
                raise InvalidResponse(f"score_distribution lists {name!r} twice")
            seen.add(name)
            ranks[name] = int(count or 0)
    return Summary(
        participants=None if participants is None else int(participants),
        sessions=None if sessions is None else int(sessions),
        average_best_score=None if score is None else float(score),
        average_best_rank=rank,
        average_score_lift=None if lift is None else float(lift),
        practice_seconds=None if minutes is None else float(minutes) * 60.0,
        average_session_duration_seconds=None if duration is None else float(duration),
        rank_participants=ranks,
    )


def _check_restored(summary: Summary) -> None:
    body: dict[str, Any] = {
        "participant_count": summary.participants,
        "total_sessions": summary.sessions,
        "average_best_score": summary.average_best_score,
        "average_best_rank": summary.average_best_rank,
        "average_lift_percentage": summary.average_score_lift,
        "total_practice_minutes": None,
        "average_session_duration_seconds": summary.average_session_duration_seconds,
    }
    if summary.practice_seconds is not None:
        body["total_practice_minutes"] = summary.practice_seconds / 60.0
    if summary.rank_participants is not None:
        if not isinstance(summary.rank_participants, Mapping):
            raise InvalidResponse("rank_participants is not a mapping")
        body["score_distribution"] = [
            {"rank": r, "count": c} for r, c in summary.rank_participants.items()
        ]
    parse_summary(body)


# --- participants and members ----------------------------------------------


@dataclass(frozen=True, slots=True)
class ParticipantRow:
    """One user's row of a scenario's participants table (within the pull's dates)."""

    user_id: str
    email: str | None
    session_count: int
    first_score: float | None
    best_score: float | None
    lift: float | None
    duration_seconds: float


@dataclass(frozen=True, slots=True)
class Member:
    """A workspace member: the user id and email a cohort filter matches on."""

    user_id: str
    email: str | None


@dataclass(frozen=True, slots=True)
class Page:
    """One page of a paginated list: its items and what the pagination says."""

    items: tuple[Any, ...]
    page: int
    total_count: int | None
    total_pages: int


def _string(value: object, key: str, required: bool = False) -> str | None:
    if value is None and not required:
        return None
    if not isinstance(value, str):
        raise InvalidResponse(f"{key} is {type(value).__name__}, expected a string")
    if required and not value:
        raise InvalidResponse(f"{key} is empty")
    return value


def _page_of(body: object, what: str) -> tuple[list[Any], int, int | None, int]:
    """The items and (page, total_count, total_pages) of a list body."""
    if not isinstance(body, dict):
        raise InvalidResponse(f"{what}: expected a JSON object, got {type(body).__name__}")
    data = body.get("data")
    if not isinstance(data, list):
        raise InvalidResponse(f"{what}: data is not a list")
    pagination = body.get("pagination")
    if pagination is None:
        return data, 1, len(data), 1
    if not isinstance(pagination, dict):
        raise InvalidResponse(f"{what}: pagination is not an object")
    page = _number(pagination, "page", lo=1, integer=True)
    total = _number(pagination, "total_count", lo=0, integer=True)
    pages = _number(pagination, "total_pages", lo=0, integer=True)
    return (data, 1 if page is None else int(page), None if total is None else int(total),
            1 if pages is None else int(pages))


def parse_participant(item: object, where: str = "participant") -> ParticipantRow:
    """Validate one ``ScenarioParticipantEntry`` into a :class:`ParticipantRow`.

    Strict like :func:`parse_summary`: a wrong type, a negative count or a score
    outside 0-100 raises :class:`InvalidResponse`; nulls are kept as None.
    """
    if not isinstance(item, dict):
        raise InvalidResponse(f"{where} is not an object")
    user = item.get("user")
    if not isinstance(user, dict):
        raise InvalidResponse(f"{where}.user is not an object")
    user_id = _string(user.get("id"), f"{where}.user.id", required=True)
    email = _string(user.get("email"), f"{where}.user.email")
    sessions = _number(item, "session_count", lo=0, integer=True)
    first = _number(item, "first_score", lo=0, hi=100)
    best = _number(item, "best_score", lo=0, hi=100)
    lift = _number(item, "lift_percentage", lo=-100, hi=100)
    duration = _number(item, "total_duration_seconds", lo=0)
    for key in ("first_rank", "best_rank"):
        _rank(item.get(key), f"{where}.{key}")
    assert user_id is not None
    return ParticipantRow(
        user_id=user_id, email=email,
        session_count=0 if sessions is None else int(sessions),
        first_score=None if first is None else float(first),
        best_score=None if best is None else float(best),
        lift=None if lift is None else float(lift),
        duration_seconds=0.0 if duration is None else float(duration))


def parse_participants_page(body: object) -> Page:
    """A page of ``GET /scenarios/{id}/analytics/participants``: rows of
    :class:`ParticipantRow`, strict on types (:class:`InvalidResponse`)."""
    data, page, total, pages = _page_of(body, "participants")
    rows = tuple(parse_participant(item, f"data[{i}]") for i, item in enumerate(data))
    return Page(rows, page, total, pages)


def parse_member(item: object, where: str = "member") -> Member:
    """Validate one ``WorkspaceMember``. The schema puts ``id`` (the user id) and
    ``email`` at the top; the documented example nests them in ``user``: both are read,
    the nested user winning."""
    if not isinstance(item, dict):
        raise InvalidResponse(f"{where} is not an object")
    user = item.get("user")
    if user is not None:
        if not isinstance(user, dict):
            raise InvalidResponse(f"{where}.user is not an object")
        user_id = _string(user.get("id"), f"{where}.user.id", required=True)
        email = _string(user.get("email"), f"{where}.user.email")
    else:
        user_id = _string(item.get("id"), f"{where}.id", required=True)
        email = _string(item.get("email"), f"{where}.email")
    assert user_id is not None
    return Member(user_id, email)


def parse_members_page(body: object) -> Page:
    """A page of ``GET /workspace/members``: items of :class:`Member`."""
    data, page, total, pages = _page_of(body, "members")
    return Page(tuple(parse_member(item, f"data[{i}]") for i, item in enumerate(data)),
                page, total, pages)


# --- errors from responses -------------------------------------------------


def parse_retry_after(body: object, header: str | None) -> float:
    """Seconds to wait after a 429: from ``error.retry_after``, a top-level
    ``retry_after`` or the ``Retry-After`` header (seconds or an HTTP date)."""
    candidates: list[object] = []
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict):
            candidates.append(error.get("retry_after"))
        candidates.append(body.get("retry_after"))
    candidates.append(header)
    for value in candidates:
        seconds = _seconds(value)
        if seconds is not None:
            return min(max(seconds, 1.0), MAX_RETRY_AFTER)
    return DEFAULT_RETRY_AFTER


def _seconds(value: object) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, str):
        text = value.strip()
        try:
            return float(text)
        except ValueError:
            pass
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError):
            return None
        return when.timestamp() - time.time()
    return None


def _error_message(body: object) -> str:
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict):
            parts = [str(error.get(k)) for k in ("type", "code", "message") if error.get(k)]
            if parts:
                return ": ".join(parts)[:300]
    return ""


def error_for_status(status: int, body: object, retry_after_header: str | None) -> ApiError:
    """The typed error for a non-2xx answer."""
    detail = _error_message(body)
    message = f"HTTP {status}" + (f" ({detail})" if detail else "")
    if status == 429:
        return RateLimited(message, parse_retry_after(body, retry_after_header))
    if status == 401:
        return Unauthorized(message, status)
    if status == 403:
        return Forbidden(message, status)
    if status == 404:
        return NotFound(message, status)
    if 500 <= status <= 599:
        return UpstreamError(message, status)
    if 400 <= status <= 499:
        return BadRequest(message, status)
    return InvalidResponse(f"unexpected HTTP status {status}", status)


# --- the deadline ----------------------------------------------------------
#
# ``api.timeout`` bounds the whole request: name resolution, connect, TLS, status
# line, headers and body together. requests' own timeout applies to each socket
# operation, so an upstream sending one byte every half second never trips it.
# Two ways were weighed:
#
# * per-read socket timeouts set to the time remaining: needs a hook before every
#   recv() inside http.client, and cannot bound getaddrinfo(), which no socket
#   timeout covers;
# * the request runs on a short-lived worker thread and the caller waits for it
#   with the deadline: the wait is exact whichever phase is slow, DNS included.
#   When the deadline passes the caller shuts the worker's socket down, so the
#   worker wakes at once and urllib3 discards that connection instead of pooling
#   it; a worker still inside getaddrinfo() finds its call expired when it reaches
#   connect() and stops there.
#
# This module does the second (one thread per request is nothing at 60 requests a
# minute). The worker keeps requests' per-read timeout as a backstop.


class _Expired(Exception):
    """A worker reached the network after its caller had given up."""


class _Call:
    """One request on a worker thread, and the connections it has touched."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._done = threading.Event()
        self.expired = False
        self._connections: list[urllib3.connection.HTTPConnection] = []
        self._result: object = None
        self._error: BaseException | None = None

    def run(self, work: Callable[[], object]) -> None:
        """Run ``work`` on this (worker) thread and keep its outcome for :meth:`wait`."""
        _current.call = self
        result: object = None
        error: BaseException | None = None
        try:
            result = work()
        except BaseException as exc:  # handed over to the waiting caller
            error = exc
        finally:
            _current.call = None
        with self._lock:
            self._result, self._error = result, error
            self._done.set()

    def wait(self, timeout: float) -> object:
        """The outcome of ``work``, or :class:`_Expired` once ``timeout`` has passed
        (the connections in use are shut down)."""
        self._done.wait(timeout)
        with self._lock:
            if not self._done.is_set():
                self.expired = True
                connections = list(self._connections)
            else:
                connections = None
        if connections is not None:
            for connection in connections:
                _abort(connection)
            raise _Expired
        if self._error is not None:
            raise self._error
        return self._result

    def enlist(self, connection: urllib3.connection.HTTPConnection) -> None:
        """Note a connection the worker is about to use (refused once expired)."""
        with self._lock:
            if self.expired:
                raise _Expired
            if connection not in self._connections:
                self._connections.append(connection)


_current = threading.local()  # the _Call of the worker thread, if any


def _enlist(connection: urllib3.connection.HTTPConnection) -> _Call | None:
    call: _Call | None = getattr(_current, "call", None)
    if call is not None:
        call.enlist(connection)
    return call


def _abort(connection: urllib3.connection.HTTPConnection) -> None:
    sock = connection.sock
    if sock is None:
        return
    with contextlib.suppress(OSError):
        # socket.socket.shutdown, not SSLSocket.shutdown, which would drop the TLS
        # object under the worker's feet: shutting the descriptor down wakes the
        # worker's blocked read with EOF, and a dropped socket is never pooled again.
        socket.socket.shutdown(sock, socket.SHUT_RDWR)


class _DeadlineHTTPConnection(urllib3.connection.HTTPConnection):
    """An HTTP connection the waiting caller can shut down at the deadline."""

    def connect(self) -> None:
        call = _enlist(self)
        super().connect()
        if call is not None and call.expired:
            # The deadline passed while connecting (the abort found no socket yet).
            self.close()
            raise _Expired

    def request(self, *args: Any, **kwargs: Any) -> None:
        _enlist(self)  # a pooled connection goes straight here, without connect()
        super().request(*args, **kwargs)


class _DeadlineHTTPSConnection(_DeadlineHTTPConnection, urllib3.connection.HTTPSConnection):
    """The TLS flavour of :class:`_DeadlineHTTPConnection`."""


class _DeadlineHTTPPool(HTTPConnectionPool):
    ConnectionCls = _DeadlineHTTPConnection


class _DeadlineHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _DeadlineHTTPSConnection


class _DeadlineAdapter(HTTPAdapter):
    """requests' adapter with pools whose connections can be aborted at the deadline.

    A SOCKS proxy keeps its own pool classes: there the caller still gives up at
    the deadline, and the abandoned worker ends at its per-read timeout.
    """

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = _pools()

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        if not proxy.lower().startswith("socks"):
            manager.pool_classes_by_scheme = _pools()
        return manager


def _pools() -> dict[str, type[HTTPConnectionPool]]:
    return {"http": _DeadlineHTTPPool, "https": _DeadlineHTTPSPool}


# --- the client ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Answer:
    status: int
    body: bytes
    retry_after: str | None


class ExecClient:
    """Talks to the Exec REST API over one keep-alive session.

    Every call ends within ``timeout`` seconds, whatever the network does, and
    every :class:`ApiError` raised once an answer arrived carries its HTTP status.

    >>> client = ExecClient("https://api.exec.com/rest/v1", key, timeout=10)
    >>> client.summary("discovery-call-it-director", {"group_ids": "g1,g2"})
    Summary(participants=45, ...)
    """

    def __init__(self, base_url: str, api_key: str, timeout: float = 10.0,
                 session: requests.Session | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self._session = session or requests.Session()
        adapter = _DeadlineAdapter()
        self._session.mount("https://", adapter)
        self._session.mount("http://", adapter)
        self._session.headers.update({
            "User-Agent": f"exec-exporter/{__version__}",
            "Accept": "application/json",
        })
        self._auth = {"Authorization": f"Bearer {api_key}"}
        self._key = api_key

    def __repr__(self) -> str:
        return f"ExecClient(base_url={self.base_url!r}, timeout={self.timeout})"

    def close(self) -> None:
        """Close the pooled connections."""
        self._session.close()

    def summary(self, scenario_id: str, params: Mapping[str, str]) -> Summary:
        """GET /scenarios/{id}/analytics/summary with the cohort's filters."""
        path = f"/scenarios/{quote(scenario_id, safe='')}/analytics/summary"
        return self._call(path, params, parse_summary)

    def participants(self, scenario_id: str, params: Mapping[str, str]) -> Page:
        """One page of GET /scenarios/{id}/analytics/participants (``page`` and
        ``page_size`` go in ``params`` with the date filters)."""
        path = f"/scenarios/{quote(scenario_id, safe='')}/analytics/participants"
        return parse_participants_page(self.get_json(path, params))

    def members(self, params: Mapping[str, str]) -> Page:
        """One page of GET /workspace/members (``group_ids``, ``page``, ``page_size``)."""
        return parse_members_page(self.get_json("/workspace/members", params))

    def list_page(self, path: str, params: Mapping[str, str]) -> tuple[list[Any], int]:
        """One page of a list endpoint: its items and the total number of pages."""
        return self._call(path, params, lambda body: _parse_page(path, body)[:2])

    def list_page_counted(self, path: str, params: Mapping[str, str],
                          ) -> tuple[list[Any], int, int | None]:
        """Like :meth:`list_page`, plus ``pagination.total_count`` (None when the
        API leaves it out): with ``page_size=1`` and filters, a count for one request."""
        return self._call(path, params, lambda body: _parse_page(path, body))

    def get_json(self, path: str, params: Mapping[str, str]) -> object:
        """GET a path under the base URL and return the decoded JSON body, or raise ApiError."""
        return self._call(path, params, lambda body: body)

    def _call(self, path: str, params: Mapping[str, str], parse: Callable[[object], T]) -> T:
        try:
            status, body = self._get_json(path, params)
            try:
                return parse(body)
            except ApiError as error:
                # The answer arrived: its status is the code label, even for a 200
                # whose body turned out wrong.
                if error.status is None:
                    error.status = status
                raise
        except ApiError as error:
            # An API may quote the key back in its error message: it must not travel on
            # to the landing page or the state file.
            text = str(error)
            if self._key and self._key in text:
                error.args = (text.replace(self._key, "<redacted>"),)
            raise

    def _get_json(self, path: str, params: Mapping[str, str]) -> tuple[int, object]:
        query = urlencode(params, safe=",:@")
        url = self.base_url + path + (f"?{query}" if query else "")
        call = _Call()
        worker = threading.Thread(target=call.run, args=(lambda: self._exchange(url),),
                                  name="exec-api-request", daemon=True)
        worker.start()
        try:
            answer = call.wait(self.timeout)
        except _Expired:
            raise Timeout(f"{endpoint(url)}: no complete answer within {self.timeout:g}s "
                          "(timeout)") from None
        assert isinstance(answer, _Answer)
        status = answer.status
        body: object = None
        try:
            body = json.loads(answer.body) if answer.body else None
        except ValueError:
            if 200 <= status <= 299:
                raise InvalidResponse("body is not valid JSON", status) from None
        if 200 <= status <= 299:
            return status, body
        raise error_for_status(status, body, answer.retry_after)

    def _exchange(self, url: str) -> _Answer:
        """The request itself, on the worker thread: status, capped body, Retry-After."""
        try:
            response = self._session.get(url, headers=self._auth, timeout=self.timeout,
                                         stream=True, allow_redirects=False)
        except requests.ConnectTimeout:
            raise Timeout(f"{endpoint(url)}: could not connect within "
                          f"{self.timeout:g}s (timeout)") from None
        except requests.Timeout:
            raise Timeout(f"{endpoint(url)}: no complete answer within {self.timeout:g}s "
                          "(timeout)") from None
        except requests.RequestException as exc:
            raise ConnectionFailed(describe_connection_error(exc, url)) from None
        with response:
            raw = self._read_capped(response)
        return _Answer(response.status_code, raw, response.headers.get("Retry-After"))

    def _read_capped(self, response: requests.Response) -> bytes:
        status = response.status_code
        length = response.headers.get("Content-Length")
        if length and length.isdigit() and int(length) > MAX_BODY_BYTES:
            raise InvalidResponse(f"body of {int(length)} bytes is over the 1 MiB cap", status)
        chunks: list[bytes] = []
        size = 0
        try:
            for chunk in response.iter_content(64 * 1024):
                size += len(chunk)
                if size > MAX_BODY_BYTES:
                    raise InvalidResponse("body is over the 1 MiB cap", status)
                chunks.append(chunk)
        except requests.Timeout:
            # No status: a body that never arrived whole is no answer (code "error").
            raise Timeout(f"{endpoint(response.url)}: no complete answer within "
                          f"{self.timeout:g}s (timeout)") from None
        except requests.RequestException as exc:
            raise ConnectionFailed("reading the answer failed: "
                                   + describe_connection_error(exc, response.url)) from None
        return b"".join(chunks)


def _parse_page(path: str, body: object) -> tuple[list[Any], int, int | None]:
    """A list page: its items, ``pagination.total_pages`` (1 when left out) and
    ``pagination.total_count`` (None when left out)."""
    if not isinstance(body, dict) or not isinstance(body.get("data"), list):
        raise InvalidResponse(f"{path}: expected an object with a data list")
    return (body["data"], _pagination_int(path, body, "total_pages", 1),
            _pagination_int(path, body, "total_count", None))


def _pagination_int(path: str, body: Mapping[str, Any], key: str,
                    default: int | None) -> Any:
    pagination = body.get("pagination")
    if not isinstance(pagination, dict):
        return default
    value = pagination.get(key)
    if value is None:
        return default
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    raise InvalidResponse(f"{path}: pagination.{key} is {value!r}")
