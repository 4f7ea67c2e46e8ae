"""What the planner has learned, as the state file keeps it across restarts: proofs
(with the fingerprint of the definition they proved), doubts, refusals, scenario
fallbacks, each pull's pages, the endpoint's precision and the cross-checks' turn.
Plain values: the planner's lock guards them."""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from .aggregate import MAX_DECIMALS, ROUNDED_FIELDS, SUMMARY_FIELDS, Precision
from .config import CohortConfig
from .plan import DatesKey, PullKey, dates_of

if TYPE_CHECKING:
    from .members import MemberLists
    from .targets import TargetKey

log = logging.getLogger("exporter.planner")  # the planner's log, as before the split

K = TypeVar("K")


def fingerprint(cohort: CohortConfig) -> str:
    """A stable digest of what ``cohort`` selects (filters and dates): a kept proof is
    reused only for the same definition."""
    doc = [sorted(cohort.user_ids), sorted(e.lower() for e in cohort.user_emails),
           list(cohort.group_ids), bool(cohort.exclude_system_users), list(dates_of(cohort))]
    return hashlib.sha256(json.dumps(doc).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Proof:
    """When a paired check last agreed, and the fields the summary gave then (only
    those are exported from a pull)."""

    checked: float
    given: frozenset[str]


def keep_only(table: dict[K, Any], keep: Collection[K]) -> None:
    """Drop the entries of ``table`` whose key is not in ``keep``."""
    for key in [k for k in table if k not in keep]:
        del table[key]


@dataclass
class Learned:
    """The planner's memory. ``kept_proofs`` are restored proofs waiting for their
    target (with the same fingerprint) to be configured again."""

    proofs: dict[TargetKey, Proof] = field(default_factory=dict)
    kept_proofs: dict[TargetKey, tuple[str, Proof]] = field(default_factory=dict)
    doubts: dict[TargetKey, int] = field(default_factory=dict)
    refused: dict[TargetKey, float] = field(default_factory=dict)  # target -> until
    fallback: dict[str, float] = field(default_factory=dict)  # scenario -> until
    pages: dict[PullKey, int] = field(default_factory=dict)
    precision: Precision = field(default_factory=Precision)
    checks_next: float = -math.inf
    checks_cursor: int = 0  # the round robin of cross-checks over served targets

    def forget(self, key: TargetKey) -> None:
        """What ``key`` proved, doubted or was refused (its definition changed)."""
        for table in (self.proofs, self.doubts, self.refused):
            table.pop(key, None)

    def prune(self, targets: Collection[TargetKey], pulls: Collection[PullKey]) -> None:
        """Forget what belongs to targets, scenarios and pulls no longer configured."""
        for table in (self.proofs, self.doubts, self.refused):
            keep_only(table, targets)
        keep_only(self.fallback, {key[0] for key in targets})
        keep_only(self.pages, pulls)

    def take_kept(self, key: TargetKey, cohort: CohortConfig, now: float,
                  fallback_for: float) -> None:
        """Use a restored proof of ``key`` made for this definition, not too old."""
        kept = self.kept_proofs.pop(key, None)
        if (kept is not None and kept[0] == fingerprint(cohort)
                and now - kept[1].checked < fallback_for):
            self.proofs[key] = kept[1]

    def save(self, cohorts: Mapping[TargetKey, CohortConfig],
             members: Mapping[str, Any]) -> dict[str, Any]:
        """The state file's planner part (JSON-safe): ``cohorts`` are the configured
        targets' definitions, ``members`` the member lists' part."""
        proofs = [(k, fingerprint(cohorts[k]), p) for k, p in self.proofs.items() if k in cohorts]
        proofs += [(k, f, p) for k, (f, p) in self.kept_proofs.items()]
        return {
            "proofs": [{"scenario": k[0], "cohort": k[1], "fingerprint": f,
                        "checked": p.checked, "given": sorted(p.given)} for k, f, p in proofs],
            "doubts": [[k[0], k[1], n] for k, n in self.doubts.items()],
            "refused": [[k[0], k[1], until] for k, until in self.refused.items()],
            "fallback": dict(self.fallback),
            "pages": [[k[1], list(k[2]), n] for k, n in self.pages.items()],
            **members,
            "precision": dict(self.precision.seen),
            # The cross-checks' turn: restarts do not start the round robin over.
            "checks": {"next": max(self.checks_next, 0.0), "cursor": self.checks_cursor},
        }


def restore(saved: Mapping[str, Any], now: float, members: MemberLists) -> Learned:
    """Take back :meth:`Learned.save` (and the member lists into ``members``); each
    entry that does not parse is logged and left out, times in the future are not
    trusted."""
    learned = Learned()

    def when(value: object) -> float:
        if not isinstance(value, int | float) or value > now + 60:
            raise ValueError(f"bad time {value!r}")
        return float(value)

    def member(item: tuple[str, Any]) -> None:
        members.restore_list(str(item[0]), item[1], when(item[1]["at"]))

    def retry(item: tuple[str, Any]) -> None:
        members.restore_retry(str(item[0]), item[1])

    def proof(doc: Any) -> None:
        given = frozenset(str(f) for f in doc["given"]) & frozenset(SUMMARY_FIELDS)
        learned.kept_proofs[(str(doc["scenario"]), str(doc["cohort"]))] = (
            str(doc["fingerprint"]), Proof(when(doc["checked"]), given))

    def doubt(doc: Any) -> None:
        learned.doubts[(str(doc[0]), str(doc[1]))] = int(doc[2])

    def refused(doc: Any) -> None:
        learned.refused[(str(doc[0]), str(doc[1]))] = float(doc[2])

    def fallback(item: tuple[str, Any]) -> None:
        learned.fallback[str(item[0])] = float(item[1])

    def pages(doc: Any) -> None:
        window, start, end = doc[1]
        dates: DatesKey = (None if window is None else float(window),
                           None if start is None else str(start),
                           None if end is None else str(end))
        learned.pages[("participants", str(doc[0]), dates)] = max(int(doc[2]), 1)

    def precision(item: tuple[str, Any]) -> None:
        if item[0] not in ROUNDED_FIELDS or not 0 <= int(item[1]) <= MAX_DECIMALS:
            raise ValueError(f"bad precision {item!r}")
        learned.precision.seen[item[0]] = int(item[1])

    readers: dict[str, Callable[[Any], None]] = {
        "members": member, "member_retries": retry, "proofs": proof, "doubts": doubt,
        "refused": refused, "fallback": fallback, "pages": pages, "precision": precision}
    for name, read in readers.items():
        entries = saved.get(name) or ()
        for entry in entries.items() if isinstance(entries, dict) else entries:
            try:
                read(entry)
            except (KeyError, TypeError, ValueError, IndexError) as exc:
                log.warning("state file: ignoring a saved planner %s entry: %s", name, exc)
    checks = saved.get("checks")
    if isinstance(checks, dict):
        try:
            learned.checks_next = float(checks["next"])
            learned.checks_cursor = max(int(checks["cursor"]), 0)
        except (KeyError, TypeError, ValueError) as exc:
            log.warning("state file: ignoring the saved cross-check turn: %s", exc)
    return learned
