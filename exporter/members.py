"""The member lists of the groups that derived cohorts use.

A group cohort can be derived from a participants pull only while its groups'
member lists are known (:mod:`exporter.planner`). Each list is read, page by
page (:class:`~exporter.paged.PagedRead`), every ``planner.membership_interval``;
lists already known are read again spread over that interval rather than in
one burst; a failed read keeps the last list and is retried by the one backoff
rule of list reads (:func:`~exporter.paged.retry_at`).

Thread-safety: the planner's lock is this object's lock (the planner reads the
lists under it while it plans and derives); callbacks run outside it.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Collection, Sequence
from typing import Any

from .client import PAUSE_REASONS, PERSISTENT_REASONS, ApiError, ExecClient, Member, Page
from .config import PlannerConfig, format_duration
from .jobs import Job
from .learned import keep_only
from .paged import PagedRead, retry_at

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
        self._runs: dict[str, PagedRead[Member]] = {}
        self._next: dict[str, float] = {}
        self._failures: dict[str, int] = {}
        self._rereads_after = -math.inf

    def ids(self, group: str) -> frozenset[str]:
        """The user ids of ``group`` (known: callers check :attr:`known`)."""
        return self.known[group][0]

    def configure(self, settings: PlannerConfig, reread: bool) -> None:
        """New settings (a reload); ``reread``: read every list again now."""
        self.settings = settings
        if reread:
            self._next.clear()
            self._runs.clear()

    def prune(self, used: Collection[str]) -> None:
        """Forget the groups no target's cohort names."""
        for table in (self.known, self._runs, self._next, self._failures, self.pages):
            keep_only(table, used)

    def due(self, groups: Sequence[str], now: float) -> Job | None:
        """The next page of a list of ``groups`` (the plan's) being read or due."""
        for group in groups:
            reading = self._runs.get(group)
            if reading is None and now >= self._due(group):
                reading = self._runs[group] = PagedRead(
                    f"members of group {group}", key=lambda member: member.user_id)
                if group in self.known:
                    self._rereads_after = now + (self.settings.membership_interval
                                                 / max(len(groups), 1))
            if reading is not None:
                return self._job(group, reading)
        return None

    def next_due(self, groups: Sequence[str]) -> list[float]:
        """When each list of ``groups`` is next due (-inf: being read)."""
        return [-math.inf if group in self._runs else self._due(group) for group in groups]

    def _due(self, group: str) -> float:
        due = self._next.get(group, -math.inf)
        if group in self.known:
            # Lists already known are read again spread over the interval, not in one
            # burst of every group at once (which would hold back the pulls behind it).
            due = max(due, self._rereads_after)
        return due

    def _job(self, group: str, run: PagedRead[Member]) -> Job:
        page_no, params = run.page, run.query({"group_ids": group})

        def fetch(client: ExecClient, now: float) -> Page:
            return client.members(params)

        def apply(page: Page, at: float) -> None:
            self.read(group, page_no, page, at)

        def fail(error: ApiError, at: float) -> None:
            self.failed(group, error, at)

        return Job(kind="members", key=("members", group, page_no), fetch=fetch,
                   apply=apply, fail=fail, label=f"members of group {group} page {page_no}")

    def read(self, group: str, page_no: int, page: Page, at: float) -> None:
        """A page of ``group``'s member list arrived."""
        with self._lock:
            run = self._runs.get(group)
            if run is None or run.page != page_no:
                return
            if not run.take(page, raw=False):  # ListChanged: failed() drops the read
                return
            del self._runs[group]
            first = group not in self.known or self.pages.get(group) != page_no
            self.known[group] = (frozenset(m.user_id for m in run.items), at)
            self.pages[group] = page_no
            self._failures.pop(group, None)
            self._next[group] = at + self.settings.membership_interval
        log.debug("members of group %s: %d", group, len(run.items))
        if first:
            self.on_first()

    def failed(self, group: str, error: ApiError, at: float) -> None:
        """A member list page failed: the last list stays; retry later."""
        with self._lock:
            self._runs.pop(group, None)
            if error.reason in PAUSE_REASONS:
                self._next[group] = at  # the scheduler's pause decides
                return
            failures = self._failures.get(group, 0) + 1
            self._failures[group] = failures
            wait = (max(self.settings.fallback_for, self.settings.membership_interval)
                    if error.reason in PERSISTENT_REASONS
                    else retry_at(error, failures, at, self.settings.membership_interval) - at)
            self._next[group] = at + wait
            known = group in self.known
        log.warning("members of group %s: reading failed (%s: %s); %s, retrying in %s", group,
                    error.reason, error, "keeping the last list" if known
                    else "its cohorts use summary requests", format_duration(wait))

    def state(self) -> dict[str, Any]:
        """The state file's ``members`` and ``member_retries`` (JSON-safe)."""
        return {
            "members": {g: {"user_ids": sorted(ids), "at": at, "pages": self.pages.get(g, 1)}
                        for g, (ids, at) in self.known.items()},
            "member_retries": {g: {"failures": n, "next": self._next.get(g, 0.0)}
                               for g, n in self._failures.items()},
        }

    def restore_list(self, group: str, doc: Any, at: float) -> None:
        """Take back one saved list (``at``: when it was read, already checked)."""
        if not isinstance(doc["user_ids"], list):
            raise ValueError("user_ids is not a list")
        self.known[group] = (frozenset(str(i) for i in doc["user_ids"]), at)
        self.pages[group] = max(int(doc.get("pages", 1)), 1)
        # A restored list is read again when it is membership_interval old.
        self._next[group] = at + self.settings.membership_interval

    def restore_retry(self, group: str, doc: Any) -> None:
        """Take back one saved retry (after the lists: it decides the next read)."""
        self._failures[group] = int(doc["failures"])
        self._next[group] = float(doc["next"])
