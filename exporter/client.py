"""The Exec API client: one HTTP call in, a typed value or a typed :class:`ApiError` out."""

from __future__ import annotations

import contextlib
import email.utils
import json
import math
import socket
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from dataclasses import asdict, dataclass
from typing import Any, TypeVar
from urllib.parse import quote, urlencode

import requests
import urllib3
from pydantic import BaseModel, ValidationError
from requests.adapters import HTTPAdapter
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from . import __version__
from .connection_errors import describe_connection_error, endpoint
from .models import (
    RANKS,
    ErrorEnvelope,
    Page,
    PageEnvelope,
    ParticipantPayload,
    SummaryPayload,
    UserRef,
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

    def __init_subclass__(cls, reason: str = "", **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.reason = reason or cls.reason

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status

    @property
    def code(self) -> str:
        """The ``code`` label for exec_exporter_api_requests_total: the HTTP status of
        the answer that arrived (a 200 with a broken body included), ``"error"`` when
        none arrived whole (no connection, timeout, connection broken mid-body)."""
        return str(self.status) if self.status is not None else "error"


class Timeout(ApiError, reason="timeout"):
    """No answer within the timeout."""


class ConnectionFailed(ApiError, reason="connection"):
    """The connection could not be made or broke."""


class RateLimited(ApiError, reason="rate_limited"):
    """HTTP 429: every request must wait ``retry_after`` seconds."""

    def __init__(self, message: str, retry_after: float, status: int | None = 429) -> None:
        super().__init__(message, status)
        self.retry_after = retry_after


class Unauthorized(ApiError, reason="unauthorized"):
    """HTTP 401: the key is wrong or revoked (workspace-wide)."""


class Forbidden(ApiError, reason="forbidden"):
    """HTTP 403: for example an inactive workspace (workspace-wide)."""


class NotFound(ApiError, reason="not_found"):
    """HTTP 404: the scenario does not exist (this target only)."""


class BadRequest(ApiError, reason="bad_request"):
    """HTTP 400 (or another 4xx): the API refused the parameters."""


class UpstreamError(ApiError, reason="server_error"):
    """HTTP 5xx."""


class InvalidResponse(ApiError, reason="invalid_response"):
    """A body that is not what the API promises: wrong type, impossible value, too large."""


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


# --- payloads ----------------------------------------------------------------


def payload(model: type[M], data: object, where: str = "") -> M:
    """``data`` validated as the pydantic ``model``, or :class:`InvalidResponse` naming
    the first wrong field with its path in the payload (``where`` is the payload's own,
    such as ``data[3]``): ``data[0].user.email is int, expected a string``."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise InvalidResponse(_field_error(exc.errors(include_url=False)[0], where)) from None


def _field_error(error: Any, where: str) -> str:
    path = where
    for part in error["loc"]:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    kind = error["type"]
    detail = error["msg"] if kind == "exec_payload" else _PYDANTIC_WORDS.get(
        kind, f"is invalid ({error['msg']})")
    return f"{path or 'the body'} {detail}"


# pydantic's own complaints, in the words of the other messages.
_PYDANTIC_WORDS = {"missing": "is missing", "model_type": "is not an object",
                   "model_attributes_type": "is not an object", "dict_type": "is not an object",
                   "list_type": "is not a list"}


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
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Summary:
        """Rebuild from :meth:`to_json` output, checked by the API's rules."""
        summary = cls(**{name: data.get(name) for name in cls.__slots__})
        seconds, ranks = summary.practice_seconds, summary.rank_participants
        parse_summary({api: getattr(summary, ours) for ours, api in _API_NAMES.items()} | {
            "total_practice_minutes": None if seconds is None else seconds / 60.0,
            "score_distribution": None if ranks is None else [
                {"rank": rank, "count": count} for rank, count in ranks.items()]})
        return summary


# A summary's fields by the API's names (the other two are converted).
_API_NAMES = {"participants": "participant_count", "sessions": "total_sessions",
              "average_best_score": "average_best_score",
              "average_best_rank": "average_best_rank",
              "average_score_lift": "average_lift_percentage",
              "average_session_duration_seconds": "average_session_duration_seconds"}


def parse_summary(body: object) -> Summary:
    """Validate a decoded JSON body into a :class:`Summary`: lenient on nulls, missing and
    unknown fields, strict on wrong types and impossible values (:class:`InvalidResponse`)."""
    got = payload(SummaryPayload, body)
    minutes = got.total_practice_minutes
    return Summary(
        **{ours: getattr(got, api) for ours, api in _API_NAMES.items()},
        practice_seconds=None if minutes is None else minutes * 60.0,
        rank_participants=None if got.score_distribution is None else dict.fromkeys(RANKS, 0) | {
            entry.rank: entry.count or 0 for entry in got.score_distribution})


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
    """Validate one ``ScenarioParticipantEntry`` strictly (nulls kept as None)."""
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
        item, where = item["user"], f"{where}.user"
    user = payload(UserRef, item, where)
    return Member(user.id, user.email)


def parse_list_page(body: object, asked: int, what: str = "") -> Page[Any]:
    """A list body's envelope (``data`` and ``pagination``), its items as they came:
    whoever reads the list decides how to read each item (see :mod:`exporter.paged`).
    ``asked`` is the page the request asked for, the page where the envelope has none."""
    try:
        envelope = payload(PageEnvelope, body)
    except InvalidResponse as exc:
        raise InvalidResponse(f"{what}: {exc}" if what else str(exc)) from None
    items, pagination = tuple(envelope.data), envelope.pagination
    if pagination is None:
        return Page(items, asked, len(items), 1)
    return Page(items, pagination.page or asked, pagination.total_count,
                1 if pagination.total_pages is None else pagination.total_pages,
                pagination.page_size)


def _typed_page(page: Page[Any], parse: Callable[[object, str], T]) -> Page[T]:
    """``page`` with every item parsed strictly: one bad item fails the page."""
    items = tuple(parse(item, f"data[{i}]") for i, item in enumerate(page.items))
    return Page(items, page.page, page.total_count, page.total_pages, page.page_size)


# --- errors from responses -------------------------------------------------

_BY_STATUS: dict[int, type[ApiError]] = {401: Unauthorized, 403: Forbidden, 404: NotFound}


def error_for_status(status: int, body: object, retry_after_header: str | None) -> ApiError:
    """The typed error for a non-2xx answer."""
    envelope = ErrorEnvelope.model_validate(body)
    error = envelope.error
    detail = "" if error is None else ": ".join(
        str(value) for value in (error.type, error.code, error.message) if value)[:300]
    message = f"HTTP {status}" + (f" ({detail})" if detail else "")
    if status == 429:
        return RateLimited(message, _retry_after(envelope, retry_after_header))
    if 400 <= status <= 599:
        kind = _BY_STATUS.get(status, BadRequest if status < 500 else UpstreamError)
        return kind(message, status)
    return InvalidResponse(f"unexpected HTTP status {status}", status)


def _retry_after(envelope: ErrorEnvelope, header: str | None) -> float:
    """Seconds to wait after a 429: from ``error.retry_after``, a top-level
    ``retry_after`` or the ``Retry-After`` header (seconds or an HTTP date)."""
    for value in (envelope.error.retry_after if envelope.error else None,
                  envelope.retry_after, header):
        seconds = _seconds(value)
        if seconds is not None:
            return min(max(seconds, 1.0), MAX_RETRY_AFTER)
    return DEFAULT_RETRY_AFTER


def _seconds(value: object) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value) if math.isfinite(value) else None
    if not isinstance(value, str):
        return None
    with contextlib.suppress(ValueError):
        return float(value.strip())
    try:
        when = email.utils.parsedate_to_datetime(value.strip())
    except (TypeError, ValueError):
        return None
    return when.timestamp() - time.time()


# --- the deadline ----------------------------------------------------------
#
# ``api.timeout`` bounds the whole request, DNS to the last body byte: the request
# runs on a worker thread, and at the deadline the caller shuts the worker's sockets
# down (docs/architecture.md, "The API client's deadline", weighs the alternative).


_Answer = tuple[int, object]  # the status and the decoded body of a 2xx answer


class _Expired(Exception):
    """A worker reached the network after its caller had given up."""


class _Call:
    """One request on its own worker thread, and the connections it has touched."""

    def __init__(self, work: Callable[[], _Answer]) -> None:
        self._lock = threading.Lock()
        self.expired = False
        self._connections: set[urllib3.connection.HTTPConnection] = set()
        self._outcome: Future[_Answer] = Future()
        threading.Thread(target=self._run, args=(work,), name="exec-api-request",
                         daemon=True).start()

    def _run(self, work: Callable[[], _Answer]) -> None:
        _current.call = self
        try:
            self._outcome.set_result(work())
        except BaseException as exc:  # handed over to the waiting caller
            self._outcome.set_exception(exc)
        finally:
            _current.call = None

    def wait(self, timeout: float) -> _Answer:
        """The answer, or :class:`_Expired` once ``timeout`` has passed (the connections
        in use are shut down)."""
        with contextlib.suppress(TimeoutError):
            return self._outcome.result(timeout)
        with self._lock:
            self.expired = not self._outcome.done()
            sockets = [connection.sock for connection in self._connections]
        if not self.expired:
            return self._outcome.result()
        for sock in sockets:
            # socket.socket.shutdown, not SSLSocket.shutdown, which would drop the TLS
            # object under the worker's feet: shutting the descriptor down wakes the
            # worker's blocked read with EOF, and a dropped socket is never pooled again.
            with contextlib.suppress(OSError):
                if sock is not None:
                    socket.socket.shutdown(sock, socket.SHUT_RDWR)
        raise _Expired

    @staticmethod
    def enlist(connection: urllib3.connection.HTTPConnection) -> _Call | None:
        """The calling worker's call, noting ``connection`` as in use (:class:`_Expired`
        once the call has expired)."""
        call: _Call | None = getattr(_current, "call", None)
        if call is not None:
            with call._lock:
                if call.expired:
                    raise _Expired
                call._connections.add(connection)
        return call


_current = threading.local()  # the _Call of the worker thread, if any


class _DeadlineHTTPConnection(urllib3.connection.HTTPConnection):
    """An HTTP connection the waiting caller can shut down at the deadline."""

    def connect(self) -> None:
        call = _Call.enlist(self)
        super().connect()
        if call is not None and call.expired:
            # The deadline passed while connecting (the abort found no socket yet).
            self.close()
            raise _Expired

    def request(self, *args: Any, **kwargs: Any) -> None:
        _Call.enlist(self)  # a pooled connection goes straight here, without connect()
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
        self.poolmanager.pool_classes_by_scheme = dict(_POOLS)

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        if not proxy.lower().startswith("socks"):
            manager.pool_classes_by_scheme = dict(_POOLS)
        return manager


_POOLS: dict[str, type[HTTPConnectionPool]] = {"http": _DeadlineHTTPPool,
                                                "https": _DeadlineHTTPSPool}


# --- the client ------------------------------------------------------------


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
        self._session.headers.update({"User-Agent": f"exec-exporter/{__version__}",
                                      "Accept": "application/json"})
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
        status: int | None = None
        try:
            status, body = self._get_json(path, params)
            return parse(body)
        except ApiError as error:
            # Once an answer arrived its status is the code label, even for a 200 whose
            # body turned out wrong.
            error.status = error.status or status
            # An API may quote the key back in its error message: it must not travel on
            # to the landing page or the state file.
            text = str(error)
            if self._key and self._key in text:
                error.args = (text.replace(self._key, "<redacted>"),)
            raise

    def _get_json(self, path: str, params: Mapping[str, str]) -> _Answer:
        query = urlencode(params, safe=",:@")
        url = self.base_url + path + (f"?{query}" if query else "")
        try:
            return _Call(lambda: self._exchange(url)).wait(self.timeout)
        except _Expired:
            raise self._timed_out(url) from None

    def _exchange(self, url: str) -> _Answer:
        """The request itself, on the worker thread: the status and the decoded body of a
        2xx answer, else its typed error."""
        try:
            response = self._session.get(url, headers=self._auth, timeout=self.timeout,
                                         stream=True, allow_redirects=False)
        except requests.ConnectTimeout:
            raise self._timed_out(url, "could not connect") from None
        except requests.Timeout:
            raise self._timed_out(url) from None
        except requests.RequestException as exc:
            raise ConnectionFailed(describe_connection_error(exc, url)) from None
        with response:
            raw = self._read_capped(response)
        status, body = response.status_code, None
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            if 200 <= status <= 299:
                raise InvalidResponse("body is not valid JSON", status) from None
        if 200 <= status <= 299:
            return status, body
        raise error_for_status(status, body, response.headers.get("Retry-After"))

    def _read_capped(self, response: requests.Response) -> bytes:
        status = response.status_code
        length = response.headers.get("Content-Length")
        if length and length.isdigit() and int(length) > MAX_BODY_BYTES:
            raise InvalidResponse(f"body of {int(length)} bytes is over the 1 MiB cap", status)
        body = bytearray()
        try:
            for chunk in response.iter_content(64 * 1024):
                body += chunk
                if len(body) > MAX_BODY_BYTES:
                    raise InvalidResponse("body is over the 1 MiB cap", status)
        except requests.Timeout:
            # No status: a body that never arrived whole is no answer (code "error").
            raise self._timed_out(response.url) from None
        except requests.RequestException as exc:
            raise ConnectionFailed("reading the answer failed: "
                                   + describe_connection_error(exc, response.url)) from None
        return bytes(body)

    def _timed_out(self, url: str, what: str = "no complete answer") -> Timeout:
        return Timeout(f"{endpoint(url)}: {what} within {self.timeout:g}s (timeout)")


