"""Discovery: scenarios and group cohorts read from the workspace's own lists.

The lists (``GET /scenarios``, ``GET /workspace/groups``) are read page by page,
one job per page (:class:`Discovery` is a job source of the scheduler), so every
listing request goes through the same budget ledger and pauses as the summary
requests. A failed listing keeps the last known lists.
:func:`exporter.targets.build_targets` merges what was found with the explicit
configuration into the ordered target list.
"""

from __future__ import annotations

import fnmatch
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .client import ApiError, ExecClient, InvalidResponse
from .config import DiscoveryConfig
from .jobs import Job

log = logging.getLogger(__name__)

PAGE_SIZE = 100  # the API's maximum: fewest requests per list
RETRY_FIRST = 60.0
MAX_PAGES = 1000  # a guard against a pagination that never ends
# Workspace-wide refusals: the scheduler's pause decides when the list is tried again.
_PAUSE_REASONS = frozenset({"unauthorized", "forbidden", "rate_limited"})


@dataclass(frozen=True)
class DiscoveredScenario:
    """A scenario from ``GET /scenarios``."""

    id: str
    slug: str
    name: str | None = None


@dataclass(frozen=True)
class Group:
    """A workspace group from ``GET /workspace/groups``."""

    id: str
    name: str


@dataclass
class Lists:
    """The last complete lists, with when they were read (None: never)."""

    scenarios: list[DiscoveredScenario] | None = None
    groups: list[Group] | None = None
    scenarios_at: float | None = None
    groups_at: float | None = None


def _scenario(item: Any) -> DiscoveredScenario:
    if not isinstance(item, dict):
        raise InvalidResponse("scenario list item is not an object")
    sid, slug, name = item.get("id"), item.get("slug"), item.get("name")
    if not isinstance(sid, str) or not sid:
        raise InvalidResponse("scenario list item has no id")
    if slug is not None and not isinstance(slug, str):
        raise InvalidResponse("scenario slug is not a string")
    return DiscoveredScenario(id=sid, slug=slug or sid,
                              name=name if isinstance(name, str) and name else None)


def _group(item: Any) -> Group:
    if not isinstance(item, dict):
        raise InvalidResponse("group list item is not an object")
    gid, name = item.get("id"), item.get("name")
    if not isinstance(gid, str) or not gid:
        raise InvalidResponse("group list item has no id")
    return Group(id=gid, name=name if isinstance(name, str) and name else gid)


@dataclass
class _Run:
    kind: str
    page: int = 1
    items: list[Any] = field(default_factory=list)


class Discovery:
    """Reads the configured lists every ``interval``: a job source, one page per job.

    ``on_update(lists)`` runs when a list is complete (the exporter rebuilds its
    targets); ``report(kind, at, error)`` says how each list read ended.
    """

    def __init__(self, settings: DiscoveryConfig, lists: Lists | None = None,
                 on_update: Callable[[Lists], None] | None = None,
                 report: Callable[[str, float | None, str | None], None] | None = None,
                 ) -> None:
        self.settings = settings
        self.lists = lists or Lists()
        self.on_update = on_update
        self.report = report
        self.errors: dict[str, str] = {}
        self._runs: dict[str, _Run] = {}
        self._next: dict[str, float] = {}
        self._failures: dict[str, int] = {}
        self.pages: dict[str, int] = {}
        for kind in self.kinds:
            last = self.lists.scenarios_at if kind == "scenarios" else self.lists.groups_at
            self._next[kind] = -1.0 if last is None else last + settings.interval

    @property
    def kinds(self) -> list[str]:
        """The lists this configuration reads."""
        kinds = []
        if self.settings.scenarios is not None:
            kinds.append("scenarios")
        if self.settings.group_cohorts is not None:
            kinds.append("groups")
        return kinds

    def requests_per_day(self) -> float:
        """Listing requests per day at the current page counts (one page at the least)."""
        pages = sum(max(self.pages.get(kind, 1), 1) for kind in self.kinds)
        return pages * 86400 / self.settings.interval

    def due_kind(self, now: float) -> str | None:
        """The list to read next, if one is due."""
        for kind in self.kinds:
            if kind in self._runs or now >= self._next[kind]:
                return kind
        return None

    def due(self, now: float) -> Job | None:
        """The next page to read, as a job, if a list is due."""
        kind = self.due_kind(now)
        if kind is None:
            return None
        run = self._runs.setdefault(kind, _Run(kind))
        path = "/scenarios" if kind == "scenarios" else "/workspace/groups"
        params = self._query(kind, run.page)

        def fetch(client: ExecClient, at: float) -> tuple[list[Any], int]:
            return client.list_page(path, params)

        def apply(answer: tuple[list[Any], int], at: float) -> None:
            self.page_read(kind, *answer, at)

        def fail(error: ApiError, at: float) -> None:
            self.failed(kind, error, at, error.reason in _PAUSE_REASONS)

        return Job(kind=f"list_{kind}", key=("list", kind, run.page), fetch=fetch,
                   apply=apply, fail=fail, label=f"{kind} page {run.page}")

    def reread(self) -> None:
        """Read every list again at the next chance (after a reload changed the filters)."""
        self._runs.clear()
        for kind in self.kinds:
            self._next[kind] = -1.0

    @property
    def in_progress(self) -> set[str]:
        """Lists read part-way (more pages to come)."""
        return set(self._runs)

    def next_due(self) -> float:
        """When the next list is due."""
        if self._runs:
            return -1.0
        return min(self._next.values(), default=float("inf"))

    def _query(self, kind: str, page: int) -> dict[str, str]:
        params = {"page": str(page), "page_size": str(PAGE_SIZE)}
        wanted = self.settings.scenarios
        if kind == "scenarios" and wanted is not None:
            if wanted.visibility:
                params["visibility"] = wanted.visibility
            if wanted.collection_ids:
                params["collection_ids"] = ",".join(wanted.collection_ids)
            if wanted.skill_ids:
                params["skill_ids"] = ",".join(wanted.skill_ids)
            params["include_archived"] = "true" if wanted.include_archived else "false"
        return params

    def page_read(self, kind: str, items: list[Any], pages: int, now: float) -> None:
        """One page of ``kind`` arrived; finish the list when it was the last page."""
        run = self._runs.setdefault(kind, _Run(kind))
        run.items.extend(items)
        if run.page < pages and items and run.page < MAX_PAGES:
            run.page += 1
            return
        del self._runs[kind]
        self.pages[kind] = run.page
        if kind == "scenarios":
            scenarios = [_scenario(item) for item in run.items]
            excluded = set(self.settings.scenarios.exclude if self.settings.scenarios else [])
            found = [s for s in scenarios if s.slug not in excluded and s.id not in excluded]
            self.lists.scenarios, self.lists.scenarios_at = _unique_scenarios(found), now
        else:
            groups = [_group(item) for item in run.items]
            self.lists.groups, self.lists.groups_at = _matching_groups(
                groups, self.settings.group_cohorts.include if self.settings.group_cohorts
                else []), now
        self._next[kind] = now + self.settings.interval
        self._failures.pop(kind, None)
        self.errors.pop(kind, None)
        log.info("discovery: read %s (%d pages, %d %s)", kind, run.page,
                 len(self.lists.scenarios or []) if kind == "scenarios"
                 else len(self.lists.groups or []), kind)
        if self.report is not None:
            self.report(kind, now, None)
        if self.on_update is not None:
            self.on_update(self.lists)

    def failed(self, kind: str, error: ApiError, now: float, workspace_pause: bool) -> None:
        """A page request failed: keep the last lists, retry the whole list later."""
        self._runs.pop(kind, None)
        self.errors[kind] = f"{error.reason}: {error}"
        if self.report is not None:
            self.report(kind, None, self.errors[kind])
        if workspace_pause:
            self._next[kind] = now  # the scheduler's pause decides when to try again
            return
        failures = self._failures.get(kind, 0) + 1
        self._failures[kind] = failures
        self._next[kind] = now + min(RETRY_FIRST * 2 ** (failures - 1), self.settings.interval)
        log.warning("discovery: reading %s failed (%s); keeping the last known list, "
                    "retrying in %.0fs", kind, self.errors[kind], self._next[kind] - now)


def _unique_scenarios(scenarios: list[DiscoveredScenario]) -> list[DiscoveredScenario]:
    seen: set[str] = set()
    out = []
    for scenario in scenarios:
        if scenario.slug in seen:
            log.warning("discovery: two scenarios share the slug %r; keeping the first",
                        scenario.slug)
            continue
        seen.add(scenario.slug)
        out.append(scenario)
    return out


def _matching_groups(groups: list[Group], patterns: list[str]) -> list[Group]:
    if not patterns:
        return groups
    lowered = [p.lower() for p in patterns]
    return [g for g in groups if any(fnmatch.fnmatchcase(g.name.lower(), p) for p in lowered)]
