"""The planner's policy: which way each cohort is refreshed, pulls, proofs, cross-checks.

Each scenario and date range refreshes its cohorts with a summary request per
cohort or with one participants pull, whichever the cost model
(:mod:`exporter.plan`) finds cheaper; ``planner.mode: summary`` keeps only
summary requests. What it decides is expressed as jobs (:mod:`exporter.jobs`):
recurring summary jobs and pull jobs (a pull of n pages has ``cost`` n plus the
paired summaries it owes), and this object is also a job source for the
follow-up pages, the paired summaries and the member lists
(:mod:`exporter.members`). What it learned is kept in :mod:`exporter.learned`.

Honesty rules (docs/derived-cohorts.md): every comparison of a derived value with
the summary endpoint is *paired*: the summary is requested right after the pull's
last page, both pinned to the pull's ``end_date`` (rolling windows from the same
``now``), so sessions arriving in between fall outside both. A target is derived
only after a paired agreement; :func:`judge` turns paired comparisons into
verdicts; a paired summary is always exported, so from the first disagreement on
the target shows the summary's values. What is exported is always a value the
summary endpoint gave or one that agreed with it at the last paired check.

Thread-safety: handlers run in the poller thread, :meth:`Planner.jobs` in whichever
thread rebuilds the running configuration: one lock, never held across a request.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from .aggregate import CohortFilter, Comparison, aggregate, compare, given_fields
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
from .learned import SUMMARY_FIELDS, Learned, Proof, keep_only, restore
from .members import MemberLists
from .paged import ListChanged, PagedRead, page_query
from .plan import Plan, PullKey, derived_per_day, make_plan, pull_groups, pull_key

if TYPE_CHECKING:
    from .store import Store
    from .targets import Target, TargetKey

log = logging.getLogger(__name__)

# Inconsistent pulls in a row before a scenario uses summaries for fallback_for.
VERIFY_PULLS = 3
# Paired disagreements in a row that refute a derivation (see judge()).
REFUTE_AFTER = 2


def judge(doubts: int, comparison: Comparison) -> tuple[str, int]:
    """The verdict rule: what one paired comparison means, given ``doubts`` (the
    paired disagreements in a row before it). Returns the verdict and the new count.

    * ``agree`` (counts equal, every field within tolerance): the target is derived
      from the pull from now on; the count starts over.
    * ``doubt`` (the first disagreement, counts or any field): the summary's values
      are exported at once and the target stops being derived; the next pull pairs
      a summary with it again (a proof), at the price of the summary it replaces.
      One disagreement alone can be a session that reached the API late, inside the
      pinned range, between the two requests: it does not refute.
    * ``refuted`` (``REFUTE_AFTER`` = 2 in a row): the target uses summary requests
      for ``planner.fallback_for``; when the counts agreed and a field did not, the
      endpoint computes that field otherwise, so its whole scenario does.

    Pairing pins both requests to one instant, so constant traffic cannot make two
    comparisons in a row disagree; a real drift (a member list that lags, a changed
    formula) is caught at the target's next paired check and refuted one pull later.
    """
    if comparison.match:
        return "agree", 0
    doubts += 1
    return ("refuted" if doubts >= REFUTE_AFTER else "doubt"), doubts


def cohort_filter(cohort: CohortConfig) -> CohortFilter:
    """The row filter of ``cohort`` (every filter but the dates)."""
    return CohortFilter.of(cohort.user_ids, cohort.user_emails, cohort.group_ids,
                           cohort.exclude_system_users)


def pinned_query(cohort: CohortConfig, now: float) -> dict[str, str]:
    """``cohort``'s summary query at ``now`` with ``end_date`` pinned at ``now`` (or the
    cohort's own end, if earlier): a pull and its paired summaries then cover exactly
    the same sessions, whatever arrives between the requests."""
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
    """A pull in progress: its query (the same for every page), its instant (the paired
    summaries use it) and rows so far."""

    query: dict[str, str]
    now: float
    read: PagedRead[ParticipantRow] = field(default_factory=lambda: PagedRead(
        "participants", key=lambda row: row.user_id))


@dataclass(frozen=True)
class _Pull:
    """The last complete, consistent pull of a group."""

    rows: tuple[ParticipantRow, ...]
    at: float


@dataclass(frozen=True, eq=False)
class _Paired:
    """A summary owed right after a pull, for the pull's instant: a proof (the target
    is not derived yet), a cross-check (it is), or, when the pull failed, a plain
    refresh (``pull`` None: nothing to compare with)."""

    target: Target
    pull_at: float
    pull: _Pull | None
    check: bool = False


class Planner:
    """Plans, proves and cross-checks derived cohorts; a job source (see module doc).

    ``on_change()`` is called (outside the lock, in the thread of the event) when
    the recurring jobs must be rebuilt: a target proven, doubted or refused, a
    scenario falling back or back from a fallback, a pull's page count changed, a
    member list read for the first time. ``saved`` is :meth:`state` as the state
    file kept it.
    """

    def __init__(self, settings: PlannerConfig, store: Store,
                 saved: Mapping[str, Any] | None = None,
                 on_change: Callable[[], None] | None = None, now: float = math.inf) -> None:
        self.settings = settings
        self.store = store
        self.on_change = on_change
        self.dropped_answers = 0  # answers for a target whose definition changed meanwhile
        self._lock = threading.RLock()
        self._targets: dict[TargetKey, Target] = {}
        self._groups: dict[PullKey, list[Target]] = {}
        self._plan = Plan()
        self._served_keys: set[TargetKey] = set()
        self._owed: set[TargetKey] = set()  # proven by paired summaries after each pull
        self._pulls: dict[PullKey, _Pull] = {}
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
                  reread_members: bool = False, minute_budget: float = 60.0) -> None:
        """New settings (reload); ``reread_members`` reads every member list again."""
        with self._lock:
            self.settings = settings
            self._day_budget = max(day_budget, 1.0)
            self._minute_budget = max(minute_budget, 1.0)
            self._refresh_interval = refresh_interval
            self.members.configure(settings, reread_members)

    @property
    def auto(self) -> bool:
        """Whether derived cohorts are allowed at all."""
        return self.settings.mode == "auto"

    def _derivable(self, target: Target, now: float) -> bool:
        """The pull can serve ``target`` now: every group's members known, not refused."""
        if any(g not in self.members.known for g in target.cohort.group_ids):
            return False
        return not self._is_refused(target, now)

    def _is_refused(self, target: Target, now: float) -> bool:
        until = self.learned.refused.get(target.key)
        return until is not None and until > now

    def jobs(self, targets: Sequence[Target], now: float) -> tuple[Job, ...]:
        """The recurring jobs for ``targets``: a summary job for each target the pulls
        do not serve, and one pull job per group that uses the participants source,
        placed after its scenario's summary jobs. A pull's cost counts its pages and
        the paired summaries it owes (the targets it may serve but has not proven).
        Also remembers the plan and prunes what belongs to targets no longer there."""
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
            summary_only = (self._active_fallbacks(now) if self.auto
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
        """A target new to a running pull (a reload, a discovered group; running: it
        pulled here, or a target of it has a value, restored ones included) has no value
        until the pull's turn: its summary is asked at once; the proof comes later."""
        def known(key: TargetKey) -> bool:
            state = self.store.get(key)
            return state is not None and state.last_success is not None

        for key in self._owed - {p.target.key for p in self._paired}:
            pull = pull_key(self._targets[key])
            if not known(key) and (pull in self._pulls or any(
                    known(t.key) for t in self._groups.get(pull, ()))):
                self._paired.append(_Paired(self._targets[key], 0.0, None))

    def _prune(self, pulled: set[PullKey]) -> None:
        """Drop what belongs to targets, scenarios, pulls and groups no longer used:
        runs of pulls the plan no longer sends, paired summaries of removed targets,
        proofs, member lists no target's cohort names."""
        keep_only(self._runs, pulled)
        keep_only(self._pulls, self._groups)
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
        """Pull key -> the targets it refreshes (served and owed: for the landing page's
        next refresh)."""
        with self._lock:
            refreshed = {pull: [t.key for t in targets
                                if self._served(t.key) or t.key in self._owed]
                         for pull, targets in self._groups.items()}
            return {pull: keys for pull, keys in refreshed.items() if keys}

    def take_refetch(self) -> set[TargetKey]:
        """Targets whose derived values were found wrong: their summary jobs are due at
        once, not by the age of those values (asked once, then cleared)."""
        with self._lock:
            keys, self._refetch = self._refetch, set()
            return keys

    def pull_targets(self) -> dict[PullKey, list[TargetKey]]:
        """Pull key -> the targets of its group (a restored pull is due by their age)."""
        with self._lock:
            return {key: [t.key for t in targets] for key, targets in self._groups.items()}

    def requests_per_cycle(self, interval: float) -> float:
        """What one full refresh costs: the recurring jobs' requests plus the member
        lists and cross-checks that fall within one effective interval."""
        with self._lock:
            return self._plan.recurring + sum(self._per_day()) * interval / 86400.0

    # --- jobs ---------------------------------------------------------------------

    def _pull_job(self, key: PullKey, cohort: CohortConfig, cost: int) -> Job:
        def fetch(client: ExecClient, now: float) -> tuple[dict[str, str], float, Page]:
            query = pull_query(cohort, now)
            return query, now, client.participants(key[1], page_query(query, 1))

        def apply(answer: tuple[dict[str, str], float, Page], at: float) -> None:
            query, pulled_at, page = answer
            with self._lock:
                self._runs[key] = _PullRun(query, pulled_at)
            self.page_read(key, 1, page, at)

        def fail(error: ApiError, at: float) -> None:
            self.pull_failed(key, error, at)

        return Job(kind="participants", key=key, fetch=fetch, apply=apply, fail=fail,
                   label=_pull_label(key, 1), cost=cost)

    def _page_job(self, key: PullKey, run: _PullRun) -> Job:
        page_no, params = run.read.page, run.read.query(run.query)

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

    def _paired_job(self, item: _Paired) -> Job:
        target = item.target
        key = target.key
        kind = "cross_check" if item.check else "summary"

        def fetch(client: ExecClient, now: float) -> Summary:
            query = (pinned_query(target.cohort, item.pull_at) if item.pull is not None
                     else target.cohort.query(now))
            return client.summary(target.scenario, query)

        def apply(summary: Summary, at: float) -> None:
            self.paired_seen(item, summary, at)

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

    def page_read(self, key: PullKey, page_no: int, page: Page, at: float) -> None:
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
        """An inconsistent pull is dropped; after VERIFY_PULLS in a row (an unstable
        order of equal scores across pages, say) the scenario uses summaries for
        ``fallback_for``. True when the jobs must be rebuilt."""
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
        """Summary requests for ``scenario``'s cohorts for ``fallback_for``. Its pulls are
        forgotten: the proofs after the fallback start from a new pull."""
        self.learned.fallback[scenario] = at + self.settings.fallback_for
        for target_key in [k for k in self._targets if k[0] == scenario]:
            self.learned.proofs.pop(target_key, None)
            self.learned.doubts.pop(target_key, None)
        for key in [k for k in self._pulls if k[1] == scenario]:
            del self._pulls[key]
        for key in [k for k in self._runs if k[1] == scenario]:
            del self._runs[key]

    def _owe_plain(self, key: PullKey, at: float) -> None:
        """The pull failed or was dropped: the summaries it owed still go out (plain, no
        comparison) for targets with no value or one older than ``refresh_interval``, or
        targets not proven yet would go stale; the pull's quick retries do not repeat
        them."""
        queued = {p.target.key for p in self._paired}
        for target in self._groups.get(key, []):
            state = self.store.get(target.key)
            fresh = (state is not None and state.last_success is not None
                     and at - state.last_success < self._refresh_interval)
            if target.key in self._owed and target.key not in queued and not fresh:
                self._paired.append(_Paired(target, 0.0, None))

    def _pulled(self, key: PullKey, rows: tuple[ParticipantRow, ...], pages: int,
                at: float, pulled_at: float) -> bool:
        """A complete, consistent pull of ``pages`` pages: keep it, refresh the targets it
        serves, and queue its paired summaries (proofs of the targets it owes, the
        cross-checks due). True when the jobs must be rebuilt."""
        self._discards.pop(key, None)
        changed = self.learned.pages.get(key) != pages
        self.learned.pages[key] = pages
        pull = self._pulls[key] = _Pull(rows, at)
        members = self._groups.get(key, [])
        served = [t for t in members if self._served(t.key) and self._derivable(t, at)]
        checks = self._checks_for(key, served, at)
        for target in served:
            if target in checks:
                continue
            derived = self._export(target, pull)
            if derived is not None:
                self.store.record_success(target.key, derived, at)
            else:
                # Proven while empty (no averages), it has averages now: proven again.
                del self.learned.proofs[target.key]
                self._paired.append(_Paired(target, pulled_at, pull))
                changed = True
        for target in members:
            if target.key in self._owed and target.key not in self._served_keys:
                self._paired.append(_Paired(target, pulled_at, pull))
        self._paired.extend(_Paired(t, pulled_at, pull, check=True) for t in checks)
        return changed

    def pull_failed(self, key: PullKey, error: ApiError, at: float) -> None:
        """A pull's page failed: the targets it serves keep their last values, marked
        down; an endpoint that refuses the scenario sends it back to summaries."""
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

    def _derive(self, target: Target, pull: _Pull) -> Summary:
        """``target``'s summary from ``pull`` (every group's member list must be known:
        callers check :meth:`_derivable`)."""
        members = {g: self.members.ids(g) for g in target.cohort.group_ids}
        cohort = cohort_filter(target.cohort)
        return aggregate((r for r in pull.rows if cohort.keeps(r, members)), self.learned.precision)

    def _export(self, target: Target, pull: _Pull) -> Summary | None:
        """What a pull exports for proven ``target``: the derived summary, only the
        fields its proving summary gave (the others are not proven). None when an
        average the proof never saw (it was proven on an empty cohort) now has a value:
        that needs a proof of its own."""
        proof = self.learned.proofs[target.key]
        derived = self._derive(target, pull)
        if any(getattr(derived, name) is not None and name not in proof.given
               for name in _AVERAGES):
            return None
        return replace(derived, **{name: None for name in SUMMARY_FIELDS
                                   if name not in proof.given})

    # --- proving and cross-checking -------------------------------------------------------

    def paired_seen(self, item: _Paired, summary: Summary, at: float) -> None:
        """A paired summary arrived: export it (a real summary), then compare it with the
        pull of the same instant and apply :func:`judge`'s verdict."""
        target = item.target
        key = target.key
        changed = False
        with self._lock:
            if not same_definition(self._targets.get(key), target):
                self.dropped_answers += 1
                log.info("dropped the answer for scenario=%s cohort=%s: the target's "
                         "definition changed while it was asked (%d dropped so far)",
                         key[0], key[1], self.dropped_answers)
                return
            self.learned.precision.observe(summary)
            self.store.record_success(key, summary, at)
            if item.pull is None or not self._derivable(target, at):
                return
            result = compare(self._derive(target, item.pull), summary,
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
        """``REFUTE_AFTER`` paired disagreements in a row: summary requests for
        ``fallback_for``, for the scenario when only a field (not the counts) differed."""
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
        """The cross-check to pair with this pull when the cross-check pace has come due:
        the served target whose turn it is (one round robin over every served target, so
        the first pulls of a cycle do not take every check), if this pull holds it. A
        target whose pull has not come while every other pull came twice loses its turn
        (its pull keeps failing). At most one per pull; a missed pace is not made up."""
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
        self.learned.checks_next = at + 86400.0 / per_day
        return [target]

    def _per_day(self) -> tuple[float, float]:
        """Member-list pages and cross-checks a day (cross-checks once a target is served)."""
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
        """Member lists and cross-checks a day, taken out of the day budget (the pulls
        and the proofs they owe are recurring jobs: they count in the interval)."""
        with self._lock:
            return sum(self._per_day())

    def sources(self) -> list[tuple[TargetKey, str]]:
        """Every target with the source of its exported values."""
        with self._lock:
            return [(key, self.source(key)) for key in self._targets]

    def state(self) -> dict[str, Any]:
        """What the state file keeps (JSON-safe, :meth:`Learned.save`): proofs, doubts,
        refusals, fallbacks, each pull's pages, the member lists with their failures and
        next reads, and the precision learned (a restored proof exports values rounded as
        the endpoint was seen rounding)."""
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
    window, start, end = key[2]
    dates = (f" window={window:g}s" if window is not None else "" if (start, end) == (None, None)
             else f" start={start} end={end}")
    return f"participants scenario={key[1]}{dates} page {page}"
