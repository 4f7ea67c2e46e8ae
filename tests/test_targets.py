"""Target expansion: explicit and discovered scenarios x cohorts, in a stable order.

Pure functions over a configuration and the discovery lists; no network.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest

from exporter.config import parse_config
from exporter.discovery import DiscoveredScenario, Group, Lists
from exporter.targets import Target, TargetKey, build_targets, select_targets

SCENARIOS = [DiscoveredScenario(f"u{i}", f"s{i}", f"S{i}") for i in range(3)]
GROUPS = [Group("g1", "sales-emea"), Group("g2", "Sales-US"), Group("g3", "SDR Team"),
          Group("g4", "Customer Success")]

# A discovery "time" per test, so the once-per-discovery warnings never carry over.
_reads = iter(range(1, 1_000_000))


def lists(scenarios: list[DiscoveredScenario] | None = None,
          groups: list[Group] | None = None) -> Lists:
    """Lists as a discovery just read them."""
    at = float(next(_reads))
    return Lists(scenarios=SCENARIOS if scenarios is None else scenarios,
                 groups=GROUPS if groups is None else groups,
                 scenarios_at=at, groups_at=at)


def config(discovered_cohorts: list[str] | None = None, **extra: Any) -> Any:
    scenarios: dict[str, Any] = {}
    if discovered_cohorts is not None:
        scenarios["cohorts"] = discovered_cohorts
    raw: dict[str, Any] = {"cohorts": [{"name": "all"}, {"name": "last-7d", "window": "7d"}],
                           "discovery": {"scenarios": scenarios, "group_cohorts": {}}}
    raw.update(extra)
    return parse_config(raw)


def cohorts_of(targets: list[Target], scenario: str) -> list[str]:
    return [t.cohort.name for t in targets if t.scenario == scenario]


def test_the_key_is_scenario_and_cohort_name() -> None:
    target = build_targets(parse_config({"scenarios": [{"id": "s"}]}))[0]
    key: TargetKey = target.key
    assert key == ("s", "all")


def test_without_lists_the_explicit_targets_in_configuration_order() -> None:
    cfg = parse_config({"scenarios": [{"id": "b", "cohorts": ["y"]}, {"id": "a"}],
                        "cohorts": [{"name": "x"}, {"name": "y"}],
                        "discovery": {"scenarios": {}, "group_cohorts": {}}})
    assert [t.key for t in build_targets(cfg)] == [("b", "y"), ("a", "x"), ("a", "y")]


def test_unset_discovered_cohorts_means_every_cohort_explicit_and_group() -> None:
    targets = build_targets(config(), lists())
    assert cohorts_of(targets, "s0") == ["all", "last-7d", "sales-emea", "Sales-US",
                                         "SDR Team", "Customer Success"]
    assert len(targets) == 3 * 6


def test_discovered_cohorts_when_set_are_exactly_that_list() -> None:
    # Before: every group cohort was added to the list regardless.
    cfg = config(["all"], scenarios=[{"id": "explicit"}])
    targets = build_targets(cfg, lists())
    assert cohorts_of(targets, "s0") == ["all"]
    assert cohorts_of(targets, "s2") == ["all"]
    # Explicit scenarios are not affected: they still get every cohort.
    assert len(cohorts_of(targets, "explicit")) == 6


def test_patterns_select_group_cohorts_in_list_order_without_repeats() -> None:
    cfg = config(["last-7d", "sales-*", "all", "*-emea"])
    targets = build_targets(cfg, lists())
    # Case-insensitive, like group_cohorts.include: "sales-*" takes Sales-US too.
    assert cohorts_of(targets, "s1") == ["last-7d", "sales-emea", "Sales-US", "all"]
    group = next(t.cohort for t in targets if t.cohort.name == "Sales-US")
    assert group.group_ids == ["g2"]


def test_an_exact_name_wins_over_reading_it_as_a_pattern() -> None:
    cfg = parse_config({"cohorts": [{"name": "team [a]"}, {"name": "team a"}],
                        "discovery": {"scenarios": {"cohorts": ["team [a]"]}}})
    targets = build_targets(cfg, lists(groups=[]))
    assert cohorts_of(targets, "s0") == ["team [a]"]


def test_a_pattern_matching_nothing_warns_once_per_discovery(
        caplog: pytest.LogCaptureFixture) -> None:
    cfg = config(["all", "marketing-*"])
    caplog.set_level(logging.WARNING, "exporter.targets")
    # Groups not read yet: nothing is decided, nothing to say.
    before = Lists(scenarios=SCENARIOS, scenarios_at=float(next(_reads)))
    assert cohorts_of(build_targets(cfg, before), "s0") == ["all"]
    assert not caplog.records
    read = lists()
    for _ in range(3):  # rebuilt after each list and on reload: said once
        assert cohorts_of(build_targets(cfg, read), "s0") == ["all"]
    warned = [r.getMessage() for r in caplog.records]
    assert warned == ["discovery.scenarios.cohorts: 'marketing-*' matches no cohort; "
                      "discovered scenarios get no target for it"]
    build_targets(cfg, lists())  # the next discovery says it again
    assert len(caplog.records) == 2


def test_group_name_collisions_explicit_wins_then_first_group() -> None:
    cfg = parse_config({"cohorts": [{"name": "Sales Team", "group_ids": ["x"]}],
                        "discovery": {"scenarios": {}, "group_cohorts": {}}})
    found = lists(scenarios=[DiscoveredScenario("u1", "a", "A")],
                  groups=[Group("g1", "Sales Team"), Group("g2", "CS & Support"),
                          Group("g3", "CS & Support")])
    targets = build_targets(cfg, found)
    assert [(t.scenario, t.cohort.name, t.cohort.group_ids) for t in targets] == [
        ("a", "Sales Team", ["x"]), ("a", "CS & Support", ["g2"])]


def test_discovered_names_follow_the_rule_of_the_file(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "exporter.targets")
    cfg = config()
    found = lists(scenarios=[DiscoveredScenario("u1", "überblick-ç", "Überblick"),
                             DiscoveredScenario("u2", "bad\nslug", "Bad")],
                  groups=[Group("g1", "Sales/EMEA"), Group("g2", "Équipe Nord"),
                          Group("g3", "trailing "), Group("g4", "tab\there")])
    targets = build_targets(cfg, found)
    assert [t.key for t in targets] == [
        ("überblick-ç", "all"), ("überblick-ç", "last-7d"), ("überblick-ç", "Sales/EMEA"),
        ("überblick-ç", "Équipe Nord")]
    assert targets[0].scenario_uuid == "u1" and targets[0].display_name == "Überblick"
    warned = "\n".join(r.getMessage() for r in caplog.records)
    assert "group 'trailing ' (g3) left out: 'trailing ' has leading or trailing" in warned
    assert "group 'tab\\there' (g4) left out" in warned
    assert "scenario u2 left out: its slug 'bad\\nslug' contains a control character" in warned


def test_an_explicit_scenario_also_discovered_is_one_target_set() -> None:
    cfg = config(["all"], scenarios=[{"id": "u1", "cohorts": ["last-7d"]}])
    targets = build_targets(cfg, lists())
    assert [t.key for t in targets[:1]] == [("u1", "last-7d")]
    assert targets[0].display_name == "S1" and targets[0].scenario_uuid == "u1"
    assert "s1" not in {t.scenario for t in targets}


def test_select_targets_keeps_explicit_first_then_discovered_by_slug(
        caplog: pytest.LogCaptureFixture) -> None:
    cfg = config(["all"], scenarios=[{"id": "zz-explicit", "cohorts": ["all"]}],
                 max_targets=3)
    found = lists(scenarios=list(reversed(SCENARIOS)))
    kept, dropped = select_targets(cfg, found)
    assert [t.key for t in kept] == [("zz-explicit", "all"), ("s0", "all"), ("s1", "all")]
    assert dropped == 1
    assert "4 targets exceed max_targets=3; dropping the last 1" in caplog.text
    assert select_targets(config(["all"]), found) == (build_targets(config(["all"]), found), 0)
