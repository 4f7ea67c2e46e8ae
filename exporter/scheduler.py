"""Deciding what to fetch when, inside the quota, and the thread that does it.

:class:`Scheduler` is pure decision logic on injected time: given "now", it
answers which target to request next, or until when to wait. :class:`Poller`
runs it against the client and writes outcomes into the store. Tests drive the
scheduler through a simulated day without sleeping.

Policy (see the README's "Quota arithmetic"):

* effective interval ``I = max(refresh_interval, N x 86400 / day budget,
  N x 60 / minute budget)``, with discovery listings taken out of the day budget;
* first fill (targets with no data at all) goes as fast as the minute budget
  allows; afterwards each target is due ``I`` after its last attempt, stalest
  first, and when the day budget is the limit requests are spaced exactly
  ``86400 / day budget`` apart (otherwise ``60 / minute budget``);
* the :class:`~exporter.budget.Budget` ledger is the final word: no request is
  sent that would exceed either rolling window;
* 429 pauses everything until ``retry_after``; 401/403 pause everything and
  send one probe with growing waits (30 s to 5 min); 404 and 400 back that
  target off (growing, up to an hour); timeouts, connection errors, 5xx and
  invalid responses back it off exponentially with jitter, capped at ``I``.
"""

from __future__ import annotations

import logging
import math
import random
import threading
import time
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from .budget import DAY, MINUTE, Budget
from .client import ApiError, ExecClient, RateLimited, Summary
from .targets import Target, TargetKey

if TYPE_CHECKING:
    from .discovery import Discovery

log = logging.getLogger(__name__)

Key = TargetKey

AUTH_PROBE_FIRST = 30.0
AUTH_PROBE_MAX = 300.0
TRANSIENT_BACKOFF_BASE = 10.0
PERSISTENT_BACKOFF_MAX = 3600.0
WORKSPACE_REASONS = frozenset({"unauthorized", "forbidden"})
PERSISTENT_REASONS = frozenset({"not_found", "bad_request"})
# Consecutive failures after which a target queues by its last attempt, not its data:
# 3 random 5xx in a row are rare (1 in 8,000 at a 5% error rate); a hang is not.
REPEATED_FAILURES = 3
# Failures that hold the poller for up to the timeout: such a target queues by its last
# attempt at once, or two hanging targets would take every slot for several timeouts.
SLOW_REASONS = frozenset({"timeout", "connection"})


class Clock(Protocol):
    """Wall-clock time, injectable so tests can move it."""

    def time(self) -> float: ...


class SystemClock:
    """The real clock."""

    def time(self) -> float:
        return time.time()


@dataclass
class TargetTimes:
    """What the scheduler remembers of one target."""

    order: int
    last_attempt: float | None = None
    last_success: float | None = None
    failures: int = 0
    slow_failure: bool = False  # the last failure was a timeout or connection error
    retry_at: float | None = None

    @property
    def filling(self) -> bool:
        """Never attempted and no restored data: part of the first fill."""
        return self.last_attempt is None and self.last_success is None

    @property
    def staleness(self) -> float:
        """Ordering key for "stalest first": the time of the data, so a target whose
        refresh just failed is retried first (once its short backoff is over) instead
        of a whole interval later. A target failing again and again, or timing out
        (each try holds the poller for the timeout), counts from its last attempt, so
        its retries cannot starve the healthy ones; one never tried (no data, no
        attempt) comes first of all."""
        if self.last_attempt is not None and (self.failures >= REPEATED_FAILURES
                                              or self.slow_failure
                                              or self.last_success is None):
            return self.last_attempt
        if self.last_success is not None:
            return self.last_success
        return -math.inf

    def due(self, interval: float) -> float:
        """When this target should next be requested."""
        if self.retry_at is not None:
            return self.retry_at
        if self.last_attempt is not None:
            return self.last_attempt + interval
        if self.last_success is not None:
            return self.last_success + interval
        return -math.inf


@dataclass(frozen=True)
class Decision:
    """Either request ``target`` now, or wait until ``wake_at``."""

    target: Key | None
    wake_at: float
    probe: bool = False


@dataclass
class Pause:
    """A workspace-wide stop: a 429 or an auth failure."""

    until: float
    reason: str
    probe_wait: float = 0.0


@dataclass
class Scheduler:
    """Picks the next request within the budget. Not thread-safe: one Poller drives it."""

    budget: Budget
    refresh_interval: float
    listing_requests_per_day: float = 0.0
    rng: random.Random = field(default_factory=random.Random)
    _targets: dict[Key, TargetTimes] = field(default_factory=dict)
    pause: Pause | None = None
    # Pacing spaces poll requests only (listings are paid for separately); before the
    # first poll of this process, the restored ledger's last request stands in.
    _last_poll: float | None = None

    # --- the target set ---------------------------------------------------

    def set_targets(self, keys: Iterable[Key], restored: Mapping[Key, float] | None = None,
                    forget: Collection[Key] = ()) -> None:
        """Replace the target set. Kept targets keep their times (except those in
        ``forget``, which start over); new ones are due by the age of their restored
        data, or at once when they have none."""
        restored = restored or {}
        old = self._targets
        self._targets = {}
        for order, key in enumerate(keys):
            times = old.get(key) if key not in forget else None
            if times is None:
                times = TargetTimes(order=order, last_success=restored.get(key))
            else:
                times.order = order
            self._targets[key] = times

    @property
    def keys(self) -> list[Key]:
        """The current targets, in configuration order."""
        return list(self._targets)

    def times(self, key: Key) -> TargetTimes:
        """The scheduling state of one target."""
        return self._targets[key]

    # --- arithmetic ---------------------------------------------------------

    @property
    def poll_day_budget(self) -> float:
        """Requests per day left for polling once discovery listings are paid for."""
        return max(self.budget.day_limit - self.listing_requests_per_day, 1.0)

    @property
    def budget_bound(self) -> bool:
        """Whether the targets want more requests than the day budget affords."""
        return len(self._targets) * DAY / self.poll_day_budget >= self.refresh_interval

    @property
    def spacing(self) -> float:
        """The minimum gap between two poll requests once the first fill is done.

        When the day budget is the limit, requests go out exactly at its pace, so it
        is spent evenly instead of in bursts that then starve. Otherwise there is
        slack for retries, and only the minute budget is smoothed.
        """
        minute_pace = MINUTE / self.budget.minute_limit
        if self.budget_bound:
            return max(DAY / self.poll_day_budget, minute_pace)
        return minute_pace

    @property
    def interval(self) -> float:
        """The effective refresh interval after budget stretching."""
        return effective_interval(len(self._targets), self.refresh_interval,
                                  self.poll_day_budget, self.budget.minute_limit)

    def next_due(self, key: Key) -> float:
        """When ``key`` is next expected to be requested (for display)."""
        due = self._targets[key].due(self.interval)
        if self.pause is not None:
            due = max(due, self.pause.until)
        return due

    # --- deciding -----------------------------------------------------------

    def decide(self, now: float) -> Decision:
        """What to do at ``now``: a target to request, or a time to wake up."""
        probe = False
        if self.pause is not None:
            if now < self.pause.until:
                return Decision(None, self.pause.until)
            if self.pause.reason in WORKSPACE_REASONS:
                probe = True  # one request to see whether access is back
            else:
                self.pause = None
        allowed = self.budget.next_allowed(now)
        if allowed > now:
            return Decision(None, allowed)
        if not self._targets:
            return Decision(None, now + 3600.0)
        interval = self.interval
        best: tuple[float, float, int] | None = None
        best_key: Key | None = None
        earliest = math.inf
        for key, times in self._targets.items():
            due = times.due(interval)
            if due > now and not probe:
                earliest = min(earliest, due)
                continue
            # Stalest first: never tried before long ago before recently. A failing
            # target counts from its last attempt, not its last success, or its retries
            # would always outrank (and, when they hang, starve) the healthy targets.
            rank = (times.staleness, due, times.order)
            if best is None or rank < best:
                best, best_key = rank, key
        if best_key is None:
            return Decision(None, max(earliest, self._paced(now)))
        if not self._targets[best_key].filling and not probe:
            paced = self._paced(now)
            if paced > now:
                return Decision(None, paced)
        return Decision(best_key, now, probe)

    def blocked_until(self, now: float) -> float:
        """The earliest time any request (a poll or a listing) may be sent."""
        until = self.budget.next_allowed(now)
        if self.pause is not None:
            until = max(until, self.pause.until)
        return until

    def _paced(self, now: float) -> float:
        last = self._last_poll if self._last_poll is not None else self.budget.last_sent
        return now if last is None else max(now, last + self.spacing)

    # --- outcomes -----------------------------------------------------------

    def sent(self, key: Key, at: float) -> None:
        """A request for ``key`` is about to go out at ``at``; count it."""
        self.budget.record(at)
        self._last_poll = at
        self._targets[key].last_attempt = at

    def succeeded(self, key: Key | None, at: float) -> None:
        """``key`` (or a listing, for None) answered with data."""
        times = self._targets.get(key) if key is not None else None
        if times is not None:
            times.last_success = at
            times.failures = 0
            times.slow_failure = False
            times.retry_at = None
        if self.pause is not None and self.pause.reason in WORKSPACE_REASONS:
            log.info("API access is back; resuming polling")
        self.pause = None

    def failed(self, key: Key | None, error: ApiError, at: float) -> None:
        """``key`` (or a listing, for None) failed with ``error``: back off that
        target, or pause everything."""
        reason = error.reason
        times = self._targets.get(key) if key is not None else None
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
            # The probe got past authentication: access is back, this target has its own fault.
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
            delay *= self.rng.uniform(0.5, 1.0)  # jitter spreads retries of many targets
        times.retry_at = at + delay


def effective_interval(targets: int, refresh_interval: float, day_budget: float,
                       minute_budget: float) -> float:
    """``max(refresh_interval, targets x 86400 / day budget, targets x 60 / minute budget)``."""
    if targets <= 0:
        return refresh_interval
    return max(refresh_interval, targets * DAY / day_budget, targets * MINUTE / minute_budget)


class Outcomes(Protocol):
    """Where the poller reports what happened (the store)."""

    def record_request(self, code: str, duration: float) -> None: ...
    def record_success(self, key: Key, summary: Summary, at: float) -> None: ...
    def record_failure(self, key: Key, reason: str, message: str, at: float) -> None: ...
    def record_workspace_failure(self, reason: str, message: str, at: float) -> None: ...
    def record_schedule(self, interval: float, next_due: Mapping[Key, float]) -> None: ...
    def record_discovery(self, kind: str, at: float | None, error: str | None = None) -> None: ...


class Poller:
    """The background thread: asks the scheduler, calls the client, records outcomes.

    ``step()`` does one decision's worth of work and returns when to call it
    again, so tests can drive it with a fake clock.
    """

    def __init__(self, scheduler: Scheduler, client: ExecClient, store: Outcomes,
                 targets: Callable[[], Mapping[Key, Target]], clock: Clock | None = None,
                 on_change: Callable[[], None] | None = None) -> None:
        # on_change runs after every request (outside the lock): the state file hook.
        self.scheduler = scheduler
        self.client = client
        self.store = store
        self._targets = targets
        self.clock = clock or SystemClock()
        self._on_change = on_change
        self.discovery: Discovery | None = None
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        # Held while a step runs; reloads and discovery updates take it too (reentrant:
        # a discovery update applies new targets from inside a step).
        self.lock = threading.RLock()

    def step(self) -> float:
        """Send at most one request; return the time to call again."""
        with self.lock:
            now = self.clock.time()
            discovery = self.discovery
            kind = discovery.due_kind(now) if discovery is not None else None
            if kind is not None and self.scheduler.blocked_until(now) <= now:
                self._list(kind, now)
                self._publish()
                return self.clock.time()
            decision = self.scheduler.decide(now)
            if decision.target is None:
                self._publish()
                wake = decision.wake_at
                if discovery is not None:
                    wake = min(wake, max(discovery.next_due(), self.scheduler.blocked_until(now)))
                return wake
            target = self._targets().get(decision.target)
            if target is None:  # vanished in a reload between decide and here
                return now
            self._request(target, now, decision.probe)
            self._publish()
        if self._on_change is not None:
            self._on_change()
        return self.clock.time()

    def _request(self, target: Target, now: float, probe: bool) -> None:
        key = target.key
        self.scheduler.sent(key, now)
        started = time.monotonic()
        try:
            summary = self.client.summary(target.scenario, target.cohort.query(now))
        except ApiError as error:
            duration = time.monotonic() - started
            done = self.clock.time()
            self.store.record_request(error.code, duration)
            self.scheduler.failed(key, error, done)
            message = str(error)
            if error.reason in WORKSPACE_REASONS:
                wait = self.scheduler.pause.probe_wait if self.scheduler.pause else 0.0
                log.warning("API refused the key (%s); pausing all requests, probing again "
                            "in %.0fs", message, wait)
                self.store.record_workspace_failure(error.reason, message, done)
            else:
                level = logging.WARNING if error.reason != "rate_limited" else logging.ERROR
                log.log(level, "refresh failed scenario=%s cohort=%s reason=%s: %s",
                        key[0], key[1], error.reason, message)
                self.store.record_failure(key, error.reason, message, done)
            return
        duration = time.monotonic() - started
        done = self.clock.time()
        self.store.record_request("200", duration)
        self.scheduler.succeeded(key, done)
        self.store.record_success(key, summary, done)
        log.debug("refreshed scenario=%s cohort=%s in %.3fs%s", key[0], key[1], duration,
                  " (probe)" if probe else "")

    def _list(self, kind: str, now: float) -> None:
        assert self.discovery is not None
        self.scheduler.budget.record(now)
        started = time.monotonic()
        try:
            self.discovery.step(self.client, kind, now)
        except ApiError as error:
            done = self.clock.time()
            self.store.record_request(error.code, time.monotonic() - started)
            self.scheduler.failed(None, error, done)
            pause = error.reason in WORKSPACE_REASONS or error.reason == "rate_limited"
            self.discovery.failed(kind, error, done, pause)
            self.store.record_discovery(kind, None, error=f"{error.reason}: {error}")
            if error.reason in WORKSPACE_REASONS:
                self.store.record_workspace_failure(error.reason, str(error), done)
            return
        done = self.clock.time()
        self.store.record_request("200", time.monotonic() - started)
        self.scheduler.succeeded(None, done)
        if kind not in self.discovery.in_progress:
            self.store.record_discovery(kind, done)

    def _publish(self) -> None:
        s = self.scheduler
        self.store.record_schedule(s.interval, {k: s.next_due(k) for k in s.keys})

    # --- thread -------------------------------------------------------------

    def start(self) -> None:
        """Run in a daemon thread until :meth:`stop`."""
        self._thread = threading.Thread(target=self._run, name="poller", daemon=True)
        self._thread.start()

    def _run(self) -> None:
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
        """Re-decide now (after a reload or discovery changed the targets)."""
        self._wake.set()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop after the in-flight request, if any, finishes or times out."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
