"""The Exec API client: one HTTP call in, a typed :class:`Summary` or a typed error out.

Nothing downstream touches raw JSON. The client knows nothing of metrics or
schedules; callers time it and count what it returns.
"""

from __future__ import annotations

import email.utils
import json
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode

import requests

from . import __version__

MAX_BODY_BYTES = 1 << 20  # a summary is a few hundred bytes; anything near 1 MiB is wrong
RANKS = ("gold", "silver", "bronze", "unranked")
DEFAULT_RETRY_AFTER = 60.0
MAX_RETRY_AFTER = 86400.0


# --- errors ----------------------------------------------------------------


class ApiError(Exception):
    """A failed API call. ``reason`` is the contract's label value for it."""

    reason = "invalid_response"

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status

    @property
    def code(self) -> str:
        """The ``code`` label for exec_exporter_api_requests_total."""
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


# --- the client ------------------------------------------------------------


class ExecClient:
    """Talks to the Exec REST API over one keep-alive session.

    >>> client = ExecClient("https://api.exec.com/rest/v1", key, timeout=10)
    >>> client.summary("discovery-call-it-director", {"group_ids": "g1,g2"})
    Summary(participants=45, ...)
    """

    def __init__(self, base_url: str, api_key: str, timeout: float = 10.0,
                 session: requests.Session | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self._session = session or requests.Session()
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
        return parse_summary(self.get_json(path, params))

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
        body = self.get_json(path, params)
        if not isinstance(body, dict) or not isinstance(body.get("data"), list):
            raise InvalidResponse(f"{path}: expected an object with a data list")
        pagination = body.get("pagination")
        pages = 1
        if isinstance(pagination, dict):
            value = pagination.get("total_pages")
            if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
                pages = value
            elif value is not None:
                raise InvalidResponse(f"{path}: pagination.total_pages is {value!r}")
        return body["data"], pages

    def get_json(self, path: str, params: Mapping[str, str]) -> object:
        """GET a path under the base URL and return the decoded JSON body, or raise ApiError."""
        try:
            return self._get_json(path, params)
        except ApiError as error:
            # An API may quote the key back in its error message: it must not travel on
            # to the landing page or the state file.
            text = str(error)
            if self._key and self._key in text:
                error.args = (text.replace(self._key, "<redacted>"),)
            raise

    def _get_json(self, path: str, params: Mapping[str, str]) -> object:
        query = urlencode(params, safe=",:@")
        url = self.base_url + path + (f"?{query}" if query else "")
        deadline = time.monotonic() + self.timeout
        try:
            response = self._session.get(url, headers=self._auth, timeout=self.timeout,
                                         stream=True, allow_redirects=False)
        except requests.Timeout:
            raise Timeout(f"no answer within {self.timeout:g}s") from None
        except requests.ConnectionError as exc:
            raise ConnectionFailed(f"connection failed: {_short(exc)}") from None
        except requests.RequestException as exc:
            raise ConnectionFailed(f"request failed: {_short(exc)}") from None
        with response:
            raw = self._read_capped(response, deadline)
        status = response.status_code
        body: object = None
        decode_error: str | None = None
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            decode_error = "body is not valid JSON"
        if 200 <= status <= 299:
            if decode_error:
                raise InvalidResponse(decode_error, status)
            return body
        raise error_for_status(status, body, response.headers.get("Retry-After"))

    def _read_capped(self, response: requests.Response, deadline: float) -> bytes:
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
                if time.monotonic() > deadline:
                    # A body that trickles in slowly must not hold the poller forever.
                    raise Timeout(f"body not complete within {self.timeout:g}s", None)
        except requests.Timeout:
            raise Timeout(f"body not complete within {self.timeout:g}s") from None
        except requests.RequestException as exc:
            raise ConnectionFailed(f"reading the body failed: {_short(exc)}") from None
        return b"".join(chunks)


def _short(exc: BaseException) -> str:
    # requests' messages carry the URL (never the key, which is a header); keep them short.
    text = str(exc)
    return text if len(text) <= 200 else text[:200] + "..."
