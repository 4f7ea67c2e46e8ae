"""Sending a backfill's requests as jobs of the daemon's scheduler, answering them from
the journal first."""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, TypeVar

from .. import client as api
from ..budget import DAY, MINUTE, Budget
from ..client import ApiError, ExecClient, Page
from ..jobs import Job, JobSource, Running
from ..paged import ListChanged, PagedRead
from ..scheduler import Poller, Scheduler, effective_interval
from .journal import MEMBERS, PARTICIPANTS, SUMMARY, Journal, Outcome, RequestKey, request_key

log = logging.getLogger(__name__)

TRANSIENT_TRIES = 4  # timeouts, 5xx, invalid bodies: tries per request before giving up
T = TypeVar("T")


class StopFlag:
    """Set by the SIGINT/SIGTERM handler, polled by the waits: a plain attribute, as
    ``threading.Event.set()`` in a handler may deadlock inside ``Event.wait()``'s lock."""

    POLL = 0.2  # how soon a wait notices a stop
    stopped = False

    def set(self) -> None:
        """Ask every wait to end (safe inside a signal handler)."""
        self.stopped = True

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
    """401 or 403 (or a listing that kept failing): no request can succeed; stop."""


class Unreadable(Exception):
    """A list not read whole: a page refused or failing, or the pages disagree."""


class Sender:
    """Runs the backfill's requests as jobs of the daemon's Scheduler and Poller (their
    budget, ledger, 429 pause and backoff), each counted and journaled as it is sent; it
    is the poller's job source, outcomes and clock. Waits last at most :attr:`WAKE`."""

    WAKE = 5.0

    def __init__(self, client: ExecClient, budget: Budget,
                 now: Callable[[], float] = time.time,
                 sleep: Callable[[float], bool] | None = None,
                 own: Iterable[float] = ()) -> None:
        self.client = client
        self.budget = budget
        self.now = now
        self.stop = StopFlag()
        self.sleep = sleep or self.stop.wait
        self.journal: Journal | None = None  # where each send and answer is recorded
        self.done: dict[RequestKey, Outcome[Any]] = {}  # finished requests, a run's before
        self.on_wait: Callable[[float], None] | None = None
        self.on_answer: Callable[[], None] | None = None
        self.sent_count = 0
        self.rate_limited = 0
        self.failures = 0  # of the job source being driven, 429 and 401/403 aside
        self.last_failure: str | None = None
        self._refused: ApiError | None = None
        self._unwritable: OSError | None = None  # the journal's write failed: stop
        self._source: JobSource | None = None
        self._claimed = 0.0
        # This run's requests and a stopped run's: the rest of the ledger is others'.
        self._own: set[float] = {round(t, 3) for t in own}
        self._share = (0, 0)
        self.leave = (0, 0)
        self.scheduler = Scheduler(budget, DAY)
        self._running = self._run_with(())
        self.poller = Poller(self.scheduler, lambda: self._running, self, self)
        self.poller.probes = False  # a 401/403 ends the run (WorkspaceError)

    def share_with(self, targets: int, refresh_interval: float) -> None:
        """Leave a daemon on the shared ledger what its polling of ``targets`` needs a
        minute and a day (a summary each per effective interval; at most half of each
        budget), once one of its requests is seen."""
        limits = self.budget.minute_limit, self.budget.day_limit
        interval = effective_interval(targets, refresh_interval, limits[1], limits[0])
        self._share = (min(math.ceil(targets * MINUTE / interval), limits[0] // 2),
                       min(math.ceil(targets * DAY / interval), limits[1] // 2))

    def sharing(self, now: float) -> tuple[int, int]:
        """What this run leaves free per (minute, day) now."""
        if self.leave != self._share and any(round(t, 3) not in self._own
                                             for t in self.budget.ledger(now)):
            self.leave = self._share
            log.info("another process spends this workspace's quota: leaving it %d "
                     "requests a minute and %d a day", *self.leave)
        return self.leave

    # --- the poller's job source, outcomes and clock ---------------------------------

    def time(self) -> float:
        """The run's clock."""
        return self.now()

    def _run_with(self, jobs: tuple[Job, ...]) -> Running:
        # Never refreshed (a day's interval); one asked again starts over (forget).
        return Running(self.client, tuple(self._wrap(job) for job in jobs), sources=(self,),
                       refresh_interval=DAY, minute_budget=self.budget.minute_limit,
                       day_budget=self.budget.day_limit, forget=frozenset(job.key for job in jobs))

    def due(self, now: float) -> Job | None:
        """The driven source's job, if one is due."""
        job = self._source.due(now) if self._source is not None else None
        return None if job is None else self._wrap(job)

    def _wrap(self, job: Job) -> Job:
        """``job`` counted and journaled as it is sent; its failures counted."""

        def fetch(client: ExecClient, at: float) -> Any:
            self._claimed = at  # the time the scheduler just claimed in the ledger
            self._own.add(round(at, 3))
            try:
                self.count_send()
            except OSError as error:  # the journal cannot be written: nothing is sent
                self._unwritable = error
                raise
            return job.fetch(client, at)

        def fail(error: ApiError, at: float) -> None:
            if error.reason in api.WORKSPACE_REASONS:
                self._refused = error
            elif error.reason not in api.PAUSE_REASONS:
                self.failures += 1
                self.last_failure = error.reason
            job.fail(error, at)

        return dataclasses.replace(job, fetch=fetch, fail=fail)

    def next_due(self) -> float:
        """When the driven source's next job is due."""
        return self._source.next_due() if self._source is not None else math.inf

    def requests_per_day(self) -> float:
        """Nothing is reserved: the backfill has no recurring jobs."""
        return 0.0

    def record_request(self, job_kind: str, code: str, duration: float,
                       reason: str | None = None) -> None:
        """Count the 429s (the scheduler pauses every request for their retry_after)."""
        if reason == api.RateLimited.reason:
            self.rate_limited += 1

    def count_send(self) -> None:
        """The request just claimed is about to be sent: count it (and journal it)."""
        self.sent_count += 1
        if self.journal is not None:
            self.journal.add_sent(self._claimed)

    # --- driving ---------------------------------------------------------------------

    def drive(self, settled: Callable[[], bool], source: JobSource | None = None,
              jobs: tuple[Job, ...] = ()) -> None:
        """Step the poller with ``jobs`` and ``source``'s until ``settled()``, sleeping
        while the scheduler waits. Raises Stopped, WorkspaceError."""
        self._source, self.failures, self.last_failure = source, 0, None
        self._running = self._run_with(jobs)
        while not settled():
            if self.stop.stopped:
                raise Stopped
            if self._refused is not None:
                raise WorkspaceError(f"{self._refused.reason}: {self._refused}")
            self.scheduler.leave = self.sharing(self.now())
            wake = self.poller.step()
            if self._unwritable is not None:
                raise self._unwritable
            now = self.now()
            if wake > now and self._refused is None and not settled():
                if self.on_wait is not None:
                    self.on_wait(wake)
                if self.sleep(min(wake - now, self.WAKE)):
                    raise Stopped

    def fetch(self, key: RequestKey) -> Outcome[Any] | None:
        """One request's outcome: :attr:`done`'s, else sent and journaled at once; None
        when it kept failing (the next run tries again)."""
        if key in self.done:
            return self.done[key]
        outcome = self._send(key)
        if outcome is not None:
            if self.journal is not None:
                self.journal.add(key, outcome)
            self.done[key] = outcome
            if self.on_answer is not None:
                self.on_answer()
        return outcome

    def _send(self, key: RequestKey) -> Outcome[Any] | None:
        """Its answer, or the reason the API refused it for good (404, 400); None when it
        failed :data:`TRANSIENT_TRIES` times, backed off as any job."""
        kind, subject, params = key
        query = dict(params)
        what = {SUMMARY: f"{subject} {query.get('end_date')}",
                PARTICIPANTS: f"participants of {subject} {query.get('end_date')} page "
                              f"{query.get('page')}",
                MEMBERS: f"members of group {subject} page {query.get('page')}"}[kind]
        refused = ("no value for this point" if kind == SUMMARY
                   else "its cohorts use summary requests")

        def call(client: ExecClient, at: float) -> Any:
            if kind == MEMBERS:
                return client.members(query)
            return (client.summary if kind == SUMMARY else client.participants)(subject, query)

        settled: list[Outcome[Any] | None] = []

        def fail(error: ApiError, at: float) -> None:
            if error.reason in api.PAUSE_REASONS:
                return  # not this request's fault: the scheduler pauses, or the run stops
            if error.reason in api.PERSISTENT_REASONS:  # a scenario missing stays so
                log.warning("%s: %s; %s", what, error, refused)
                settled.append(Outcome(None, error.reason))
                return
            log.warning("%s: %s (try %d of %d)", what, error, self.failures, TRANSIENT_TRIES)
            if self.failures >= TRANSIENT_TRIES:
                settled.append(None)

        self.drive(lambda: bool(settled), jobs=(Job(
            "backfill", key, call, lambda answer, at: settled.append(Outcome(answer)), fail,
            label=what),))
        return settled[0]

    def read_list(self, kind: str, subject: str, filters: Mapping[str, str],
                  read: PagedRead[T]) -> Iterator[Page[T]]:
        """Every page of one list, each yielded (the caller may stop) before ``read``, the
        daemon's paged reader, checks and takes it. Raises :class:`Unreadable`."""
        while True:
            outcome = self.fetch(request_key(subject, read.query(filters), kind))
            if outcome is None or outcome.answer is None:
                raise Unreadable(outcome.error if outcome is not None else "kept failing")
            yield outcome.answer
            try:
                if read.take(outcome.answer, raw=False):
                    return
            except ListChanged as exc:
                raise Unreadable(str(exc)) from None
