"""Derived cohorts in a backfill: member lists, proofs and pulls (the participants side
of the plan)."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

from ..aggregate import Precision, aggregate, compare
from ..client import ParticipantRow, Summary
from ..config import PlannerConfig
from ..paged import page_query
from ..plan import choose, pages_of
from ..planner import cohort_filter
from ..targets import Target, TargetKey
from .journal import PARTICIPANTS, SUMMARY, page_key, request_key
from .plan import PullGroup, as_of_query, members_key
from .sender import Fetcher
from .window import iso

log = logging.getLogger(__name__)

class Derivation:
    """Runs the participants side of the plan: member lists, proofs, pulls.

    Honesty as in the daemon: each cohort of a participants group is proven once, at
    the newest instant, where both its summary and the pull are fetched; only a cohort
    whose derived summary reproduces the endpoint's (counts exactly, averages within
    ``planner.tolerance``: :func:`exporter.aggregate.compare`) is derived at the other
    instants. One that does not is written from summaries at every instant and the log
    says which field differed. At the newest instant every cohort is written from its
    summary (it was fetched anyway).

    Member lists are read once per run: today's membership is applied to every past
    instant (as the summary endpoint's ``group_ids`` filter does; docs/backfill.md).
    """

    def __init__(self, groups: Sequence[PullGroup], fetcher: Fetcher,
                 settings: PlannerConfig) -> None:
        self.groups = [g for g in groups if g.source == PARTICIPANTS]
        self.fetcher = fetcher
        self.settings = settings
        self.precision = Precision()
        self.members: dict[str, frozenset[str]] = {}
        self.proven: set[TargetKey] = set()
        self.values: dict[tuple[TargetKey, int], Summary] = {}
        self.notes: list[str] = []  # one line per cohort not proven, per group dropped
        self.pulls = 0  # pulls whose rows served derived values (the proofs' included)

    def run(self) -> None:
        """Read, prove, pull; fills :attr:`values`. Raises Stopped/WorkspaceError."""
        for group_id in dict.fromkeys(g for grp in self.groups for g in grp.members):
            if self._needed(group_id):  # a group may have gone back to summaries
                self._read_members(group_id)
        proofs: dict[TargetKey, Summary] = {}
        for grp in self.groups:  # every proof summary first: they set the rounding
            newest = grp.pulls[0][1][0]
            for target in grp.targets:
                query = as_of_query(target.cohort, newest)
                assert query is not None
                outcome = self.fetcher.summary(request_key(target.scenario, query))
                if outcome is not None and outcome.summary is not None:
                    proofs[target.key] = outcome.summary
                    self.precision.observe(outcome.summary)
        for grp in self.groups:
            self._prove(grp, proofs)
            self._derive_past(grp)

    def _read_members(self, group_id: str) -> None:
        ids: list[str] = []
        page_no = 1
        while True:
            outcome = self.fetcher.page(members_key(group_id, page_no))
            if outcome is None or outcome.page is None:
                self.notes.append(f"members of group {group_id}: not readable "
                                  f"({outcome.error if outcome else 'kept failing'}); "
                                  "its cohorts use summary requests")
                return
            if page_no == 1 and not self._still_cheaper(group_id, pages_of(outcome.page)):
                return
            ids.extend(m.user_id for m in outcome.page.items)
            if page_no >= outcome.page.total_pages or not outcome.page.items:
                break
            page_no += 1
        self.members[group_id] = frozenset(ids)

    def _still_cheaper(self, group_id: str, pages: int) -> bool:
        """The member list's first page says how many pages it has: a group that added it
        and is no longer cheaper that way goes back to summaries (before its proofs).
        False when no group left needs the list (its other pages are not read)."""
        for grp in [g for g in self.groups if group_id in g.members]:
            grp.member_pages[group_id] = pages
            if grp.participants_cost >= grp.summary_cost:
                grp.source = SUMMARY
                self.groups.remove(grp)
                self.notes.append(f"{grp.label()}: the member list of group {group_id} has "
                                  f"{pages} pages, so {grp.participants_cost} requests against "
                                  f"{grp.summary_cost} summaries; summaries for these cohorts")
        return self._needed(group_id)

    def _needed(self, group_id: str) -> bool:
        return any(group_id in t.cohort.group_ids for g in self.groups for t in g.targets)

    def _pull(self, grp: PullGroup, query: Mapping[str, str],
              first: bool) -> tuple[list[ParticipantRow], int] | None:
        """Every row of one pull and its page count, or None (unavailable, failing,
        inconsistent, or, for the first pull, more pages than it saves)."""
        rows: list[ParticipantRow] = []
        total: int | None = None
        page_no = 1
        pages = 1
        while True:
            key = page_key(PARTICIPANTS, grp.scenario, page_query(query, page_no))
            outcome = self.fetcher.page(key)
            if outcome is None or outcome.page is None:
                why = outcome.error if outcome is not None else "kept failing"
                self.notes.append(f"{grp.label()}: the participants pull as of "
                                  f"{query.get('end_date')} failed ({why}); summaries there")
                return None
            page = outcome.page
            if page_no == 1:
                total, pages = page.total_count, pages_of(page)
                grp.pages = pages
                if first and choose(len(grp.targets), len(grp.targets), pages) != PARTICIPANTS:
                    # The page count is learned here: a pull this long saves nothing.
                    self.notes.append(f"{grp.label()}: {pages} pages per pull cost as much "
                                      "as the summaries; summaries for these cohorts")
                    return None
            elif page.total_count != total:
                self.notes.append(f"{grp.label()}: the table changed between pages as of "
                                  f"{query.get('end_date')}; summaries there")
                return None
            rows.extend(page.items)
            if page_no >= page.total_pages or not page.items:
                break
            page_no += 1
        if len({r.user_id for r in rows}) != len(rows) or (total is not None
                                                           and total != len(rows)):
            self.notes.append(f"{grp.label()}: rows moved between pages as of "
                              f"{query.get('end_date')}; summaries there")
            return None
        return rows, pages

    def _derive(self, target: Target, rows: Sequence[ParticipantRow]) -> Summary:
        members = {g: self.members[g] for g in target.cohort.group_ids}
        keep = cohort_filter(target.cohort)
        return aggregate((r for r in rows if keep.keeps(r, members)), self.precision)

    def _prove(self, grp: PullGroup, proofs: Mapping[TargetKey, Summary]) -> None:
        candidates = [t for t in grp.targets if t.key in proofs
                      and all(g in self.members for g in t.cohort.group_ids)]
        if not candidates:
            return
        pulled = self._pull(grp, grp.pulls[0][0], first=True)
        if pulled is None:
            return
        rows, _pages = pulled
        self.pulls += 1
        newest = grp.pulls[0][1][0]
        for target in candidates:
            result = compare(self._derive(target, rows), proofs[target.key],
                             self.settings.tolerance)
            scenario, cohort = target.key
            if result.match:
                self.proven.add(target.key)
                continue
            log.warning("scenario=%s cohort=%s: the participants pull as of %s does not "
                        "reproduce its summary (%s); summaries for this cohort at every instant",
                        scenario, cohort, iso(newest), result.describe())
            self.notes.append(f"scenario={scenario} cohort={cohort}: not reproduced by the "
                              f"pull ({result.describe()}); summaries at every instant")

    def _derive_past(self, grp: PullGroup) -> None:
        proven = [t for t in grp.targets if t.key in self.proven]
        for query, instants in grp.pulls[1:]:
            # As the planner chooses: the pull's pages (the last pull's count) plus a
            # summary for each cohort it cannot serve, against a summary per cohort.
            if choose(len(grp.targets), len(proven), grp.pages) != PARTICIPANTS:
                return
            pulled = self._pull(grp, query, first=False)
            if pulled is None:
                continue
            rows, _ = pulled
            self.pulls += 1
            for target in proven:
                derived = self._derive(target, rows)
                for instant in instants:
                    self.values[(target.key, instant)] = derived
