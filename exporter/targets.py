"""Targets: which (scenario, cohort) pairs are polled, and in what order.

The one home of target expansion: the explicit scenarios of the file and what
discovery found merged into one ordered list (the rules are in
docs/configuration.md, "Discovery"). Discovered names follow the naming rule of
the file (:func:`exporter.config.check_name`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from pydantic import ValidationError

from .config import CohortConfig, Config, check_name, is_pattern
from .discovery import Group, Lists, name_matches

log = logging.getLogger(__name__)

TargetKey = tuple[str, str]
"""A target's label values: (scenario, cohort name)."""


@dataclass(frozen=True, slots=True)
class Target:
    """One (scenario, cohort) pair: the unit the exporter polls and labels."""

    scenario: str
    cohort: CohortConfig
    display_name: str | None = None
    scenario_uuid: str | None = None  # set for discovered scenarios

    @property
    def key(self) -> TargetKey:
        """Label values identifying this target: (scenario, cohort)."""
        return (self.scenario, self.cohort.name)


def _group_cohorts(config: Config, groups: Sequence[Group] | None,
                   warnings: list[str]) -> list[CohortConfig]:
    """One cohort per discovered group; an explicit cohort of the same name wins."""
    settings = config.discovery.group_cohorts if config.discovery else None
    if settings is None or not groups:
        return []
    explicit = {c.name for c in config.cohorts}
    taken = set(explicit)
    out = []
    for group in groups:
        if group.name in taken:
            winner = "explicit cohort" if group.name in explicit else "first group of that name"
            warnings.append(f"discovery: group {group.name!r} ({group.id}) has the name of "
                            f"another cohort; the {winner} wins")
            continue
        try:
            # Validated like a cohort of the file: the same naming rule for both.
            cohort = CohortConfig(name=group.name, group_ids=[group.id],
                                  exclude_system_users=settings.exclude_system_users)
        except ValidationError as exc:
            why = str(exc.errors()[0]["msg"]).removeprefix("Value error, ")
            warnings.append(f"discovery: group {group.name!r} ({group.id}) left out: {why}")
            continue
        taken.add(group.name)
        out.append(cohort)
    return out


def _select_cohorts(wanted: Sequence[str], everyone: Sequence[CohortConfig],
                    warnings: list[str]) -> list[CohortConfig]:
    """The cohorts ``wanted`` names, in its order: an entry is a cohort's exact name or
    a shell pattern over names (case-insensitive, as ``group_cohorts.include``)."""
    out: dict[str, CohortConfig] = {}
    for entry in wanted:
        matched = [c for c in everyone if c.name == entry]
        if not matched and is_pattern(entry):
            matched = [c for c in everyone if name_matches(c.name, entry)]
        if not matched:
            warnings.append(f"discovery.scenarios.cohorts: {entry!r} matches no cohort; "
                            "discovered scenarios get no target for it")
        for cohort in matched:
            out.setdefault(cohort.name, cohort)
    return list(out.values())


def build_targets(config: Config, lists: Lists | None = None) -> list[Target]:
    """Every target in a stable order: explicit scenarios first (as configured), then
    discovered ones by slug. Without ``lists`` (``--config.check``, before the first
    discovery) these are the explicit targets with the explicit cohorts."""
    lists = lists or Lists()
    warnings: list[str] = []  # about the groups and the cohorts they make
    slug_warnings: list[str] = []  # about the scenario list
    extra = _group_cohorts(config, lists.groups, warnings)
    everyone = [*config.cohorts, *extra]
    by_name = {c.name: c for c in everyone}
    found = {s.slug: s for s in lists.scenarios or []}
    found.update({s.id: s for s in lists.scenarios or []})
    targets: list[Target] = []
    explicit_ids: set[str] = set()
    for scenario in config.scenarios:
        match = found.get(scenario.id)
        if match is not None:
            explicit_ids.update({match.id, match.slug})
        explicit_ids.add(scenario.id)
        cohorts = [by_name[n] for n in scenario.cohorts] if scenario.cohorts else everyone
        targets.extend(Target(scenario=scenario.id, cohort=cohort,
                              display_name=scenario.name or (match.name if match else None),
                              scenario_uuid=match.id if match else None)
                       for cohort in cohorts)
    discovery = config.discovery
    settings = discovery.scenarios if discovery else None
    if discovery is not None and settings is not None and lists.scenarios:
        groups_known = discovery.group_cohorts is None or lists.groups is not None
        cohorts = everyone
        if settings.cohorts is not None:
            # Until the groups are read, a pattern may match nothing for want of them:
            # warn only about what the lists have decided.
            notes: list[str] = []
            cohorts = _select_cohorts(settings.cohorts, everyone, notes)
            if groups_known:
                warnings.extend(notes)
        for item in sorted(lists.scenarios, key=lambda s: s.slug):
            if item.slug in explicit_ids or item.id in explicit_ids:
                continue
            try:
                check_name(item.slug)
            except ValueError as exc:
                slug_warnings.append(f"discovery: scenario {item.id} left out: its slug {exc}")
                continue
            targets.extend(Target(scenario=item.slug, cohort=cohort,
                                  display_name=item.name or item.slug, scenario_uuid=item.id)
                           for cohort in cohorts)
    _warn_once("groups", warnings, lists.groups_at)
    _warn_once("scenarios", slug_warnings, lists.scenarios_at)
    return targets


def select_targets(config: Config, lists: Lists | None = None) -> tuple[list[Target], int]:
    """The targets to poll, at most ``max_targets`` of them (the first in the order of
    :func:`build_targets`), and how many were dropped."""
    targets = build_targets(config, lists)
    dropped = max(len(targets) - config.max_targets, 0)
    if dropped:
        log.error("%d targets exceed max_targets=%d; dropping the last %d (explicit "
                  "targets first, then discovered ones by slug)", len(targets),
                  config.max_targets, dropped)
    return targets[:config.max_targets], dropped


_said: dict[str, tuple[float | None, frozenset[str]]] = {}


def _warn_once(topic: str, warnings: list[str], lists_read_at: float | None) -> None:
    """Log each warning about the lists once per read of them: targets are rebuilt
    after each list is read and on every reload."""
    at, said = _said.get(topic, (None, frozenset()))
    said = said if at == lists_read_at else frozenset()
    for warning in dict.fromkeys(warnings):
        if warning not in said:
            log.warning("%s", warning)
    _said[topic] = (lists_read_at, said | frozenset(warnings))
