"""Discovery: the scenario and group lists of the workspace, read as jobs.

A failed or inconsistent read keeps the last lists. With discovery of scenarios
off, the scenario list is still read once a day for the display names of the
scenarios configured without ``name`` (:func:`names_wanted`).
:func:`exporter.targets.build_targets` turns the lists into targets.
"""

from __future__ import annotations

import fnmatch
import logging
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from .client import ApiError, payload
from .config import Config, DiscoveryConfig
from .jobs import Job
from .models import GroupPayload, Page, ScenarioPayload
from .paged import Fetch, PagedRead, Report, Schedule, first_of_each

log = logging.getLogger(__name__)

# The scenario list read for display names alone (discovery off): a page or two a day,
# the first a while after start, so that the first requests of a new exporter are its
# targets' own (a refused key then shows on the targets, and the first fill is not held up).
NAMES_INTERVAL = 86400.0
NAMES_FIRST_DELAY = 300.0


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
    is off (``settings`` None): it adds no target. ``on_update(lists)`` runs when a
    list is complete; ``report`` hears how each read ended (see :mod:`exporter.paged`).
    """

    def __init__(self, settings: DiscoveryConfig | None, lists: Lists | None = None,
                 on_update: Callable[[Lists], None] | None = None,
                 report: Report | None = None, names: bool = False) -> None:
        self.settings = settings or DiscoveryConfig()
        self.names = names and self.settings.scenarios is None
        self.lists = lists or Lists()
        self.on_update = on_update
        self.pages: dict[str, int] = {}
        self._schedules: dict[str, Schedule[PagedRead[Any]]] = {}
        if self.settings.scenarios is not None or self.names:
            self._schedules["scenarios"] = Schedule("scenarios", report)
        if self.settings.group_cohorts is not None:
            self._schedules["groups"] = Schedule("groups", report)
        for kind, schedule in self._schedules.items():
            last = self.lists.scenarios_at if kind == "scenarios" else self.lists.groups_at
            if last is not None:
                schedule.next_at = last + self.interval(kind)
        # The names' first read: due NAMES_FIRST_DELAY after the first step.
        self._names_first = self.names and self.lists.scenarios_at is None
        if self._names_first:
            self._schedules["scenarios"].next_at = float("inf")

    @property
    def errors(self) -> dict[str, str]:
        """The lists whose last read failed, with why."""
        return {kind: s.error for kind, s in self._schedules.items() if s.error is not None}

    @property
    def failures(self) -> int:
        """The most failed reads in a row of any one list (the backfill stops at 4)."""
        return max((s.failures for s in self._schedules.values()), default=0)

    def interval(self, kind: str) -> float:
        """How often ``kind`` is read: discovery's interval; a day for names alone."""
        if kind == "scenarios" and self.names:
            return max(NAMES_INTERVAL, self.settings.interval)
        return self.settings.interval

    def requests_per_day(self) -> float:
        """Listing requests per day at the current page counts (one page at the least),
        the names' read left out (``--config.check`` cannot know its page count)."""
        return sum(max(self.pages.get(kind, 1), 1) * 86400 / self.interval(kind)
                   for kind in self._schedules if not (kind == "scenarios" and self.names))

    def due(self, now: float) -> Job | None:
        """The next page to read, as a job, if a list is due."""
        if self._names_first:
            self._names_first = False
            self._schedules["scenarios"].next_at = now + NAMES_FIRST_DELAY
        for kind, schedule in self._schedules.items():
            read = schedule.begin(now, partial(_new_read, kind))
            if read is not None:
                return read.job(f"list_{kind}", ("list", kind), kind, _LISTS[kind][0],
                                self._filters(kind), partial(self.page_read, kind, read),
                                partial(self.failed, kind))
        return None

    def reread(self) -> None:
        """Read every list again at the next chance (after a reload changed the filters)."""
        self._names_first = False
        for schedule in self._schedules.values():
            schedule.run, schedule.next_at = None, -1.0

    def next_due(self) -> float:
        """When the next list is due."""
        return min((s.next_due() for s in self._schedules.values()), default=float("inf"))

    def _filters(self, kind: str) -> dict[str, str]:
        wanted = self.settings.scenarios
        if kind != "scenarios":
            return {}
        if wanted is None:
            # Names alone: every scenario, archived ones too (a configured scenario may be).
            return {"include_archived": "true"}
        params = {"visibility": wanted.visibility or "",
                  "collection_ids": ",".join(wanted.collection_ids),
                  "skill_ids": ",".join(wanted.skill_ids)}
        return {**{name: value for name, value in params.items() if value},
                "include_archived": "true" if wanted.include_archived else "false"}

    def page_read(self, kind: str, read: PagedRead[Any], page: Page[Any], now: float) -> None:
        """One page of ``kind`` arrived; finish the list when it was the last page.
        Raises :class:`~exporter.paged.ListChanged` when the pages disagree."""
        schedule = self._schedules[kind]
        if schedule.run is not read or not read.take(page):
            return  # a reload started the list over, or pages are left
        self.pages[kind] = read.pages
        found: list[Any]
        if kind == "scenarios":
            wanted = self.settings.scenarios
            excluded = set(wanted.exclude if wanted else [])
            found = first_of_each((s for s in read.items
                                   if s.slug not in excluded and s.id not in excluded),
                                  lambda s: s.slug, "scenarios", "discovery")
            self.lists.scenarios, self.lists.scenarios_at = found, now
        else:
            cohorts = self.settings.group_cohorts
            found = _matching_groups(read.items, cohorts.include if cohorts else [])
            self.lists.groups, self.lists.groups_at = found, now
        log.info("discovery: read %s (%d pages, %d %s)", kind, read.pages, len(found), kind)
        schedule.done(now, now + self.interval(kind), read.skipped)
        if self.on_update is not None:
            self.on_update(self.lists)

    def failed(self, kind: str, error: ApiError, now: float) -> None:
        """A page request failed (or the pages disagreed): keep the last lists, retry
        the whole list later."""
        self._schedules[kind].failed(error, now, self.interval(kind),
                                     keeping="keeping the last known list")


_LISTS: dict[str, tuple[Fetch, str, Callable[[object], Any]]] = {
    "scenarios": (lambda client, params: client.list_page("/scenarios", params),
                  "scenario list", parse_scenario),
    "groups": (lambda client, params: client.list_page("/workspace/groups", params),
               "group list", parse_group)}


def _new_read(kind: str) -> PagedRead[Any]:
    _, what, parse = _LISTS[kind]
    return PagedRead(what, key=lambda item: item.id, parse=parse)


def name_matches(name: str, pattern: str) -> bool:
    """Whether ``name`` matches the shell pattern ``pattern``, case-insensitively."""
    return fnmatch.fnmatchcase(name.lower(), pattern.lower())


def _matching_groups(groups: list[Group], patterns: list[str]) -> list[Group]:
    if not patterns:
        return groups
    return [g for g in groups if any(name_matches(g.name, p) for p in patterns)]
