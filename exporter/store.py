"""The store: the last good value of every target, with how it got there.

The poller writes outcomes; the collector reads consistent snapshots. Every
change bumps ``version`` so the exposition can be cached between changes.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import TypeVar

from .client import PAUSE_REASONS as WORKSPACE_PAUSES
from .client import REASONS, Summary
from .targets import Target, TargetKey

Key = TargetKey
K = TypeVar("K")

# Where a target's exported values come from: its own summary requests, or derived
# from its scenario's participants pull (exec_exporter_target_source's state set).
SOURCES = ("summary", "participants")
CROSS_CHECK_RESULTS = ("match", "mismatch")  # exec_exporter_cross_checks_total{result}

# Latency buckets for API requests: the API answers in tens to hundreds of ms.
REQUEST_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

# The ``kind`` label of the request metrics: which endpoint the quota went to.
REQUEST_KINDS = ("summary", "participants", "members", "scenarios", "groups", "skills",
                 "assignments")
# Jobs whose kind is not their endpoint's name.
_KIND_OF_JOB = {"cross_check": "summary", "list_scenarios": "scenarios",
                "list_groups": "groups", "list_skills": "skills",
                "list_assignments": "assignments"}

# Refusals of the whole workspace, in REASONS order (exec_exporter_api_paused's state set).
PAUSE_REASONS = tuple(reason for reason in REASONS if reason in WORKSPACE_PAUSES)


@dataclass(frozen=True)
class Latency:
    """The request-duration histogram of one request kind."""

    buckets: tuple[int, ...] = (0,) * len(REQUEST_BUCKETS)  # per bound, cumulative
    count: int = 0
    total: float = 0.0

    def observe(self, duration: float) -> Latency:
        """This histogram with one more request of ``duration`` seconds."""
        return Latency(tuple(n + (duration <= bound)
                             for n, bound in zip(self.buckets, REQUEST_BUCKETS, strict=True)),
                       self.count + 1, self.total + duration)


@dataclass(frozen=True)
class TargetState:
    """What is known of one target."""

    target: Target
    summary: Summary | None = None
    last_success: float | None = None
    up: bool = False
    last_error: str | None = None
    last_error_message: str | None = None
    last_error_time: float | None = None
    # The target's own failed refreshes by reason (exported summed: errors_total has
    # no reason label); the workspace-wide refusals are not among them.
    errors: Mapping[str, int] = field(default_factory=dict)
    next_due: float | None = None
    source: str = SOURCES[0]


@dataclass(frozen=True)
class Snapshot:
    """A consistent copy of everything the collector exports (the defaults: an empty
    store). Its mappings are replaced on a change, never changed in place."""

    version: int = 0
    targets: tuple[TargetState, ...] = ()
    interval: float = 0.0
    max_staleness: float | None = None
    api_requests: Mapping[tuple[str, str], int] = field(default_factory=dict)  # (kind, code)
    latency: Mapping[str, Latency] = field(default_factory=dict)  # by kind
    errors: Mapping[str, int] = field(default_factory=dict)  # every failed request, by reason
    targets_dropped: int = 0
    discovery_success: Mapping[str, float] = field(default_factory=dict)
    discovery_error: Mapping[str, str] = field(default_factory=dict)
    reload_ok: bool = True
    reload_time: float | None = None
    # Derived cohorts: cross-check verdicts by (scenario, result), what a full refresh
    # costs under the plan (None: no plan published).
    cross_checks: Mapping[tuple[str, str], int] = field(default_factory=dict)
    plan_requests_per_cycle: float | None = None
    invalid_items: Mapping[str, int] = field(default_factory=dict)  # by list kind
    pause_reason: str | None = None  # a workspace-wide pause in force: its reason
    pause_until: float | None = None
    stretched: bool = False  # the interval was stretched to fit the budget
    # A longer limit kept after the interval shrank: (limit, until when).
    staleness_floor: tuple[float, float] | None = None

    def staleness_limit(self, now: float) -> float:
        """Data older than this many seconds at ``now`` is no longer exported
        (exec_exporter_max_staleness_seconds): ``max_staleness`` (default three
        intervals), never under two intervals (a shorter limit would drop data every
        cycle), and at least the floor in force: the old limit, kept for two new
        intervals after the interval shrank, so data of the old cycle is refreshed
        before it expires."""
        limit = max(3 * self.interval if self.max_staleness is None else self.max_staleness,
                    2 * self.interval)
        floor = self.staleness_floor
        return max(limit, floor[0]) if floor is not None and now <= floor[1] else limit

    def limit_changes_at(self, now: float) -> float:
        """When :meth:`staleness_limit` may next change by itself (inf: never)."""
        floor = self.staleness_floor
        return floor[1] if floor is not None and now <= floor[1] else math.inf

    def fresh_until(self, state: TargetState, now: float) -> float | None:
        """The last instant ``state``'s data is exported at under the limit in force at
        ``now`` (None: it has none)."""
        if state.summary is None or state.last_success is None:
            return None
        return state.last_success + self.staleness_limit(now)

    def is_fresh(self, state: TargetState, now: float) -> bool:
        """Whether ``state`` has data young enough to export at ``now``."""
        until = self.fresh_until(state, now)
        return until is not None and now <= until


def _plus(counts: Mapping[K, int], key: K, count: int = 1) -> dict[K, int]:
    """A copy of ``counts`` with ``count`` more for ``key``."""
    return {**counts, key: counts.get(key, 0) + count}


class Store:
    """Thread-safe holder of target states and exporter counters."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._targets: dict[Key, TargetState] = {}
        self._version = 0
        # Everything but the targets and the version, replaced whole on a change.
        self._totals = Snapshot()

    def _bump(self) -> None:
        # Called with the lock held.
        self._version += 1
        self._changed.notify_all()

    def _update(self, totals: Snapshot) -> None:
        # Called with the lock held.
        self._totals = totals
        self._bump()

    def _change(self, change: Callable[[Snapshot], Snapshot]) -> None:
        with self._lock:
            self._update(change(self._totals))

    def _change_target(self, key: Key, change: Callable[[TargetState], TargetState]) -> None:
        with self._lock:
            old = self._targets.get(key)
            if old is not None:  # else no longer a target
                self._targets[key] = change(old)
                self._bump()

    def wait_for_change(self, version: int, timeout: float) -> int:
        """Block until the version moves past ``version`` or ``timeout`` passes;
        return the version then (the state file's saver waits here)."""
        with self._changed:
            self._changed.wait_for(lambda: self._version != version, timeout)
            return self._version

    @property
    def version(self) -> int:
        """Increases with every change."""
        return self._version

    # --- targets ------------------------------------------------------------

    def set_targets(self, targets: Iterable[Target],
                    restored: Mapping[Key, TargetState] | None = None,
                    forget: Collection[Key] = ()) -> None:
        """Replace the target set: kept targets keep their state (except those in
        ``forget``, whose values described another population), removed ones vanish."""
        restored = restored or {}
        with self._lock:
            new: dict[Key, TargetState] = {}
            for target in targets:
                kept = self._targets.get(target.key) if target.key not in forget else None
                old = kept or restored.get(target.key)
                new[target.key] = (replace(old, target=target) if old is not None
                                   else TargetState(target=target))
            self._targets = new
            # A removed scenario's cross-check series leave /metrics with it.
            scenarios = {key[0] for key in new}
            self._update(replace(self._totals, cross_checks={
                k: v for k, v in self._totals.cross_checks.items() if k[0] in scenarios}))

    def record_success(self, key: Key, summary: Summary, at: float) -> None:
        """A refresh of ``key`` returned ``summary``."""
        self._change_target(key, lambda old: replace(old, summary=summary, last_success=at,
                                                     up=True))

    def record_failure(self, key: Key, reason: str, message: str, at: float) -> None:
        """A refresh of ``key`` failed; its last good summary stays. A workspace-wide
        refusal (:data:`PAUSE_REASONS`) is not the target's own: it changes nothing here
        (the pause reaches the store through :meth:`record_schedule`)."""
        if reason not in PAUSE_REASONS:
            self._change_target(key, lambda old: replace(
                old, up=False, last_error=reason, last_error_message=message,
                last_error_time=at, errors=_plus(old.errors, reason)))

    def record_schedule(self, interval: float, next_due: Mapping[Key, float],
                        pause: tuple[str, float] | None = None,
                        stretched: bool = False, at: float | None = None) -> None:
        """The effective interval, each target's next planned refresh and the
        workspace-wide pause in force, if any (reason, until), as decided at ``at``."""
        with self._lock:
            old = self._totals
            reason, until = pause or (None, None)
            new = replace(old, interval=interval, pause_reason=reason, pause_until=until,
                          stretched=stretched)
            if at is not None and 0 < interval < old.interval and any(
                    state.last_success is not None for state in self._targets.values()):
                # The interval shrank while data of the old cycle is out: the old limit
                # stays for two new intervals (no data yet, as at a first fill: nothing
                # to keep).
                new = replace(new, staleness_floor=(old.staleness_limit(at),
                                                    at + 2 * interval))
            for key, due in next_due.items():
                state = self._targets.get(key)
                if state is not None and state.next_due != due:
                    # next_due is for the landing page only: no version bump for it.
                    self._targets[key] = replace(state, next_due=due)
            if new != old:
                self._update(new)

    def set_sources(self, sources: Mapping[Key, str]) -> None:
        """Where each target's values come from (the plan); a change is a new version,
        so the cached exposition shows it without rendering anything per scrape."""
        with self._lock:
            changed = False
            for key, source in sources.items():
                old = self._targets.get(key)
                if old is not None and old.source != source:
                    self._targets[key] = replace(old, source=source)
                    changed = True
            if changed:
                self._bump()

    # --- exporter-wide --------------------------------------------------------

    def record_request(self, job_kind: str, code: str, duration: float,
                       reason: str | None = None) -> None:
        """One API request of a job of ``job_kind`` finished with ``code`` after
        ``duration`` seconds; ``reason``: it failed, and why."""
        kind = _KIND_OF_JOB.get(job_kind, job_kind)
        self._change(lambda totals: replace(
            totals, api_requests=_plus(totals.api_requests, (kind, code)),
            latency={**totals.latency, kind: totals.latency.get(kind, Latency()).observe(duration)},
            errors=totals.errors if reason is None else _plus(totals.errors, reason)))

    def set_max_staleness(self, seconds: float | None) -> None:
        """None means 3 x the effective interval."""
        self._change(lambda totals: replace(totals, max_staleness=seconds))

    def set_targets_dropped(self, count: int) -> None:
        """Targets left out by max_targets."""
        self._change(lambda totals: replace(totals, targets_dropped=count))

    def record_discovery(self, kind: str, at: float | None, error: str | None = None,
                         invalid_items: int = 0) -> None:
        """A discovery listing of ``kind`` completed at ``at`` (or failed with ``error``),
        leaving out ``invalid_items`` malformed items."""
        with self._lock:
            totals = self._totals
            invalid = (_plus(totals.invalid_items, kind, invalid_items) if invalid_items
                       else totals.invalid_items)
            success, failure = dict(totals.discovery_success), dict(totals.discovery_error)
            if at is not None:
                success[kind] = at
                failure.pop(kind, None)
            if error is not None:
                failure[kind] = error
            self._update(replace(totals, invalid_items=invalid, discovery_success=success,
                                 discovery_error=failure))

    def record_cross_check(self, scenario: str, result: str) -> None:
        """A cross-check of ``scenario`` ended with ``result`` (match or mismatch)."""
        self._change(lambda totals: replace(
            totals, cross_checks=_plus(totals.cross_checks, (scenario, result))))

    def cross_checks(self) -> dict[tuple[str, str], int]:
        """Cross-check verdicts so far, by (scenario, result)."""
        with self._lock:
            return dict(self._totals.cross_checks)

    def set_plan_cost(self, requests_per_cycle: float) -> None:
        """What one full refresh costs under the running plan."""
        with self._lock:
            if requests_per_cycle != self._totals.plan_requests_per_cycle:
                self._update(replace(self._totals, plan_requests_per_cycle=requests_per_cycle))

    def record_reload(self, ok: bool, at: float) -> None:
        """The outcome of a configuration (re)load."""
        self._change(lambda totals: replace(totals, reload_ok=ok,
                                            reload_time=at if ok else totals.reload_time))

    def snapshot(self) -> Snapshot:
        """A consistent, immutable copy for one scrape or one render."""
        with self._lock:
            return replace(self._totals, version=self._version,
                           targets=tuple(self._targets.values()))

    def get(self, key: Key) -> TargetState | None:
        """One target's state."""
        with self._lock:
            return self._targets.get(key)
