"""Derived cohorts in a backfill: member lists, proofs and pulls."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

from ..aggregate import Precision, aggregate, compare
from ..client import Member, ParticipantRow, Summary
from ..paged import PagedRead
from ..plan import choose, pages_of
from ..planner import cohort_filter
from ..targets import Target, TargetKey
from .journal import MEMBERS, PARTICIPANTS, SUMMARY, request_key
from .plan import PullGroup, as_of_query
from .sender import Sender, Unreadable
from .window import iso

log = logging.getLogger(__name__)


class Derivation:
    """Runs the participants side of the plan: member lists (read once: today's
    membership), proofs and pulls. A cohort whose pull reproduces its summary at the
    newest instant is derived at the others; else summaries throughout."""

    def __init__(self, groups: Sequence[PullGroup], sender: Sender, tolerance: float) -> None:
        self.groups = [g for g in groups if g.source == PARTICIPANTS]
        self.sender = sender
        self.tolerance = tolerance
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
                outcome = self.sender.fetch(request_key(target.scenario, query))
                if outcome is not None and outcome.answer is not None:
                    proofs[target.key] = outcome.answer
                    self.precision.observe(outcome.answer)
        for grp in self.groups:
            self._derive_group(grp, proofs)

    def _read_members(self, group_id: str) -> None:
        read: PagedRead[Member] = PagedRead(f"members of group {group_id}",
                                            key=lambda member: member.user_id)
        try:
            for page in self.sender.read_list(MEMBERS, group_id, {"group_ids": group_id}, read):
                if read.page == 1 and not self._still_cheaper(group_id, pages_of(page)):
                    return
        except Unreadable as exc:
            self.notes.append(f"members of group {group_id}: not readable ({exc}); "
                              "its cohorts use summary requests")
            return
        self.members[group_id] = frozenset(m.user_id for m in read.items)

    def _still_cheaper(self, group_id: str, pages: int) -> bool:
        """Groups no longer cheaper with the list's pages go back to summaries; whether
        a group still needs the list."""
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
              first: bool) -> list[ParticipantRow] | None:
        """Every row of one pull; None if not read whole or (first) not worth its pages."""
        as_of = query.get("end_date")
        read: PagedRead[ParticipantRow] = PagedRead(
            f"participants of {grp.scenario} as of {as_of}", key=lambda row: row.user_id)
        try:
            for page in self.sender.read_list(PARTICIPANTS, grp.scenario, query, read):
                if read.page > 1:
                    continue
                grp.pages = pages_of(page)
                if first and choose(len(grp.targets), len(grp.targets),
                                    grp.pages) != PARTICIPANTS:
                    # The page count is learned here: a pull this long saves nothing.
                    self.notes.append(f"{grp.label()}: {grp.pages} pages per pull cost as "
                                      "much as the summaries; summaries for these cohorts")
                    return None
        except Unreadable as exc:
            self.notes.append(f"{grp.label()}: the participants pull as of {as_of} was "
                              f"not used ({exc}); summaries there")
            return None
        return read.items

    def _derive(self, target: Target, rows: Sequence[ParticipantRow]) -> Summary:
        members = {g: self.members[g] for g in target.cohort.group_ids}
        keep = cohort_filter(target.cohort)
        return aggregate((r for r in rows if keep.keeps(r, members)), self.precision)

    def _derive_group(self, grp: PullGroup, proofs: Mapping[TargetKey, Summary]) -> None:
        """Prove each cohort by the newest pull; derive the proven at the older pulls."""
        candidates = [t for t in grp.targets if t.key in proofs
                      and all(g in self.members for g in t.cohort.group_ids)]
        (query, instants), *past = grp.pulls  # newest first
        rows = self._pull(grp, query, first=True) if candidates else None
        if rows is None:
            return
        self.pulls += 1
        for target in candidates:
            result = compare(self._derive(target, rows), proofs[target.key], self.tolerance)
            if result.match:
                self.proven.add(target.key)
                continue
            scenario, cohort = target.key
            log.warning("scenario=%s cohort=%s: the participants pull as of %s does not "
                        "reproduce its summary (%s); summaries for this cohort at every instant",
                        scenario, cohort, iso(instants[0]), result.describe())
            self.notes.append(f"scenario={scenario} cohort={cohort}: not reproduced by the "
                              f"pull ({result.describe()}); summaries at every instant")
        proven = [t for t in grp.targets if t.key in self.proven]
        for query, instants in past:
            # The last pull's pages and a summary per unproven cohort, against summaries.
            if choose(len(grp.targets), len(proven), grp.pages) != PARTICIPANTS:
                return
            rows = self._pull(grp, query, first=False)
            if rows is None:
                continue
            self.pulls += 1
            for target in proven:
                derived = self._derive(target, rows)
                self.values.update(((target.key, instant), derived) for instant in instants)
