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
from pydantic import BaseModel
from requests.adapters import HTTPAdapter
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from . import __version__
from .connection_errors import describe_connection_error, endpoint
from .models import (
    RANKS,
    ErrorEnvelope,
    MemberPayload,
    NestedMemberPayload,
    Page,
    ParticipantPayload,
    PayloadError,
    SummaryPayload,
    read_page,
    validate,
)

MAX_BODY_BYTES = 1 << 20  # a summary is a few hundred bytes; anything near 1 MiB is wrong
DEFAULT_RETRY_AFTER = 60.0
MAX_RETRY_AFTER = 86400.0
T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)


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


# Workspace-wide refusals: every request pauses (the scheduler's pause decides when the
# next one goes), so whoever sent the request waits rather than backing off on its own.
WORKSPACE_REASONS = frozenset({Unauthorized.reason, Forbidden.reason})
PAUSE_REASONS = WORKSPACE_REASONS | {RateLimited.reason}
# Refusals that waiting will not fix: the scenario, group or filters are wrong.
PERSISTENT_REASONS = frozenset({NotFound.reason, BadRequest.reason})

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


def payload(model: type[M], data: object, where: str = "") -> M:
    """``data`` validated as the pydantic ``model``, or :class:`InvalidResponse` naming
    the first wrong field (see :mod:`exporter.models`)."""
    try:
        return validate(model, data, where)
    except PayloadError as exc:
        raise InvalidResponse(str(exc)) from None


def parse_summary(body: object) -> Summary:
    """Validate a decoded JSON body into a :class:`Summary`.

    Lenient on nulls, missing and unknown fields; strict on wrong types and
    impossible values, which raise :class:`InvalidResponse`.
    """
    got = payload(SummaryPayload, body)
    ranks: dict[str, int] | None = None
    if got.score_distribution is not None:
        ranks = dict.fromkeys(RANKS, 0)
        for entry in got.score_distribution:
            ranks[entry.rank] = entry.count or 0
    minutes = got.total_practice_minutes
    return Summary(
        participants=got.participant_count,
        sessions=got.total_sessions,
        average_best_score=got.average_best_score,
        average_best_rank=got.average_best_rank,
        average_score_lift=got.average_lift_percentage,
        practice_seconds=None if minutes is None else minutes * 60.0,
        average_session_duration_seconds=got.average_session_duration_seconds,
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


def parse_participant(item: object, where: str = "participant") -> ParticipantRow:
    """Validate one ``ScenarioParticipantEntry`` into a :class:`ParticipantRow`.

    Strict like :func:`parse_summary`: a wrong type, a negative count or a score
    outside 0-100 raises :class:`InvalidResponse`; nulls are kept as None.
    """
    row = payload(ParticipantPayload, item, where)
    return ParticipantRow(
        user_id=row.user.id, email=row.user.email,
        session_count=row.session_count or 0,
        first_score=row.first_score, best_score=row.best_score, lift=row.lift_percentage,
        duration_seconds=row.total_duration_seconds or 0.0)


def parse_member(item: object, where: str = "member") -> Member:
    """Validate one ``WorkspaceMember``. The schema puts ``id`` (the user id) and
    ``email`` at the top; the documented example nests them in ``user``: both are read,
    the nested user winning."""
    if isinstance(item, dict) and item.get("user") is not None:
        user = payload(NestedMemberPayload, item, where).user
        return Member(user.id, user.email)
    flat = payload(MemberPayload, item, where)
    return Member(flat.id, flat.email)


def parse_list_page(body: object, asked: int, what: str = "") -> Page[Any]:
    """A list body's envelope (``data`` and ``pagination``), its items as they came:
    whoever reads the list decides how to read each item (see :mod:`exporter.paged`)."""
    try:
        return read_page(body, asked)
    except PayloadError as exc:
        raise InvalidResponse(f"{what}: {exc}" if what else str(exc)) from None


def _typed_page(page: Page[Any], parse: Callable[[object, str], T]) -> Page[T]:
    """``page`` with every item parsed strictly: one bad item fails the page."""
    items = tuple(parse(item, f"data[{i}]") for i, item in enumerate(page.items))
    return Page(items, page.page, page.total_count, page.total_pages, page.page_size)


# --- errors from responses -------------------------------------------------


def parse_retry_after(body: object, header: str | None) -> float:
    """Seconds to wait after a 429: from ``error.retry_after``, a top-level
    ``retry_after`` or the ``Retry-After`` header (seconds or an HTTP date)."""
    envelope = ErrorEnvelope.model_validate(body)
    candidates = [envelope.error.retry_after if envelope.error else None,
                  envelope.retry_after, header]
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
    error = ErrorEnvelope.model_validate(body).error
    if error is None:
        return ""
    parts = [str(v) for v in (error.type, error.code, error.message) if v]
    return ": ".join(parts)[:300]


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

    def participants(self, scenario_id: str, params: Mapping[str, str]) -> Page[ParticipantRow]:
        """One page of GET /scenarios/{id}/analytics/participants (``page`` and
        ``page_size`` go in ``params`` with the date filters). Strict: one bad row fails
        the page (a pull without it would give wrong cohorts)."""
        path = f"/scenarios/{quote(scenario_id, safe='')}/analytics/participants"
        return _typed_page(self.list_page(path, params), parse_participant)

    def members(self, params: Mapping[str, str]) -> Page[Member]:
        """One page of GET /workspace/members (``group_ids``, ``page``, ``page_size``).
        Strict: one bad member fails the page (a group without it is a wrong cohort)."""
        return _typed_page(self.list_page("/workspace/members", params), parse_member)

    def list_page(self, path: str, params: Mapping[str, str]) -> Page[Any]:
        """One page of a list endpoint, its items as they came, with what its pagination
        says (with ``page_size=1`` and filters, ``total_count`` is a count for one
        request)."""
        asked = int(params.get("page", "1"))
        return self._call(path, params, lambda body: parse_list_page(body, asked, path))

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


