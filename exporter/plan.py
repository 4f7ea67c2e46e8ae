"""The cost model of derived cohorts: pure arithmetic, no I/O, no clock, no locks.

For each scenario and each distinct date range (a *pull group*: rolling windows
and fixed ranges each need their own pull) there are two ways to refresh its
cohorts:

* one summary request per cohort (K requests), or
* one participants pull (``ceil(participants / 100)`` pages, known from the
  last pull's ``total_count``; 1 until a pull has run) from which every cohort
  that differs only by which users it keeps is aggregated
  (:mod:`exporter.aggregate`), plus the member lists of the groups those
  cohorts use and the cross-checks.

:func:`costs` counts every request of both ways, :func:`choose` picks the
cheaper, :func:`make_plan` turns that into a :class:`Plan` (what runs, what it
costs per cycle, which member lists it reads). The daemon's planner
(:mod:`exporter.planner`, the proofs and cross-checks), ``--config.check``
(:func:`offline_plan`) and the backfill price with these functions only.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from .budget import DAY
from .config import CohortConfig, PlannerConfig, format_duration
from .models import Page
from .paged import PAGE_SIZE

if TYPE_CHECKING:
    from .targets import Target

DatesKey = tuple[float | None, str | None, str | None]
PullKey = tuple[str, str, DatesKey]
"""A pull job's key: ("participants", scenario, (window, start_date, end_date))."""


def dates_of(cohort: CohortConfig) -> DatesKey:
    """The part of a cohort that selects its pull: its window or fixed dates."""
    start = cohort.start_date.isoformat() if cohort.start_date else None
    end = cohort.end_date.isoformat() if cohort.end_date else None
    return (cohort.window, start, end)


def describe_dates(dates: DatesKey) -> str:
    """``all time``, ``last 7d``, ``2026-07-01 .. 2026-09-30``."""
    window, start, end = dates
    if window is not None:
        return f"last {format_duration(window)}"
    if start is None and end is None:
        return "all time"
    return f"{start or '...'} .. {end or '...'}"


def pull_key(target: Target) -> PullKey:
    """The key of the pull that holds ``target``'s rows."""
    return ("participants", target.scenario, dates_of(target.cohort))


def pull_groups(targets: Sequence[Target]) -> dict[PullKey, list[Target]]:
    """Targets by the pull that holds their rows, in target order."""
    groups: dict[PullKey, list[Target]] = {}
    for target in targets:
        groups.setdefault(pull_key(target), []).append(target)
    return groups


def pages_for(total_count: int) -> int:
    """Pages of a pull of ``total_count`` participants (at least one)."""
    return max(1, math.ceil(total_count / PAGE_SIZE))


def pages_of(page: Page[Any]) -> int:
    """Pages of the list ``page`` belongs to: by its ``total_count`` (else
    ``total_pages``)."""
    return pages_for(page.total_count) if page.total_count is not None else page.total_pages


def choose(cohorts: int, derivable: int, pages: int, extra: float = 0.0) -> str:
    """``participants`` when one pull (``pages`` requests, plus one summary request for
    each of the ``cohorts - derivable`` cohorts it cannot serve, plus ``extra``: member
    lists and cross-checks per cycle) costs fewer requests per cycle than ``cohorts``
    summary requests; else ``summary`` (a tie keeps the summary: no saving is worth a
    derivation)."""
    return "participants" if pages + (cohorts - derivable) + extra < cohorts else "summary"


@dataclass(frozen=True)
class GroupPlan:
    """The plan of one pull group: both costs per cycle, with their parts, and the choice.

    ``lists`` is this group's share of the member-list pages per cycle (a list is
    split between the cohorts that use it, across scenarios) and ``checks`` the
    cross-checks per cycle (``cross_check_share`` of everything the way sends)."""

    scenario: str
    dates: DatesKey
    cohorts: tuple[str, ...]
    pages: int
    derivable: int  # cohorts the pull can serve (member lists worth reading, not refused)
    source: str  # "summary" or "participants"
    derived: tuple[str, ...] = ()  # cohorts served by the pull now (proven)
    lists: float = 0.0
    checks: float = 0.0

    @property
    def summary_cost(self) -> int:
        """Requests per cycle on summary requests: one per cohort."""
        return len(self.cohorts)

    @property
    def summaries(self) -> int:
        """Summary requests per cycle the pull cannot spare (cohorts it cannot serve)."""
        return len(self.cohorts) - self.derivable

    @property
    def participants_cost(self) -> float:
        """Requests per cycle with the pull: its pages, a summary for each cohort it
        cannot serve, its share of the member lists and its cross-checks."""
        return self.pages + self.summaries + self.lists + self.checks

    @property
    def cost(self) -> float:
        """Requests per cycle of the chosen way, once every derivable cohort is proven."""
        return self.participants_cost if self.source == "participants" else self.summary_cost


@dataclass(frozen=True)
class Plan:
    """What one full refresh costs, per pull group and in all."""

    groups: tuple[GroupPlan, ...] = ()
    member_groups: tuple[str, ...] = ()  # group ids whose member lists are read
    recurring: int = 0  # requests of one round of the recurring jobs now

    @property
    def pulled(self) -> tuple[GroupPlan, ...]:
        """The groups that use a participants pull."""
        return tuple(g for g in self.groups if g.source == "participants")

    @property
    def summary_cost(self) -> int:
        """Requests per cycle if every cohort used summary requests."""
        return sum(g.summary_cost for g in self.groups)

    @property
    def chosen_cost(self) -> float:
        """Requests per cycle of the chosen plan once every cohort is proven, member
        lists and cross-checks included."""
        return sum(g.cost for g in self.groups)


@dataclass(frozen=True)
class Serving:
    """What a participants pull does for its group's targets: refresh those ``served``
    (proven), and owe a paired summary (a proof) to those ``owed`` (not proven yet)."""

    served: tuple[Target, ...] = ()
    owed: tuple[Target, ...] = ()


def lists_per_day(member_groups: Sequence[str], member_pages: Mapping[str, int],
                  membership_interval: float) -> float:
    """Member-list pages a day: every list read every ``membership_interval``, at its
    pages (1 until a read said)."""
    return sum(member_pages.get(g, 1) for g in member_groups) * DAY / membership_interval


def checks_per_day(share: float, recurring: float, lists_per_day: float,
                   refresh_interval: float, day_budget: float, minute_budget: float) -> float:
    """Cross-checks a day: ``share`` (``cross_check_share``) of the requests actually
    sent, everything included. The recurring jobs are sent at the interval that
    ``refresh_interval`` and the minute budget allow, the member lists on their own
    schedule, and the total is capped by the day budget: the tighter budget decides."""
    if share <= 0:
        return 0.0
    interval = max(refresh_interval, recurring * 60.0 / max(minute_budget, 1.0), 1.0)
    sent = recurring * DAY / interval + lists_per_day
    return share * min(day_budget, sent / (1.0 - share))


def derived_per_day(plan: Plan, member_pages: Mapping[str, int], settings: PlannerConfig,
                    refresh_interval: float, day_budget: float, minute_budget: float,
                    checked: bool) -> tuple[float, float]:
    """Member-list pages and cross-checks a day of ``plan``, both paid out of the day
    budget before the recurring jobs; cross-checks only when ``checked`` (some target
    is derived: there is something to check)."""
    lists = lists_per_day(plan.member_groups, member_pages, settings.membership_interval)
    checks = (checks_per_day(settings.cross_check_share, plan.recurring, lists,
                             refresh_interval, day_budget, minute_budget) if checked else 0.0)
    return lists, checks


def costs(groups: Mapping[PullKey, Sequence[Target]], settings: PlannerConfig,
          refresh_interval: float, pages: Mapping[PullKey, int],
          list_pages: Mapping[str, int], usable: Callable[[Target], bool],
          ) -> dict[PullKey, tuple[GroupPlan, list[Target]]]:
    """The cost model: both ways of every pull group, per cycle of ``refresh_interval``.

    A member list costs its pages every ``membership_interval``, split between the
    cohorts that use it; a cohort whose share costs a whole summary per cycle or
    more is not worth deriving (it stays on summary requests). The cross-checks are
    ``cross_check_share`` of what the participants way sends. ``usable(target)``:
    the pull may serve it (member lists known, not refused). ``pages`` and
    ``list_pages`` are the page counts known (1 where not). Each plan comes with
    the targets the pull would serve."""
    per_cycle = refresh_interval / settings.membership_interval
    users: dict[str, int] = {}
    for members in groups.values():
        for target in members:
            for group in dict.fromkeys(target.cohort.group_ids):
                users[group] = users.get(group, 0) + 1

    def share(target: Target) -> float:
        return sum(list_pages.get(g, 1) * per_cycle / users[g]
                   for g in dict.fromkeys(target.cohort.group_ids))

    checks_factor = settings.cross_check_share / (1.0 - settings.cross_check_share)
    out = {}
    for key, members in groups.items():
        servable = [t for t in members if usable(t) and share(t) < 1.0]
        lists = sum(share(t) for t in servable)
        pull_pages = pages.get(key, 1)
        base = pull_pages + len(members) - len(servable) + lists
        plan = GroupPlan(key[1], key[2], tuple(t.cohort.name for t in members), pull_pages,
                         len(servable), "summary", lists=lists, checks=base * checks_factor)
        source = choose(len(members), len(servable), plan.pages, plan.lists + plan.checks)
        out[key] = (replace(plan, source=source), servable)
    return out


def make_plan(groups: Mapping[PullKey, Sequence[Target]], settings: PlannerConfig,
              refresh_interval: float, pages: Mapping[PullKey, int],
              list_pages: Mapping[str, int], derivable: Callable[[Target], bool],
              readable: Callable[[Target], bool], summary_only: Collection[str],
              proven: Callable[[Target], bool]) -> tuple[Plan, dict[PullKey, Serving]]:
    """The chosen plan and what each pull serves.

    ``derivable(target)``: the pull can serve it now (member lists known, not
    refused); ``readable(target)``: its member lists are worth reading (not refused:
    once read it may become derivable), which decides ``member_groups``;
    ``summary_only``: scenarios kept on summary requests (``planner.mode: summary``,
    a fallback); ``proven(target)``: a paired summary agreed with a pull. One round
    of the recurring jobs sends a summary for each target no pull takes, and each
    pull's pages plus the paired summaries it owes."""
    plans = costs(groups, settings, refresh_interval, pages, list_pages, derivable)
    wanted = costs(groups, settings, refresh_interval, pages, list_pages, readable)
    chosen: list[GroupPlan] = []
    member_groups: dict[str, None] = {}
    serving: dict[PullKey, Serving] = {}
    recurring = 0
    for key, members in groups.items():
        plan, servable = plans[key]
        if key[1] in summary_only:
            plan = replace(plan, source="summary")
        if plan.source == "participants":
            served = tuple(t for t in servable if proven(t))
            serving[key] = Serving(served, tuple(t for t in servable if not proven(t)))
            recurring += plan.pages + len(members) - len(served)
        else:
            served = ()
            recurring += len(members)
        wanted_plan, wanted_servable = wanted[key]
        if key[1] not in summary_only and wanted_plan.source == "participants":
            for target in wanted_servable:
                member_groups.update(dict.fromkeys(target.cohort.group_ids))
        chosen.append(replace(plan, derived=tuple(t.cohort.name for t in served)))
    return Plan(tuple(chosen), tuple(member_groups), recurring), serving


def offline_plan(targets: Sequence[Target], settings: PlannerConfig,
                 refresh_interval: float = 900.0) -> Plan:
    """The plan ``--config.check`` prints: no pull has run, so one page per pull and
    per member list, every list readable and every target proven (the best case the
    planner can reach)."""
    summary_only = ({t.scenario for t in targets} if settings.mode == "summary"
                    else frozenset[str]())
    return make_plan(pull_groups(targets), settings, refresh_interval, {}, {},
                     derivable=lambda t: True, readable=lambda t: True,
                     summary_only=summary_only, proven=lambda t: True)[0]
