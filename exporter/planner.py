"""The cost-based planner: summary requests, or cohorts derived from one participants pull.

For each scenario and each distinct date range (a *pull group*: rolling windows
and fixed ranges each need their own pull) there are two ways to refresh its
cohorts:

* one summary request per cohort (K requests), or
* one participants pull (``ceil(participants / 100)`` pages, known from the
  last pull's ``total_count``; 1 until a pull has run) from which every cohort
  that differs only by which users it keeps is aggregated
  (:mod:`exporter.aggregate`), plus the member lists of the groups those
  cohorts use.

The planner picks the cheaper way per pull group; ``planner.mode: summary``
keeps only summary requests. What it decides is expressed as jobs
(:mod:`exporter.jobs`): recurring summary jobs and pull jobs (a pull of n pages
has ``cost`` n and its pages 2..n are follow-up jobs), and this object is also
a job source for the follow-up pages, the member lists and the cross-checks.

Honesty rules (issue 13): a target starts on summary requests and moves to the
participants source only once a pull reproduced its summary (counts exact,
averages within ``planner.tolerance``); one that does not stays on the summary
(the log names the field). Then ``planner.cross_check_share`` of the day budget
re-fetches derived targets from the summary endpoint, round robin: counts that
differ mean new sessions (the summary's values are taken, no verdict); a field
beyond tolerance with equal counts moves the scenario back to summary requests
for ``planner.fallback_for``. What is exported is always a value the summary
endpoint gave or one that agreed with it at the last check.

Thread-safety: handlers run in the poller thread, :meth:`Planner.jobs` in
whichever thread rebuilds the running configuration, the collector in scrape
threads: one lock guards the state and is never held across a request.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from .aggregate import CohortFilter, Precision, aggregate, compare
from .client import PAUSE_REASONS, ApiError, ExecClient, Member, Page, ParticipantRow, Summary
from .config import CohortConfig, PlannerConfig, format_duration
from .jobs import Job, fetch_summary, summary_job
from .paged import PAGE_SIZE, ListChanged, PagedRead, page_query, retry_at
from .store import CROSS_CHECK_RESULTS

if TYPE_CHECKING:
    from .store import Store
    from .targets import Target, TargetKey

log = logging.getLogger(__name__)

# Pulls in a row whose counts differed from a target's summary (new sessions each
# time) before the target gives up proving itself for fallback_for.
VERIFY_PULLS = 3
# The participants endpoint refused this scenario or its filters: summaries only.
_UNAVAILABLE = frozenset({"not_found", "bad_request"})


DatesKey = tuple[float | None, str | None, str | None]
PullKey = tuple[str, str, DatesKey]
"""A pull job's key: ("participants", scenario, (window, start_date, end_date))."""


def dates_of(cohort: CohortConfig) -> DatesKey:
    """The part of a cohort that selects its pull: its window or fixed dates."""
    start = cohort.start_date.isoformat() if cohort.start_date else None
    end = cohort.end_date.isoformat() if cohort.end_date else None
    return (cohort.window, start, end)


def pull_key(target: Target) -> PullKey:
    """The key of the pull that holds ``target``'s rows."""
    return ("participants", target.scenario, dates_of(target.cohort))


def cohort_filter(cohort: CohortConfig) -> CohortFilter:
    """The row filter of ``cohort`` (every filter but the dates)."""
    return CohortFilter.of(cohort.user_ids, cohort.user_emails, cohort.group_ids,
                           cohort.exclude_system_users)


def pull_query(cohort: CohortConfig, now: float) -> dict[str, str]:
    """The participants query of ``cohort``'s pull at ``now``: its dates only."""
    full = cohort.query(now)
    return {k: full[k] for k in ("start_date", "end_date") if k in full}


def pages_for(total_count: int) -> int:
    """Pages of a pull of ``total_count`` participants (at least one)."""
    return max(1, math.ceil(total_count / PAGE_SIZE))


def choose(cohorts: int, derivable: int, pages: int) -> str:
    """``participants`` when one pull (``pages`` requests, plus one summary request for
    each of the ``cohorts - derivable`` cohorts it cannot serve) costs fewer requests
    per cycle than ``cohorts`` summary requests; else ``summary`` (a tie keeps the
    summary: no saving is worth a derivation)."""
    return "participants" if pages + (cohorts - derivable) < cohorts else "summary"


@dataclass(frozen=True)
class GroupPlan:
    """The plan of one pull group: both costs per cycle and the choice."""

    scenario: str
    dates: DatesKey
    cohorts: tuple[str, ...]
    pages: int
    pages_known: bool
    derivable: int  # cohorts the pull can serve now (member lists read, not refused)
    source: str  # "summary" or "participants"
    derived: tuple[str, ...] = ()  # cohorts served by the pull now (proven)

    @property
    def summary_cost(self) -> int:
        """Requests per cycle on summary requests: one per cohort."""
        return len(self.cohorts)

    @property
    def participants_cost(self) -> int:
        """Requests per cycle with the pull: its pages plus a summary for each cohort
        it cannot serve."""
        return self.pages + len(self.cohorts) - self.derivable

    @property
    def cost(self) -> int:
        """Requests per cycle of the chosen way, once every derivable cohort is proven."""
        return self.participants_cost if self.source == "participants" else self.summary_cost

    def describe_dates(self) -> str:
        """``all time``, ``last 7d``, ``2026-07-01 .. 2026-09-30``."""
        window, start, end = self.dates
        if window is not None:
            return f"last {format_duration(window)}"
        if start is None and end is None:
            return "all time"
        return f"{start or '...'} .. {end or '...'}"


@dataclass(frozen=True)
class Plan:
    """What one full refresh costs, per pull group and in all."""

    groups: tuple[GroupPlan, ...] = ()
    member_groups: tuple[str, ...] = ()  # group ids whose member lists are read
    recurring: int = 0  # requests of one round of the recurring jobs now

    @property
    def summary_cost(self) -> int:
        """Requests per cycle if every cohort used summary requests."""
        return sum(g.summary_cost for g in self.groups)

    @property
    def chosen_cost(self) -> int:
        """Requests per cycle of the chosen plan once every cohort is proven."""
        return sum(g.cost for g in self.groups)


def pull_groups(targets: Sequence[Target]) -> dict[PullKey, list[Target]]:
    """Targets by the pull that holds their rows, in target order."""
    groups: dict[PullKey, list[Target]] = {}
    for target in targets:
        groups.setdefault(pull_key(target), []).append(target)
    return groups


def offline_plan(targets: Sequence[Target], settings: PlannerConfig) -> Plan:
    """The plan ``--config.check`` prints: no pull has run, so one page per pull and
    every member list readable (the best case the planner can reach)."""
    groups = []
    member_groups: dict[str, None] = {}
    for (_, scenario, dates), members in pull_groups(targets).items():
        names = tuple(t.cohort.name for t in members)
        source = ("summary" if settings.mode == "summary"
                  else choose(len(members), len(members), 1))
        if source == "participants":
            for t in members:
                member_groups.update(dict.fromkeys(t.cohort.group_ids))
        groups.append(GroupPlan(scenario, dates, names, 1, False, len(members), source,
                                names if source == "participants" else ()))
    plan = Plan(tuple(groups), tuple(member_groups))
    return replace(plan, recurring=plan.chosen_cost)


@dataclass
class _PullRun:
    """A pull in progress: its query (the same for every page) and rows so far."""

    query: dict[str, str]
    read: PagedRead[ParticipantRow] = field(default_factory=lambda: PagedRead(
        "participants", key=lambda row: row.user_id))

    @property
    def page(self) -> int:
        """The page asked for next."""
        return self.read.page


@dataclass(frozen=True)
class _Pull:
    """The last complete, consistent pull of a group."""

    rows: tuple[ParticipantRow, ...]
    at: float


class Planner:
    """Plans, proves and cross-checks derived cohorts; a job source (see module doc).

    ``on_change()`` is called (outside the lock, in the thread of the event) when
    the recurring jobs must be rebuilt: a target proven or refused, a scenario
    falling back or back from a fallback, a pull's page count changed, a member
    list read for the first time.
    """

    def __init__(self, settings: PlannerConfig, store: Store,
                 members: Mapping[str, tuple[Iterable[str], float]] | None = None,
                 on_change: Callable[[], None] | None = None) -> None:
        self.settings = settings
        self.store = store
        self.on_change = on_change
        self.precision = Precision()
        self._lock = threading.RLock()
        self._targets: dict[TargetKey, Target] = {}
        self._groups: dict[PullKey, list[Target]] = {}
        self._plan = Plan()
        self._served_keys: set[TargetKey] = set()
        self._pages: dict[PullKey, int] = {}
        self._pulls: dict[PullKey, _Pull] = {}
        self._runs: dict[PullKey, _PullRun] = {}
        self._verified: set[TargetKey] = set()
        self._refused: dict[TargetKey, float] = {}
        self._inconclusive: dict[TargetKey, int] = {}
        self._fallback: dict[str, float] = {}
        self._real: dict[TargetKey, tuple[Summary, float]] = {}
        self._refetch: set[TargetKey] = set()
        self._discards: dict[PullKey, int] = {}
        self._members: dict[str, tuple[frozenset[str], float]] = {
            g: (frozenset(ids), at) for g, (ids, at) in (members or {}).items()}
        self._member_runs: dict[str, PagedRead[Member]] = {}
        # A restored list is read again when it is membership_interval old, not at start.
        self._member_next: dict[str, float] = {
            g: at + settings.membership_interval for g, (_, at) in self._members.items()}
        self._member_failures: dict[str, int] = {}
        self._member_pages: dict[str, int] = {}
        self._rereads_after = -math.inf
        self._checks_next = -math.inf
        self._checks_cursor = 0
        self._day_budget = 1.0
        self._refresh_interval = 900.0

    # --- settings and plan -------------------------------------------------------

    def configure(self, settings: PlannerConfig, day_budget: float,
                  refresh_interval: float, reread_members: bool = False) -> None:
        """New settings (reload); ``reread_members`` reads every member list again."""
        with self._lock:
            self.settings = settings
            self._day_budget = max(day_budget, 1.0)
            self._refresh_interval = refresh_interval
            if reread_members:
                self._member_next.clear()
                self._member_runs.clear()

    @property
    def auto(self) -> bool:
        """Whether derived cohorts are allowed at all."""
        return self.settings.mode == "auto"

    def _derivable(self, target: Target, now: float) -> bool:
        """The pull can serve ``target`` now: every group's members known, not refused."""
        if any(g not in self._members for g in target.cohort.group_ids):
            return False
        until = self._refused.get(target.key)
        return until is None or until <= now

    def _source_of(self, key: PullKey, targets: Sequence[Target], now: float) -> str:
        if not self.auto:
            return "summary"
        until = self._fallback.get(key[1])
        if until is not None and until > now:
            return "summary"
        derivable = sum(self._derivable(t, now) for t in targets)
        return choose(len(targets), derivable, self._pages.get(key, 1))

    def jobs(self, targets: Sequence[Target], now: float) -> tuple[Job, ...]:
        """The recurring jobs for ``targets``: a summary job for each target the pulls
        do not serve, and one pull job per group that uses the participants source,
        placed after its scenario's summary jobs (a pull then follows the summaries it
        is checked against). Also remembers the plan."""
        with self._lock:
            for target in targets:
                before = self._targets.get(target.key)
                if before is not None and before.cohort != target.cohort:
                    # Same labels, other filters (a reload): what was proven is not.
                    self._verified.discard(target.key)
                    self._refused.pop(target.key, None)
                    self._inconclusive.pop(target.key, None)
                    self._real.pop(target.key, None)
            self._targets = {t.key: t for t in targets}
            self._groups = pull_groups(targets)
            self._verified &= set(self._targets)
            plans: list[GroupPlan] = []
            by_scenario: dict[str, list[Job]] = {}
            pulls: dict[str, list[Job]] = {}
            member_groups: dict[str, None] = {}
            for key, members in self._groups.items():
                source = self._source_of(key, members, now)
                derivable = [t for t in members if self._derivable(t, now)]
                derived = [t for t in derivable
                           if source == "participants" and t.key in self._verified]
                derived_keys = {t.key for t in derived}
                for target in members:
                    if target.key not in derived_keys:
                        by_scenario.setdefault(target.scenario, []).append(
                            self._summary_job(target))
                if source == "participants":
                    pulls.setdefault(key[1], []).append(
                        self._pull_job(key, members[0].cohort, self._pages.get(key, 1)))
                if (self.auto and key[1] not in self._active_fallbacks(now)
                        and choose(len(members), len(members),
                                   self._pages.get(key, 1)) == "participants"):
                    # The groups whose lists let a worthwhile pull serve their cohorts.
                    for t in members:
                        member_groups.update(dict.fromkeys(t.cohort.group_ids))
                plans.append(GroupPlan(key[1], key[2],
                                       tuple(t.cohort.name for t in members),
                                       self._pages.get(key, 1), key in self._pages,
                                       len(derivable), source,
                                       tuple(t.cohort.name for t in derived)))
            jobs: list[Job] = []
            for scenario in dict.fromkeys([*by_scenario, *pulls]):
                jobs.extend(by_scenario.get(scenario, []))
                jobs.extend(pulls.get(scenario, []))
            self._plan = Plan(tuple(plans), tuple(member_groups),
                              sum(max(j.cost, 1) for j in jobs))
            self._served_keys = {(p.scenario, name) for p in plans for name in p.derived}
            return tuple(jobs)

    def _active_fallbacks(self, now: float) -> set[str]:
        return {s for s, until in self._fallback.items() if until > now}

    @property
    def plan(self) -> Plan:
        """The plan of the last :meth:`jobs` call."""
        with self._lock:
            return self._plan

    def source(self, key: TargetKey) -> str:
        """``participants`` if ``key``'s exported values come from pulls, else ``summary``."""
        with self._lock:
            return "participants" if self._served(key) else "summary"

    def _served(self, key: TargetKey) -> bool:
        # Served: proven, and the running jobs leave its summary to the pull.
        return key in self._served_keys and key in self._verified

    def served_by_pull(self) -> dict[PullKey, list[TargetKey]]:
        """Pull key -> the targets it serves now (for the landing page's next refresh)."""
        with self._lock:
            out: dict[PullKey, list[TargetKey]] = {}
            for key in self._targets:
                if self._served(key):
                    out.setdefault(pull_key(self._targets[key]), []).append(key)
            return out

    def take_refetch(self) -> set[TargetKey]:
        """Targets whose derived values a cross-check found wrong: their summary jobs
        are due at once, not by the age of those values (asked once, then cleared)."""
        with self._lock:
            keys, self._refetch = self._refetch, set()
            return keys

    def pull_targets(self) -> dict[PullKey, list[TargetKey]]:
        """Pull key -> the targets of its group (a restored pull is due by their age)."""
        with self._lock:
            return {key: [t.key for t in targets] for key, targets in self._groups.items()}

    def members(self) -> dict[str, tuple[frozenset[str], float]]:
        """The member lists read so far (for the state file)."""
        with self._lock:
            return dict(self._members)

    def requests_per_cycle(self, interval: float) -> float:
        """What one full refresh costs: the recurring jobs' requests plus the member
        lists and cross-checks that fall within one effective interval."""
        with self._lock:
            recurring = self._plan.recurring
        return recurring + self.requests_per_day() * interval / 86400.0

    # --- jobs ---------------------------------------------------------------------

    def _summary_job(self, target: Target) -> Job:
        job = summary_job(target, self.store)
        if not self.auto:
            return job  # planner.mode: summary: exactly the plain summary job
        plain = job.apply
        key = target.key

        def apply(summary: Summary, at: float) -> None:
            plain(summary, at)
            self.summary_seen(key, summary, at)

        return replace(job, apply=apply)

    def _pull_job(self, key: PullKey, cohort: CohortConfig, pages: int) -> Job:
        def fetch(client: ExecClient, now: float) -> tuple[dict[str, str], Page]:
            query = pull_query(cohort, now)
            return query, client.participants(key[1], page_query(query, 1))

        def apply(answer: tuple[dict[str, str], Page], at: float) -> None:
            query, page = answer
            with self._lock:
                self._runs[key] = _PullRun(query)
            self.page_read(key, 1, page, at)

        def fail(error: ApiError, at: float) -> None:
            self.pull_failed(key, error, at)

        return Job(kind="participants", key=key, fetch=fetch, apply=apply, fail=fail,
                   label=_pull_label(key, 1), cost=pages)

    def _page_job(self, key: PullKey, run: _PullRun) -> Job:
        page_no, params = run.page, run.read.query(run.query)

        def fetch(client: ExecClient, now: float) -> Page:
            return client.participants(key[1], params)

        def apply(page: Page, at: float) -> None:
            self.page_read(key, page_no, page, at)

        def fail(error: ApiError, at: float) -> None:
            if error.reason in PAUSE_REASONS:
                return  # the page is asked again once the pause is over
            with self._lock:
                self._runs.pop(key, None)
            self.pull_failed(key, error, at)

        return Job(kind="participants", key=(*key, page_no), fetch=fetch, apply=apply,
                   fail=fail, label=_pull_label(key, page_no))

    # --- pulls ----------------------------------------------------------------------

    def page_read(self, key: PullKey, page_no: int, page: Page, at: float) -> None:
        """Page ``page_no`` of ``key``'s pull arrived; the last page completes the pull."""
        with self._lock:
            run = self._runs.get(key)
            if run is None or run.page != page_no:
                return  # a reload dropped the pull, or an old page
            try:
                complete = run.read.take(page, raw=False)
            except ListChanged as exc:  # the table changed or rows moved between pages
                del self._runs[key]
                changed = self._discarded(key, at, str(exc))
            else:
                if not complete:
                    return  # the next page is a follow-up job of this source
                del self._runs[key]
                changed = self._pulled(key, tuple(run.read.items), page_no, at)
        if changed:
            self._changed()

    def _discarded(self, key: PullKey, at: float, why: str) -> bool:
        """An inconsistent pull is dropped; after VERIFY_PULLS in a row (an unstable
        order of equal scores across pages, say) the scenario uses summaries for
        ``fallback_for``. True when the jobs must be rebuilt."""
        count = self._discards.get(key, 0) + 1
        self._discards[key] = count
        if count < VERIFY_PULLS:
            log.info("participants pull %s: %s; discarded, the next pull starts over",
                     _pull_label(key, 1), why)
            return False
        self._discards.pop(key, None)
        log.warning("participants of scenario=%s: %d pulls in a row were inconsistent (%s); "
                    "its cohorts use summary requests for %s", key[1], count, why,
                    _duration(self.settings.fallback_for))
        self._fall_back(key[1], at)
        return True

    def _fall_back(self, scenario: str, at: float) -> None:
        """Summary requests for ``scenario``'s cohorts for ``fallback_for``. Its pulls are
        forgotten: the proofs after the fallback start from a new pull, not from the
        one just found wanting (which would refuse every target a second time)."""
        self._fallback[scenario] = at + self.settings.fallback_for
        self._verified -= {k for k in self._targets if k[0] == scenario}
        for key in [k for k in self._pulls if k[1] == scenario]:
            del self._pulls[key]

    def _pulled(self, key: PullKey, rows: tuple[ParticipantRow, ...], pages: int,
                at: float) -> bool:
        """A complete, consistent pull of ``pages`` pages: keep it, refresh the cohorts it
        serves, try to prove the others. True when the jobs must be rebuilt."""
        self._discards.pop(key, None)
        changed = self._pages.get(key) != pages
        self._pages[key] = pages
        self._pulls[key] = _Pull(rows, at)
        for target in self._groups.get(key, []):
            if not self._derivable(target, at):
                continue
            derived = self._derive(target)
            assert derived is not None
            if self._served(target.key):
                self.store.record_success(target.key, derived, at)
            elif target.key not in self._verified:
                changed |= self._verify(target, derived, at)
        return changed

    def pull_failed(self, key: PullKey, error: ApiError, at: float) -> None:
        """A pull's page failed: the targets it serves keep their last values, marked
        down; an endpoint that refuses the scenario sends it back to summaries."""
        if error.reason in PAUSE_REASONS:
            return  # workspace-wide: the poller said it and pauses every request
        changed = False
        with self._lock:
            served = [k for k in self._targets if self._served(k)
                      and pull_key(self._targets[k]) == key]
            if error.reason in _UNAVAILABLE:
                changed = key[1] not in self._active_fallbacks(at)
                self._fall_back(key[1], at)
        for target_key in served:
            self.store.record_failure(target_key, error.reason, str(error), at)
        if error.reason in _UNAVAILABLE:
            log.warning("participants of scenario=%s unavailable (%s: %s); its cohorts use "
                        "summary requests for %s", key[1], error.reason, error,
                        _duration(self.settings.fallback_for))
        else:
            log.warning("participants pull %s failed (%s: %s); its cohorts keep their last "
                        "values", _pull_label(key, 1), error.reason, error)
        if changed:
            self._changed()

    def _derive(self, target: Target) -> Summary | None:
        """``target``'s summary from the last pull of its group, if any."""
        pull = self._pulls.get(pull_key(target))
        if pull is None:
            return None
        members = {g: self._members[g][0] for g in target.cohort.group_ids}
        cohort = cohort_filter(target.cohort)
        return aggregate((r for r in pull.rows if cohort.keeps(r, members)), self.precision)

    # --- proving and cross-checking -------------------------------------------------------

    def summary_seen(self, key: TargetKey, summary: Summary, at: float) -> None:
        """A summary request for ``key`` answered (its recurring job): learn the
        endpoint's rounding and try to prove the derivation against it."""
        changed = False
        with self._lock:
            self._real[key] = (summary, at)
            self.precision.observe(summary)
            target = self._targets.get(key)
            if (target is not None and key not in self._verified
                    and self._derivable(target, at)):
                derived = self._derive(target)
                if derived is not None:
                    changed = self._verify(target, derived, at)
        if changed:
            self._changed()

    def _verify(self, target: Target, derived: Summary, at: float) -> bool:
        """Compare a pull's values with ``target``'s last real summary; True when the
        target's standing changed (proven or refused)."""
        real = self._real.get(target.key)
        if real is None:
            return False
        result = compare(derived, real[0], self.settings.tolerance)
        scenario, cohort = target.key
        if result.match:
            self._verified.add(target.key)
            self._inconclusive.pop(target.key, None)
            log.info("scenario=%s cohort=%s: the participants pull reproduced its summary; "
                     "it is derived from now on", scenario, cohort)
            return True
        if result.mismatch:
            self._refused[target.key] = at + self.settings.fallback_for
            self._inconclusive.pop(target.key, None)
            log.warning("scenario=%s cohort=%s: the participants pull does not reproduce its "
                        "summary (%s); it stays on summary requests for %s", scenario, cohort,
                        result.describe(), _duration(self.settings.fallback_for))
            return True
        tries = self._inconclusive.get(target.key, 0) + 1
        self._inconclusive[target.key] = tries
        if tries < VERIFY_PULLS:
            return False
        self._inconclusive.pop(target.key, None)
        self._refused[target.key] = at + self.settings.fallback_for
        log.info("scenario=%s cohort=%s: new sessions kept arriving between its summary and "
                 "%d pulls; it stays on summary requests for %s", scenario, cohort,
                 VERIFY_PULLS, _duration(self.settings.fallback_for))
        return True

    def cross_checked(self, key: TargetKey, summary: Summary, at: float) -> None:
        """A cross-check's summary for derived target ``key`` arrived."""
        changed = False
        with self._lock:
            self.precision.observe(summary)
            self._real[key] = (summary, at)
            target = self._targets.get(key)
            derived = self._derive(target) if target is not None else None
            # The summary is the newer value whatever the verdict: export it.
            self.store.record_success(key, summary, at)
            if target is None or derived is None:
                return
            result = compare(derived, summary, self.settings.tolerance)
            scenario, cohort = key
            if not result.counts_agree:
                log.debug("cross-check scenario=%s cohort=%s: new sessions since the pull "
                          "(%s); took the summary's values", scenario, cohort,
                          result.describe())
                return
            verdict = "match" if result.match else "mismatch"
            self.store.record_cross_check(scenario, verdict)
            if result.match:
                return
            log.warning("cross-check scenario=%s cohort=%s: derived values differ from the "
                        "summary endpoint (%s); scenario=%s uses summary requests for %s",
                        scenario, cohort, result.describe(), scenario,
                        _duration(self.settings.fallback_for))
            served = {k for k in self._targets if k[0] == scenario and self._served(k)}
            self._fall_back(scenario, at)
            # Their derived values are now suspect: summaries for them at once.
            self._refetch |= served
            changed = True
        if changed:
            self._changed()

    def _cross_check_job(self, target: Target) -> Job:
        key = target.key

        def apply(summary: Summary, at: float) -> None:
            self.cross_checked(key, summary, at)

        def fail(error: ApiError, at: float) -> None:
            if error.reason not in PAUSE_REASONS:
                log.info("cross-check scenario=%s cohort=%s failed (%s: %s); next target",
                         key[0], key[1], error.reason, error)

        return Job(kind="cross_check", key=("cross_check", *key), fetch=fetch_summary(target),
                   apply=apply, fail=fail,
                   label=f"cross-check scenario={key[0]} cohort={key[1]}")

    def _checks_per_day(self) -> float:
        served = sum(1 for k in self._targets if self._served(k))
        if not served or self.settings.cross_check_share <= 0:
            return 0.0
        share = self.settings.cross_check_share
        # A share of what is spent: of the day budget when the plan needs all of it, of
        # the plan's own requests at refresh_interval when the budget leaves slack.
        wanted = (self._plan.recurring * 86400.0 / self._refresh_interval
                  + self._lists_per_day()) / (1.0 - share)
        return share * min(self._day_budget, wanted)

    def _lists_per_day(self) -> float:
        lists = sum(self._member_pages.get(g, 1) for g in self._plan.member_groups)
        return lists * 86400.0 / self.settings.membership_interval

    # --- member lists -------------------------------------------------------------------

    def _member_job(self, group: str, run: PagedRead[Member]) -> Job:
        page_no, params = run.page, run.query({"group_ids": group})

        def fetch(client: ExecClient, now: float) -> Page:
            return client.members(params)

        def apply(page: Page, at: float) -> None:
            self.members_read(group, page_no, page, at)

        def fail(error: ApiError, at: float) -> None:
            self.members_failed(group, error, at)

        return Job(kind="members", key=("members", group, page_no), fetch=fetch,
                   apply=apply, fail=fail, label=f"members of group {group} page {page_no}")

    def members_read(self, group: str, page_no: int, page: Page, at: float) -> None:
        """A page of ``group``'s member list arrived."""
        first = False
        with self._lock:
            run = self._member_runs.get(group)
            if run is None or run.page != page_no:
                return
            if not run.take(page, raw=False):  # ListChanged: members_failed drops the read
                return
            del self._member_runs[group]
            first = group not in self._members
            self._members[group] = (frozenset(m.user_id for m in run.items), at)
            self._member_pages[group] = page_no
            self._member_failures.pop(group, None)
            self._member_next[group] = at + self.settings.membership_interval
        log.debug("members of group %s: %d", group, len(run.items))
        if first:
            self._changed()

    def members_failed(self, group: str, error: ApiError, at: float) -> None:
        """A member list page failed: the last list stays; retry later."""
        with self._lock:
            self._member_runs.pop(group, None)
            if error.reason in PAUSE_REASONS:
                self._member_next[group] = at  # the scheduler's pause decides
                return
            failures = self._member_failures.get(group, 0) + 1
            self._member_failures[group] = failures
            wait = retry_at(error, failures, at, self.settings.membership_interval) - at
            if error.reason in _UNAVAILABLE:
                # No such group, or no member list endpoint: not worth an hourly retry.
                wait = max(self.settings.fallback_for, self.settings.membership_interval)
            self._member_next[group] = at + wait
            known = group in self._members
        log.warning("members of group %s: reading failed (%s: %s); %s, retrying in %s", group,
                    error.reason, error, "keeping the last list" if known
                    else "its cohorts use summary requests", _duration(wait))

    def _member_due(self, group: str) -> float:
        due = self._member_next.get(group, -math.inf)
        if group in self._members:
            # Lists already known are read again spread over the interval, not in one
            # burst of every group at once (which would hold back the pulls behind it).
            due = max(due, self._rereads_after)
        return due

    def _reread_gap(self) -> float:
        return self.settings.membership_interval / max(len(self._plan.member_groups), 1)

    # --- the job source ---------------------------------------------------------------

    def due(self, now: float) -> Job | None:
        """Follow-up pages first, then member lists, then a cross-check, when due."""
        expired = False
        with self._lock:
            for key, pulling in self._runs.items():
                if pulling.page > 1:
                    return self._page_job(key, pulling)
            for group in self._plan.member_groups:
                reading = self._member_runs.get(group)
                if reading is None and now >= self._member_due(group):
                    reading = self._member_runs[group] = PagedRead(
                        f"members of group {group}", key=lambda member: member.user_id)
                    if group in self._members:
                        self._rereads_after = now + self._reread_gap()
                if reading is not None:
                    return self._member_job(group, reading)
            for scenario, until in list(self._fallback.items()):
                if until <= now:
                    del self._fallback[scenario]
                    expired = True
                    log.info("scenario=%s: fallback over; its cohorts may be derived again",
                             scenario)
            for target_key, until in list(self._refused.items()):
                if until <= now:
                    del self._refused[target_key]
                    expired = True
            job = None
            if not expired and now >= self._checks_next:
                job = self._next_cross_check(now)
        if expired:
            self._changed()
        return job

    def _next_cross_check(self, now: float) -> Job | None:
        per_day = self._checks_per_day()
        if per_day <= 0:
            self._checks_next = now + 60.0  # nothing derived yet: look again later
            return None
        served = [k for k in self._targets if self._served(k)]
        self._checks_cursor %= len(served)
        key = served[self._checks_cursor]
        self._checks_cursor += 1
        self._checks_next = now + 86400.0 / per_day
        return self._cross_check_job(self._targets[key])

    def next_due(self) -> float:
        """When :meth:`due` next has something (-inf: now)."""
        with self._lock:
            if any(run.page > 1 for run in self._runs.values()):
                return -math.inf
            times = [self._checks_next if self._checks_per_day() > 0 else math.inf]
            for group in self._plan.member_groups:
                times.append(-math.inf if group in self._member_runs
                             else self._member_due(group))
            times.extend(self._fallback.values())
            times.extend(self._refused.values())
            return min(times, default=math.inf)

    def requests_per_day(self) -> float:
        """Member lists and cross-checks a day, taken out of the day budget (the pulls
        are recurring jobs: their pages count in the interval)."""
        with self._lock:
            return self._lists_per_day() + self._checks_per_day()

    # --- metrics -----------------------------------------------------------------------

    def counters(self) -> dict[tuple[str, str], int]:
        """Cross-check verdicts by (scenario, result), every known scenario at 0 first."""
        with self._lock:
            out = {(s, r): 0 for s in dict.fromkeys(k[0] for k in self._targets)
                   for r in CROSS_CHECK_RESULTS}
            out.update(self.store.cross_checks())
            return out

    def sources(self) -> list[tuple[TargetKey, str]]:
        """Every target with the source of its exported values."""
        with self._lock:
            return [(key, "participants" if self._served(key) else "summary")
                    for key in self._targets]

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()


def _pull_label(key: PullKey, page: int) -> str:
    window, start, end = key[2]
    dates = ("" if window is None and start is None and end is None
             else f" window={window:g}s" if window is not None
             else f" start={start} end={end}")
    return f"participants scenario={key[1]}{dates} page {page}"


def _duration(seconds: float) -> str:
    return format_duration(seconds)
