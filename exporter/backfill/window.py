"""The time range of a backfill: ``--since``, ``--until``, ``--step`` into instants."""

from __future__ import annotations

import contextlib
import datetime as dt
from dataclasses import dataclass

from ..budget import DAY
from ..config import parse_datetime, parse_duration

MIN_STEP = 3600  # finer steps cost a request per target per step for little insight
HEAD_RANGE = 3 * 3600  # Prometheus's head block: backfilling it is not safe (docs/storage.md)


class UsageError(Exception):
    """Bad input: the run would be wrong or unsafe; exit 2 and send nothing."""


@dataclass(frozen=True)
class Window:
    """The instants to backfill: ``until - since`` to ``until`` inclusive, every ``step``."""

    since: int
    until: int
    step: int

    @property
    def instants(self) -> list[int]:
        """Every instant, oldest first."""
        return list(range(self.until - self.since, self.until + 1, self.step))


def parse_time(text: str, now: float) -> int:
    """``--until``: ``now``, unix seconds, or an ISO 8601 date-time (UTC unless it says)."""
    value = text.strip()
    if value == "now":
        return int(now)
    with contextlib.suppress(ValueError):
        return int(float(value))
    try:
        return int(parse_datetime(value).timestamp())
    except ValueError:
        raise UsageError(f"--until: {text!r} is not 'now', unix seconds or an ISO 8601 "
                         "date-time such as 2026-11-30T00:00:00Z") from None


def parse_window(since: str | None, until: str | None, step: str, now: float) -> Window:
    """Validate the flags into a :class:`Window`; raise UsageError naming the flag."""
    if since is None:
        raise UsageError("--since: required (how far back, e.g. --since=30d)")
    try:
        since_s = parse_duration(since)
    except ValueError as exc:
        raise UsageError(f"--since: {exc}") from None
    try:
        step_s = parse_duration(step)
    except ValueError as exc:
        raise UsageError(f"--step: {exc}") from None
    if step_s < MIN_STEP:
        raise UsageError(f"--step: {step} is under the minimum of 1h (each step costs one "
                         "request per target)")
    if not since_s.is_integer() or not step_s.is_integer() or since_s % step_s:
        raise UsageError(f"--since: {since} is not a multiple of --step={step}")
    if until is not None:
        until_s = parse_time(until, now)
        if until_s > now:
            moment = dt.datetime.fromtimestamp(until_s, dt.UTC).isoformat()
            raise UsageError(f"--until: {moment} is in the future; the API knows only the past")
    else:  # the latest UTC midnight (steps of days) or hour 3 h ago or more: outside the
        # head block, the same for a rerun that day, and on the round times dashboards show
        align = DAY if step_s % DAY == 0 else 3600
        until_s = int((now - HEAD_RANGE) // align * align)
    return Window(int(since_s), until_s, int(step_s))


def iso(seconds: float) -> str:
    return dt.datetime.fromtimestamp(seconds, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
