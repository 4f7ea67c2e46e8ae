"""Jobs: the unit the scheduler orders, paces and backs off.

A :class:`Job` is one API request plus the handlers that turn its answer, or its
failure, into updates of targets or lists; handlers know nothing of budgets or pauses.
Recurring jobs are refreshed every effective interval; a :class:`JobSource`
(listings, member lists, a backfill) says itself when its next job is due.
:class:`Running` is the running configuration, swapped whole on start, reload and
discovery updates.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from .client import PAUSE_REASONS, ApiError, ExecClient, Summary

if TYPE_CHECKING:
    from .store import Store
    from .targets import Target

log = logging.getLogger(__name__)

JobKey = Hashable


def _ignore(error: ApiError, at: float) -> None:
    """The default failure handler: nothing beyond what the poller records."""


@dataclass(frozen=True, eq=False)
class Job:
    """One API request (``fetch(client, now)``: the parsed answer, or raises
    :class:`~exporter.client.ApiError`) and its handlers ``apply(answer, at)`` and
    ``fail(error, at)``."""

    kind: str
    key: JobKey
    fetch: Callable[[ExecClient, float], Any]
    apply: Callable[[Any, float], None]
    fail: Callable[[ApiError, float], None] = _ignore
    label: str = ""  # for logs: "scenario=x cohort=y", "scenarios page 2"
    # Requests one run sends: a pull of n pages sends pages 2..n as follow-ups.
    cost: int = 1


class JobSource(Protocol):
    """Jobs due on their own schedule, outside the recurring refresh."""

    def due(self, now: float) -> Job | None:
        """The job to run now, if one is due."""

    def next_due(self) -> float:
        """When the next job is due (-inf: now; inf: never)."""

    def requests_per_day(self) -> float:
        """What this source costs a day, taken out of the day budget."""


def same_definition(current: Target | None, asked: Target) -> bool:
    """Whether an answer asked for ``asked`` still describes ``current`` (same scenario
    and filters; a new display name does not change the population)."""
    return (current is not None and current.cohort == asked.cohort
            and current.scenario_uuid == asked.scenario_uuid)


def summary_job(target: Target, store: Store) -> Job:
    """The recurring job of one target: its summary, stored as its last good value; an
    answer asked before a reload changed the target's filters is dropped."""
    key = target.key

    def current() -> bool:
        state = store.get(key)
        if state is not None and not same_definition(state.target, target):
            log.info("dropped the answer for scenario=%s cohort=%s: the target's definition "
                     "changed while it was asked", key[0], key[1])
            return False
        return True

    def fetch(client: ExecClient, now: float) -> Summary:
        # A rolling window becomes a start_date as of now.
        return client.summary(target.scenario, target.cohort.query(now))

    def apply(summary: Summary, at: float) -> None:
        if current():
            store.record_success(key, summary, at)

    def fail(error: ApiError, at: float) -> None:
        if not current():
            return
        store.record_failure(key, error.reason, str(error), at)
        if error.reason not in PAUSE_REASONS:
            # Workspace-wide refusals are said once, by the poller.
            log.warning("refresh failed scenario=%s cohort=%s reason=%s: %s", key[0], key[1],
                        error.reason, error)

    return Job(kind="summary", key=key, fetch=fetch, apply=apply, fail=fail,
               label=f"scenario={key[0]} cohort={key[1]}")


def key_id(value: str) -> str:
    """A digest that tells two API keys apart without holding either."""
    return hashlib.sha256(value.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Running:
    """The running configuration the poller works from, swapped whole. ``restored``:
    the time of each job's known data (a new job is due by its age); ``forget``: jobs
    whose filters changed (their times start over)."""

    client: ExecClient
    jobs: tuple[Job, ...]
    sources: tuple[JobSource, ...] = ()
    refresh_interval: float = 900.0
    minute_budget: int = 54
    day_budget: int = 900
    restored: Mapping[Any, float] = field(default_factory=dict)
    forget: frozenset[Any] = frozenset()
    key_id: str = ""
