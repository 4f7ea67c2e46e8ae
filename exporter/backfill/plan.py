"""The plan of a backfill: one point per target and instant, the distinct requests, and
(``planner.mode: auto``) where one participants pull per instant costs fewer requests."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..budget import DAY, Budget
from ..config import CohortConfig, format_duration
from ..paged import page_query
from ..plan import DatesKey, choose, describe_dates, pages_for, pages_of, pull_groups
from ..planner import pinned_query, pull_query
from ..targets import Target
from .journal import MEMBERS, PARTICIPANTS, SUMMARY, Outcome, RequestKey, request_key
from .window import Window, iso


def as_of_query(cohort: CohortConfig, instant: int) -> dict[str, str] | None:
    """The daemon's pinned summary query as of ``instant``; None before its start_date."""
    if cohort.start_date is not None and cohort.start_date.timestamp() > instant:
        return None
    return pinned_query(cohort, float(instant))


@dataclass(frozen=True)
class Point:
    """One (target, instant) and the request that answers it."""

    target: Target
    instant: int
    request: RequestKey


@dataclass
class Plan:
    """Every point to fill and the distinct requests they need, oldest instant first."""

    targets: list[Target]
    window: Window
    points: list[Point] = field(default_factory=list)
    requests: list[RequestKey] = field(default_factory=list)
    skipped: int = 0  # points before their cohort's start_date: no request, no sample


def make_plan(targets: Sequence[Target], window: Window) -> Plan:
    """One point per target and instant; requests deduplicated (a past fixed ``end_date``
    asks the same question at every later instant)."""
    plan = Plan(list(targets), window)
    seen: set[RequestKey] = set()
    for instant in window.instants:
        for target in targets:
            params = as_of_query(target.cohort, instant)
            if params is None:
                plan.skipped += 1
                continue
            key = request_key(target.scenario, params)
            plan.points.append(Point(target, instant, key))
            if key not in seen:
                seen.add(key)
                plan.requests.append(key)
    return plan


def estimate_seconds(requests: int, budget: Budget, now: float,
                     leave: tuple[int, int] = (0, 0)) -> float:
    """About how long ``requests`` take within ``budget``, ``leave`` (minute, day) aside."""
    if requests <= 0:
        return 0.0
    minute_left, day_left = budget.remaining(now)
    minute_rate, day_rate = budget.minute_limit - leave[0], budget.day_limit - leave[1]
    # The rolling minute lets a minute's worth go, then the next as those age out: whole
    # minutes (101 requests at 54 a minute took 62 s; a fractional rate said 52).
    seconds = math.ceil(max(0, requests - (minute_left - leave[0])) / minute_rate) * 60.0
    beyond = requests - (day_left - leave[1])
    if beyond > 0:
        seconds = max(seconds, math.ceil(beyond / day_rate) * DAY)
    return seconds


def describe(plan: Plan, todo: int, budget: Budget, now: float, listing: int,
             daemon_spent: int | None, groups: Sequence[PullGroup] | None = None,
             leave: tuple[int, int] = (0, 0)) -> str:
    """The plan printed before anything is sent (with ``groups``: both ways' costs)."""
    w = plan.window
    lines = [
        f"backfill: {len(plan.targets)} targets x {len(w.instants)} instants "
        f"(every {format_duration(w.step)} from {iso(w.until - w.since)} to {iso(w.until)})",
        f"points: {len(plan.points)}"
        + (f" ({plan.skipped} before their cohort's start_date are left out)"
           if plan.skipped else ""),
    ]
    chosen = [g for g in groups or () if g.source == PARTICIPANTS]
    if groups is None or not chosen:
        total = len(plan.requests)
        lines.append(f"requests: {total} summary requests (one per distinct as-of query)"
                     + ("" if groups is None else "; no scenario has cohorts that one "
                        "participants pull per instant serves for fewer requests")
                     + (f"; {total - todo} already done, {todo} to send"
                        if todo != total else ""))
    else:
        lines.append(f"one summary per target and instant: {len(plan.requests)} requests")
        for g in groups:
            way = f"{g.summary_cost} summaries"
            if len(g.targets) > 1:
                way += (f", or {g.proofs} proof summaries + {len(g.pulls)} pulls x "
                        f"{g.pages} page{'s' if g.pages > 1 else ''}"
                        + (f" + {len(g.members)} member lists" if g.members else "")
                        + (f" ({g.member_cost} pages)" if g.member_cost > len(g.members)
                           else "")
                        + f" = {g.participants_cost}")
            lines.append(f"  {g.label()}: {way} -> {g.source}")
        total = sum(g.cost for g in groups)
        lines.append(f"requests: about {total} with participants pulls where cheaper "
                     f"({len(plan.requests) - total} fewer; pages are 1 per pull until a "
                     f"pull's total_count says)"
                     + (f"; {total - todo} already done, about {todo} to send"
                        if todo != total else ""))
        lines.append("member lists are read once, today: group cohorts' past values use "
                     "today's membership (docs/backfill.md)")
    if listing:
        lines.append(f"discovery: {listing} listing requests were sent to find the targets")
    if daemon_spent is not None:
        lines.append(f"state file: the running exporter spent {daemon_spent} requests in the "
                     "last 24 h; they count against the budget (one ledger for both)")
    if leave != (0, 0):
        lines.append(f"sharing the quota: {leave[0]}/minute and {leave[1]}/day stay free for "
                     "the running exporter's polling")
    _, day_left = budget.remaining(now)
    lines.append(f"budget: {budget.minute_limit}/minute, {budget.day_limit}/day "
                 f"({day_left} left in the rolling day)")
    eta = estimate_seconds(todo, budget, now, leave)
    took = f"about {format_duration(eta)}" if eta >= 60 else "under a minute"
    lines.append(f"time at this budget: {took}"
                 + (" (more than the day budget: the run waits for the rolling day)"
                    if todo > day_left - leave[1] else ""))
    if w.since > 15 * DAY:
        lines.append("note: Prometheus keeps backfilled data only within its retention "
                     "(--storage.tsdb.retention.time, 15d by default)")
    return "\n".join(lines)


@dataclass
class PullGroup:
    """One scenario and date range, its distinct pulls (newest first) and both ways' costs."""

    scenario: str
    dates: DatesKey
    targets: list[Target]
    pulls: list[tuple[dict[str, str], list[int]]]  # pull dates -> its instants, newest first
    summary_cost: int  # distinct summary requests of these cohorts over the run
    proofs: int  # summary requests at the newest instant: the proofs, needed either way
    members: tuple[str, ...] = ()  # member lists this group adds to the run
    pages: int = 1  # per pull: 1 until a pull's total_count says
    source: str = SUMMARY
    member_pages: dict[str, int] = field(default_factory=dict)  # of ``members``

    @property
    def member_cost(self) -> int:
        """The pages of the member lists this group adds."""
        return sum(self.member_pages.get(g, 1) for g in self.members)

    @property
    def participants_cost(self) -> int:
        """The proofs, every pull at ``pages`` pages, and the member lists' pages."""
        return self.proofs + len(self.pulls) * self.pages + self.member_cost

    @property
    def cost(self) -> int:
        """Requests of the chosen way."""
        return self.participants_cost if self.source == PARTICIPANTS else self.summary_cost

    def label(self) -> str:
        """``scenario=s all time (all, sales)``."""
        names = ", ".join(t.cohort.name for t in self.targets)
        return f"scenario={self.scenario} {describe_dates(self.dates)} ({names})"


def plan_pulls(plan: Plan, known: Mapping[RequestKey, Outcome[Any]],
               member_counts: Mapping[str, int]) -> list[PullGroup]:
    """Per scenario and date range, the summaries against the proofs, a pull per distinct
    date range (its pages from the journal, else 1) and the member lists no earlier group
    reads; the cheaper way (a tie or a single cohort keeps the summaries)."""
    groups: list[PullGroup] = []
    charged: set[str] = set()
    for (_, scenario, dates), members in pull_groups(plan.targets).items():
        keys = {t.key for t in members}
        points = [p for p in plan.points if p.target.key in keys]
        by_dates: dict[tuple[tuple[str, str], ...], tuple[dict[str, str], list[int]]] = {}
        for instant in reversed(plan.window.instants):
            if as_of_query(members[0].cohort, instant) is not None:
                query = pull_query(members[0].cohort, float(instant))
                by_dates.setdefault(tuple(sorted(query.items())), (query, []))[1].append(instant)
        pulls = list(by_dates.values())
        newest = pulls[0][1][0] if pulls else None
        group = PullGroup(scenario, dates, list(members), pulls,
                          summary_cost=len({p.request for p in points}),
                          proofs=len({p.request for p in points if p.instant == newest}))
        if pulls:
            first = request_key(scenario, page_query(pulls[0][0], 1), PARTICIPANTS)
            group.pages = _pages(known, first, 1)
        needs = dict.fromkeys(g for t in members for g in t.cohort.group_ids)
        group.members = tuple(g for g in needs if g not in charged)
        for g in group.members:  # from the journal, else the daemon's saved list, else 1
            first = request_key(g, page_query({"group_ids": g}, 1), MEMBERS)
            group.member_pages[g] = _pages(known, first, pages_for(member_counts.get(g, 0)))
        if (pulls and choose(len(members), len(members), group.pages) == PARTICIPANTS
                and group.participants_cost < group.summary_cost):
            group.source = PARTICIPANTS
            charged.update(group.members)
        else:
            group.members = ()
        groups.append(group)
    return groups


def _pages(known: Mapping[RequestKey, Outcome[Any]], first: RequestKey, otherwise: int) -> int:
    """Pages of a list whose ``first`` page the journal holds, else ``otherwise``."""
    outcome = known.get(first)
    return pages_of(outcome.answer) if outcome is not None and outcome.answer else otherwise
