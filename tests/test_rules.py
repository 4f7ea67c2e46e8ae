"""Prometheus rules: promtool checks and unit tests, and the alert contract.

The promtool tests skip when promtool is missing, except in CI (``CI`` set),
where they fail instead: see ``tests/e2e_helpers.py``.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import FakeClock
from e2e_helpers import CONTRACT_ALERTS, ROOT, require_tool, rule_files, rule_test_files
from prometheus_client.registry import CollectorRegistry

from exporter.client import Summary
from exporter.collector import SnapshotCollector
from exporter.config import CohortConfig, ListingConfig
from exporter.listings import (
    AssignmentRow,
    Assignments,
    ListingsCollector,
    Skill,
    skill_families,
)
from exporter.store import Store
from exporter.targets import Target

SEVERITIES = {"critical", "warning", "info"}
RUNBOOK_BASE = "https://github.com/exec-exporter/exec-exporter/blob/main/docs/monitoring.md#"
ALERTS_FILE = ROOT / "prometheus" / "alerts.yml"
DOCS = ROOT / "docs" / "monitoring.md"


def load_rules(path: Path) -> list[dict[str, Any]]:
    """Every rule of a rule file, each with its group's name under ``group``."""
    document = yaml.safe_load(path.read_text())
    return [
        {**rule, "group": group["name"]}
        for group in document["groups"]
        for rule in group["rules"]
    ]


def alerts() -> dict[str, dict[str, Any]]:
    """Alerting rules of every rule file, by name."""
    found: dict[str, dict[str, Any]] = {}
    for path in rule_files():
        for rule in load_rules(path):
            if "alert" in rule:
                assert rule["alert"] not in found, f"alert {rule['alert']} defined twice"
                found[rule["alert"]] = rule
    return found


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def run(args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=300, cwd=ROOT)


def test_there_are_rule_files_and_tests() -> None:
    assert ALERTS_FILE in rule_files()
    assert rule_test_files(), "no promtool unit tests under prometheus/"


@pytest.mark.parametrize("path", rule_files(), ids=lambda p: p.name)
def test_promtool_check_rules(path: Path) -> None:
    promtool = require_tool("promtool")
    result = run([promtool, "check", "rules", str(path)])
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("path", rule_test_files(), ids=lambda p: p.name)
def test_promtool_test_rules(path: Path) -> None:
    promtool = require_tool("promtool")
    result = run([promtool, "test", "rules", str(path)])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_alerts_yml_alone_defines_the_contract_alerts() -> None:
    names = {rule["alert"] for rule in load_rules(ALERTS_FILE) if "alert" in rule}
    assert names >= CONTRACT_ALERTS, f"missing: {sorted(CONTRACT_ALERTS - names)}"


def test_alerts_yml_needs_no_recording_rules() -> None:
    # Loading alerts.yml alone must work: no alert may read a recorded series.
    recorded = {
        rule["record"] for path in rule_files() for rule in load_rules(path) if "record" in rule
    }
    for rule in load_rules(ALERTS_FILE):
        if "alert" in rule:
            used = set(re.findall(r"[a-zA-Z_:][\w:]*", rule["expr"]))
            assert not used & recorded, f"{rule['alert']} reads recording rules {used & recorded}"


@pytest.mark.parametrize("name", sorted(CONTRACT_ALERTS))
def test_alert_has_labels_and_annotations(name: str) -> None:
    rule = alerts()[name]
    assert name.startswith("Exec") and re.fullmatch(r"[A-Z][A-Za-z]+", name)
    assert rule.get("labels", {}).get("severity") in SEVERITIES
    annotations = rule.get("annotations", {})
    for key in ("summary", "description", "runbook_url"):
        assert annotations.get(key, "").strip(), f"{name} has no {key}"
    assert "{{" not in annotations["summary"], "the summary is static; details go in description"
    assert "{{" in annotations["description"], "the description should name what is affected"


@pytest.mark.parametrize("name", sorted(CONTRACT_ALERTS))
def test_runbook_url_points_at_a_section_of_the_docs(name: str) -> None:
    url = alerts()[name]["annotations"]["runbook_url"]
    assert url.startswith(RUNBOOK_BASE), url
    anchor = url.removeprefix(RUNBOOK_BASE)
    headings = re.findall(r"^#+\s+(.+?)\s*$", DOCS.read_text(), flags=re.MULTILINE)
    anchors = {github_anchor(h) for h in headings}
    assert anchor in anchors, f"docs/monitoring.md has no heading for #{anchor}"
    assert anchor == name.lower()


def test_score_drop_reads_only_scores_and_participants() -> None:
    # A score alert must work on the two data series alone, whatever else the
    # exporter exports (and with no exporter self-metrics, or up, at all).
    expr = alerts()["ExecScenarioScoreDrop"]["expr"]
    metrics = set(re.findall(r"\b(exec_\w+|up|ALERTS\w*)\b", expr))
    assert metrics == {"exec_scenario_average_best_score", "exec_scenario_participants"}


def test_every_alert_has_firing_and_quiet_unit_tests() -> None:
    firing: set[str] = set()
    quiet: set[str] = set()
    for path in rule_test_files():
        for case in yaml.safe_load(path.read_text())["tests"]:
            for check in case.get("alert_rule_test", []):
                (firing if check.get("exp_alerts") else quiet).add(check["alertname"])
    assert firing >= CONTRACT_ALERTS, f"never shown firing: {sorted(CONTRACT_ALERTS - firing)}"
    assert quiet >= CONTRACT_ALERTS, f"never shown quiet: {sorted(CONTRACT_ALERTS - quiet)}"


def test_alerts_read_only_metrics_the_exporter_exports(clock: FakeClock) -> None:
    # A renamed or missing self-metric would leave an alert silently empty.
    store = Store()
    target = Target("disc", CohortConfig(name="all"), "Discovery call")
    failing = Target("disc", CohortConfig(name="sales"), "Discovery call")
    store.set_targets([target, failing])
    store.record_schedule(900.0, {})
    store.record_success(target.key, Summary(participants=25, average_best_score=80.0), clock.now)
    store.record_failure(failing.key, "timeout", "no answer", clock.now)  # last_error
    store.record_request("summary", "200", 0.1)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector(store, clock))
    exported = {s.name for family in registry.collect() for s in family.samples}
    # The listings' families (skills, assignments) come from their own collector.
    skill = Skill(slug="objection-handling", name="Objection handling", participants=40,
                  scored_participants=35, proficient_ratio=0.5, average_score=71.0)
    exported |= {s.name for family in skill_families([skill]) for s in family.samples}
    assignments = Assignments(ListingConfig(), day_budget=900,
                              scenarios=lambda: [("disc", "id-1")])
    assignments.due(0.0)
    assignments.page_read([AssignmentRow("id-1", None, "past_due")], 1, 1.0)
    exported |= {s.name for family in ListingsCollector(lambda: (None, assignments)).collect()
                 for s in family.samples}
    for rule in load_rules(ALERTS_FILE):
        if "alert" in rule:
            used = set(re.findall(r"\bexec_\w+", rule["expr"]))
            assert used <= exported, f"{rule['alert']} reads {sorted(used - exported)}"


def test_data_stale_follows_the_exported_max_staleness() -> None:
    expr = alerts()["ExecExporterDataStale"]["expr"]
    assert "exec_exporter_max_staleness_seconds" in expr
    assert "exec_exporter_refresh_interval_seconds" not in expr


def test_recorded_alert_series_are_what_the_exporter_exports_now() -> None:
    """The promtool input of the exporter's own alerts is recorded from the real
    exporter against the fake API (tests/record_alert_series.py), never written by
    hand: recorded again here, it must match the committed file byte for byte."""
    import record_alert_series

    committed = record_alert_series.OUTPUT.read_text()
    assert record_alert_series.build() == committed, (
        "prometheus/exporter_alerts_test.yml no longer matches the exporter's output: "
        "run .venv/bin/python tests/record_alert_series.py and review the diff")


def test_the_exporter_alerts_are_tested_in_every_recorded_state() -> None:
    import record_alert_series

    cases = yaml.safe_load(record_alert_series.OUTPUT.read_text())["tests"]
    names = {case["name"] for case in cases}
    assert names == {f"recorded: {state}" for state in
                     ("healthy", "unauthorized", "forbidden", "rate_limited", "hanging")}
    exporter_alerts = {"ExecExporterUnauthorized", "ExecExporterTargetFailing",
                       "ExecExporterRateLimited", "ExecExporterDataStale"}
    fired = {check["alertname"] for case in cases for check in case["alert_rule_test"]
             if check["exp_alerts"]}
    assert fired == exporter_alerts
    healthy = next(case for case in cases if case["name"] == "recorded: healthy")
    assert not [c for c in healthy["alert_rule_test"] if c["exp_alerts"]]
