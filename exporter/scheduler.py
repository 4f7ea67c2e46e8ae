"""Deciding which request to send when, inside the quota, and the thread that sends it.

The unit is the *job* (:mod:`exporter.jobs`): one API request with its handlers.
:class:`Scheduler` is pure decision logic on injected time: given "now", the job to
run next or until when to wait. :class:`Poller` only runs jobs. The policy (effective
interval, first fill, pacing, pauses and backoff) is in docs/quota.md.
"""

from __future__ import annotations

import logging
import math
import random
import threading
import time
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from .budget import DAY, MINUTE, Budget
from .client import (
    PAUSE_REASONS,
    PERSISTENT_REASONS,
    WORKSPACE_REASONS,
    ApiError,
    InvalidResponse,
    RateLimited,
)
from .config import format_duration
from .jobs import Job, JobKey, JobSource, Running

log = logging.getLogger(__name__)

Key = JobKey

AUTH_PROBE_FIRST = 30.0
AUTH_PROBE_MAX = 300.0
TRANSIENT_BACKOFF_BASE = 10.0
PERSISTENT_BACKOFF_MAX = 3600.0
# Consecutive failures after which a job queues by its last attempt, not its data:
# 3 random 5xx in a row are rare (1 in 8,000 at a 5% error rate); a hang is not.
REPEATED_FAILURES = 3
# Failures that hold the poller for up to the timeout: such a job queues by its last
# attempt at once, or two hanging jobs would take every slot for several timeouts.
SLOW_REASONS = frozenset({"timeout", "connection"})


class Clock(Protocol):
    """Wall-clock time, injectable so tests can move it."""

    def time(self) -> float: ...


class SystemClock:
    """The real clock."""

    def time(self) -> float:
        return time.time()


@dataclass
class JobTimes:
    """What the scheduler remembers of one recurring job."""

    order: int
    last_attempt: float | None = None
    last_success: float | None = None
    failures: int = 0
    slow_failure: bool = False  # the last failure was a timeout or connection error
    retry_at: float | None = None
    # The attempt before the one in flight: a request refused by a workspace-wide
    # pause is given back, so the job keeps its place (first fill included).
    previous_attempt: float | None = None

    @property
    def filling(self) -> bool:
        """Never attempted and no restored data: part of the first fill."""
        return self.last_attempt is None and self.last_success is None

    @property
    def staleness(self) -> float:
        """Ordering key for "stalest first": the time of the data, so a failed refresh
        is retried first; a job failing again and again, or timing out, counts from its
        last attempt so it cannot starve the healthy ones; one never tried comes first."""
        if self.last_attempt is not None and (self.failures >= REPEATED_FAILURES
                                              or self.slow_failure
                                              or self.last_success is None):
            return self.last_attempt
        if self.last_success is not None:
            return self.last_success
        return -math.inf

    def due(self, interval: float) -> float:
        """When this job should next run (-inf: at once)."""
        if self.retry_at is not None:
            return self.retry_at
        if self.last_attempt is not None:
            return self.last_attempt + interval
        if self.last_success is not None:
            return self.last_success + interval
        return -math.inf


@dataclass(frozen=True)
class Decision:
    """Either run ``job`` now, or wait until ``wake_at``."""

    job: Job | None
    wake_at: float
    probe: bool = False

    @property
    def key(self) -> JobKey | None:
        """The job's key, if there is a job."""
        return self.job.key if self.job is not None else None


@dataclass(frozen=True)
class Pause:
    """A workspace-wide stop: a 429 or an auth failure."""

    until: float
    reason: str
    probe_wait: float = 0.0


@dataclass(frozen=True)
class ScheduleView:
    """What the scheduler decided, for the landing page and /metrics: replaced whole
    after every change, so readers on other threads see a consistent copy."""

    interval: float
    next_due: Mapping[JobKey, float]
    pause: Pause | None
    stretched: bool
    at: float = 0.0  # when it was decided


@dataclass
class Scheduler:
    """Picks the next job within the budget. Not thread-safe: one Poller drives it."""

    budget: Budget
    refresh_interval: float
    rng: random.Random = field(default_factory=random.Random)
    sources: tuple[JobSource, ...] = ()
    on_view: Callable[[ScheduleView], None] | None = None
    _jobs: dict[JobKey, Job] = field(default_factory=dict)
    _times: dict[JobKey, JobTimes] = field(default_factory=dict)
    _cost: int = 0  # requests one round of the recurring jobs sends (sum of job.cost)
    pause: Pause | None = None
    # Pacing spaces recurring jobs only (sources are paid for separately); before the
    # first of this process, the restored ledger's last request stands in.
    _last_poll: float | None = None
    _key_id: str | None = None
    # (minute, day) requests left free for other processes on the shared ledger
    # (a backfill leaves a running daemon its polling share).
    leave: tuple[int, int] = (0, 0)

    def adopt(self, running: Running, now: float) -> None:
        """Work from ``running`` from now on. Kept jobs keep their times; a new API key
        is probed at once."""
        self.budget.resize(running.minute_budget, running.day_budget)
        self.refresh_interval = running.refresh_interval
        self.sources = running.sources
        self.set_jobs(running.jobs, running.restored, running.forget)
        if self._key_id is not None and running.key_id != self._key_id:
            pause = self.pause
            if pause is not None and pause.reason in WORKSPACE_REASONS:
                self.pause = Pause(min(pause.until, now), pause.reason, pause.probe_wait)
        self._key_id = running.key_id
        self.publish(now)

    def set_jobs(self, jobs: Iterable[Job], restored: Mapping[JobKey, float] | None = None,
                 forget: Collection[JobKey] = ()) -> None:
        """Replace the recurring jobs. Kept ones keep their times (except those in
        ``forget``); new ones are due by the age of their restored data, or at once."""
        restored = restored or {}
        old = self._times
        self._jobs, self._times = {}, {}
        for order, job in enumerate(jobs):
            key = job.key
            times = old.get(key) if key not in forget else None
            if times is None:
                times = JobTimes(order=order, last_success=restored.get(key))
            else:
                times.order = order
            self._jobs[key] = job
            self._times[key] = times
        self._cost = round_cost(self._jobs.values())

    def times(self, key: JobKey) -> JobTimes:
        """The scheduling state of one recurring job."""
        return self._times[key]

    # --- arithmetic ---------------------------------------------------------

    @property
    def listing_requests_per_day(self) -> float:
        """What the job sources need a day (discovery listings)."""
        return sum(source.requests_per_day() for source in self.sources)

    @property
    def poll_day_budget(self) -> float:
        """Requests per day left for recurring jobs once the sources are paid for."""
        return polling_day_budget(self.budget.day_limit, [self.listing_requests_per_day])

    @property
    def spacing(self) -> float:
        """The minimum gap between two recurring requests after the first fill: the
        day budget's pace when it is the limit (spent evenly, not in bursts that then
        starve), else the minute budget's."""
        minute_pace = MINUTE / self.budget.minute_limit
        if self._cost * DAY / self.poll_day_budget >= self.refresh_interval:
            return max(DAY / self.poll_day_budget, minute_pace)
        return minute_pace

    @property
    def interval(self) -> float:
        """The effective refresh interval after budget stretching."""
        return effective_interval(self._cost, self.refresh_interval, self.poll_day_budget,
                                  self.budget.minute_limit)

    def view(self, now: float) -> ScheduleView:
        """The current decisions as one value; a job due while the budget or a pause
        holds every request is shown due when that ends."""
        interval = self.interval
        blocked = self.budget.next_allowed(now)
        if self.pause is not None:
            blocked = max(blocked, self.pause.until)
        next_due = {k: max(t.due(interval), blocked) for k, t in self._times.items()}
        return ScheduleView(interval, next_due, self.pause,
                            stretched=interval > self.refresh_interval, at=now)

    def publish(self, now: float) -> None:
        """Hand the current view to ``on_view`` (the store)."""
        if self.on_view is not None:
            self.on_view(self.view(now))

    # --- deciding -----------------------------------------------------------

    def decide(self, now: float) -> Decision:
        """A job to run at ``now``, or a time to wake up (then the view is published:
        what is shown is what was decided)."""
        decision = self._decide(now)
        if decision.job is None:
            self.publish(now)
        return decision

    def _decide(self, now: float) -> Decision:
        probe = False
        if self.pause is not None:
            if now < self.pause.until:
                return Decision(None, self.pause.until)
            if self.pause.reason in WORKSPACE_REASONS:
                probe = True  # one request to see whether access is back
            else:
                self.pause = None
        allowed = self.budget.next_allowed(now, leave=self.leave)
        if allowed > now:
            return Decision(None, allowed)
        # Sources first: their jobs are rare, due at fixed times and paid for apart.
        for source in self.sources:
            job = source.due(now)
            if job is not None:
                return Decision(job, now, probe)
        sources_wake = max(min((s.next_due() for s in self.sources), default=math.inf), now)
        if not self._times:
            return Decision(None, min(now + 3600.0, sources_wake))
        interval = self.interval
        best: tuple[float, float, int] | None = None
        best_key: JobKey | None = None
        earliest = math.inf
        for key, times in self._times.items():
            due = times.due(interval)
            if due > now and not probe:
                earliest = min(earliest, due)
                continue
            rank = (times.staleness, due, times.order)
            if best is None or rank < best:
                best, best_key = rank, key
        if best_key is None:
            return Decision(None, min(max(earliest, self._paced(now)), sources_wake))
        if not self._times[best_key].filling and not probe:
            paced = self._paced(now)
            if paced > now:
                return Decision(None, min(paced, sources_wake))
        cost = self._jobs[best_key].cost
        if cost > 1 and not probe:
            # A pull's pages go back to back: start it when the budget has room for all
            # of them, or its data would be as old as the wait between its pages.
            room = self.budget.next_allowed(now, cost)
            if room > now:
                return Decision(None, min(room, sources_wake))
        return Decision(self._jobs[best_key], now, probe)

    def _paced(self, now: float) -> float:
        last = self._last_poll if self._last_poll is not None else self.budget.last_sent
        return now if last is None else max(now, last + self.spacing)

    # --- outcomes -----------------------------------------------------------

    def sent(self, job: Job | JobKey, at: float) -> bool:
        """Count a request for ``job`` about to go out at ``at``; False when the budget
        has no room after all (another process on the ledger took the slot)."""
        if not self.budget.claim(at, leave=self.leave):
            return False
        times = self._times.get(_key(job))
        if times is not None:
            # A job of n requests (its follow-ups run as they come) holds n paces.
            cost = self._jobs[_key(job)].cost
            self._last_poll = at + (max(cost, 1) - 1) * self.spacing
            times.previous_attempt = times.last_attempt
            times.last_attempt = at
        return True

    def succeeded(self, job: Job | JobKey | None, at: float) -> None:
        """``job`` answered with data."""
        times = self._times.get(_key(job)) if job is not None else None
        if times is not None:
            times.last_success = at
            times.failures = 0
            times.slow_failure = False
            times.retry_at = None
        if self.pause is not None and self.pause.reason in WORKSPACE_REASONS:
            log.info("API access is back; resuming all requests")
        self.pause = None
        self.publish(at)

    def failed(self, job: Job | JobKey | None, error: ApiError, at: float) -> None:
        """``job`` failed with ``error``: back that job off, or pause everything."""
        reason = error.reason
        times = self._times.get(_key(job)) if job is not None else None
        if reason in PAUSE_REASONS and times is not None:
            # Refused for the whole workspace: not this job's attempt.
            times.last_attempt = times.previous_attempt
        self._back_off(times, error, at)
        self.publish(at)

    def _back_off(self, times: JobTimes | None, error: ApiError, at: float) -> None:
        reason = error.reason
        if isinstance(error, RateLimited):
            self.pause = Pause(until=at + error.retry_after, reason=reason)
            return
        if reason in WORKSPACE_REASONS:
            wait = AUTH_PROBE_FIRST
            if self.pause is not None and self.pause.reason in WORKSPACE_REASONS:
                wait = min(self.pause.probe_wait * 2, AUTH_PROBE_MAX)
            self.pause = Pause(until=at + wait, reason=reason, probe_wait=wait)
            return
        if self.pause is not None and self.pause.reason in WORKSPACE_REASONS:
            # The probe got past authentication: access is back, this job has its own fault.
            self.pause = None
        if times is None:
            return
        times.failures += 1
        times.slow_failure = reason in SLOW_REASONS
        interval = self.interval
        if reason in PERSISTENT_REASONS:
            ceiling = max(PERSISTENT_BACKOFF_MAX, interval)
            delay = min(interval * 2 ** (times.failures - 1), ceiling)
        else:
            ceiling = interval
            delay = min(TRANSIENT_BACKOFF_BASE * 2 ** (times.failures - 1), ceiling)
            delay *= self.rng.uniform(0.5, 1.0)  # jitter spreads retries of many jobs
        times.retry_at = at + delay


def _key(job: Job | JobKey | None) -> JobKey | None:
    return job.key if isinstance(job, Job) else job


def round_cost(jobs: Iterable[Job]) -> int:
    """Requests one round of the recurring ``jobs`` sends (a pull of n pages counts n)."""
    return sum(max(job.cost, 1) for job in jobs)


def polling_day_budget(day_budget: float, paid_first: Iterable[float] = ()) -> float:
    """Requests a day left for the recurring jobs once what the job sources need a day
    (listings, member lists, cross-checks) is taken out of ``day_budget``; at least 1."""
    left = day_budget
    for cost in paid_first:  # one by one: the same float as every caller's arithmetic
        left -= cost
    return max(left, 1.0)


def interval_and_limit(requests: float, refresh_interval: float, day_budget: float,
                       minute_budget: float) -> tuple[float, str]:
    """The effective refresh interval, computed here only: ``max(refresh_interval,
    requests x 86400 / day budget, requests x 60 / minute budget)`` over one round of the
    recurring jobs (``day_budget`` net of the job sources), and which of the three set it:
    ``refresh_interval``, ``day budget`` or ``minute budget``."""
    if requests <= 0:
        return refresh_interval, "refresh_interval"
    return max(((refresh_interval, "refresh_interval"), (requests * DAY / day_budget, "day budget"),
                (requests * MINUTE / minute_budget, "minute budget")), key=lambda c: c[0])


def effective_interval(requests: float, refresh_interval: float, day_budget: float,
                       minute_budget: float) -> float:
    """The seconds of :func:`interval_and_limit`."""
    return interval_and_limit(requests, refresh_interval, day_budget, minute_budget)[0]


class Outcomes(Protocol):
    """What the poller reports for every request, whatever its job (the store)."""

    def record_request(self, job_kind: str, code: str, duration: float,
                       reason: str | None = None) -> None: ...


class Poller:
    """The background thread: it only runs jobs.

    Each :meth:`step` adopts the latest :class:`~exporter.jobs.Running` (swapped whole by
    reloads and discovery), asks the scheduler, sends at most one request and hands the
    answer to the job's handler, holding no lock while a request is in flight.
    """

    probes = True  # False where a refused key ends the run (the backfill): no probe follows

    def __init__(self, scheduler: Scheduler, running: Callable[[], Running],
                 outcomes: Outcomes, clock: Clock | None = None) -> None:
        self.scheduler = scheduler
        self._running = running
        self.outcomes = outcomes
        self.clock = clock or SystemClock()
        self._adopted: Running | None = None
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._adopt(self.clock.time())  # the schedule is known (and shown) before a step

    def step(self) -> float:
        """Run at most one job; return the time to call again."""
        now = self.clock.time()
        self._adopt(now)
        decision = self.scheduler.decide(now)
        if decision.job is None:
            return decision.wake_at
        assert self._adopted is not None
        self._run(decision.job, self._adopted, now, decision.probe)
        self._adopt(self.clock.time())  # a handler may have changed the targets (discovery)
        return self.clock.time()

    def _adopt(self, now: float) -> None:
        running = self._running()
        previous = self._adopted
        if running is previous:
            return
        self.scheduler.adopt(running, now)
        self._adopted = running
        if previous is not None and previous.client is not running.client:
            previous.client.close()  # nothing is in flight between two steps

    def _run(self, job: Job, running: Running, now: float, probe: bool) -> None:
        if not self.scheduler.sent(job, now):
            return  # the shared ledger filled since the decision: decide again
        started = time.monotonic()
        answered = False
        try:
            answer = job.fetch(running.client, now)
            answered = True
            done = self.clock.time()
            job.apply(answer, done)  # a handler may still find the answer invalid
        except ApiError as error:
            if answered and error.status is None:
                error.status = 200  # an answer came: it is counted under its status
            self._failed(job, error, time.monotonic() - started)
            return
        except Exception:
            # A bug in a job's code, not an API failure: counted as an answer nothing
            # could be made of, retried like any failed job, and polling goes on.
            log.exception("job kind=%s %s raised; counted as invalid_response, retried "
                          "later", job.kind, job.label)
            self._failed(job, InvalidResponse("the exporter could not handle the answer",
                                              status=200 if answered else None),
                         time.monotonic() - started)
            return
        duration = time.monotonic() - started
        self.outcomes.record_request(job.kind, "200", duration)
        self.scheduler.succeeded(job, done)
        log.debug("request done kind=%s %s in %.3fs%s", job.kind, job.label, duration,
                  " (probe)" if probe else "")

    def _failed(self, job: Job, error: ApiError, duration: float) -> None:
        """Count a failed request, back its job off (or pause everything), tell its
        handler. Never raises: a failing handler is logged and left behind."""
        done = self.clock.time()
        self.outcomes.record_request(job.kind, error.code, duration, error.reason)
        was_paused = self.scheduler.pause is not None
        self.scheduler.failed(job, error, done)
        try:
            job.fail(error, done)
        except Exception:
            log.exception("failure handler of job kind=%s %s raised", job.kind, job.label)
        if error.reason not in PAUSE_REASONS:
            return  # the job's own failure: its handler has logged it
        if error.reason in WORKSPACE_REASONS and not self.probes:
            return  # the caller stops and says why
        # Said once; the store shows the pause through the schedule it is given.
        pause = self.scheduler.pause
        wait = (pause.until - done) if pause is not None else 0.0
        if error.reason in WORKSPACE_REASONS:
            log.warning("API refused the key (%s) on kind=%s %s; pausing all requests, "
                        "probing again in %s", error, job.kind, job.label,
                        format_duration(max(wait, 0.0)))
        elif not was_paused:
            log.warning("API rate limit hit (%s) by kind=%s %s; pausing all requests for %s "
                        "(until %s)", error, job.kind, job.label,
                        format_duration(max(wait, 1.0)),
                        time.strftime("%H:%M:%SZ", time.gmtime(done + wait)))

    # --- thread -------------------------------------------------------------

    def start(self) -> None:
        """Run in a daemon thread until :meth:`stop`."""
        self._thread = threading.Thread(target=self._loop, name="poller", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                wake_at = self.step()
            except Exception:  # never let one bad step kill polling
                log.exception("poller step failed")
                wake_at = self.clock.time() + 5.0
            delay = wake_at - self.clock.time()
            if delay > 0:
                self._wake.wait(min(delay, 3600.0))
                self._wake.clear()

    def wake(self) -> None:
        """Re-decide now (after a reload or discovery changed the jobs)."""
        self._wake.set()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop after the in-flight request, if any, finishes or times out."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
