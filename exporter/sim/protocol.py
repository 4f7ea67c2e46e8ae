"""The Exec API's wire conventions, as its documentation states them.

The error envelope ``{"error": {"type", "code", "message"}}`` and its usual answers,
the bearer key, query values, ``page``/``page_size`` paging, and the rolling minute
and day rate limits.
"""

from __future__ import annotations

import hmac
import math
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

from .loopback import APIRequest, APIResponse

T = TypeVar("T")
MAX_PAGE_SIZE = 100
DEFAULT_PAGE_SIZE = 50


def error_response(status: int, type_: str, code: str, message: str, *,
                   retry_after: int | None = None,
                   headers: Mapping[str, str] | None = None) -> APIResponse:
    """The Exec error envelope ``{"error": {"type", "code", "message"}}``."""
    error: dict[str, Any] = {"type": type_, "code": code, "message": message}
    if retry_after is not None:
        error["retry_after"] = retry_after
    return APIResponse.json(status, {"error": error}, headers)


# The documented refusals, as error_response's arguments.
UNAUTHORIZED = (401, "authentication_error", "invalid_api_key", "Invalid or inactive API key")
FORBIDDEN = (403, "authorization_error", "workspace_inactive", "Workspace is inactive")


class Refused(Exception):
    """Raised by an endpoint to answer ``response`` (an error envelope) instead."""

    def __init__(self, response: APIResponse) -> None:
        super().__init__(response.status)
        self.response = response


def bearer_ok(request: APIRequest, api_key: str) -> bool:
    """True when the request carries ``Authorization: Bearer <api_key>``."""
    scheme, _, token = (request.headers.get("Authorization") or "").partition(" ")
    # Constant time, as a real server compares secrets.
    return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(),
                                                               api_key.encode())


def parse_bool(value: str) -> bool:
    """``true``/``false`` (any case); anything else raises ValueError."""
    lowered = value.strip().lower()
    if lowered not in ("true", "false"):
        raise ValueError(f"not a boolean: {value!r}")
    return lowered == "true"


def parse_datetime(value: str) -> float:
    """An ISO 8601 date-time as epoch seconds (naive means UTC); ValueError if bad."""
    parsed = datetime.fromisoformat(value.strip())
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp()


def one_of(*choices: str, many: bool = False) -> Callable[[str], str]:
    """A parser accepting only ``choices`` (``many``: a comma-separated list of them)."""
    def parse(value: str) -> str:
        if (split_list(value) if many else {value}) - set(choices):
            raise ValueError(value)
        return value
    return parse


def split_list(value: str | None) -> frozenset[str]:
    """A comma-separated query value as a set, blanks dropped."""
    return frozenset(part.strip() for part in (value or "").split(",") if part.strip())


def query_value(query: Mapping[str, str], name: str, parse: Callable[[str], T],
                default: T) -> T:
    """The query's ``name`` parsed, ``default`` when absent or empty; a bad value is
    refused with a 400 naming the parameter."""
    raw = query.get(name)
    if not raw:
        return default
    try:
        return parse(raw)
    except ValueError:
        raise Refused(error_response(400, "invalid_request", "invalid_parameter",
                                     f"Invalid {name}: {raw}")) from None


def paginate(items: Sequence[Any], query: Mapping[str, str]) -> APIResponse:
    """One page of ``items`` in the Exec list shape, or a 400 for bad paging.

    ``page`` is 1-indexed; ``page_size`` defaults to 50 and may not exceed 100.
    A page past the end is empty (not an error)."""
    try:
        page = int(query.get("page", "1"))
        page_size = int(query.get("page_size", str(DEFAULT_PAGE_SIZE)))
    except ValueError:
        page = 0
    if page < 1 or not 1 <= page_size <= MAX_PAGE_SIZE:
        return error_response(400, "invalid_request", "invalid_pagination",
                              "Invalid pagination parameters")
    start = (page - 1) * page_size
    return APIResponse.json(200, {
        "data": list(items[start : start + page_size]),
        "pagination": {"page": page, "page_size": page_size, "total_count": len(items),
                       "total_pages": math.ceil(len(items) / page_size)},
    })


class RollingLimiter:
    """Rolling-window request limits (the Exec API's minute and day quotas)."""

    def __init__(self, limits: Sequence[tuple[float, int]]) -> None:
        if any(limit < 1 for _, limit in limits):
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
