"""The member lists of the groups that derived cohorts use (docs/derived-cohorts.md).

Each list is read every ``planner.membership_interval``. Thread-safety: the
planner's lock is this object's lock; callbacks run outside it.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Collection, Sequence
from functools import partial
from typing import Any

from .client import PERSISTENT_REASONS, ApiError, Member, Page
from .config import PlannerConfig
from .jobs import Job
from .learned import keep_only
from .paged import PagedRead, Schedule

log = logging.getLogger("exporter.planner")  # the planner's log, as before the split


class MemberLists:
    """Reads, keeps and saves member lists; a part of the planner's job source.

    ``on_first()`` is called (outside the lock) when a list is known for the first
    time or its page count changed: the plan may change.
    """

    def __init__(self, settings: PlannerConfig, lock: threading.RLock,
                 on_first: Callable[[], None]) -> None:
        self.settings = settings
        self.on_first = on_first
        self._lock = lock
        self.known: dict[str, tuple[frozenset[str], float]] = {}  # group -> (user ids, at)
        self.pages: dict[str, int] = {}  # group -> pages of its last read
        self._schedules: dict[str, Schedule[PagedRead[Member]]] = {}
        self._rereads_after = -math.inf

    def ids(self, group: str) -> frozenset[str]:
        """The user ids of ``group`` (known: callers check :attr:`known`)."""
        return self.known[group][0]

    def configure(self, settings: PlannerConfig, reread: bool) -> None:
        """New settings (a reload); ``reread``: read every list again now."""
        self.settings = settings
        if reread:
            for schedule in self._schedules.values():
                schedule.run, schedule.next_at = None, -math.inf

    def prune(self, used: Collection[str]) -> None:
        """Forget the groups no target's cohort names."""
        for table in (self.known, self._schedules, self.pages):
            keep_only(table, used)

    def _schedule(self, group: str) -> Schedule[PagedRead[Member]]:
        return self._schedules.setdefault(
            group, Schedule(f"members of group {group}", next_at=-math.inf))

    def due(self, groups: Sequence[str], now: float) -> Job | None:
        """The next page of a list of ``groups`` (the plan's) being read or due."""
        for group in groups:
            schedule = self._schedule(group)
            idle = schedule.run is None
            read = schedule.begin(now, partial(PagedRead[Member], f"members of group {group}",
                                               lambda member: member.user_id), self._due(group))
            if read is None:
                continue
            if idle and group in self.known:
                # Lists already known are read again spread over the interval, not in one
                # burst of every group at once (which would hold back the pulls behind it).
                self._rereads_after = now + (self.settings.membership_interval
                                             / max(len(groups), 1))
            return read.job("members", ("members", group), f"members of group {group}",
                            lambda client, params: client.members(params), {"group_ids": group},
                            partial(self.read, group, read.page), partial(self.failed, group))
        return None

    def next_due(self, groups: Sequence[str]) -> list[float]:
        """When each list of ``groups`` is next due (-inf: being read)."""
        return [self._due(group) for group in groups]

    def _due(self, group: str) -> float:
        schedule = self._schedules.get(group)
        if schedule is None or schedule.run is not None:  # never read, or being read
            return -math.inf
        return max(schedule.next_at, self._rereads_after if group in self.known else -math.inf)

    def read(self, group: str, page_no: int, page: Page, at: float) -> None:
        """A page of ``group``'s member list arrived."""
        with self._lock:
            schedule = self._schedules.get(group)
            run = schedule.run if schedule is not None else None
            if schedule is None or run is None or run.page != page_no:
                return
            if not run.take(page, raw=False):  # ListChanged: failed() drops the read
                return
            first = group not in self.known or self.pages.get(group) != page_no
            self.known[group] = (frozenset(m.user_id for m in run.items), at)
            self.pages[group] = page_no
            schedule.done(at, at + self.settings.membership_interval)
        log.debug("members of group %s: %d", group, len(run.items))
        if first:
            self.on_first()

    def failed(self, group: str, error: ApiError, at: float) -> None:
        """A member list page failed: the last list stays; retry later."""
        with self._lock:
            interval = self.settings.membership_interval
            self._schedule(group).failed(
                error, at, interval,
                wait=(max(self.settings.fallback_for, interval)
                      if error.reason in PERSISTENT_REASONS else None),
                keeping="keeping the last list" if group in self.known
                else "its cohorts use summary requests")

    def state(self) -> dict[str, Any]:
        """The state file's ``members`` and ``member_retries`` (JSON-safe)."""
        return {
            "members": {g: {"user_ids": sorted(ids), "at": at, "pages": self.pages.get(g, 1)}
                        for g, (ids, at) in self.known.items()},
            "member_retries": {g: {"failures": s.failures, "next": max(s.next_at, 0.0)}
                               for g, s in self._schedules.items() if s.failures},
        }

    def restore_list(self, group: str, doc: Any, at: float) -> None:
        """Take back one saved list (``at``: when it was read, already checked)."""
        if not isinstance(doc["user_ids"], list):
            raise ValueError("user_ids is not a list")
        self.known[group] = (frozenset(str(i) for i in doc["user_ids"]), at)
        self.pages[group] = max(int(doc.get("pages", 1)), 1)
        # A restored list is read again when it is membership_interval old.
        self._schedule(group).next_at = at + self.settings.membership_interval

    def restore_retry(self, group: str, doc: Any) -> None:
        """Take back one saved retry (after the lists: it decides the next read)."""
        failures, next_at = int(doc["failures"]), float(doc["next"])
        schedule = self._schedule(group)
        schedule.failures, schedule.next_at = failures, next_at
