"""The Grafana dashboard: generated from its script, importable and provisionable.

That every panel query returns data from a real Prometheus is checked in
``test_e2e_prometheus.py``; this file checks the JSON offline.
"""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from e2e_helpers import ROOT

GRAFANA = ROOT / "grafana"
DASHBOARD = GRAFANA / "exec-exporter.json"
DOCS = ROOT / "docs" / "monitoring.md"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}

# The exporter's metric names (CONTRACT.md), and the series Prometheus adds.
CONTRACT_METRICS = {
    "exec_scenario_participants",
    "exec_scenario_sessions",
    "exec_scenario_average_best_score",
    "exec_scenario_average_best_rank",
    "exec_scenario_average_score_lift",
    "exec_scenario_practice_seconds",
    "exec_scenario_average_session_duration_seconds",
    "exec_scenario_rank_participants",
    "exec_scenario_info",
    "exec_exporter_target_up",
    "exec_exporter_target_last_success_timestamp_seconds",
    "exec_exporter_target_errors_total",
    "exec_exporter_target_last_error",
    "exec_exporter_target_source",
    "exec_exporter_errors_total",
    "exec_exporter_api_paused",
    "exec_exporter_api_requests_total",
    "exec_exporter_api_request_duration_seconds_bucket",
    "exec_exporter_api_request_duration_seconds_sum",
    "exec_exporter_api_request_duration_seconds_count",
    "exec_exporter_api_budget_remaining",
    "exec_exporter_refresh_interval_seconds",
    "exec_exporter_targets",
    "exec_exporter_targets_dropped",
    "exec_exporter_discovery_last_success_timestamp_seconds",
    "exec_exporter_config_last_reload_successful",
    "exec_exporter_config_last_reload_success_timestamp_seconds",
    "exec_exporter_build_info",
    "exec_exporter_max_staleness_seconds",
    "exec_exporter_cross_checks_total",
    "exec_exporter_plan_requests_per_cycle",
    "exec_skill_info",
    "exec_skill_participants",
    "exec_skill_scored_participants",
    "exec_skill_proficient_ratio",
    "exec_skill_average_score",
    "exec_assignments",
}
# Series that carry the scenario and cohort labels.
PER_TARGET = {m for m in CONTRACT_METRICS if m.startswith("exec_scenario_")} | {
    "exec_exporter_target_up",
    "exec_exporter_target_last_success_timestamp_seconds",
    "exec_exporter_target_errors_total",
    "exec_exporter_target_last_error",
    "exec_exporter_target_source",
}


def load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("build_dashboard", GRAFANA / "build_dashboard.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel that shows data (rows excluded, collapsed rows opened)."""
    found = []
    queue = list(dashboard["panels"])
    while queue:
        panel = queue.pop(0)
        queue.extend(panel.get("panels", []))
        if panel["type"] != "row":
            found.append(panel)
    return found


def variables(dashboard: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in dashboard["templating"]["list"]}


def exprs(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    return [(p["title"], t["expr"]) for p in panels(dashboard) for t in p["targets"]]


def test_committed_json_matches_the_generator() -> None:
    generator = load_generator()
    assert DASHBOARD.read_text() == generator.render(), (
        "grafana/exec-exporter.json is stale: run python grafana/build_dashboard.py"
    )
    assert generator.main(["--check"]) == 0


def test_only_the_dashboard_json_lives_in_grafana() -> None:
    # The Kubernetes generator and the compose stack load every grafana/*.json.
    assert sorted(p.name for p in GRAFANA.glob("*.json")) == [DASHBOARD.name]


def test_importable_and_provisionable(dashboard: dict[str, Any]) -> None:
    assert "__inputs" not in dashboard and "__requires" not in dashboard
    assert dashboard["uid"] == "exec-exporter"
    assert dashboard["id"] is None
    assert dashboard["title"]
    assert "${DS_" not in DASHBOARD.read_text(), "an import-only datasource placeholder"


def test_datasource_variable(dashboard: dict[str, Any]) -> None:
    datasource = variables(dashboard)["datasource"]
    assert datasource["type"] == "datasource"
    assert datasource["query"] == "prometheus"


@pytest.mark.parametrize("name", ["scenario", "cohort"])
def test_scenario_and_cohort_variables(dashboard: dict[str, Any], name: str) -> None:
    variable = variables(dashboard)[name]
    assert variable["type"] == "query"
    assert variable["datasource"] == DATASOURCE
    query = variable["query"]
    assert query == variable["definition"]
    assert re.fullmatch(
        rf"label_values\(exec_scenario_average_best_score(\{{[^}}]*\}})?, {name}\)", query
    ), query
    assert variable["multi"] and variable["includeAll"]
    assert variable["allValue"] == ".*"


def test_enough_panels_with_units_and_the_datasource_variable(dashboard: dict[str, Any]) -> None:
    shown = panels(dashboard)
    assert len(shown) >= 8
    for panel in shown:
        assert panel["datasource"] == DATASOURCE, panel["title"]
        assert panel["fieldConfig"]["defaults"].get("unit"), f"{panel['title']} has no unit"
        assert panel.get("description"), f"{panel['title']} has no description"
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == DATASOURCE, panel["title"]


def test_panel_ids_unique_and_grid_without_overlaps(dashboard: dict[str, Any]) -> None:
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    cells: set[tuple[int, int]] = set()
    for panel in dashboard["panels"]:
        pos = panel["gridPos"]
        assert pos["x"] >= 0 and pos["x"] + pos["w"] <= 24, panel["title"]
        mine = {(x, y) for x in range(pos["x"], pos["x"] + pos["w"])
                for y in range(pos["y"], pos["y"] + pos["h"])}
        assert not mine & cells, f"{panel['title']} overlaps another panel"
        cells |= mine


def test_the_panels_the_issue_asks_for(dashboard: dict[str, Any]) -> None:
    titles = {p["title"] for p in panels(dashboard)}
    assert titles >= {
        "Average best score", "Current average best score", "Rank distribution",
        "Participants", "Sessions", "Practice time", "Score lift",
        "Average session duration", "Scenarios ranked by score",
        "Targets up", "Data age", "API requests by status", "API budget left",
        "Effective refresh interval", "Active alerts",
    }
    rows = [p["title"] for p in dashboard["panels"] if p["type"] == "row"]
    assert "Exporter health" in rows
    types = {p["title"]: p["type"] for p in panels(dashboard)}
    assert types["Current average best score"] == "stat"
    assert types["Scenarios ranked by score"] == "table"


def test_the_quota_row_shows_where_the_requests_go(dashboard: dict[str, Any]) -> None:
    rows = [p["title"] for p in dashboard["panels"] if p["type"] == "row"]
    assert rows[-1] == "Quota"
    queries = dict(exprs(dashboard))
    assert "sum by (kind)" in queries["API requests by kind"]
    assert "exec_exporter_api_paused" in queries["Requests paused"]
    assert "exec_exporter_target_source" in queries["Target sources"]
    assert "exec_exporter_cross_checks_total" in queries["Cross-check verdicts"]
    assert "exec_exporter_plan_requests_per_cycle" in queries["Plan: requests per cycle"]


def test_queries_use_contract_metrics_and_both_filters(dashboard: dict[str, Any]) -> None:
    for title, expr in exprs(dashboard):
        metrics = set(re.findall(r"\bexec_\w+", expr))
        assert metrics <= CONTRACT_METRICS, f"{title}: unknown {metrics - CONTRACT_METRICS}"
        # Every per-target selector follows the scenario and cohort variables.
        for metric, selector in re.findall(r"\b(exec_\w+)(\{[^}]*\})?", expr):
            if metric in PER_TARGET:
                assert 'scenario=~"$scenario"' in selector, f"{title}: {metric}{selector}"
                assert 'cohort=~"$cohort"' in selector, f"{title}: {metric}{selector}"


def test_listing_panels_follow_their_variables(dashboard: dict[str, Any]) -> None:
    rows = [p["title"] for p in dashboard["panels"] if p["type"] == "row"]
    assert rows.index("Assignments") < rows.index("Skills") < rows.index("Exporter health")
    assert variables(dashboard)["skill"]["query"] == "label_values(exec_skill_info, skill)"
    titles = {p["title"] for p in panels(dashboard)}
    assert titles >= {"Assignments by status", "Past-due assignments",
                      "Proficient share by skill", "Average skill score"}
    for title, expr in exprs(dashboard):
        for metric, selector in re.findall(r"\b(exec_\w+)(\{[^}]*\})?", expr):
            if metric == "exec_assignments":
                assert 'scenario=~"$scenario"' in selector, f"{title}: {metric}{selector}"
            elif metric.startswith("exec_skill_"):
                assert 'skill=~"$skill"' in selector, f"{title}: {metric}{selector}"


def test_docs_describe_every_panel(dashboard: dict[str, Any]) -> None:
    docs = DOCS.read_text()
    missing = [p["title"] for p in panels(dashboard) if f"**{p['title']}**" not in docs]
    assert not missing, f"docs/monitoring.md does not describe: {missing}"


def test_generator_writes_where_it_reads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    generator = load_generator()
    monkeypatch.setattr(generator, "OUTPUT", tmp_path / "dashboard.json")
    assert generator.main(["--check"]) == 1
    assert generator.main([]) == 0
    assert generator.main(["--check"]) == 0
    assert json.loads((tmp_path / "dashboard.json").read_text())["uid"] == "exec-exporter"
