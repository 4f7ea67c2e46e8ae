"""Discovery: scenarios and group cohorts read from the workspace's own lists.

The lists (``GET /scenarios``, ``GET /workspace/groups``) are read page by page,
one job per page (:class:`Discovery` is a job source of the scheduler), so every
listing request goes through the same budget ledger and pauses as the summary
requests (:mod:`exporter.paged` reads and checks every page). A failed or
inconsistent listing keeps the last known lists. With discovery of scenarios
off, the scenario list is still read once a day for the display names of the
scenarios configured without ``name`` (:func:`names_wanted`).
:func:`exporter.targets.build_targets` merges what was found with the explicit
configuration into the ordered target list.
"""

from __future__ import annotations

import fnmatch
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .client import PAUSE_REASONS, ApiError, ExecClient, payload
from .config import Config, DiscoveryConfig
from .jobs import Job
from .models import GroupPayload, Page, ScenarioPayload
from .paged import PagedRead, retry_at

log = logging.getLogger(__name__)

# The scenario list read for display names alone (discovery off): a page or two a day,
# the first a while after start, so that the first requests of a new exporter are its
# targets' own (a refused key then shows on the targets, and the first fill is not held up).
NAMES_INTERVAL = 86400.0
NAMES_FIRST_DELAY = 300.0
Report = Callable[[str, float | None, str | None, int], None]
"""``report(kind, at, error, skipped)``: a list read completed at ``at`` or failed with
``error``; ``skipped`` malformed items were left out (``store.record_discovery``)."""


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


def parse_scenario(item: object) -> DiscoveredScenario:
    """One item of ``GET /scenarios``; a wrong type raises InvalidResponse. The slug
    defaults to the id; a name that is not text is no name."""
    got = payload(ScenarioPayload, item, "scenario")
    return DiscoveredScenario(id=got.id, slug=got.slug or got.id, name=got.name)


def parse_group(item: object) -> Group:
    """One item of ``GET /workspace/groups``; the name defaults to the id."""
    got = payload(GroupPayload, item, "group")
    return Group(id=got.id, name=got.name or got.id)


def names_wanted(config: Config) -> bool:
    """Whether the scenario list is read for display names alone: a scenario is
    configured without ``name`` and discovery does not read the list anyway."""
    reads = config.discovery is not None and config.discovery.scenarios is not None
    return not reads and any(not scenario.name for scenario in config.scenarios)


class Discovery:
    """Reads the configured lists every ``interval``: a job source, one page per job.

    With ``names`` (see :func:`names_wanted`) the scenario list is read once a day
    for the display names and ids of the configured scenarios, also when discovery
    is off (``settings`` None): it adds no target.

    ``on_update(lists)`` runs when a list is complete (the exporter rebuilds its
    targets); ``report(kind, at, error, skipped)`` says how each list read ended and
    how many malformed items it skipped.
    """

    def __init__(self, settings: DiscoveryConfig | None, lists: Lists | None = None,
                 on_update: Callable[[Lists], None] | None = None,
                 report: Report | None = None, names: bool = False) -> None:
        self.settings = settings or DiscoveryConfig()
        self.names = names and self.settings.scenarios is None
        self.lists = lists or Lists()
        self.on_update = on_update
        self.report = report
        self.errors: dict[str, str] = {}
        self._reads: dict[str, PagedRead[Any]] = {}
        self._next: dict[str, float] = {}
        self._failures: dict[str, int] = {}
        self.pages: dict[str, int] = {}
        self._names_first = False  # the names' first read: due NAMES_FIRST_DELAY after start
        for kind in self.kinds:
            last = self.lists.scenarios_at if kind == "scenarios" else self.lists.groups_at
            self._next[kind] = -1.0 if last is None else last + self.interval(kind)
        if self.names and self.lists.scenarios_at is None:
            self._names_first, self._next["scenarios"] = True, float("inf")

    @property
    def kinds(self) -> list[str]:
        """The lists this configuration reads."""
        kinds = []
        if self.settings.scenarios is not None or self.names:
            kinds.append("scenarios")
        if self.settings.group_cohorts is not None:
            kinds.append("groups")
        return kinds

    def interval(self, kind: str) -> float:
        """How often ``kind`` is read: discovery's interval; a day for names alone."""
        if kind == "scenarios" and self.names:
            return max(NAMES_INTERVAL, self.settings.interval)
        return self.settings.interval

    def requests_per_day(self) -> float:
        """Listing requests per day at the current page counts (one page at the least),
        taken out of the targets' day budget. The names' read is left out: a request a
        day per 100 scenarios, whose page count ``--config.check`` cannot know, would
        make the effective interval differ between the check and the running exporter
        for almost nothing; the ledger counts it like any request."""
        return sum(max(self.pages.get(kind, 1), 1) * 86400 / self.interval(kind)
                   for kind in self.kinds if not (kind == "scenarios" and self.names))

    def due_kind(self, now: float) -> str | None:
        """The list to read next, if one is due."""
        if self._names_first:
            self._names_first, self._next["scenarios"] = False, now + NAMES_FIRST_DELAY
        for kind in self.kinds:
            if kind in self._reads or now >= self._next[kind]:
                return kind
        return None

    def due(self, now: float) -> Job | None:
        """The next page to read, as a job, if a list is due."""
        kind = self.due_kind(now)
        if kind is None:
            return None
        read = self._reads.get(kind)
        if read is None:
            read = self._reads[kind] = (
                PagedRead[Any]("scenario list", key=lambda s: s.id, parse=parse_scenario)
                if kind == "scenarios" else
                PagedRead[Any]("group list", key=lambda g: g.id, parse=parse_group))
        path = "/scenarios" if kind == "scenarios" else "/workspace/groups"
        params = read.query(self._filters(kind))
        page = read.page

        def fetch(client: ExecClient, at: float) -> Page[Any]:
            return client.list_page(path, params)

        def apply(answer: Page[Any], at: float) -> None:
            self.page_read(kind, read, answer, at)

        def fail(error: ApiError, at: float) -> None:
            self.failed(kind, error, at)

        return Job(kind=f"list_{kind}", key=("list", kind, page), fetch=fetch,
                   apply=apply, fail=fail, label=f"{kind} page {page}")

    def reread(self) -> None:
        """Read every list again at the next chance (after a reload changed the filters)."""
        self._reads.clear()
        self._names_first = False
        for kind in self.kinds:
            self._next[kind] = -1.0

    def next_due(self) -> float:
        """When the next list is due."""
        if self._reads:
            return -1.0
        return min(self._next.values(), default=float("inf"))

    def _filters(self, kind: str) -> dict[str, str]:
        if kind != "scenarios":
            return {}
        wanted = self.settings.scenarios
        if wanted is None:
            # Names alone: every scenario, archived ones too (a configured scenario may be).
            return {"include_archived": "true"}
        params: dict[str, str] = {}
        if wanted.visibility:
            params["visibility"] = wanted.visibility
        if wanted.collection_ids:
            params["collection_ids"] = ",".join(wanted.collection_ids)
        if wanted.skill_ids:
            params["skill_ids"] = ",".join(wanted.skill_ids)
        params["include_archived"] = "true" if wanted.include_archived else "false"
        return params

    def page_read(self, kind: str, read: PagedRead[Any], page: Page[Any], now: float) -> None:
        """One page of ``kind`` arrived; finish the list when it was the last page.
        Raises :class:`~exporter.paged.ListChanged` when the pages disagree."""
        if self._reads.get(kind) is not read:
            return  # a reload started the list over
        if not read.take(page):
            return
        del self._reads[kind]
        self.pages[kind] = read.pages
        if kind == "scenarios":
            excluded = set(self.settings.scenarios.exclude if self.settings.scenarios else [])
            found = [s for s in read.items if s.slug not in excluded and s.id not in excluded]
            self.lists.scenarios, self.lists.scenarios_at = _unique_scenarios(found), now
        else:
            self.lists.groups, self.lists.groups_at = _matching_groups(
                read.items, self.settings.group_cohorts.include if self.settings.group_cohorts
                else []), now
        self._next[kind] = now + self.interval(kind)
        self._failures.pop(kind, None)
        self.errors.pop(kind, None)
        log.info("discovery: read %s (%d pages, %d %s)", kind, read.pages,
                 len(self.lists.scenarios or []) if kind == "scenarios"
                 else len(self.lists.groups or []), kind)
        if self.report is not None:
            self.report(kind, now, None, read.skipped)
        if self.on_update is not None:
            self.on_update(self.lists)

    def failed(self, kind: str, error: ApiError, now: float) -> None:
        """A page request failed (or the pages disagreed): keep the last lists, retry
        the whole list later."""
        self._reads.pop(kind, None)
        self.errors[kind] = f"{error.reason}: {error}"
        if self.report is not None:
            self.report(kind, None, self.errors[kind], 0)
        if error.reason not in PAUSE_REASONS:
            self._failures[kind] = self._failures.get(kind, 0) + 1
        self._next[kind] = retry_at(error, self._failures.get(kind, 0), now,
                                    self.interval(kind))
        if error.reason not in PAUSE_REASONS:
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
