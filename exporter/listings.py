"""Skills and assignments: two workspace-wide listings, read as jobs.

``GET /skills?include=proficiency`` and ``GET /scenarios/assignments`` are read
every ``interval`` (:class:`Skills`, :class:`Assignments`, job sources of the
scheduler, paid for out of the day budget first). Assignments are counted per
polled scenario and status by paging through the rows or by one ``page_size=1``
request per (scenario, status), whichever the last read's sizes say is cheaper
(docs/configuration.md, "Skills and assignments").
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import astuple, dataclass, field
from functools import partial
from typing import Annotated, Any, ClassVar, Generic, Literal, TypeVar, get_args

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from pydantic import (
    BaseModel,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    ValidationError,
)

from .client import ApiError, ExecClient, InvalidResponse, payload
from .config import ListingConfig
from .jobs import Job
from .models import AssignmentPayload, Page, SkillPayload
from .paged import PAGE_SIZE, PagedRead, Report, Schedule, first_of_each, page_query

log = logging.getLogger(__name__)

Status = Literal["not_started", "in_progress", "completed", "past_due", "did_not_pass"]
STATUSES: tuple[str, ...] = get_args(Status)
# Each listing may use at most this share of the day budget: a workspace with
# very many assignments stretches the listing's interval, not the targets'.
DAY_SHARE = 0.25
# Longer scenario_ids filters are left out (servers refuse very long URLs): the
# read then pages through every row.
MAX_FILTER_CHARS = 2000

PolledScenario = tuple[str, str | None]
"""A polled scenario: its label (configured id, or slug when discovered) and its
id when known (``Target.scenario_uuid``)."""
R = TypeVar("R")


# --- parsing ------------------------------------------------------------------


@dataclass(frozen=True)
class Skill:
    """One skill with its proficiency summary; None: the API gave no value."""

    slug: str
    name: str
    participants: int | None = None
    scored_participants: int | None = None
    proficient_ratio: float | None = None  # 0-1, from pct_proficient_plus (0-100)
    average_score: float | None = None
    id: str | None = None  # the skill's own id (a row listed twice is caught)


def parse_skill(item: object) -> Skill:
    """One row of ``GET /skills?include=proficiency``; wrong types raise InvalidResponse.

    The label is the slug (the id when the slug is missing); the name defaults to
    the slug. A null ``proficiency_summary`` or null field gives no value.
    """
    got = payload(SkillPayload, item, "skill")
    slug = got.slug or got.id
    assert slug is not None  # the model refuses an item with neither
    proficiency = got.proficiency_summary
    if proficiency is None:
        return Skill(slug, got.name or slug, id=got.id or None)
    pct = proficiency.pct_proficient_plus
    return Skill(slug, got.name or slug,
                 participants=proficiency.participant_count,
                 scored_participants=proficiency.scored_participant_count,
                 proficient_ratio=None if pct is None else pct / 100.0,
                 average_score=proficiency.avg_score, id=got.id or None)


@dataclass(frozen=True)
class AssignmentRow:
    """What an assignment row says about counting: its scenario and status."""

    scenario_id: str
    scenario_slug: str | None
    status: str | None  # None: a status this exporter does not know (not counted)
    id: str | None = None  # the assignment's own id (a row listed twice is caught)


def parse_assignment(item: object) -> AssignmentRow:
    """One row of ``GET /scenarios/assignments``; wrong types raise InvalidResponse.

    A status string outside the five known ones is kept as None (not counted)
    rather than failing the read: the API may add statuses over time.
    """
    got = payload(AssignmentPayload, item, "assignment")
    return AssignmentRow(got.scenario.id, got.scenario.slug or None,
                         got.status if got.status in STATUSES else None, got.id or None)


# --- the saved reads (the state file's "listings") ----------------------------------

_Count = Annotated[StrictInt, Field(ge=0)]


class _Saved(BaseModel):
    """A listing's last complete read as the state file keeps it."""

    read_at: StrictFloat


class _SavedSkills(_Saved):
    pages: Annotated[StrictInt, Field(ge=1)]
    skills: list[tuple[StrictStr, StrictStr, StrictInt | None, StrictInt | None,
                       StrictFloat | None, StrictFloat | None, StrictStr | None]]


class _SavedAssignments(_Saved):
    counts: list[tuple[StrictStr, Status, _Count]]
    counting: StrictBool | None
    learned: dict[StrictStr, StrictStr]
    rows: _Count | None
    all_pages: _Count | None
    filters_refused: StrictBool


# --- the common mechanics -----------------------------------------------------------


class _Listing(Generic[R]):
    """A listing read every interval, one request per job; the last values stay on failure."""

    kind = ""
    saved: ClassVar[type[_Saved]]

    def __init__(self, settings: ListingConfig, day_budget: float,
                 report: Report | None = None) -> None:
        self.settings = settings
        self.day_budget = day_budget
        self.read_at: float | None = None  # when the last complete read finished
        self.schedule: Schedule[R] = Schedule(self.kind, report)

    @property
    def error(self) -> str | None:
        """Why the last read failed (None: it did not)."""
        return self.schedule.error

    def configure(self, settings: ListingConfig, day_budget: float) -> None:
        """Take a reloaded configuration; the values and the schedule stay."""
        self.settings, self.day_budget = settings, day_budget
        if self.read_at is not None and self.schedule.failures == 0:
            self.schedule.next_at = min(self.schedule.next_at, self.read_at + self.interval)

    def cost(self) -> int:
        """Requests one read needs, by the last known sizes (at least 1)."""
        raise NotImplementedError

    def state(self) -> dict[str, Any] | None:
        """The last complete read, for the state file (None: nothing read yet)."""
        if self.read_at is None:
            return None
        return {"read_at": self.read_at, **self._values()}

    def restore(self, saved: object, now: float) -> None:
        """Take a saved read back (a restart inside the interval reads nothing): its
        values are served and the next read is due an interval after it. A saved read
        that is malformed or from the future is left out with a warning."""
        if not isinstance(saved, dict):
            return
        try:
            got = self.saved.model_validate(saved)
        except ValidationError as exc:
            first = exc.errors()[0]
            why = f"{'.'.join(map(str, first['loc']))}: {first['msg']}"
        else:
            why = "read_at is in the future" if got.read_at > now + 60 else ""
        if why:
            log.warning("state file: ignoring the saved %s read: %s", self.kind, why)
            return
        self._restore_values(got)
        self.read_at = got.read_at
        self.schedule.done(got.read_at, got.read_at + self.interval)

    def _values(self) -> dict[str, Any]:
        raise NotImplementedError

    def _restore_values(self, saved: Any) -> None:
        raise NotImplementedError

    @property
    def interval(self) -> float:
        """The configured interval, stretched when a read would cost more than
        :data:`DAY_SHARE` of the day budget."""
        return max(self.settings.interval, self.cost() * 86400 / (self.day_budget * DAY_SHARE))

    def requests_per_day(self) -> float:
        """What this listing costs a day at the last known sizes."""
        return self.cost() * 86400 / self.interval

    def next_due(self) -> float:
        """When the next request is due (-1: a read is under way)."""
        return self.schedule.next_due()

    def _finish(self, now: float, skipped: int = 0) -> None:
        self.read_at = now
        # From the start of the read: a value is never older than the interval plus
        # one read, whatever the read's length.
        self.schedule.done(now, self.schedule.started + self.interval, skipped)

    def _fail(self, error: ApiError, now: float) -> None:
        self.schedule.failed(error, now, self.interval)


# --- skills -------------------------------------------------------------------------


class Skills(_Listing[PagedRead[Skill]]):
    """``GET /skills?include=proficiency`` every interval: a job source, one page per job."""

    kind = "skills"
    saved = _SavedSkills

    def __init__(self, settings: ListingConfig, day_budget: float,
                 report: Report | None = None) -> None:
        super().__init__(settings, day_budget, report)
        self.skills: tuple[Skill, ...] = ()  # the last complete read
        self.pages = 1

    def cost(self) -> int:
        return max(self.pages, 1)

    def _values(self) -> dict[str, Any]:
        return {"pages": self.pages, "skills": [astuple(skill) for skill in self.skills]}

    def _restore_values(self, saved: _SavedSkills) -> None:
        self.skills, self.pages = tuple(Skill(*row) for row in saved.skills), saved.pages

    def due(self, now: float) -> Job | None:
        """The next page to read, if a read is due."""
        read = self.schedule.begin(now, partial(PagedRead[Skill], "skill list",
                                                lambda skill: skill.id, parse_skill))
        if read is None:
            return None
        return read.job("list_skills", ("list", "skills"), "skills",
                        lambda client, params: client.list_page("/skills", params),
                        {"include": "proficiency"}, partial(self.page_read, read), self._fail)

    def page_read(self, read: PagedRead[Skill], page: Page[Any], now: float) -> None:
        """One page arrived; publish the list when it was the last page (raises
        :class:`~exporter.paged.ListChanged` when the pages disagree)."""
        if read is not self.schedule.run or not read.take(page):
            return
        self.pages = read.pages
        self.skills = tuple(first_of_each(read.items, lambda skill: skill.slug, "skills",
                                          "skills"))
        log.debug("skills: read %d skills in %d pages", len(self.skills), self.pages)
        self._finish(now, read.skipped)


# --- assignments --------------------------------------------------------------------


@dataclass
class _Read:
    """One assignments read under way."""

    polled: tuple[PolledScenario, ...]
    ids: dict[str, str]  # label -> scenario id, for the labels whose id is known
    counting: bool
    scenario_filter: str | None = None  # the scenario_ids of a paging read
    paged: PagedRead[AssignmentRow] = field(default_factory=lambda: PagedRead(
        "assignment list", key=lambda row: row.id, parse=parse_assignment))
    queue: list[tuple[str, str]] = field(default_factory=list)  # counting: (label, status)
    counts: Counter[tuple[str, str]] = field(default_factory=Counter)

    by_id: dict[str, set[str]] = field(init=False, default_factory=dict)  # id -> labels
    unknown: set[str] = field(init=False, default_factory=set)  # labels whose id is not known

    def __post_init__(self) -> None:
        for label, known in self.ids.items():
            self.by_id.setdefault(known, set()).add(label)
        self.unknown = {label for label, _ in self.polled if label not in self.ids}

    def labels(self, row: AssignmentRow) -> set[str]:
        """The polled scenarios ``row`` counts for: by the id, or for a scenario whose
        id is not known yet, by the id or slug it was configured as."""
        return self.by_id.get(row.scenario_id, set()) | (
            self.unknown & {row.scenario_id, row.scenario_slug})


class Assignments(_Listing[_Read]):
    """``GET /scenarios/assignments`` every interval, counted per polled scenario and
    status; a job source, one request per job (see the module docstring).

    ``scenarios()`` returns the polled scenarios at the time of the call (the
    exporter's current targets), each label once.
    """

    kind = "assignments"
    saved = _SavedAssignments

    def __init__(self, settings: ListingConfig, day_budget: float,
                 scenarios: Callable[[], Sequence[PolledScenario]],
                 report: Report | None = None) -> None:
        super().__init__(settings, day_budget, report)
        self.scenarios = scenarios
        self.counts: dict[tuple[str, str], int] = {}  # (label, status) of the last read
        self.counting: bool | None = None  # how the last read counted
        self._learned: dict[str, str] = {}  # slug or id -> id, from rows
        self._rows: int | None = None  # rows of the polled scenarios at the last read
        self._all_pages: int | None = None  # pages of an unfiltered read
        self._read_labels: frozenset[str] | None = None
        self._cost: tuple[object, tuple[int | None, int | None, int], int] | None = None
        self._filters_refused = False  # a 400 to a filtered request: page everything

    # --- the plan -------------------------------------------------------------------

    def _ids(self, polled: Sequence[PolledScenario]) -> dict[str, str]:
        """Label -> scenario id, for the polled scenarios whose id is known."""
        return {label: uuid or self._learned[label] for label, uuid in polled
                if uuid or label in self._learned}

    def plan(self, polled: Sequence[PolledScenario]) -> tuple[bool, int]:
        """(count?, requests) for a read of ``polled`` now: counting when every id is
        known and ``5 x scenarios`` is fewer than the pages the last read's rows need."""
        ids = self._ids(polled)
        if len(ids) < len(polled) or self._filters_refused:
            return False, max(self._all_pages or 1, 1)
        counting = len(STATUSES) * len(polled)
        paging = (self._all_pages if self._filter(polled, ids) is None
                  else None if self._rows is None else max(math.ceil(self._rows / PAGE_SIZE), 1))
        if paging is None:
            return False, 1  # unknown sizes: page; the first page decides (see _switch)
        return (True, counting) if counting < paging else (False, paging)

    def cost(self) -> int:
        # Asked for several times per scheduler step (through requests_per_day): the
        # answer is kept until the scenarios or the known sizes change.
        raw = self.scenarios()
        key = (self._rows, self._all_pages, len(self._learned) * 2 + self._filters_refused)
        if self._cost is not None and self._cost[0] is raw and self._cost[1] == key:
            return self._cost[2]
        cost = self.plan(raw)[1] if raw else 1
        self._cost = (raw, key, cost)
        return cost

    @staticmethod
    def _filter(polled: Sequence[PolledScenario], ids: dict[str, str]) -> str | None:
        text = ",".join(dict.fromkeys(ids[label] for label, _ in polled))
        return text if len(text) <= MAX_FILTER_CHARS else None

    # --- the job source ---------------------------------------------------------------

    def due(self, now: float) -> Job | None:
        """The next request of a read, if a read is due (or the polled scenarios changed)."""
        schedule = self.schedule
        if (schedule.run is None and schedule.failures == 0 and self._read_labels is not None
                and frozenset(label for label, _ in self.scenarios()) != self._read_labels):
            schedule.next_at = min(schedule.next_at, now)  # new scenarios: count them now
        read = schedule.begin(now, self._begin)
        if read is None:
            return None
        if not read.polled:
            self._complete(read, now)  # nothing to count, nothing to ask
            return None
        if read.counting:
            label, status = read.queue[0]
            params = page_query({"scenario_ids": read.ids[label], "status": status}, 1, 1)

            def count(client: ExecClient, at: float) -> int:
                total = client.list_page("/scenarios/assignments", params).total_count
                if total is None:
                    raise InvalidResponse("/scenarios/assignments: no pagination.total_count")
                return total

            return Job(kind="list_assignments", key=("count", "assignments", label, status),
                       fetch=count, apply=partial(self.counted, label, status),
                       fail=self._fail, label=f"assignments {label} {status}")
        return read.paged.job(
            "list_assignments", ("list", "assignments"), "assignments",
            lambda client, params: client.list_page("/scenarios/assignments", params),
            None if read.scenario_filter is None else {"scenario_ids": read.scenario_filter},
            partial(self._page, read), self._fail)

    def _begin(self) -> _Read:
        polled = tuple(self.scenarios())
        return self._start(polled, bool(polled) and self.plan(polled)[0])

    def _start(self, polled: tuple[PolledScenario, ...], counting: bool) -> _Read:
        ids = self._ids(polled)
        read = _Read(polled=polled, ids=ids, counting=counting)
        if counting:
            read.queue = [(label, status) for label, _ in polled for status in STATUSES]
        elif len(ids) == len(polled) and not self._filters_refused:
            read.scenario_filter = self._filter(polled, ids)
        if self.counting is not None and counting != self.counting:
            how = (f"counting by total_count ({len(read.queue)} requests)" if counting
                   else "paging through the rows")
            log.info("assignments: %s is now the cheaper way", how)
        return read

    def _fail(self, error: ApiError, now: float) -> None:
        read = self.schedule.run
        if (error.reason == "bad_request" and read is not None
                and (read.counting or read.scenario_filter is not None)):
            # The API refused the scenario_ids or status filter: read every row instead.
            log.warning("assignments: the API refused the filters (%s); paging through "
                        "every assignment from now on", error)
            self._filters_refused = True
        super()._fail(error, now)

    def counted(self, label: str, status: str, count: int, now: float) -> None:
        """A (scenario, status) count arrived; publish when it was the last one."""
        read = self.schedule.run
        if read is None or not read.counting or not read.queue or read.queue[0] != (label, status):
            return
        read.queue.pop(0)
        read.counts[(label, status)] = count
        if not read.queue:
            self._complete(read, now)

    def page_read(self, rows: list[AssignmentRow], pages: int, now: float,
                  total_count: int | None = None) -> None:
        """One page of rows (already read) arrived; publish the counts when it was the
        last page."""
        read = self.schedule.run
        if read is not None:
            self._page(read, Page(tuple(rows), read.paged.page, total_count, pages), now,
                       raw=False)

    def _page(self, read: _Read, page: Page[Any], now: float, raw: bool = True) -> None:
        """A page of the paging read ``read`` arrived (raises
        :class:`~exporter.paged.ListChanged` when the pages disagree)."""
        if read is not self.schedule.run or read.counting:
            return
        page_no, before = read.paged.page, len(read.paged.items)
        complete = read.paged.take(page, raw)
        for row in read.paged.items[before:]:
            if row.scenario_slug:
                self._learned[row.scenario_slug] = row.scenario_id
            self._learned[row.scenario_id] = row.scenario_id
            if row.status is not None:
                read.counts.update((label, row.status) for label in read.labels(row))
        if page_no == 1 and page.total_pages > 1 and self._switch(read, page.total_pages):
            return
        if complete:
            if read.scenario_filter is None:
                self._all_pages = read.paged.pages
            self._complete(read, now, read.paged.skipped)

    def _switch(self, read: _Read, pages: int) -> bool:
        """After the first page the sizes are known: count if the pages left cost more."""
        counting_cost = len(STATUSES) * len(read.polled)
        if (len(self._ids(read.polled)) < len(read.polled) or pages - 1 <= counting_cost
                or self._filters_refused):
            return False
        log.info("assignments: %d pages to read; counting with %d requests instead",
                 pages, counting_cost)
        if read.scenario_filter is None:
            self._all_pages = pages
        self.schedule.run = self._start(read.polled, True)
        return True

    def _complete(self, read: _Read, now: float, skipped: int = 0) -> None:
        self.counts = {(label, status): read.counts[(label, status)]
                       for label, _ in read.polled for status in STATUSES}
        self._rows = sum(self.counts.values())
        self.counting = read.counting
        self._read_labels = frozenset(label for label, _ in read.polled)
        log.debug("assignments: counted %d assignments of %d scenarios (%s)", self._rows,
                  len(read.polled), "counting" if read.counting else "paging")
        self._finish(now, skipped)

    def _values(self) -> dict[str, Any]:
        return {"counts": [[label, status, n] for (label, status), n in self.counts.items()],
                "counting": self.counting, "learned": dict(self._learned),
                "rows": self._rows, "all_pages": self._all_pages,
                "filters_refused": self._filters_refused}

    def _restore_values(self, saved: _SavedAssignments) -> None:
        self.counts = {(label, status): n for label, status, n in saved.counts}
        self._learned, self.counting = saved.learned, saved.counting
        self._rows, self._all_pages = saved.rows, saved.all_pages
        self._filters_refused = saved.filters_refused
        self._read_labels = frozenset(label for label, _ in self.counts)

    def values(self) -> dict[tuple[str, str], int]:
        """The last counts of the scenarios polled now (removed scenarios vanish at once)."""
        current = {label for label, _ in self.scenarios()}
        return {key: n for key, n in self.counts.items() if key[0] in current}


# --- export -------------------------------------------------------------------------


class ListingsCollector(Collector):
    """The ``exec_skill_*`` and ``exec_assignments`` families, from the listings' last
    complete reads."""

    def __init__(self, listings: Callable[[], tuple[Skills | None, Assignments | None]]) -> None:
        self.listings = listings

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        skills, assignments = self.listings()
        if skills is not None:
            yield from skill_families(skills.skills)
        if assignments is not None:
            family = GaugeMetricFamily(
                "exec_assignments",
                "Scenario assignments by status, as of the last successful assignments read.",
                labels=("scenario", "status"))
            for labels, count in sorted(assignments.values().items()):
                family.add_metric(labels, count)
            yield family


_CACHED = "as of the last successful skills read"
SKILL_GAUGES = (
    ("exec_skill_participants", f"Users with at least one observation of the skill, {_CACHED}.",
     "participants"),
    ("exec_skill_scored_participants",
     f"Users with enough observations (3+) for a proficiency score, {_CACHED}.",
     "scored_participants"),
    ("exec_skill_proficient_ratio",
     f"Share (0-1) of scored users at Proficient or Excellent, {_CACHED}.", "proficient_ratio"),
    ("exec_skill_average_score",
     f"Average proficiency score (0-100) of scored users, {_CACHED}.", "average_score"),
)


def skill_families(skills: Sequence[Skill]) -> Iterator[Metric]:
    """``exec_skill_info`` and the per-skill gauges; a null value gives no sample."""
    info = GaugeMetricFamily("exec_skill_info", "Skill display name; always 1.",
                             labels=("skill", "name"))
    for skill in skills:
        info.add_metric((skill.slug, skill.name), 1)
    yield info
    for name, documentation, attr in SKILL_GAUGES:
        family = GaugeMetricFamily(name, documentation, labels=("skill",))
        for skill in skills:
            value = getattr(skill, attr)
            if value is not None:
                family.add_metric((skill.slug,), value)
        yield family
