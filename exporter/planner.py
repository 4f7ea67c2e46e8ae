"""The planner's policy: which way each cohort is refreshed, its pulls, proofs and
cross-checks. Prices come from :mod:`exporter.plan`, memory from :mod:`exporter.learned`,
member lists from :mod:`exporter.members`; the honesty rules (every comparison is
*paired*: pinned to the pull's instant) are in docs/derived-cohorts.md. Handlers run
in the poller thread, :meth:`Planner.jobs` where the running value is rebuilt: one
lock, never held across a request.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from .aggregate import SUMMARY_FIELDS, CohortFilter, Comparison, aggregate, compare, given_fields
from .budget import DAY
from .client import (
    PAUSE_REASONS,
    PERSISTENT_REASONS,
    ApiError,
    ExecClient,
    Page,
    ParticipantRow,
    Summary,
)
from .config import CohortConfig, PlannerConfig, format_duration
from .jobs import Job, same_definition, summary_job
from .learned import Learned, Proof, keep_only, restore
from .members import MemberLists
from .paged import ListChanged, PagedRead, page_query
from .plan import Plan, PullKey, derived_per_day, describe_dates, make_plan, pull_groups, pull_key
from .scheduler import polling_day_budget

if TYPE_CHECKING:
    from .store import Store
    from .targets import Target, TargetKey

log = logging.getLogger(__name__)

# Inconsistent pulls in a row before a scenario uses summaries for fallback_for.
VERIFY_PULLS = 3
# Paired disagreements in a row that refute a derivation (see judge()).
REFUTE_AFTER = 2


def judge(doubts: int, comparison: Comparison) -> tuple[str, int]:
    """The verdict of one paired comparison after ``doubts`` disagreements in a row,
    and the new count: ``agree`` (derived from now on), ``doubt`` (the first
    disagreement: the summary's values are exported, the next pull proves again; it
    can be a late session) or ``refuted`` (``REFUTE_AFTER`` in a row: summary
    requests for ``fallback_for``). The table is in docs/derived-cohorts.md."""
    if comparison.match:
        return "agree", 0
    doubts += 1
    return ("refuted" if doubts >= REFUTE_AFTER else "doubt"), doubts


def cohort_filter(cohort: CohortConfig) -> CohortFilter:
    """The row filter of ``cohort`` (every filter but the dates)."""
    return CohortFilter.of(cohort.user_ids, cohort.user_emails, cohort.group_ids,
                           cohort.exclude_system_users)


def pinned_query(cohort: CohortConfig, now: float) -> dict[str, str]:
    """``cohort``'s summary query with ``end_date`` pinned at ``now`` (or its own end, if
    earlier): a pull and its paired summaries cover exactly the same sessions."""
    query = cohort.query(now)
    end = now if cohort.end_date is None else min(cohort.end_date.timestamp(), now)
    query["end_date"] = dt.datetime.fromtimestamp(math.floor(end), dt.UTC).strftime(
        "%Y-%m-%dT%H:%M:%SZ")
    return query


def pull_query(cohort: CohortConfig, now: float) -> dict[str, str]:
    """The participants query of ``cohort``'s pull at ``now``: its dates only, pinned."""
    full = pinned_query(cohort, now)
    return {k: full[k] for k in ("start_date", "end_date") if k in full}


@dataclass
class _PullRun:
    """A pull in progress: its query (the same for every page), its instant and rows."""

    query: dict[str, str]
    now: float
    read: PagedRead[ParticipantRow] = field(default_factory=lambda: PagedRead(
        "participants", key=lambda row: row.user_id))


@dataclass(frozen=True, eq=False)
class _Paired:
    """A summary owed right after a pull, at its instant: a proof, a cross-check
    (``check``), or a plain refresh (``rows`` None: no pull to compare with)."""

    target: Target
    pull_at: float
    rows: tuple[ParticipantRow, ...] | None
    check: bool = False


class Planner:
    """Plans, proves and cross-checks derived cohorts; a job source (see module doc).

    ``on_change()`` is called, outside the lock, when the recurring jobs must be
    rebuilt (a proof, doubt, refusal, fallback, new page count, first member list).
    ``saved`` is :meth:`state` as the state file kept it."""

    def __init__(self, settings: PlannerConfig, store: Store,
                 saved: Mapping[str, Any] | None = None,
                 on_change: Callable[[], None] | None = None, now: float = math.inf) -> None:
        self.settings = settings
        self.store = store
        self.on_change = on_change
        self._lock = threading.RLock()
        self._targets: dict[TargetKey, Target] = {}
        self._groups: dict[PullKey, list[Target]] = {}
        self._plan = Plan()
        self._served_keys: set[TargetKey] = set()
        self._owed: set[TargetKey] = set()  # proven by paired summaries after each pull
        self._pulled_here: set[PullKey] = set()  # pulls completed since the start
        self._runs: dict[PullKey, _PullRun] = {}
        self._paired: list[_Paired] = []
        self._refetch: set[TargetKey] = set()
        self._discards: dict[PullKey, int] = {}
        self.members = MemberLists(settings, self._lock, on_first=self._changed)
        self._checks_waited = 0  # pulls completed while the target in turn had none
        self._day_budget = 1.0
        self._minute_budget = 60.0
        self._refresh_interval = 900.0
        self.learned = restore(saved, now, self.members) if saved else Learned()

    # --- settings and plan -------------------------------------------------------

    def configure(self, settings: PlannerConfig, day_budget: float, refresh_interval: float,
                  reread_members: bool = False, minute_budget: float = 60.0,
                  listings: Iterable[float] = ()) -> None:
        """New settings (reload); ``reread_members`` reads every member list again. The
        cross-checks are capped by ``day_budget`` once the ``listings`` (requests a day)
        are paid for, as ``--config.check`` prices them."""
        with self._lock:
            self.settings = settings
            self._day_budget = polling_day_budget(day_budget, listings)
            self._minute_budget = max(minute_budget, 1.0)
            self._refresh_interval = refresh_interval
            self.members.configure(settings, reread_members)

    def _derivable(self, target: Target, now: float) -> bool:
        """The pull can serve ``target`` now: every group's members known, not refused."""
        return (all(g in self.members.known for g in target.cohort.group_ids)
                and not self._is_refused(target, now))

    def _is_refused(self, target: Target, now: float) -> bool:
        until = self.learned.refused.get(target.key)
        return until is not None and until > now

    def jobs(self, targets: Sequence[Target], now: float) -> tuple[Job, ...]:
        """The recurring jobs for ``targets``: a summary job per target no pull serves,
        then its scenario's pull jobs (costing their pages and the proofs they owe).
        Remembers the plan and prunes what belongs to targets no longer there."""
        with self._lock:
            for target in targets:
                before = self._targets.get(target.key)
                if before is not None and not same_definition(before, target):
                    # Same labels, other filters (a reload): what was proven is not.
                    self.learned.forget(target.key)
                # A proof from the state file, for the same definition, not too old.
                self.learned.take_kept(target.key, target.cohort, now,
                                       self.settings.fallback_for)
            self._targets = {t.key: t for t in targets}
            self._groups = pull_groups(targets)
            summary_only = (self._active_fallbacks(now) if self.settings.mode == "auto"
                            else {t.scenario for t in targets})
            self._plan, serving = make_plan(
                self._groups, self.settings, self._refresh_interval, self.learned.pages,
                self.members.pages, derivable=lambda t: self._derivable(t, now),
                readable=lambda t: not self._is_refused(t, now), summary_only=summary_only,
                proven=lambda t: t.key in self.learned.proofs)
            self._owed = {t.key for pull in serving.values() for t in pull.owed}
            by_scenario: dict[str, list[Job]] = {}
            pulls: dict[str, list[Job]] = {}
            for key, members in self._groups.items():
                pull = serving.get(key)
                taken = {t.key for t in pull.served + pull.owed} if pull else set()
                for target in members:
                    if target.key not in taken:
                        by_scenario.setdefault(key[1], []).append(summary_job(target, self.store))
                if pull is not None:
                    pulls.setdefault(key[1], []).append(self._pull_job(
                        key, members[0].cohort, self.learned.pages.get(key, 1) + len(pull.owed)))
            jobs: list[Job] = []
            for scenario in dict.fromkeys([*by_scenario, *pulls]):
                jobs.extend(by_scenario.get(scenario, []))
                jobs.extend(pulls.get(scenario, []))
            self._served_keys = {t.key for pull in serving.values() for t in pull.served}
            self._prune(set(serving))
            self._ask_newcomers()
            return tuple(jobs)

    def _ask_newcomers(self) -> None:
        """A target new to a running pull (it pulled, or a target of it has a value) would
        have no value until the pull's turn: its summary is asked at once."""
        def known(key: TargetKey) -> bool:
            state = self.store.get(key)
            return state is not None and state.last_success is not None

        for key in self._owed - {p.target.key for p in self._paired}:
            pull = pull_key(self._targets[key])
            if not known(key) and (pull in self._pulled_here or any(
                    known(t.key) for t in self._groups.get(pull, ()))):
                self._paired.append(_Paired(self._targets[key], 0.0, None))

    def _prune(self, pulled: set[PullKey]) -> None:
        """Drop what belongs to targets, pulls and groups no longer used."""
        keep_only(self._runs, pulled)
        self._pulled_here &= set(self._groups)
        keep_only(self._discards, self._groups)
        self._paired = [p for p in self._paired
                        if same_definition(self._targets.get(p.target.key), p.target)]
        self.learned.prune(self._targets, self._groups)
        self._refetch &= set(self._targets)
        self.members.prune({g for t in self._targets.values() for g in t.cohort.group_ids})

    def _active_fallbacks(self, now: float) -> set[str]:
        return {s for s, until in self.learned.fallback.items() if until > now}

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
        return key in self._served_keys and key in self.learned.proofs

    def awaiting_proof(self) -> int:
        """Targets a pull may serve once a paired check proves them (0: settled)."""
        with self._lock:
            return len(self._owed)

    def served_by_pull(self) -> dict[PullKey, list[TargetKey]]:
        """Pull key -> the targets it refreshes, served or owed (their next refresh)."""
        with self._lock:
            refreshed = {pull: [t.key for t in targets
                                if self._served(t.key) or t.key in self._owed]
                         for pull, targets in self._groups.items()}
            return {pull: keys for pull, keys in refreshed.items() if keys}

    def take_refetch(self) -> set[TargetKey]:
        """Targets whose derived values were found wrong: due at once (then cleared)."""
        with self._lock:
            keys, self._refetch = self._refetch, set()
            return keys

    def pull_targets(self) -> dict[PullKey, list[TargetKey]]:
        """Pull key -> the targets of its group (a restored pull is due by their age)."""
        with self._lock:
            return {key: [t.key for t in targets] for key, targets in self._groups.items()}

    def requests_per_cycle(self, interval: float) -> float:
        """What one full refresh costs: the recurring jobs plus the member lists and
        cross-checks of one effective ``interval``."""
        with self._lock:
            return self._plan.recurring + sum(self._per_day()) * interval / DAY

    # --- jobs ---------------------------------------------------------------------

    def _pull_job(self, key: PullKey, cohort: CohortConfig, cost: int) -> Job:
        def fetch(client: ExecClient, now: float) -> tuple[dict[str, str], float, Page]:
            query = pull_query(cohort, now)
            return query, now, client.participants(key[1], page_query(query, 1))

        def apply(answer: tuple[dict[str, str], float, Page], at: float) -> None:
            query, pulled_at, page = answer
            with self._lock:
                self._runs[key] = _PullRun(query, pulled_at)
            self._page_read(key, 1, page, at)

        def fail(error: ApiError, at: float) -> None:
            self._pull_failed(key, error, at)

        return Job(kind="participants", key=key, fetch=fetch, apply=apply, fail=fail,
                   label=_pull_label(key, 1), cost=cost)

    def _page_job(self, key: PullKey, run: _PullRun) -> Job:
        page_no, params = run.read.page, run.read.query(run.query)

        def fetch(client: ExecClient, now: float) -> Page:
            return client.participants(key[1], params)

        def apply(page: Page, at: float) -> None:
            self._page_read(key, page_no, page, at)

        def fail(error: ApiError, at: float) -> None:
            if error.reason in PAUSE_REASONS:
                return  # the page is asked again once the pause is over
            with self._lock:
                self._runs.pop(key, None)
            self._pull_failed(key, error, at)

        return Job(kind="participants", key=(*key, page_no), fetch=fetch, apply=apply,
                   fail=fail, label=_pull_label(key, page_no))

    def _paired_job(self, item: _Paired) -> Job:
        target = item.target
        key = target.key
        kind = "cross_check" if item.check else "summary"

        def fetch(client: ExecClient, now: float) -> Summary:
            query = (pinned_query(target.cohort, item.pull_at) if item.rows is not None
                     else target.cohort.query(now))
            return client.summary(target.scenario, query)

        def apply(summary: Summary, at: float) -> None:
            self._paired_seen(item, summary, at)

        def fail(error: ApiError, at: float) -> None:
            if error.reason in PAUSE_REASONS:
                return  # the next pull pairs it again
            if not item.check:
                self.store.record_failure(key, error.reason, str(error), at)
            log.info("%s scenario=%s cohort=%s failed (%s: %s)",
                     "cross-check" if item.check else "paired summary", key[0], key[1],
                     error.reason, error)

        return Job(kind=kind, key=(kind, *key), fetch=fetch, apply=apply, fail=fail,
                   label=f"{'cross-check ' if item.check else ''}scenario={key[0]} "
                         f"cohort={key[1]} (paired)")

    # --- pulls ----------------------------------------------------------------------

    def _page_read(self, key: PullKey, page_no: int, page: Page, at: float) -> None:
        """Page ``page_no`` of ``key``'s pull arrived; the last page completes the pull."""
        with self._lock:
            run = self._runs.get(key)
            if run is None or run.read.page != page_no:
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
                changed = self._pulled(key, tuple(run.read.items), page_no, at, run.now)
        if changed:
            self._changed()

    def _discarded(self, key: PullKey, at: float, why: str) -> bool:
        """Drop an inconsistent pull; after VERIFY_PULLS in a row its scenario uses
        summaries for ``fallback_for``. True when the jobs must be rebuilt."""
        count = self._discards.get(key, 0) + 1
        self._discards[key] = count
        self._owe_plain(key, at)
        if count < VERIFY_PULLS:
            log.info("participants pull %s: %s; discarded, the next pull starts over",
                     _pull_label(key, 1), why)
            return False
        self._discards.pop(key, None)
        log.warning("participants of scenario=%s: %d pulls in a row were inconsistent (%s); "
                    "its cohorts use summary requests for %s", key[1], count, why,
                    format_duration(self.settings.fallback_for))
        self._fall_back(key[1], at)
        return True

    def _fall_back(self, scenario: str, at: float) -> None:
        """Summary requests for ``scenario``'s cohorts for ``fallback_for``; its pulls are
        forgotten (the proofs after the fallback start from a new pull)."""
        self.learned.fallback[scenario] = at + self.settings.fallback_for
        for target_key in [k for k in self._targets if k[0] == scenario]:
            self.learned.proofs.pop(target_key, None)
            self.learned.doubts.pop(target_key, None)
        self._pulled_here -= {k for k in self._pulled_here if k[1] == scenario}
        keep_only(self._runs, [k for k in self._runs if k[1] != scenario])

    def _owe_plain(self, key: PullKey, at: float) -> None:
        """The pull failed or was dropped: the summaries it owed still go out, plain, for
        targets with no value younger than ``refresh_interval`` (else they go stale)."""
        queued = {p.target.key for p in self._paired}
        for target in self._groups.get(key, []):
            state = self.store.get(target.key)
            fresh = (state is not None and state.last_success is not None
                     and at - state.last_success < self._refresh_interval)
            if target.key in self._owed and target.key not in queued and not fresh:
                self._paired.append(_Paired(target, 0.0, None))

    def _pulled(self, key: PullKey, rows: tuple[ParticipantRow, ...], pages: int,
                at: float, pulled_at: float) -> bool:
        """A complete, consistent pull: refresh the targets it serves, queue its paired
        summaries with its rows (proofs owed, cross-checks due). True: rebuild the jobs."""
        self._discards.pop(key, None)
        changed = self.learned.pages.get(key) != pages
        self.learned.pages[key] = pages
        self._pulled_here.add(key)
        members = self._groups.get(key, [])
        served = [t for t in members if self._served(t.key) and self._derivable(t, at)]
        checks = self._checks_for(key, served, at)
        for target in served:
            if target in checks:
                continue
            derived = self._export(target, rows)
            if derived is not None:
                self.store.record_success(target.key, derived, at)
            else:
                # Proven while empty (no averages), it has averages now: proven again.
                del self.learned.proofs[target.key]
                self._paired.append(_Paired(target, pulled_at, rows))
                changed = True
        for target in members:
            if target.key in self._owed and target.key not in self._served_keys:
                self._paired.append(_Paired(target, pulled_at, rows))
        self._paired.extend(_Paired(t, pulled_at, rows, check=True) for t in checks)
        return changed

    def _pull_failed(self, key: PullKey, error: ApiError, at: float) -> None:
        """A pull's page failed: its targets keep their last values, marked down; an
        endpoint that refuses the scenario sends it back to summaries."""
        if error.reason in PAUSE_REASONS:
            return  # workspace-wide: the poller said it and pauses every request
        changed = False
        with self._lock:
            served = [t.key for t in self._groups.get(key, ()) if self._served(t.key)]
            if error.reason in PERSISTENT_REASONS:
                # Summary jobs from now on; one with no data yet is due at once anyway.
                changed = key[1] not in self._active_fallbacks(at)
                self._fall_back(key[1], at)
            else:
                self._owe_plain(key, at)
        for target_key in served:
            self.store.record_failure(target_key, error.reason, str(error), at)
        if error.reason in PERSISTENT_REASONS:
            log.warning("participants of scenario=%s unavailable (%s: %s); its cohorts use "
                        "summary requests for %s", key[1], error.reason, error,
                        format_duration(self.settings.fallback_for))
        else:
            log.warning("participants pull %s failed (%s: %s); its cohorts keep their last "
                        "values", _pull_label(key, 1), error.reason, error)
        if changed:
            self._changed()

    def _derive(self, target: Target, rows: tuple[ParticipantRow, ...]) -> Summary:
        """``target``'s summary from ``pull`` (callers check :meth:`_derivable`)."""
        members = {g: self.members.ids(g) for g in target.cohort.group_ids}
        cohort = cohort_filter(target.cohort)
        return aggregate((r for r in rows if cohort.keeps(r, members)), self.learned.precision)

    def _export(self, target: Target, rows: tuple[ParticipantRow, ...]) -> Summary | None:
        """What a pull exports for proven ``target``: the fields its proof gave. None when
        an average the proof never saw (an empty cohort) now has a value: prove again."""
        proof = self.learned.proofs[target.key]
        derived = self._derive(target, rows)
        if any(getattr(derived, name) is not None and name not in proof.given
               for name in _AVERAGES):
            return None
        return replace(derived, **{name: None for name in SUMMARY_FIELDS
                                   if name not in proof.given})

    # --- proving and cross-checking -------------------------------------------------------

    def _paired_seen(self, item: _Paired, summary: Summary, at: float) -> None:
        """A paired summary arrived: export it, compare it with the pull of the same
        instant and apply :func:`judge`'s verdict."""
        target = item.target
        key = target.key
        changed = False
        with self._lock:
            if not same_definition(self._targets.get(key), target):
                log.info("dropped the answer for scenario=%s cohort=%s: the target's "
                         "definition changed while it was asked", key[0], key[1])
                return
            self.learned.precision.observe(summary)
            self.store.record_success(key, summary, at)
            if item.rows is None or not self._derivable(target, at):
                return
            result = compare(self._derive(target, item.rows), summary,
                             self.settings.tolerance)
            if item.check:
                self.store.record_cross_check(key[0], "match" if result.match else "mismatch")
            verdict, doubts = judge(self.learned.doubts.get(key, 0), result)
            was_proven = key in self.learned.proofs
            if verdict == "agree":
                self.learned.doubts.pop(key, None)
                self.learned.proofs[key] = Proof(at, given_fields(summary))
                changed = not was_proven
                if changed:
                    log.info("scenario=%s cohort=%s: the participants pull reproduced its "
                             "summary; it is derived from now on", *key)
            elif verdict == "doubt":
                self.learned.doubts[key] = doubts
                self.learned.proofs.pop(key, None)
                changed = was_proven
                log.info("scenario=%s cohort=%s: a paired %s disagrees (%s); it exports the "
                         "summary's values and is checked again after the next pull", *key,
                         "cross-check" if item.check else "proof", result.describe())
            else:
                changed = True
                self._refute(target, result, at)
        if changed:
            self._changed()

    def _refute(self, target: Target, result: Comparison, at: float) -> None:
        """Summary requests for ``fallback_for``: for the whole scenario when the counts
        agreed (the endpoint computes a field otherwise), else for the target."""
        scenario, cohort = target.key
        self.learned.doubts.pop(target.key, None)
        self.learned.proofs.pop(target.key, None)
        wait = format_duration(self.settings.fallback_for)
        if result.counts_agree:
            served = {k for k in self._targets if k[0] == scenario and self._served(k)}
            self._fall_back(scenario, at)
            self._refetch |= served  # their derived values are suspect: summaries at once
            log.warning("scenario=%s cohort=%s: derived values differ from the summary "
                        "endpoint in %d paired checks in a row (%s); scenario=%s uses summary "
                        "requests for %s", scenario, cohort, REFUTE_AFTER, result.describe(),
                        scenario, wait)
        else:
            self.learned.refused[target.key] = at + self.settings.fallback_for
            log.warning("scenario=%s cohort=%s: derived counts differ from the summary "
                        "endpoint in %d paired checks in a row (%s: a member list that lags "
                        "its group?); it uses summary requests for %s", scenario, cohort,
                        REFUTE_AFTER, result.describe(), wait)

    def _checks_for(self, key: PullKey, served: list[Target], at: float) -> list[Target]:
        """The cross-check due with this pull: the served target whose turn it is (one
        round robin over every served target), if this pull holds it; a turn waiting
        while every pull came twice is skipped. At most one; a missed pace is not made up."""
        per_day = self._per_day()[1]
        if not served or per_day <= 0 or at < self.learned.checks_next:
            return []
        everyone = [k for k in self._targets
                    if self._served(k) and self._derivable(self._targets[k], at)]
        if not everyone:
            return []
        turn = everyone[self.learned.checks_cursor % len(everyone)]
        target = next((t for t in served if t.key == turn), None)
        if target is None:
            self._checks_waited += 1
            if self._checks_waited > 2 * len(self._groups):
                self.learned.checks_cursor += 1
                self._checks_waited = 0
            return []
        self.learned.checks_cursor += 1
        self._checks_waited = 0
        self.learned.checks_next = at + DAY / per_day
        return [target]

    def _per_day(self) -> tuple[float, float]:
        """Member-list pages and cross-checks a day (checks once a target is served)."""
        return derived_per_day(self._plan, self.members.pages, self.settings,
                               self._refresh_interval, self._day_budget, self._minute_budget,
                               checked=any(self._served(k) for k in self._targets))

    def due(self, now: float) -> Job | None:
        """Follow-up pages first, then the paired summaries (right behind their pull),
        then member lists, when due."""
        expired = False
        with self._lock:
            for key, pulling in self._runs.items():
                if pulling.read.page > 1:
                    return self._page_job(key, pulling)
            if self._paired:  # _prune keeps only current targets' (jobs() prunes)
                return self._paired_job(self._paired.pop(0))
            reading = self.members.due(self._plan.member_groups, now)
            if reading is not None:
                return reading
            for scenario, until in list(self.learned.fallback.items()):
                if until <= now:
                    del self.learned.fallback[scenario]
                    expired = True
                    log.info("scenario=%s: fallback over; its cohorts may be derived again",
                             scenario)
            for target_key, until in list(self.learned.refused.items()):
                if until <= now:
                    del self.learned.refused[target_key]
                    expired = True
        if expired:
            self._changed()
        return None

    def next_due(self) -> float:
        """When :meth:`due` next has something (-inf: now)."""
        with self._lock:
            if self._paired or any(run.read.page > 1 for run in self._runs.values()):
                return -math.inf
            times = [math.inf, *self.members.next_due(self._plan.member_groups)]
            times.extend(self.learned.fallback.values())
            times.extend(self.learned.refused.values())
            return min(times)

    def requests_per_day(self) -> float:
        """Member lists and cross-checks a day, paid before the recurring jobs."""
        with self._lock:
            return sum(self._per_day())

    def sources(self) -> list[tuple[TargetKey, str]]:
        """Every target with the source of its exported values."""
        with self._lock:
            return [(key, self.source(key)) for key in self._targets]

    def state(self) -> dict[str, Any]:
        """What the state file keeps (JSON-safe): :meth:`Learned.save` and the member lists."""
        with self._lock:
            return self.learned.save({k: t.cohort for k, t in self._targets.items()},
                                     self.members.state())

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()


# Null in the summary of an empty cohort, a value once it has participants.
_AVERAGES = ("average_best_score", "average_best_rank", "average_score_lift",
             "average_session_duration_seconds")


def _pull_label(key: PullKey, page: int) -> str:
    return f"participants scenario={key[1]} ({describe_dates(key[2])}) page {page}"
