"""``exec-exporter backfill``: past values of every target, as OpenMetrics for promtool.

The summary endpoint answers "as of" any past instant: ``end_date`` = the
instant (and ``start_date`` = instant - window for a rolling-window cohort)
gives the value the exporter would have exported then. So one summary request
per target and instant, from ``until - since`` to ``until`` every ``step``,
fills Prometheus with history before the first scrape::

    exec-exporter backfill --config.file=config.yaml --since=30d --output=history.om
    promtool tsdb create-blocks-from openmetrics history.om ./blocks

Flow: validate everything (bad input: exit 2, nothing sent), decide the
targets (discovery included), plan the requests (one per distinct query: a
fixed-end cohort asks once for every instant past its end), print the plan,
send what the journal does not already hold within the configured minute and
day budgets, then write the file. The journal (``OUTPUT.journal``) records each
finished request as one JSON line under a fingerprint of the configuration and
the time range, so a stopped run (Ctrl-C, SIGTERM, a crash) resumes where it
was, and an output of another configuration is never overwritten.

With ``planner.mode: auto`` (the default) the cohorts of a scenario and date
range that one participants pull serves are derived from one pull per instant
where that costs fewer requests than a summary per cohort (:func:`plan_pulls`,
:class:`Derivation`): each such cohort is first proven at the newest instant
against its own summary (:func:`exporter.aggregate.compare`), and one that does
not reproduce it is written from summaries at every instant. The member lists
the cohorts' groups need are read once per run. ``planner.mode: summary``
sends one summary request per distinct query, as before.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import hashlib
import json
import logging
import math
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.openmetrics.exposition import generate_latest

from . import logs
from .aggregate import Precision, aggregate, compare
from .budget import DAY, MINUTE, Budget, open_budget
from .client import (
    ApiError,
    BadRequest,
    ExecClient,
    Forbidden,
    Member,
    NotFound,
    Page,
    ParticipantRow,
    RateLimited,
    Summary,
    Unauthorized,
)
from .collector import (
    CACHED,
    INFO_FAMILY,
    INFO_POSITION,
    TARGET_FAMILIES,
    info_samples,
    target_samples,
)
from .config import (
    CohortConfig,
    Config,
    ConfigError,
    PlannerConfig,
    format_duration,
    load_api_key,
    load_config,
    parse_duration,
)
from .discovery import Discovery, Lists
from .planner import PAGE_SIZE, DatesKey, choose, cohort_filter, pages_for, pull_groups
from .scheduler import effective_interval
from .state import StateFile
from .store import TargetState
from .targets import Target, TargetKey, select_targets

log = logging.getLogger(__name__)

MIN_STEP = 3600  # finer steps cost a request per target per step for little insight
HEAD_RANGE = 3 * 3600  # Prometheus's head block: backfilling it is not safe (docs/storage.md)
JOURNAL_VERSION = 1
TRANSIENT_TRIES = 4  # timeouts, 5xx, invalid bodies: tries per request before giving up
# The HELP strings of /metrics say "as of the last successful poll"; a backfilled value
# is the API's answer as of its sample's timestamp.
AS_OF = "as of the sample's timestamp (backfilled)"
PROGRESS_EVERY = 30.0  # seconds between plain progress lines (not a terminal)

# A request, as sent: the scenario and its sorted query parameters.
RequestKey = tuple[str, tuple[tuple[str, str], ...]]
# A page of a list, as sent: its kind (PARTICIPANTS or MEMBERS), the scenario or
# group, and the sorted query parameters (page and page_size included).
PageKey = tuple[str, str, tuple[tuple[str, str], ...]]
PARTICIPANTS = "participants"
MEMBERS = "members"
SUMMARY = "summary"


class UsageError(Exception):
    """Bad input: the run would be wrong or unsafe; exit 2 and send nothing."""


# --- the time range -----------------------------------------------------------------


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
        parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(f"--until: {text!r} is not 'now', unix seconds or an ISO 8601 "
                         "date-time such as 2026-11-30T00:00:00Z") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.UTC)
    return int(parsed.timestamp())


def default_until(step: int, now: float) -> int:
    """The latest UTC midnight (a step of whole days) or whole hour (other steps) at
    least 3 hours ago: outside Prometheus's head block, and the same instant for a
    rerun the same day, so the run's points sit on the round times dashboards show."""
    align = DAY if step % DAY == 0 else 3600
    return int((now - HEAD_RANGE) // align * align)


def parse_window(since: str | None, until: str | None, step: str, now: float,
                 resumed_until: int | None = None) -> Window:
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
    elif resumed_until is not None:
        until_s = resumed_until
    else:
        until_s = default_until(int(step_s), now)
    return Window(int(since_s), until_s, int(step_s))


# --- the plan -----------------------------------------------------------------------


def _iso(seconds: float) -> str:
    return dt.datetime.fromtimestamp(seconds, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def as_of_query(cohort: CohortConfig, instant: int) -> dict[str, str] | None:
    """The summary query that gives ``cohort``'s value as of ``instant``, or None
    when the cohort has not started yet (a fixed ``start_date`` after the instant).

    ``end_date`` = the instant; a fixed ``end_date`` before the instant stays (the
    value froze there, as the running exporter reports it); a rolling window
    starts ``window`` before the instant.
    """
    if cohort.start_date is not None and cohort.start_date.timestamp() > instant:
        return None
    params = cohort.query(float(instant))  # filters, fixed start, window start
    end = float(instant)
    if cohort.end_date is not None:
        end = min(end, cohort.end_date.timestamp())
    params["end_date"] = _iso(end)
    return params


def request_key(scenario: str, params: Mapping[str, str]) -> RequestKey:
    """A hashable, order-independent name for one request."""
    return (scenario, tuple(sorted(params.items())))


@dataclass(frozen=True)
class Point:
    """One (target, instant) and the request that answers it."""

    target: Target
    instant: int
    request: RequestKey


@dataclass
class Plan:
    """Every point to fill and the distinct requests they need, oldest instant first."""

    targets: list[Target]
    window: Window
    points: list[Point] = field(default_factory=list)
    requests: list[RequestKey] = field(default_factory=list)
    skipped: int = 0  # points before their cohort's start_date: no request, no sample


def make_plan(targets: Sequence[Target], window: Window) -> Plan:
    """One point per target and instant; requests deduplicated (a cohort with a fixed
    ``end_date`` in the past asks the same question at every later instant)."""
    plan = Plan(list(targets), window)
    seen: set[RequestKey] = set()
    for instant in window.instants:
        for target in targets:
            params = as_of_query(target.cohort, instant)
            if params is None:
                plan.skipped += 1
                continue
            key = request_key(target.scenario, params)
            plan.points.append(Point(target, instant, key))
            if key not in seen:
                seen.add(key)
                plan.requests.append(key)
    return plan


def estimate_seconds(requests: int, budget: Budget, now: float) -> float:
    """About how long ``requests`` take within ``budget`` (minute pacing, and whole
    days of waiting once the rolling day is spent)."""
    if requests <= 0:
        return 0.0
    minute_left, day_left = budget.remaining(now)
    seconds = max(0, requests - minute_left) * 60.0 / budget.minute_limit
    beyond = requests - day_left
    if beyond > 0:
        seconds = max(seconds, math.ceil(beyond / budget.day_limit) * DAY)
    return seconds


def describe(plan: Plan, todo: int, budget: Budget, now: float, listing: int,
             daemon_spent: int | None, groups: Sequence[PullGroup] | None = None) -> str:
    """The plan printed before anything is sent. With ``groups`` (``planner.mode:
    auto``): both ways' requests per scenario and date range, and the chosen total."""
    w = plan.window
    lines = [
        f"backfill: {len(plan.targets)} targets x {len(w.instants)} instants "
        f"(every {format_duration(w.step)} from {_iso(w.until - w.since)} to {_iso(w.until)})",
        f"points: {len(plan.points)}"
        + (f" ({plan.skipped} before their cohort's start_date are left out)"
           if plan.skipped else ""),
    ]
    chosen = [g for g in groups or () if g.source == PARTICIPANTS]
    if groups is None or not chosen:
        total = len(plan.requests)
        lines.append(f"requests: {total} summary requests (one per distinct as-of query)"
                     + ("" if groups is None else "; no scenario has cohorts that one "
                        "participants pull per instant serves for fewer requests")
                     + (f"; {total - todo} already done, {todo} to send"
                        if todo != total else ""))
    else:
        lines.append(f"one summary per target and instant: {len(plan.requests)} requests")
        for g in groups or ():
            way = f"{g.summary_cost} summaries"
            if len(g.targets) > 1:
                way += (f", or {g.proofs} proof summaries + {len(g.pulls)} pulls x "
                        f"{g.pages} page{'s' if g.pages > 1 else ''}"
                        + (f" + {len(g.members)} member lists" if g.members else "")
                        + (f" ({g.member_cost} pages)" if g.member_cost > len(g.members)
                           else "")
                        + f" = {g.participants_cost}")
            lines.append(f"  {g.label()}: {way} -> {g.source}")
        total = sum(g.cost for g in groups or ())
        lines.append(f"requests: about {total} with participants pulls where cheaper "
                     f"({len(plan.requests) - total} fewer; pages are 1 per pull until a "
                     f"pull's total_count says)"
                     + (f"; {total - todo} already done, about {todo} to send"
                        if todo != total else ""))
        lines.append("member lists are read once, today: group cohorts' past values use "
                     "today's membership (docs/backfill.md)")
    if listing:
        lines.append(f"discovery: {listing} listing requests were sent to find the targets")
    if daemon_spent is not None:
        lines.append(f"state file: the running exporter spent {daemon_spent} requests in the "
                     "last 24 h; they count against the budget")
    _, day_left = budget.remaining(now)
    lines.append(f"budget: {budget.minute_limit}/minute, {budget.day_limit}/day "
                 f"({day_left} left in the rolling day)")
    eta = estimate_seconds(todo, budget, now)
    took = f"about {format_duration(eta)}" if eta >= 60 else "under a minute"
    lines.append(f"time at this budget: {took}"
                 + (" (more than the day budget: the run waits for the rolling day)"
                    if todo > day_left else ""))
    if w.since > 15 * DAY:
        lines.append("note: Prometheus keeps backfilled data only within its retention "
                     "(--storage.tsdb.retention.time, 15d by default)")
    return "\n".join(lines)


# --- fingerprint and journal ----------------------------------------------------------


# The settings that decide the file's content: the API that answers, the targets (their
# scenarios and display names, the cohorts' filters, what discovery finds and what
# max_targets keeps). Limits, timeouts, intervals, the planner and the listings change
# only how and when the same values are fetched.
CONTENT_SETTINGS: dict[str, Any] = {
    "api": {"base_url"}, "scenarios": True, "cohorts": True,
    "discovery": {"scenarios", "group_cohorts"}, "max_targets": True}


def fingerprint(config: Config, window: Window) -> str:
    """What decides the file's content: :data:`CONTENT_SETTINGS` and the time range.

    Any other edit of the configuration (the daemon's ``refresh_interval``, the
    planner, a smaller budget) lets a stopped run resume: it writes the same values.
    """
    doc = config.model_dump(mode="json", include=CONTENT_SETTINGS)
    doc["backfill"] = {"since": window.since, "until": window.until, "step": window.step}
    text = json.dumps(doc, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def base_fingerprint(config: Config, since: int, step: int) -> str:
    """The fingerprint without ``until``: a rerun without ``--until`` resumes its run."""
    return fingerprint(config, Window(since, 0, step))


@dataclass
class Outcome:
    """A finished request: its summary, or the reason the API refused it for good."""

    summary: Summary | None
    error: str | None = None


@dataclass
class PageOutcome:
    """A finished list request (a participants page, a member list page): the page,
    or the reason the API refused it for good."""

    page: Page | None
    error: str | None = None


def page_key(kind: str, subject: str, params: Mapping[str, str]) -> PageKey:
    """A hashable, order-independent name for one list page request."""
    return (kind, subject, tuple(sorted(params.items())))


_ITEM_TYPES: dict[str, type[ParticipantRow] | type[Member]] = {
    PARTICIPANTS: ParticipantRow, MEMBERS: Member}


class Journal:
    """``OUTPUT.journal``: a header line, then one JSON line per finished request and one
    (``{"sent": t}``) per request sent, so a resumed run counts the stopped run's spend.

    A summary line has ``scenario``, ``params`` and ``summary``; a list page line (a
    participants page or a member list page) has ``kind``, ``subject``, ``params`` and
    the page's ``items``, ``total_count`` and ``total_pages``.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._handle: TextIO | None = None

    def read(self) -> tuple[dict[str, Any] | None, dict[RequestKey, Outcome],
                            dict[PageKey, PageOutcome], list[float]]:
        """The header (None without a journal), the finished summary requests, the
        finished list page requests and when requests were sent.

        A torn last line (a run killed mid-write) is ignored: that request is sent again.
        """
        try:
            lines = self.path.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return None, {}, {}, []
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"--output: cannot read the journal {self.path}: {exc}") from None
        try:
            header = json.loads(lines[0]) if lines else None
        except ValueError:
            header = None
        if not isinstance(header, dict) or header.get("kind") != "exec-exporter-backfill":
            raise UsageError(f"--output: {self.path} is not a backfill journal; remove it or "
                             "choose another --output")
        done: dict[RequestKey, Outcome] = {}
        pages: dict[PageKey, PageOutcome] = {}
        sent: list[float] = []
        for line in lines[1:]:
            try:
                item = json.loads(line)
                if "sent" in item:
                    sent.append(float(item["sent"]))
                    continue
                kind = item.get("kind")
                if kind in _ITEM_TYPES:
                    pkey = page_key(kind, str(item["subject"]), dict(item["params"]))
                    pages[pkey] = PageOutcome(_page_from_json(kind, item), item.get("error"))
                    continue
                key = request_key(str(item["scenario"]), dict(item["params"]))
                summary = Summary.from_json(item["summary"]) if item.get("summary") else None
                done[key] = Outcome(summary, item.get("error"))
            except (ValueError, KeyError, TypeError, AttributeError, ApiError):
                continue
        return header, done, pages, sent

    def start(self, header: dict[str, Any], fresh: bool) -> None:
        """Open for appending; ``fresh`` writes a new file with ``header``."""
        if fresh:
            self.path.write_text(json.dumps(header, sort_keys=True) + "\n", encoding="utf-8")
        self._handle = self.path.open("a", encoding="utf-8")

    def add(self, key: RequestKey, outcome: Outcome) -> None:
        """Record one finished request (flushed at once: a stop loses nothing)."""
        assert self._handle is not None
        item = {"scenario": key[0], "params": dict(key[1]),
                "summary": outcome.summary.to_json() if outcome.summary else None,
                "error": outcome.error}
        self._handle.write(json.dumps(item, sort_keys=True, separators=(",", ":")) + "\n")
        self._handle.flush()

    def add_page(self, key: PageKey, outcome: PageOutcome) -> None:
        """Record one finished list page request (flushed at once)."""
        assert self._handle is not None
        kind, subject, params = key
        page = outcome.page
        item: dict[str, Any] = {"kind": kind, "subject": subject, "params": dict(params),
                                "error": outcome.error}
        if page is not None:
            item.update(items=[dataclasses.asdict(x) for x in page.items], page=page.page,
                        total_count=page.total_count, total_pages=page.total_pages)
        self._handle.write(json.dumps(item, sort_keys=True, separators=(",", ":")) + "\n")
        self._handle.flush()

    def add_sent(self, at: float) -> None:
        """Record that a request was sent at ``at`` (before it is sent)."""
        assert self._handle is not None
        self._handle.write(json.dumps({"sent": round(at, 3)}) + "\n")
        self._handle.flush()

    def close(self) -> None:
        """Flush to disk and close."""
        if self._handle is not None:
            with contextlib.suppress(OSError):
                os.fsync(self._handle.fileno())
            self._handle.close()
            self._handle = None


def _page_from_json(kind: str, item: Mapping[str, Any]) -> Page | None:
    if item.get("items") is None:
        return None
    make = _ITEM_TYPES[kind]
    total = item.get("total_count")
    return Page(tuple(make(**x) for x in item["items"]), int(item["page"]),
                None if total is None else int(total), int(item["total_pages"]))


# --- the output ----------------------------------------------------------------------


class _Families:
    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterator[Metric]:
        yield from self.families


def render(plan: Plan, results: Mapping[RequestKey, Outcome],
           extra: Mapping[str, str] | None = None,
           derived: Mapping[tuple[TargetKey, int], Summary] | None = None) -> bytes:
    """The OpenMetrics text: the ``exec_scenario_*`` families with the names, HELP, types
    and labels of ``/metrics``, each series' samples together and in time order (the
    format wants every family, and promtool every series, contiguous), then ``# EOF``.

    ``extra`` labels go on every sample: the target labels Prometheus adds when it
    scrapes (``job``, ``instance``...), so backfilled and scraped samples are one series.
    ``derived`` values (a proven cohort aggregated from a participants pull) stand in for
    the summary request of their point.
    """
    extra = dict(extra or {})
    derived = derived or {}
    data_specs = TARGET_FAMILIES[:INFO_POSITION]
    series: list[dict[tuple[str, ...], list[tuple[int, float]]]] = [{} for _ in data_specs]
    info: dict[tuple[str, ...], list[tuple[int, float]]] = {}
    by_instant: dict[int, list[TargetState]] = {}
    for point in plan.points:
        summary = derived.get((point.target.key, point.instant))
        if summary is None:
            outcome = results.get(point.request)
            summary = outcome.summary if outcome is not None else None
        if summary is None:
            continue
        state = TargetState(target=point.target, summary=summary,
                            last_success=float(point.instant), up=True)
        by_instant.setdefault(point.instant, []).append(state)
        for index, labels, value in target_samples(state, fresh=True):
            if index < INFO_POSITION:  # data only: self-metrics describe the daemon
                series[index].setdefault(labels, []).append((point.instant, value))
    for instant, states in by_instant.items():
        for labels in info_samples(states):
            info.setdefault(labels, []).append((instant, 1.0))
    families: list[Metric] = []
    for spec, found in [*zip(data_specs, series, strict=True), (INFO_FAMILY, info)]:
        family = GaugeMetricFamily(spec.name, spec.documentation.replace(CACHED, AS_OF),
                                   labels=[*spec.labels, *extra])
        for labels in sorted(found):
            for instant, value in sorted(found[labels]):
                family.add_metric([*labels, *extra.values()], value, timestamp=instant)
        if family.samples:
            families.append(family)
    return generate_latest(_Families(families))


def write_atomically(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename."""
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


# --- sending -------------------------------------------------------------------------


class StopFlag:
    """Set by the SIGINT/SIGTERM handler, polled by the waits.

    A plain attribute rather than a ``threading.Event``: the handler runs on the main
    thread between two bytecodes, possibly while that thread holds the Event's
    internal lock inside ``wait()``, and ``Event.set()`` there would deadlock.
    """

    POLL = 0.2  # how soon a wait notices a stop

    def __init__(self) -> None:
        self.stopped = False

    def set(self) -> None:
        """Ask every wait to end (safe inside a signal handler)."""
        self.stopped = True

    def is_set(self) -> bool:
        """Whether a stop was asked for."""
        return self.stopped

    def wait(self, seconds: float) -> bool:
        """Sleep up to ``seconds``; True as soon as a stop is asked for."""
        deadline = time.monotonic() + seconds
        while not self.stopped:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            time.sleep(min(left, self.POLL))
        return True


class Stopped(Exception):
    """SIGINT or SIGTERM arrived: stop cleanly, keep the journal."""


class WorkspaceError(Exception):
    """401 or 403: no request can succeed; stop."""


class Sender:
    """Sends requests one at a time through the :class:`~exporter.budget.Budget`.

    Pacing is the budget's: every request is claimed in its ledger before it is sent,
    retries included. With ``--state.file`` that ledger is the workspace's
    (:mod:`exporter.ledger`), so a daemon beside the backfill leaves less room for it
    and sees its requests, re-read at least every few seconds while waiting. A 429
    holds every request for ``retry_after``.
    """

    WAKE = 5.0  # the longest sleep: the stop flag and the shared ledger are rechecked

    def __init__(self, client: ExecClient, budget: Budget,
                 now: Callable[[], float] = time.time,
                 sleep: Callable[[float], bool] | None = None,
                 on_wait: Callable[[float], None] | None = None,
                 on_send: Callable[[float], None] | None = None,
                 own: Iterable[float] = ()) -> None:
        self.client = client
        self.budget = budget
        self.now = now
        self.stop = StopFlag()
        self.sleep = sleep or self.stop.wait
        self.on_wait = on_wait
        self.on_send = on_send
        self.sent_count = 0
        self.rate_limited = 0
        self._hold_until = 0.0
        self._claimed = 0.0
        # This run's requests (and a stopped run's, from the journal): the rest of the
        # ledger is other processes'.
        self._own: set[float] = {round(t, 3) for t in own}
        # What to leave free, per (minute, day), once another process is seen spending
        # the quota (a daemon on the same state file): see :meth:`share_with`.
        self._share = (0, 0)
        self.leave = (0, 0)

    def share_with(self, minute: int, day: int) -> None:
        """Leave ``minute`` and ``day`` requests of every window to other processes on
        the shared ledger (at most half of each, so the backfill always progresses),
        from the first request of theirs seen within the day: a daemon beside the
        backfill keeps what its polling needs. Alone, the backfill uses the whole
        budget."""
        self._share = (max(0, min(minute, self.budget.minute_limit // 2)),
                       max(0, min(day, self.budget.day_limit // 2)))

    def _others_seen(self, now: float) -> bool:
        if self.leave == self._share:
            return True
        if any(round(t, 3) not in self._own for t in self.budget.ledger(now)):
            self.leave = self._share
            log.info("another process spends this workspace's quota: leaving it %d "
                     "requests a minute and %d a day", *self.leave)
        return self.leave == self._share

    def hold(self, seconds: float) -> None:
        """Send nothing for ``seconds`` (a 429's ``retry_after``, a transient backoff)."""
        self._hold_until = max(self._hold_until, self.now() + seconds)

    def acquire(self) -> None:
        """Wait until the budget (and any hold) lets one request go, and count it."""
        self._wait_for_slot()
        self.count_send()

    def _wait_for_slot(self) -> None:
        while True:
            if self.stop.is_set():
                raise Stopped
            now = self.now()
            self._others_seen(now)
            at = max(self.budget.next_allowed(now, leave=self.leave), self._hold_until)
            if at <= now:
                if self.budget.claim(now, leave=self.leave):
                    self._claimed = now
                    self._own.add(round(now, 3))
                    return
                continue  # another process took the slot: the ledger says until when
            if self.on_wait is not None:
                self.on_wait(at)
            if self.sleep(min(at - now, self.WAKE)):
                raise Stopped

    def count_send(self) -> None:
        """The request just claimed is about to be sent: count it (and journal it)."""
        self.sent_count += 1
        if self.on_send is not None:
            self.on_send(self._claimed)

    def fetch(self, key: RequestKey) -> Outcome | None:
        """The outcome of one request; None when it kept failing (try again next run)."""
        scenario, params = key
        sent = self._send(lambda: self.client.summary(scenario, dict(params)),
                          f"{scenario} {dict(params).get('end_date')}", "no value for this point")
        return None if sent is None else Outcome(*sent)

    def fetch_page(self, key: PageKey) -> PageOutcome | None:
        """The outcome of one list page request (a participants page or a member list
        page); None when it kept failing."""
        kind, subject, params = key
        query = dict(params)
        if kind == PARTICIPANTS:
            def call() -> Page:
                return self.client.participants(subject, query)
            what = f"participants of {subject} {query.get('end_date')} page {query['page']}"
        else:
            def call() -> Page:
                return self.client.members(query)
            what = f"members of group {subject} page {query['page']}"
        sent = self._send(call, what, "its cohorts use summary requests")
        return None if sent is None else PageOutcome(*sent)

    def _send(self, call: Callable[[], Any], what: str,
              refused: str) -> tuple[Any, str | None] | None:
        """(answer, None), or (None, reason) when the API refused it for good; None
        when it kept failing."""
        failures = 0
        while True:
            self.acquire()
            try:
                return call(), None
            except RateLimited as exc:
                # Not a failure of this request: every request waits, then it goes again.
                self.rate_limited += 1
                self.hold(exc.retry_after)
                log.warning("rate limited by the API; every request waits %.0fs", exc.retry_after)
            except (Unauthorized, Forbidden) as exc:
                raise WorkspaceError(f"{exc.reason}: {exc}") from None
            except (NotFound, BadRequest) as exc:
                # A scenario missing, or a query the API refuses, stays so.
                log.warning("%s: %s; %s", what, exc, refused)
                return None, exc.reason
            except ApiError as exc:
                failures += 1
                log.warning("%s: %s (try %d of %d)", what, exc, failures, TRANSIENT_TRIES)
                if failures >= TRANSIENT_TRIES:
                    return None
                self.hold(min(2.0 ** failures, 30.0))


# --- answering requests: the journal first, then the API ----------------------------


class Fetcher:
    """Answers each request from the journal when a run already finished it, else sends it
    through the :class:`Sender` and journals the answer at once. So every finished
    request, summary or list page, is sent once over any number of reruns, and the
    choices made from the answers come out the same on a rerun."""

    def __init__(self, sender: Sender, journal: Journal, done: dict[RequestKey, Outcome],
                 pages: dict[PageKey, PageOutcome],
                 on_sent: Callable[[], None] | None = None) -> None:
        self.sender = sender
        self.journal = journal
        self.done = done
        self.pages = pages
        self.on_sent = on_sent

    def summary(self, key: RequestKey) -> Outcome | None:
        """The outcome of a summary request; None when it kept failing this run."""
        if key in self.done:
            return self.done[key]
        outcome = self.sender.fetch(key)
        if outcome is not None:
            self.journal.add(key, outcome)
            self.done[key] = outcome
            self._sent()
        return outcome

    def page(self, key: PageKey) -> PageOutcome | None:
        """The outcome of a list page request; None when it kept failing this run."""
        if key in self.pages:
            return self.pages[key]
        outcome = self.sender.fetch_page(key)
        if outcome is not None:
            self.journal.add_page(key, outcome)
            self.pages[key] = outcome
            self._sent()
        return outcome

    def _sent(self) -> None:
        if self.on_sent is not None:
            self.on_sent()


# --- derived cohorts: one participants pull instead of a summary per cohort ---------


def pull_dates(cohort: CohortConfig, instant: int) -> dict[str, str] | None:
    """The participants query of ``cohort``'s pull as of ``instant``: the dates of its
    as-of summary query only (the rows are kept or dropped here, by the cohort's
    filter), or None before the cohort's ``start_date``."""
    params = as_of_query(cohort, instant)
    if params is None:
        return None
    return {k: params[k] for k in ("start_date", "end_date") if k in params}


def _paged(query: Mapping[str, str], page: int) -> dict[str, str]:
    return {**query, "page": str(page), "page_size": str(PAGE_SIZE)}


@dataclass
class PullGroup:
    """One scenario and date range (the cohorts one participants pull can serve), the
    distinct pulls of the run, newest first, and both ways' costs in requests."""

    scenario: str
    dates: DatesKey
    targets: list[Target]
    pulls: list[tuple[dict[str, str], list[int]]]  # pull dates -> its instants, newest first
    summary_cost: int  # distinct summary requests of these cohorts over the run
    proofs: int  # summary requests at the newest instant: the proofs, needed either way
    members: tuple[str, ...] = ()  # member lists this group adds to the run
    pages: int = 1  # per pull: 1 until a pull's total_count says
    source: str = SUMMARY
    # Pages of each member list it adds: 1 until a first page (or the daemon's saved
    # list, or the journal) says.
    member_pages: dict[str, int] = field(default_factory=dict)

    @property
    def member_cost(self) -> int:
        """The pages of the member lists this group adds."""
        return sum(self.member_pages.get(g, 1) for g in self.members)

    @property
    def participants_cost(self) -> int:
        """The proofs, every pull at ``pages`` pages, and the member lists' pages."""
        return self.proofs + len(self.pulls) * self.pages + self.member_cost

    @property
    def cost(self) -> int:
        """Requests of the chosen way."""
        return self.participants_cost if self.source == PARTICIPANTS else self.summary_cost

    def label(self) -> str:
        """``scenario=s all time (all, sales)``."""
        window, start, end = self.dates
        dates = (f"last {format_duration(window)}" if window is not None
                 else "all time" if start is None and end is None
                 else f"{start or '...'} .. {end or '...'}")
        names = ", ".join(t.cohort.name for t in self.targets)
        return f"scenario={self.scenario} {dates} ({names})"


def plan_pulls(plan: Plan, settings: PlannerConfig,
               known_pages: Mapping[PageKey, PageOutcome] | None = None,
               member_counts: Mapping[str, int] | None = None) -> list[PullGroup]:
    """Per scenario and date range, both costs over the whole run and the cheaper way.

    The participants way: the summaries at the newest instant (the proofs), one pull
    per distinct date range of the run (``ceil(participants / 100)`` pages, 1 until a
    pull's ``total_count`` says; a resumed run knows it from its journal) and the
    member lists of the groups its cohorts use that no group before it reads. A tie
    keeps the summaries; so does ``planner.mode: summary``, and so does a group of one
    cohort (the planner's own rule, :func:`exporter.planner.choose`).
    """
    groups: list[PullGroup] = []
    charged: set[str] = set()
    for (_, scenario, dates), members in pull_groups(plan.targets).items():
        keys = {t.key for t in members}
        points = [p for p in plan.points if p.target.key in keys]
        by_dates: dict[tuple[tuple[str, str], ...], tuple[dict[str, str], list[int]]] = {}
        for instant in reversed(plan.window.instants):
            query = pull_dates(members[0].cohort, instant)
            if query is not None:
                by_dates.setdefault(tuple(sorted(query.items())), (query, []))[1].append(instant)
        pulls = list(by_dates.values())
        newest = pulls[0][1][0] if pulls else None
        group = PullGroup(scenario, dates, list(members), pulls,
                          summary_cost=len({p.request for p in points}),
                          proofs=len({p.request for p in points if p.instant == newest}))
        if pulls and known_pages:
            first = known_pages.get(page_key(PARTICIPANTS, scenario, _paged(pulls[0][0], 1)))
            if first is not None and first.page is not None:
                group.pages = _pages_of(first.page)
        needs = dict.fromkeys(g for t in members for g in t.cohort.group_ids)
        group.members = tuple(g for g in needs if g not in charged)
        group.member_pages = {g: member_pages(g, known_pages, member_counts)
                              for g in group.members}
        if (settings.mode == "auto" and pulls
                and choose(len(members), len(members), group.pages) == PARTICIPANTS
                and group.participants_cost < group.summary_cost):
            group.source = PARTICIPANTS
            charged.update(group.members)
        else:
            group.members = ()
        groups.append(group)
    return groups


def member_pages(group_id: str, known_pages: Mapping[PageKey, PageOutcome] | None,
                 member_counts: Mapping[str, int] | None) -> int:
    """How many pages ``group_id``'s member list has: from its first page in the journal
    (a resumed run), else from the running daemon's saved list (the state file), else 1."""
    first = (known_pages or {}).get(_members_key(group_id, 1))
    if first is not None and first.page is not None:
        return _pages_of(first.page)
    count = (member_counts or {}).get(group_id)
    return pages_for(count) if count else 1


def _members_key(group_id: str, page_no: int) -> PageKey:
    return page_key(MEMBERS, group_id, {"group_ids": group_id, **_paged({}, page_no)})


def _pages_of(page: Page) -> int:
    return pages_for(page.total_count) if page.total_count is not None else page.total_pages


class Derivation:
    """Runs the participants side of the plan: member lists, proofs, pulls.

    Honesty as in the daemon: each cohort of a participants group is proven once, at
    the newest instant, where both its summary and the pull are fetched; only a cohort
    whose derived summary reproduces the endpoint's (counts exactly, averages within
    ``planner.tolerance``: :func:`exporter.aggregate.compare`) is derived at the other
    instants. One that does not is written from summaries at every instant and the log
    says which field differed. At the newest instant every cohort is written from its
    summary (it was fetched anyway).

    Member lists are read once per run: today's membership is applied to every past
    instant (as the summary endpoint's ``group_ids`` filter does; docs/backfill.md).
    """

    def __init__(self, groups: Sequence[PullGroup], fetcher: Fetcher,
                 settings: PlannerConfig) -> None:
        self.groups = [g for g in groups if g.source == PARTICIPANTS]
        self.fetcher = fetcher
        self.settings = settings
        self.precision = Precision()
        self.members: dict[str, frozenset[str]] = {}
        self.proven: set[TargetKey] = set()
        self.values: dict[tuple[TargetKey, int], Summary] = {}
        self.notes: list[str] = []  # one line per cohort not proven, per group dropped
        self.pulls = 0  # pulls whose rows served derived values (the proofs' included)

    def run(self) -> None:
        """Read, prove, pull; fills :attr:`values`. Raises Stopped/WorkspaceError."""
        for group_id in dict.fromkeys(g for grp in self.groups for g in grp.members):
            if self._needed(group_id):  # a group may have gone back to summaries
                self._read_members(group_id)
        proofs: dict[TargetKey, Summary] = {}
        for grp in self.groups:  # every proof summary first: they set the rounding
            newest = grp.pulls[0][1][0]
            for target in grp.targets:
                query = as_of_query(target.cohort, newest)
                assert query is not None
                outcome = self.fetcher.summary(request_key(target.scenario, query))
                if outcome is not None and outcome.summary is not None:
                    proofs[target.key] = outcome.summary
                    self.precision.observe(outcome.summary)
        for grp in self.groups:
            self._prove(grp, proofs)
            self._derive_past(grp)

    def _read_members(self, group_id: str) -> None:
        ids: list[str] = []
        page_no = 1
        while True:
            outcome = self.fetcher.page(_members_key(group_id, page_no))
            if outcome is None or outcome.page is None:
                self.notes.append(f"members of group {group_id}: not readable "
                                  f"({outcome.error if outcome else 'kept failing'}); "
                                  "its cohorts use summary requests")
                return
            if page_no == 1 and not self._still_cheaper(group_id, _pages_of(outcome.page)):
                return
            ids.extend(m.user_id for m in outcome.page.items)
            if page_no >= outcome.page.total_pages or not outcome.page.items:
                break
            page_no += 1
        self.members[group_id] = frozenset(ids)

    def _still_cheaper(self, group_id: str, pages: int) -> bool:
        """The member list's first page says how many pages it has: a group that added it
        and is no longer cheaper that way goes back to summaries (before its proofs).
        False when no group left needs the list (its other pages are not read)."""
        for grp in [g for g in self.groups if group_id in g.members]:
            grp.member_pages[group_id] = pages
            if grp.participants_cost >= grp.summary_cost:
                grp.source = SUMMARY
                self.groups.remove(grp)
                self.notes.append(f"{grp.label()}: the member list of group {group_id} has "
                                  f"{pages} pages, so {grp.participants_cost} requests against "
                                  f"{grp.summary_cost} summaries; summaries for these cohorts")
        return self._needed(group_id)

    def _needed(self, group_id: str) -> bool:
        return any(group_id in t.cohort.group_ids for g in self.groups for t in g.targets)

    def _pull(self, grp: PullGroup, query: Mapping[str, str],
              first: bool) -> tuple[list[ParticipantRow], int] | None:
        """Every row of one pull and its page count, or None (unavailable, failing,
        inconsistent, or, for the first pull, more pages than it saves)."""
        rows: list[ParticipantRow] = []
        total: int | None = None
        page_no = 1
        pages = 1
        while True:
            key = page_key(PARTICIPANTS, grp.scenario, _paged(query, page_no))
            outcome = self.fetcher.page(key)
            if outcome is None or outcome.page is None:
                why = outcome.error if outcome is not None else "kept failing"
                self.notes.append(f"{grp.label()}: the participants pull as of "
                                  f"{query.get('end_date')} failed ({why}); summaries there")
                return None
            page = outcome.page
            if page_no == 1:
                total, pages = page.total_count, _pages_of(page)
                grp.pages = pages
                if first and choose(len(grp.targets), len(grp.targets), pages) != PARTICIPANTS:
                    # The page count is learned here: a pull this long saves nothing.
                    self.notes.append(f"{grp.label()}: {pages} pages per pull cost as much "
                                      "as the summaries; summaries for these cohorts")
                    return None
            elif page.total_count != total:
                self.notes.append(f"{grp.label()}: the table changed between pages as of "
                                  f"{query.get('end_date')}; summaries there")
                return None
            rows.extend(page.items)
            if page_no >= page.total_pages or not page.items:
                break
            page_no += 1
        if len({r.user_id for r in rows}) != len(rows) or (total is not None
                                                           and total != len(rows)):
            self.notes.append(f"{grp.label()}: rows moved between pages as of "
                              f"{query.get('end_date')}; summaries there")
            return None
        return rows, pages

    def _derive(self, target: Target, rows: Sequence[ParticipantRow]) -> Summary:
        members = {g: self.members[g] for g in target.cohort.group_ids}
        keep = cohort_filter(target.cohort)
        return aggregate((r for r in rows if keep.keeps(r, members)), self.precision)

    def _prove(self, grp: PullGroup, proofs: Mapping[TargetKey, Summary]) -> None:
        candidates = [t for t in grp.targets if t.key in proofs
                      and all(g in self.members for g in t.cohort.group_ids)]
        if not candidates:
            return
        pulled = self._pull(grp, grp.pulls[0][0], first=True)
        if pulled is None:
            return
        rows, _pages = pulled
        self.pulls += 1
        newest = grp.pulls[0][1][0]
        for target in candidates:
            result = compare(self._derive(target, rows), proofs[target.key],
                             self.settings.tolerance)
            scenario, cohort = target.key
            if result.match:
                self.proven.add(target.key)
                continue
            log.warning("scenario=%s cohort=%s: the participants pull as of %s does not "
                        "reproduce its summary (%s); summaries for this cohort at every instant",
                        scenario, cohort, _iso(newest), result.describe())
            self.notes.append(f"scenario={scenario} cohort={cohort}: not reproduced by the "
                              f"pull ({result.describe()}); summaries at every instant")

    def _derive_past(self, grp: PullGroup) -> None:
        proven = [t for t in grp.targets if t.key in self.proven]
        for query, instants in grp.pulls[1:]:
            # As the planner chooses: the pull's pages (the last pull's count) plus a
            # summary for each cohort it cannot serve, against a summary per cohort.
            if choose(len(grp.targets), len(proven), grp.pages) != PARTICIPANTS:
                return
            pulled = self._pull(grp, query, first=False)
            if pulled is None:
                continue
            rows, _ = pulled
            self.pulls += 1
            for target in proven:
                derived = self._derive(target, rows)
                for instant in instants:
                    self.values[(target.key, instant)] = derived


# --- progress ------------------------------------------------------------------------


class Progress:
    """A tqdm bar on a terminal; a plain line every 30 s (and at the end) otherwise.

    The time left comes from ``time_left`` (the budget's estimate), not from the
    rate so far: a run that sent its first minute's requests in seconds is not
    about to finish.
    """

    BAR = "{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} requests [{elapsed}{postfix}]"

    def __init__(self, total: int, done: int, stream: TextIO,
                 time_left: Callable[[int], float] | None = None) -> None:
        self.total = total
        self.done = done
        self.stream = stream
        self.time_left = time_left
        self.bar: Any = None
        self._last_line = time.monotonic()
        if stream.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=done, file=stream, desc="backfill",
                            bar_format=self.BAR, dynamic_ncols=True)
            self.bar.set_postfix_str(self._left(), refresh=True)

    def _left(self) -> str:
        if self.time_left is None or self.done >= self.total:
            return ""
        seconds = self.time_left(self.total - self.done)
        return f"about {format_duration(seconds)} left" if seconds >= 60 else "under a minute left"

    def set_total(self, total: int) -> None:
        """The total once it is known (the pulls' pages, the summaries left)."""
        self.total = max(total, self.done)
        if self.bar is not None:
            self.bar.total = self.total
            self.bar.refresh()

    def waiting(self, until: float) -> None:
        """Say the run waits for the quota (or a 429)."""
        if self.bar is not None:
            self.bar.set_postfix_str(f"waiting for quota until {_clock(until)}", refresh=True)

    def advance(self) -> None:
        """One more request finished."""
        self.done += 1
        if self.done > self.total:  # a pull had more pages than the estimate said
            self.set_total(self.done)
        if self.bar is not None:
            self.bar.set_postfix_str(self._left(), refresh=False)
            self.bar.update(1)
            return
        now = time.monotonic()
        if now - self._last_line >= PROGRESS_EVERY or self.done == self.total:
            self._last_line = now
            print(self.line(), file=self.stream, flush=True)

    def line(self) -> str:
        """``backfill: 120/744 requests (16%), about 10m left``."""
        share = self.done / self.total if self.total else 1.0
        left = self._left()
        return f"backfill: {self.done}/{self.total} requests ({share:.0%})" + (
            f", {left}" if left else "")

    def close(self) -> None:
        """Remove the bar."""
        if self.bar is not None:
            self.bar.close()


def _clock(seconds: float) -> str:
    return dt.datetime.fromtimestamp(seconds, dt.UTC).strftime("%H:%M:%S UTC")


# --- targets -------------------------------------------------------------------------


def discover_targets(config: Config, sender: Sender, lists: Lists | None) -> tuple[
        list[Target], int]:
    """The targets as the daemon would poll them, and how many listing requests that took.

    Discovery lists come from the daemon's state file when it has them (no request);
    else they are read here, page by page (discovery's own jobs), through the same
    budget. A 429 waits and asks for the same page again.
    """
    settings = config.discovery
    sent = 0
    if settings is not None and (settings.scenarios is not None
                                 or settings.group_cohorts is not None):
        discovery = Discovery(settings, lists)
        while (job := discovery.due(sender.now())) is not None:
            sender.acquire()
            sent += 1
            try:
                answer = job.fetch(sender.client, sender.now())
            except RateLimited as exc:
                sender.hold(exc.retry_after)
                continue
            except (Unauthorized, Forbidden) as exc:
                raise WorkspaceError(f"{exc.reason}: {exc}") from None
            except ApiError as exc:
                raise WorkspaceError(f"discovery: reading {job.label} failed: {exc}") from None
            job.apply(answer, sender.now())
        lists = discovery.lists
    targets, _dropped = select_targets(config, lists)  # it logs what max_targets drops
    return targets, sent


def daemon_share(targets: Sequence[Target], config: Config) -> tuple[int, int]:
    """What the daemon's polling of ``targets`` needs per minute and per day: one
    request per target every effective interval (an upper bound: derived cohorts
    need fewer)."""
    rate = config.api.rate_limit
    interval = effective_interval(len(targets), config.refresh_interval, rate.day_budget,
                                  rate.minute_budget)
    return (math.ceil(len(targets) * MINUTE / interval),
            math.ceil(len(targets) * DAY / interval))


# --- the command ---------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The backfill flags (``exec-exporter backfill ...``)."""
    group = parser.add_argument_group("backfill (exec-exporter backfill ...)")
    group.add_argument("--since", dest="since", default=None,
                       help="how far back to start, a duration such as 30d")
    group.add_argument("--until", dest="until", default=None,
                       help="the last instant: ISO 8601, unix seconds or 'now' (default: the "
                            "latest UTC midnight, or hour for steps of hours, 3h ago or more)")
    group.add_argument("--step", dest="step", default="1d",
                       help="one point per target every STEP, at least 1h (default: %(default)s)")
    group.add_argument("--label", dest="labels", action="append", default=None,
                       metavar="NAME=VALUE",
                       help="a label for every backfilled sample, repeatable: the target labels "
                            "Prometheus adds to the live series (job, instance, ...)")
    group.add_argument("--output", dest="output", default=None,
                       help="the OpenMetrics file to write (its journal: OUTPUT.journal)")


_LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
# Labels the exporter itself sets on some exec_scenario_* family.
OWN_LABELS = frozenset({"scenario", "cohort", "rank", "name", "id"})


def parse_labels(items: Sequence[str] | None) -> dict[str, str]:
    """``--label=NAME=VALUE`` flags into a mapping; raise UsageError on a bad one."""
    labels: dict[str, str] = {}
    for item in items or []:
        name, sep, value = item.partition("=")
        if not sep:
            raise UsageError(f"--label: {item!r} is not NAME=VALUE "
                             "(e.g. --label=job=exec-exporter)")
        if not _LABEL_NAME.match(name) or name.startswith("__"):
            raise UsageError(f"--label: {name!r} is not a valid label name")
        if name in OWN_LABELS:
            raise UsageError(f"--label: {name!r} is set by the exporter itself")
        if name in labels:
            raise UsageError(f"--label: {name!r} is given twice")
        labels[name] = value
    return labels


def _check_output(output: str | None) -> Path:
    if not output:
        raise UsageError("--output: required (the OpenMetrics file to write)")
    path = Path(output)
    if path.is_dir():
        raise UsageError(f"--output: {output} is a directory")
    if not path.parent.is_dir():
        raise UsageError(f"--output: directory {str(path.parent)!r} does not exist")
    return path


def main(args: argparse.Namespace, now: Callable[[], float] = time.time,
         out: TextIO | None = None, err: TextIO | None = None,
         sleep: Callable[[float], bool] | None = None) -> int:
    """Run ``exec-exporter backfill``: 0 done (or stopped cleanly), 2 bad input, 1 failure.

    ``now`` and ``sleep`` (seconds -> whether a stop was asked) are the clock, for tests.
    """
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        prepared = _prepare(args, now())
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"error: {problem}", file=err)
        return 2
    except UsageError as exc:
        print(f"error: {exc}", file=err)
        return 2
    config, key, window, output, journal, header, done, pages, own, state, labels = prepared

    client = ExecClient(config.api.base_url, key, config.api.timeout)
    rate = config.api.rate_limit
    saved = state.load(now()) if state else None
    budget = open_budget(rate.minute_budget, rate.day_budget, args.state_file,
                         saved.ledger if saved else own, now())
    daemon_spent = None
    if saved is not None:  # the others' requests: the ledger less this run's journal
        mine = {round(t, 3) for t in own}
        daemon_spent = sum(1 for t in budget.ledger(now()) if round(t, 3) not in mine)
        budget.merge(own, now())  # a stopped run's requests sent without this state file
    sender = Sender(client, budget, now=now, sleep=sleep, own=own)
    # The journal opens before any request (discovery included), so every send is in it.
    journal.start(header, fresh=not journal.path.exists())
    sender.on_send = journal.add_sent
    stop_handlers = _install_signals(sender.stop)
    try:
        try:
            lists = saved.lists if saved else None
            targets, listing = discover_targets(config, sender, lists)
        except Stopped:
            print("stopped before the plan was made; nothing to resume", file=err)
            return 0
        except WorkspaceError as exc:
            print(f"error: {exc}", file=err)
            return 1
        if saved is not None:  # a daemon on this state file polls these targets
            sender.share_with(*daemon_share(targets, config))
        plan = make_plan(targets, window)
        settings = config.planner
        groups = (plan_pulls(plan, settings, pages, {g: len(ids) for g, (ids, _) in
                                                     (saved.members if saved else {}).items()})
                  if settings.mode == "auto" else None)
        wanted = set(plan.requests)
        results = {k: v for k, v in done.items() if k in wanted}
        if groups is None:
            total, finished = len(plan.requests), len(results)
        else:  # an estimate until the pulls say how many pages they have
            total = sum(g.cost for g in groups)
            finished = min(total, len(results) + len(pages))
        print(describe(plan, total - finished, sender.budget, now(), listing,
                       daemon_spent, groups), file=out, flush=True)
        if labels:
            print("labels on every sample: " + ", ".join(f"{k}={v!r}" for k, v in labels.items()),
                  file=out, flush=True)
        else:
            print("note: no --label: the series will lack the job/instance labels Prometheus "
                  "adds when scraping (see docs/backfill.md)", file=out, flush=True)
        progress = Progress(total, finished, err,
                            lambda n: estimate_seconds(n, sender.budget, now()))
        sender.on_wait = progress.waiting
        fetcher = Fetcher(sender, journal, results, pages, on_sent=progress.advance)
        derivation = Derivation(groups or [], fetcher, settings)
        failed = 0
        try:
            derivation.run()
            for note in derivation.notes:
                print(f"planner: {note}", file=out, flush=True)
            derived = derivation.values
            needed = list(dict.fromkeys(p.request for p in plan.points
                                        if (p.target.key, p.instant) not in derived))
            progress.set_total(progress.done + sum(1 for k in needed if k not in results))
            for request in needed:
                if fetcher.summary(request) is None:
                    failed += 1
        except Stopped:
            progress.close()
            print(f"stopped: {len(results) + len(pages)} requests done and kept in "
                  f"{journal.path}; run the same command again to resume", file=err)
            return 0
        except WorkspaceError as exc:
            progress.close()
            print(f"error: the API refused the key or the workspace ({exc}); finished "
                  f"requests are kept in {journal.path}", file=err)
            return 1
        progress.close()
    finally:
        journal.close()
        client.close()
        _restore_signals(stop_handlers)
    if failed:
        print(f"error: {failed} requests kept failing (see the log); {output} not written. "
              "Run the same command again to retry them", file=err)
        return 1
    data = render(plan, results, labels, derived)
    write_atomically(output, data)
    samples = sum(1 for line in data.splitlines() if line and not line.startswith(b"#"))
    refused = sum(1 for k in needed if results[k].error)
    print(f"wrote {output}: {samples} samples from {_iso(window.until - window.since)} to "
          f"{_iso(window.until)}; {sender.sent_count} requests sent this run"
          + (f"; {refused} requests refused by the API (no value for those points)"
             if refused else ""), file=out)
    if derived:
        print(f"derived: {len(derived)} points of {len(derivation.proven)} cohorts from "
              f"{derivation.pulls} participants pulls (each cohort proven against its "
              "summary at the newest instant)", file=out)
    print(f"next: promtool tsdb create-blocks-from openmetrics {output} DATA_DIR "
          "(then move the blocks into Prometheus's data directory; see docs/backfill.md)",
          file=out)
    return 0


def _prepare(args: argparse.Namespace, now: float) -> tuple[
        Config, str, Window, Path, Journal, dict[str, Any], dict[RequestKey, Outcome],
        dict[PageKey, PageOutcome], list[float], StateFile | None, dict[str, str]]:
    """Every check that must pass before a request is sent; raise UsageError/ConfigError."""
    output = _check_output(args.output)
    labels = parse_labels(args.labels)
    config = load_config(args.config_file)
    key, warnings = load_api_key(config)
    for warning in warnings:
        log.warning("%s", warning)
    if key is None:
        raise ConfigError(["no API key: set the EXEC_API_KEY environment variable or "
                           "api.api_key_file in the configuration"])
    logs.add_secret(key.value)
    journal = Journal(output.with_name(output.name + ".journal"))
    previous, done, pages, own = journal.read()
    # Check the flags first (their errors say more), then whether a previous run is resumed.
    window = parse_window(args.since, args.until, args.step, now)
    resumed = None
    if (args.until is None and previous is not None
            and previous.get("base") == base_fingerprint(config, window.since, window.step)
            and isinstance(previous.get("until"), int)):
        resumed = previous["until"]
        window = Window(window.since, resumed, window.step)
    header = {"kind": "exec-exporter-backfill", "version": JOURNAL_VERSION,
              "fingerprint": fingerprint(config, window),
              "base": base_fingerprint(config, window.since, window.step),
              "since": window.since, "until": window.until, "step": window.step}
    if previous is not None and previous.get("fingerprint") != header["fingerprint"]:
        raise UsageError(f"--output: {output} (journal {journal.path.name}) is from another "
                         "configuration or time range; remove both or choose another --output")
    if previous is None and output.exists():
        raise UsageError(f"--output: {output} exists and was not written by this backfill "
                         "(no matching journal); remove it or choose another --output")
    if resumed is not None:
        log.info("resuming the run up to %s (pass --until for another range)", _iso(resumed))
    if window.until > now - HEAD_RANGE:
        log.warning("--until is within the last 3 hours: Prometheus's head block may "
                    "already hold that range; see docs/backfill.md")
    state = StateFile(args.state_file) if args.state_file else None
    return config, key.value, window, output, journal, header, done, pages, own, state, labels


def _install_signals(stop: StopFlag) -> dict[int, Any]:
    def on_stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, on_stop)
    return previous


def _restore_signals(previous: Mapping[int, Any]) -> None:
    for sig, handler in previous.items():
        signal.signal(sig, handler)
