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
"""

from __future__ import annotations

import argparse
import contextlib
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
from .budget import DAY, Budget
from .client import (
    ApiError,
    BadRequest,
    ExecClient,
    Forbidden,
    NotFound,
    RateLimited,
    Summary,
    Unauthorized,
)
from .collector import INFO_FAMILY, INFO_POSITION, TARGET_FAMILIES, info_samples, target_samples
from .config import (
    CohortConfig,
    Config,
    ConfigError,
    format_duration,
    load_api_key,
    load_config,
    parse_duration,
)
from .discovery import Discovery, Lists
from .state import StateFile
from .store import TargetState
from .targets import Target, select_targets

log = logging.getLogger(__name__)

MIN_STEP = 3600  # finer steps cost a request per target per step for little insight
HEAD_RANGE = 3 * 3600  # Prometheus's head block: backfilling it is not safe (docs/storage.md)
JOURNAL_VERSION = 1
TRANSIENT_TRIES = 4  # timeouts, 5xx, invalid bodies: tries per request before giving up
LEDGER_REREAD = 60.0  # how often the running daemon's ledger is read again (--state.file)
PROGRESS_EVERY = 30.0  # seconds between plain progress lines (not a terminal)

# A request, as sent: the scenario and its sorted query parameters.
RequestKey = tuple[str, tuple[tuple[str, str], ...]]


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
             daemon_spent: int | None) -> str:
    """The plan printed before anything is sent."""
    w = plan.window
    lines = [
        f"backfill: {len(plan.targets)} targets x {len(w.instants)} instants "
        f"(every {format_duration(w.step)} from {_iso(w.until - w.since)} to {_iso(w.until)})",
        f"points: {len(plan.points)}"
        + (f" ({plan.skipped} before their cohort's start_date are left out)"
           if plan.skipped else ""),
        f"requests: {len(plan.requests)} summary requests (one per distinct as-of query)"
        + (f"; {len(plan.requests) - todo} already done, {todo} to send"
           if todo != len(plan.requests) else ""),
    ]
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


def fingerprint(config: Config, window: Window) -> str:
    """What decides the file's content: the API, the targets' definitions and the range.

    Limits and timeouts are left out: a run resumed with a smaller budget writes the
    same values.
    """
    doc = config.model_dump(mode="json", exclude={"api": {"rate_limit", "timeout",
                                                          "api_key_file"}})
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


class Journal:
    """``OUTPUT.journal``: a header line, then one JSON line per finished request and one
    (``{"sent": t}``) per request sent, so a resumed run counts the stopped run's spend."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._handle: TextIO | None = None

    def read(self) -> tuple[dict[str, Any] | None, dict[RequestKey, Outcome], list[float]]:
        """The header (None without a journal), the finished requests and when requests
        were sent.

        A torn last line (a run killed mid-write) is ignored: that request is sent again.
        """
        try:
            lines = self.path.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return None, {}, []
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
        sent: list[float] = []
        for line in lines[1:]:
            try:
                item = json.loads(line)
                if "sent" in item:
                    sent.append(float(item["sent"]))
                    continue
                key = request_key(str(item["scenario"]), dict(item["params"]))
                summary = Summary.from_json(item["summary"]) if item.get("summary") else None
                done[key] = Outcome(summary, item.get("error"))
            except (ValueError, KeyError, TypeError, ApiError):
                continue
        return header, done, sent

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


# --- the output ----------------------------------------------------------------------


class _Families:
    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterator[Metric]:
        yield from self.families


def render(plan: Plan, results: Mapping[RequestKey, Outcome],
           extra: Mapping[str, str] | None = None) -> bytes:
    """The OpenMetrics text: the ``exec_scenario_*`` families with the names, HELP, types
    and labels of ``/metrics``, each series' samples together and in time order (the
    format wants every family, and promtool every series, contiguous), then ``# EOF``.

    ``extra`` labels go on every sample: the target labels Prometheus adds when it
    scrapes (``job``, ``instance``...), so backfilled and scraped samples are one series.
    """
    extra = dict(extra or {})
    data_specs = TARGET_FAMILIES[:INFO_POSITION]
    series: list[dict[tuple[str, ...], list[tuple[int, float]]]] = [{} for _ in data_specs]
    info: dict[tuple[str, ...], list[tuple[int, float]]] = {}
    by_instant: dict[int, list[TargetState]] = {}
    for point in plan.points:
        outcome = results.get(point.request)
        if outcome is None or outcome.summary is None:
            continue
        state = TargetState(target=point.target, summary=outcome.summary,
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
        family = GaugeMetricFamily(spec.name, spec.documentation,
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
    """Sends requests one at a time, never beyond the minute and day budgets.

    Every request counts in the ledger before it is sent, retries included. A 429
    holds every request for ``retry_after``. With ``ledger_source`` (the daemon's
    state file), the daemon's own spend is read again every minute, so a daemon
    running beside the backfill leaves less room for it.
    """

    def __init__(self, client: ExecClient, minute_limit: int, day_limit: int,
                 seed: Iterable[float] = (), own: Iterable[float] = (),
                 now: Callable[[], float] = time.time,
                 sleep: Callable[[float], bool] | None = None,
                 ledger_source: Callable[[float], list[float]] | None = None,
                 on_wait: Callable[[float], None] | None = None,
                 on_send: Callable[[float], None] | None = None) -> None:
        self.client = client
        self.minute_limit = minute_limit
        self.day_limit = day_limit
        self.now = now
        self.stop = StopFlag()
        self.sleep = sleep or self.stop.wait
        self.ledger_source = ledger_source
        self.on_wait = on_wait
        self.on_send = on_send
        start = now()
        # The backfill's own requests: this run's and an interrupted run's (the journal).
        self.sent: list[float] = [t for t in own if t > start - DAY - 1]
        self.sent_count = 0
        self.rate_limited = 0
        self._daemon = list(seed)
        self._daemon_read = start
        self.budget = Budget(minute_limit, day_limit, [*self._daemon, *self.sent])
        self._hold_until = 0.0

    def _refresh_ledger(self, now: float) -> None:
        if self.ledger_source is None or now - self._daemon_read < LEDGER_REREAD:
            return
        self._daemon_read = now
        self._daemon = self.ledger_source(now)
        self.sent = [t for t in self.sent if t > now - DAY - 1]
        self.budget = Budget(self.minute_limit, self.day_limit, [*self._daemon, *self.sent])

    def _wait_for_slot(self) -> None:
        while True:
            if self.stop.is_set():
                raise Stopped
            now = self.now()
            self._refresh_ledger(now)
            at = max(self.budget.next_allowed(now), self._hold_until)
            if at <= now:
                return
            if self.on_wait is not None:
                self.on_wait(at)
            # Wake at least every 5 s: the stop flag and the daemon's ledger are rechecked.
            if self.sleep(min(at - now, 5.0)):
                raise Stopped

    def count_send(self) -> None:
        """Put a request about to be sent in the ledger (and the journal)."""
        sent_at = self.now()
        self.budget.record(sent_at)
        self.sent.append(sent_at)
        self.sent_count += 1
        if self.on_send is not None:
            self.on_send(sent_at)

    def fetch(self, key: RequestKey) -> Outcome | None:
        """The outcome of one request; None when it kept failing (try again next run)."""
        scenario, params = key
        failures = 0
        while True:
            self._wait_for_slot()
            self.count_send()
            try:
                return Outcome(self.client.summary(scenario, dict(params)))
            except RateLimited as exc:
                # Not a failure of this request: every request waits, then it goes again.
                self.rate_limited += 1
                self._hold_until = self.now() + exc.retry_after
                log.warning("rate limited by the API; every request waits %.0fs", exc.retry_after)
            except (Unauthorized, Forbidden) as exc:
                raise WorkspaceError(f"{exc.reason}: {exc}") from None
            except (NotFound, BadRequest) as exc:
                # A scenario missing, or a query the API refuses, stays so: no point.
                log.warning("%s %s: %s; no value for this point", scenario,
                            dict(params).get("end_date"), exc)
                return Outcome(None, exc.reason)
            except ApiError as exc:
                failures += 1
                log.warning("%s %s: %s (try %d of %d)", scenario, dict(params).get("end_date"),
                            exc, failures, TRANSIENT_TRIES)
                if failures >= TRANSIENT_TRIES:
                    return None
                backoff = min(2.0 ** failures, 30.0)
                self._hold_until = max(self._hold_until, self.now() + backoff)


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

    def waiting(self, until: float) -> None:
        """Say the run waits for the quota (or a 429)."""
        if self.bar is not None:
            self.bar.set_postfix_str(f"waiting for quota until {_clock(until)}", refresh=True)

    def advance(self) -> None:
        """One more request finished."""
        self.done += 1
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
            sender._wait_for_slot()
            sender.count_send()
            sent += 1
            try:
                answer = job.fetch(sender.client, sender.now())
            except RateLimited as exc:
                sender._hold_until = sender.now() + exc.retry_after
                continue
            except (Unauthorized, Forbidden) as exc:
                raise WorkspaceError(f"{exc.reason}: {exc}") from None
            except ApiError as exc:
                raise WorkspaceError(f"discovery: reading {job.label} failed: {exc}") from None
            job.apply(answer, sender.now())
        lists = discovery.lists
    targets, _dropped = select_targets(config, lists)  # it logs what max_targets drops
    return targets, sent


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
         out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Run ``exec-exporter backfill``: 0 done (or stopped cleanly), 2 bad input, 1 failure."""
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
    config, key, window, output, journal, header, done, own, state, labels = prepared

    client = ExecClient(config.api.base_url, key, config.api.timeout)
    rate = config.api.rate_limit
    seed = state.load(now()).ledger if state else []

    def daemon_ledger(at: float) -> list[float]:
        # Quietly: the state module logs every load at info level, and this runs each minute.
        quiet = logging.getLogger(StateFile.__module__)
        level = quiet.level
        quiet.setLevel(logging.WARNING)
        try:
            return state.load(at).ledger if state else []
        finally:
            quiet.setLevel(level)

    sender = Sender(client, rate.minute_budget, rate.day_budget, seed, own, now=now,
                    ledger_source=daemon_ledger if state else None)
    # The journal opens before any request (discovery included), so every send is in it.
    journal.start(header, fresh=not journal.path.exists())
    sender.on_send = journal.add_sent
    stop_handlers = _install_signals(sender.stop)
    try:
        try:
            lists = state.load(now()).lists if state else None
            targets, listing = discover_targets(config, sender, lists)
        except Stopped:
            print("stopped before the plan was made; nothing to resume", file=err)
            return 0
        except WorkspaceError as exc:
            print(f"error: {exc}", file=err)
            return 1
        plan = make_plan(targets, window)
        wanted = set(plan.requests)
        results = {k: v for k, v in done.items() if k in wanted}
        todo = [k for k in plan.requests if k not in results]
        print(describe(plan, len(todo), sender.budget, now(), listing,
                       len(seed) if state else None), file=out, flush=True)
        if labels:
            print("labels on every sample: " + ", ".join(f"{k}={v!r}" for k, v in labels.items()),
                  file=out, flush=True)
        else:
            print("note: no --label: the series will lack the job/instance labels Prometheus "
                  "adds when scraping (see docs/backfill.md)", file=out, flush=True)
        progress = Progress(len(plan.requests), len(plan.requests) - len(todo), err,
                            lambda n: estimate_seconds(n, sender.budget, now()))
        sender.on_wait = progress.waiting
        failed = 0
        try:
            for request in todo:
                outcome = sender.fetch(request)
                if outcome is None:
                    failed += 1
                    continue
                journal.add(request, outcome)
                results[request] = outcome
                progress.advance()
        except Stopped:
            progress.close()
            print(f"stopped: {len(results)} of {len(plan.requests)} requests done and kept "
                  f"in {journal.path}; run the same command again to resume", file=err)
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
    data = render(plan, results, labels)
    write_atomically(output, data)
    samples = sum(1 for line in data.splitlines() if line and not line.startswith(b"#"))
    refused = sum(1 for k in plan.requests if results[k].error)
    print(f"wrote {output}: {samples} samples from {_iso(window.until - window.since)} to "
          f"{_iso(window.until)}; {sender.sent_count} requests sent this run"
          + (f"; {refused} requests refused by the API (no value for those points)"
             if refused else ""), file=out)
    print(f"next: promtool tsdb create-blocks-from openmetrics {output} DATA_DIR "
          "(then move the blocks into Prometheus's data directory; see docs/backfill.md)",
          file=out)
    return 0


def _prepare(args: argparse.Namespace, now: float) -> tuple[
        Config, str, Window, Path, Journal, dict[str, Any], dict[RequestKey, Outcome],
        list[float], StateFile | None, dict[str, str]]:
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
    previous, done, own = journal.read()
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
    return config, key.value, window, output, journal, header, done, own, state, labels


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
