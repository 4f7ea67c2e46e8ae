"""Build grafana/exec-exporter.json, the exec-exporter dashboard.

The JSON is what Grafana reads; this script is its source. Edit the panels
here, then regenerate and commit both files:

    python grafana/build_dashboard.py          # rewrite the JSON
    python grafana/build_dashboard.py --check  # exit 1 if the JSON is stale

Plain Python on purpose (no dashboard SDK to pin). The dashboard works both
imported in the UI and provisioned from a file: its data source is the
``datasource`` variable (no ``__inputs``), and ``scenario`` and ``cohort``
come from ``label_values()``. Every query uses metrics the exporter itself
serves (plus Prometheus' ``ALERTS``), never recording rules, so the dashboard
needs nothing but a Prometheus that scrapes the exporter.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

OUTPUT = Path(__file__).with_name("exec-exporter.json")

UID = "exec-exporter"
TITLE = "Exec scenarios"
DOCS = "https://github.com/exec-exporter/exec-exporter/blob/main/docs/monitoring.md"

DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
# The series selector every per-target panel uses.
TARGET = 'scenario=~"$scenario", cohort=~"$cohort"'
LEGEND = "{{scenario}} / {{cohort}}"

# Score points on the 0-100 scale (not percent: a score of 80 is 80 points).
POINTS = "suffix: pts"

# Exec's ranks: unranked < 50 <= bronze < 75 <= silver < 90 <= gold.
RANK_COLORS = {
    "unranked": "#8E8E8E",
    "bronze": "#CD7F32",
    "silver": "#B8C0C8",
    "gold": "#E0B100",
}
RANK_THRESHOLDS = {
    "mode": "absolute",
    "steps": [
        {"color": RANK_COLORS["unranked"], "value": None},
        {"color": RANK_COLORS["bronze"], "value": 50},
        {"color": RANK_COLORS["silver"], "value": 75},
        {"color": RANK_COLORS["gold"], "value": 90},
    ],
}
GREEN = {"mode": "absolute", "steps": [{"color": "green", "value": None}]}


def thresholds(*steps: tuple[str, float | None]) -> dict[str, Any]:
    """Absolute thresholds from (color, value) pairs, the first value None."""
    return {
        "mode": "absolute",
        "steps": [{"color": color, "value": value} for color, value in steps],
    }


def or_none(expr: str, label: str, text: str = "none") -> str:
    """``expr``, or one series of value 0 whose ``label`` says ``text`` when it has none
    (so a panel shows "none" instead of "No data")."""
    return f'{expr} or on() label_replace(vector(0), "{label}", "{text}", "", "")'


def target(expr: str, legend: str = "", ref: str = "A", *, instant: bool = False,
           table: bool = False) -> dict[str, Any]:
    """One Prometheus query of a panel."""
    query: dict[str, Any] = {
        "datasource": DATASOURCE,
        "editorMode": "code",
        "expr": expr,
        "legendFormat": legend or "__auto",
        "range": not instant,
        "instant": instant,
        "refId": ref,
    }
    if table:
        query["format"] = "table"
    return query


def stacked_bars_options(x_field: str) -> dict[str, Any]:
    """Options of a horizontal stacked bar chart with ``x_field`` as its categories."""
    return {
        "barWidth": 0.8,
        "groupWidth": 0.7,
        "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
        "orientation": "horizontal",
        "showValue": "auto",
        "stacking": "normal",
        "tooltip": {"mode": "multi", "sort": "none"},
        "xField": x_field,
        "xTickLabelRotation": 0,
    }


def overrides_by_name(**props: dict[str, Any]) -> list[dict[str, Any]]:
    """Field overrides: {field name: {property id: value}}."""
    return [
        {
            "matcher": {"id": "byName", "options": name},
            "properties": [{"id": key, "value": value} for key, value in changes.items()],
        }
        for name, changes in props.items()
    ]


class Layout:
    """Hands out panel ids and grid positions, row by row (24 columns)."""

    def __init__(self) -> None:
        self.next_id = 1
        self.y = 0
        self.x = 0
        self.height = 0

    def take_id(self) -> int:
        self.next_id += 1
        return self.next_id - 1

    def place(self, w: int, h: int) -> dict[str, int]:
        if self.x + w > 24:
            self.newline()
        pos = {"h": h, "w": w, "x": self.x, "y": self.y}
        self.x += w
        self.height = max(self.height, h)
        return pos

    def newline(self) -> None:
        self.y += self.height
        self.x = 0
        self.height = 0


def row(layout: Layout, title: str) -> dict[str, Any]:
    """An expanded row header (its panels follow it at the top level)."""
    layout.newline()
    panel = {
        "collapsed": False,
        "gridPos": layout.place(24, 1),
        "id": layout.take_id(),
        "panels": [],
        "title": title,
        "type": "row",
    }
    layout.newline()
    return panel


def alarm_stat(layout: Layout, title: str, description: str, expr: str, label: str,
               quiet: str, w: int) -> dict[str, Any]:
    """A stat of what is wrong now, one value by ``label``, red from 1; ``quiet`` (e.g.
    "none") in green when ``expr`` has no series."""
    return stat(layout, title, description,
                [target(or_none(expr, label, quiet), f"{{{{{label}}}}}", instant=True)],
                "short", w=w, decimals=0, text_mode="value_and_name", color_mode="background",
                steps=thresholds(("green", None), ("red", 1)))


def timeseries(layout: Layout, title: str, description: str, targets: list[dict[str, Any]],
               unit: str, *, w: int = 12, h: int = 8, decimals: int | None = None,
               minimum: float | None = 0, maximum: float | None = None,
               threshold_lines: dict[str, Any] | None = None, bars: bool = False,
               stack: bool = False, overrides: list[dict[str, Any]] | None = None,
               ) -> dict[str, Any]:
    """A time series panel; values are step functions (one change per refresh)."""
    defaults: dict[str, Any] = {
        "color": {"mode": "palette-classic"},
        "custom": {
            "drawStyle": "bars" if bars else "line",
            "fillOpacity": 80 if bars else 10,
            "lineInterpolation": "stepAfter",
            "lineWidth": 1 if bars else 2,
            "showPoints": "never",
            "spanNulls": False,
            "stacking": {"group": "A", "mode": "normal" if stack else "none"},
            "thresholdsStyle": {"mode": "dashed" if threshold_lines else "off"},
        },
        "thresholds": threshold_lines or GREEN,
        "unit": unit,
    }
    if decimals is not None:
        defaults["decimals"] = decimals
    if minimum is not None:
        defaults["min"] = minimum
    if maximum is not None:
        defaults["max"] = maximum
    return {
        "datasource": DATASOURCE,
        "description": description,
        "fieldConfig": {"defaults": defaults, "overrides": overrides or []},
        "gridPos": layout.place(w, h),
        "id": layout.take_id(),
        "options": {
            "legend": {"calcs": ["lastNotNull"], "displayMode": "table", "placement": "right",
                       "showLegend": True, "sortBy": "Last *", "sortDesc": True},
            "tooltip": {"mode": "multi", "sort": "desc"},
        },
        "targets": targets,
        "title": title,
        "type": "timeseries",
    }


def stat(layout: Layout, title: str, description: str, targets: list[dict[str, Any]],
         unit: str, *, w: int = 4, h: int = 5, steps: dict[str, Any] | None = None,
         decimals: int | None = None, color_mode: str = "value",
         text_mode: str = "auto") -> dict[str, Any]:
    """A stat panel showing each series' latest value."""
    defaults: dict[str, Any] = {
        "color": {"mode": "thresholds"},
        "thresholds": steps or GREEN,
        "unit": unit,
    }
    if decimals is not None:
        defaults["decimals"] = decimals
    return {
        "datasource": DATASOURCE,
        "description": description,
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "gridPos": layout.place(w, h),
        "id": layout.take_id(),
        "options": {
            "colorMode": color_mode,
            "graphMode": "none",
            "justifyMode": "auto",
            "orientation": "auto",
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "textMode": text_mode,
        },
        "targets": targets,
        "title": title,
        "type": "stat",
    }


def table(layout: Layout, title: str, description: str, targets: list[dict[str, Any]],
          unit: str, *, columns: dict[str, str], sort_by: str, w: int = 12, h: int = 8,
          overrides: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """A table joining instant queries on their labels (one row per target).

    ``columns`` renames the fields in display order ("Value #A" is query A's
    value); fields not listed (Time, job, instance) are hidden.
    """
    order = {name: i for i, name in enumerate(columns)}
    return {
        "datasource": DATASOURCE,
        "description": description,
        "fieldConfig": {
            "defaults": {
                "color": {"mode": "thresholds"},
                "custom": {"align": "auto", "cellOptions": {"type": "auto"}},
                "thresholds": GREEN,
                "unit": unit,
            },
            "overrides": overrides or [],
        },
        "gridPos": layout.place(w, h),
        "id": layout.take_id(),
        "options": {
            "cellHeight": "sm",
            "footer": {"show": False, "reducer": ["sum"], "fields": "", "countRows": False},
            "showHeader": True,
            "sortBy": [{"desc": True, "displayName": columns.get(sort_by, sort_by)}],
        },
        "targets": targets,
        "title": title,
        "transformations": [
            {"id": "merge", "options": {}},
            {
                "id": "filterFieldsByName",
                "options": {"include": {"names": list(columns)}},
            },
            {
                "id": "organize",
                "options": {"excludeByName": {}, "indexByName": order, "renameByName": columns},
            },
        ],
        "type": "table",
    }


def score_panels(layout: Layout) -> list[dict[str, Any]]:
    """What a training lead looks at: scores, ranks, lift."""
    score = f"exec_scenario_average_best_score{{{TARGET}}}"
    return [
        row(layout, "Scores"),
        timeseries(
            layout, "Average best score",
            "Average of each participant's best score (0-100 points) per scenario and cohort, "
            "as of the exporter's last successful refresh. Dashed lines: the bronze (50), "
            "silver (75) and gold (90) rank boundaries.",
            [target(score, LEGEND)], POINTS, w=16, decimals=1, maximum=100,
            threshold_lines=RANK_THRESHOLDS,
        ),
        stat(
            layout, "Current average best score",
            "Latest average best score per scenario and cohort, coloured by the rank it earns "
            "(grey unranked, bronze, silver, gold).",
            [target(score, LEGEND, instant=True)], POINTS, w=8, h=8, steps=RANK_THRESHOLDS,
            decimals=1, color_mode="background", text_mode="value_and_name",
        ),
        table(
            layout, "Scenarios ranked by score",
            "Every scenario and cohort, best average score first, with the participants behind "
            "it and their average improvement (best minus first score).",
            [
                target(f"sort_desc({score})", ref="A", instant=True, table=True),
                target(f"exec_scenario_participants{{{TARGET}}}", ref="B", instant=True,
                       table=True),
                target(f"exec_scenario_average_score_lift{{{TARGET}}}", ref="C", instant=True,
                       table=True),
                target(f"exec_scenario_sessions{{{TARGET}}}", ref="D", instant=True,
                       table=True),
            ],
            "short",
            columns={
                "scenario": "Scenario",
                "cohort": "Cohort",
                "Value #A": "Average best score",
                "Value #B": "Participants",
                "Value #C": "Score lift",
                "Value #D": "Sessions",
            },
            sort_by="Value #A",
            overrides=overrides_by_name(**{
                "Average best score": {
                    "unit": POINTS, "decimals": 1, "thresholds": RANK_THRESHOLDS,
                    "custom.cellOptions": {"type": "color-background", "mode": "basic"},
                },
                "Score lift": {"unit": POINTS, "decimals": 1},
                "Participants": {"decimals": 0},
                "Sessions": {"decimals": 0},
            }),
        ),
        rank_distribution(layout),
        timeseries(
            layout, "Score lift",
            "Average best score minus average first score, in points: how much practice "
            "improves participants. Cohorts that are new to a scenario show little lift yet.",
            [target(f"exec_scenario_average_score_lift{{{TARGET}}}", LEGEND)], POINTS,
            w=24, h=7, decimals=1, minimum=None,
        ),
    ]


def rank_distribution(layout: Layout) -> dict[str, Any]:
    """Participants per rank, one stacked bar per scenario/cohort."""
    expr = (
        f"label_join(exec_scenario_rank_participants{{{TARGET}}}, "
        f'"target", " / ", "scenario", "cohort")'
    )
    ranks = ["gold", "silver", "bronze", "unranked"]
    return {
        "datasource": DATASOURCE,
        "description": "How many participants' best score earns each rank, per scenario and "
                       "cohort (latest refresh).",
        "fieldConfig": {
            "defaults": {
                "color": {"mode": "palette-classic"},
                "custom": {"fillOpacity": 85, "lineWidth": 0, "stacking": {"mode": "normal"}},
                "decimals": 0,
                "min": 0,
                "thresholds": GREEN,
                "unit": "short",
            },
            "overrides": overrides_by_name(**{
                rank: {"color": {"mode": "fixed", "fixedColor": RANK_COLORS[rank]}}
                for rank in ranks
            }),
        },
        "gridPos": layout.place(12, 8),
        "id": layout.take_id(),
        "options": stacked_bars_options("target\\rank"),
        "targets": [target(expr, instant=True, table=True)],
        "title": "Rank distribution",
        "transformations": [
            {
                "id": "groupingToMatrix",
                "options": {"columnField": "rank", "rowField": "target", "valueField": "Value"},
            },
            {
                "id": "organize",
                "options": {
                    "excludeByName": {},
                    "indexByName": {"target\\rank": 0, **{r: i + 1 for i, r in enumerate(ranks)}},
                    "renameByName": {},
                },
            },
        ],
        "type": "barchart",
    }


def engagement_panels(layout: Layout) -> list[dict[str, Any]]:
    """How much people practise."""
    return [
        row(layout, "Engagement"),
        timeseries(
            layout, "Participants",
            "Unique participants with graded sessions per scenario and cohort.",
            [target(f"exec_scenario_participants{{{TARGET}}}", LEGEND)], "short", w=8,
            decimals=0,
        ),
        timeseries(
            layout, "Sessions",
            "Graded sessions per scenario and cohort (a count that only grows for a fixed "
            "cohort; rolling cohorts such as last-7d go up and down).",
            [target(f"exec_scenario_sessions{{{TARGET}}}", LEGEND)], "short", w=8, decimals=0,
        ),
        timeseries(
            layout, "Practice time",
            "Total time spent practising each scenario, all sessions of the cohort together.",
            [target(f"exec_scenario_practice_seconds{{{TARGET}}}", LEGEND)], "s", w=8,
        ),
        timeseries(
            layout, "Average session duration",
            "Average length of one practice session.",
            [target(f"exec_scenario_average_session_duration_seconds{{{TARGET}}}", LEGEND)],
            "s",
        ),
        timeseries(
            layout, "Practice time per participant",
            "Total practice time divided by participants: how long the average participant "
            "has practised the scenario.",
            [target(
                f"exec_scenario_practice_seconds{{{TARGET}}} "
                f"/ (exec_scenario_participants{{{TARGET}}} > 0)",
                LEGEND,
            )],
            "s",
        ),
    ]


# Assignments carry the scenario label only (no cohort); skills their own label.
ASSIGNMENTS = 'scenario=~"$scenario"'
SKILL = 'skill=~"$skill"'
STATUS_COLORS = {
    "completed": "green",
    "in_progress": "blue",
    "not_started": "#8E8E8E",
    "past_due": "red",
    "did_not_pass": "orange",
}


def assignment_panels(layout: Layout) -> list[dict[str, Any]]:
    """Are people doing the practice they were assigned?"""
    statuses = list(STATUS_COLORS)
    return [
        row(layout, "Assignments"),
        {
            "datasource": DATASOURCE,
            "description": "Assignments of each scenario by status (latest read of the "
                           "assignments listing): one stacked bar per scenario.",
            "fieldConfig": {
                "defaults": {
                    "color": {"mode": "palette-classic"},
                    "custom": {"fillOpacity": 85, "lineWidth": 0,
                               "stacking": {"mode": "normal"}},
                    "decimals": 0,
                    "min": 0,
                    "thresholds": GREEN,
                    "unit": "short",
                },
                "overrides": overrides_by_name(**{
                    status: {"color": {"mode": "fixed", "fixedColor": color}}
                    for status, color in STATUS_COLORS.items()
                }),
            },
            "gridPos": layout.place(12, 8),
            "id": layout.take_id(),
            "options": stacked_bars_options("scenario\\status"),
            "targets": [target(f"exec_assignments{{{ASSIGNMENTS}}}", instant=True,
                               table=True)],
            "title": "Assignments by status",
            "transformations": [
                {
                    "id": "groupingToMatrix",
                    "options": {"columnField": "status", "rowField": "scenario",
                                "valueField": "Value"},
                },
                {
                    "id": "organize",
                    "options": {
                        "excludeByName": {},
                        "indexByName": {"scenario\\status": 0,
                                        **{s: i + 1 for i, s in enumerate(statuses)}},
                        "renameByName": {},
                    },
                },
            ],
            "type": "barchart",
        },
        timeseries(
            layout, "Past-due assignments",
            "Past-due assignments per scenario over time. A step up that stays is what "
            "ExecAssignmentsPastDue looks for.",
            [target(f'exec_assignments{{{ASSIGNMENTS}, status="past_due"}}', "{{scenario}}")],
            "short", decimals=0,
        ),
        timeseries(
            layout, "Completion rate",
            "Completed assignments as a share of all assignments of the scenario.",
            [target(
                f'sum by (scenario) (exec_assignments{{{ASSIGNMENTS}, status="completed"}}) '
                f"/ (sum by (scenario) (exec_assignments{{{ASSIGNMENTS}}}) > 0)",
                "{{scenario}}",
            )],
            "percentunit", w=24, h=7, maximum=1,
        ),
    ]


def skill_panels(layout: Layout) -> list[dict[str, Any]]:
    """Which skills are weak?"""
    legend = "{{skill}}"
    return [
        row(layout, "Skills"),
        timeseries(
            layout, "Proficient share by skill",
            "Share of scored users at Proficient or Excellent per skill (latest read of the "
            "skills listing). A clear fall below last week's level is what "
            "ExecSkillProficiencyDrop looks for.",
            [target(f"exec_skill_proficient_ratio{{{SKILL}}}", legend)],
            "percentunit", maximum=1,
        ),
        timeseries(
            layout, "Average skill score",
            "Average proficiency score (0-100) of the scored users of each skill.",
            [target(f"exec_skill_average_score{{{SKILL}}}", legend)],
            POINTS, decimals=1, maximum=100,
        ),
        table(
            layout, "Skills ranked by proficient share",
            "Every skill with its proficient share, average score, the users with a "
            "proficiency score and everyone who practised it. Click a header to re-sort "
            "(ascending on proficient share puts the weakest skills first).",
            [
                target(f"sort(exec_skill_proficient_ratio{{{SKILL}}})", ref="A",
                       instant=True, table=True),
                target(f"exec_skill_average_score{{{SKILL}}}", ref="B", instant=True,
                       table=True),
                target(f"exec_skill_scored_participants{{{SKILL}}}", ref="C", instant=True,
                       table=True),
                target(f"exec_skill_participants{{{SKILL}}}", ref="D", instant=True,
                       table=True),
            ],
            "short",
            columns={
                "skill": "Skill",
                "Value #A": "Proficient share",
                "Value #B": "Average score",
                "Value #C": "Scored participants",
                "Value #D": "Participants",
            },
            sort_by="Value #A",
            w=24,
            overrides=overrides_by_name(**{
                "Proficient share": {"unit": "percentunit", "decimals": 0},
                "Average score": {"unit": POINTS, "decimals": 1},
                "Scored participants": {"decimals": 0},
                "Participants": {"decimals": 0},
            }),
        ),
    ]


def health_panels(layout: Layout) -> list[dict[str, Any]]:
    """What an SRE looks at: is the exporter polling, within the quota, alerting?"""
    up = f"exec_exporter_target_up{{{TARGET}}}"
    return [
        row(layout, "Exporter health"),
        stat(
            layout, "Targets up",
            "Targets (scenario x cohort) whose last refresh succeeded, those whose last refresh "
            "failed, and targets left out by max_targets.",
            [
                target(f"sum({up})", "up", "A", instant=True),
                target(f"count({up} == 0) or on() vector(0)", "failing", "B", instant=True),
                target("sum(exec_exporter_targets_dropped)", "dropped", "C", instant=True),
            ],
            "short", w=6, decimals=0, text_mode="value_and_name",
        ),
        stat(
            layout, "Effective refresh interval",
            "How often each target is refreshed: the configured refresh_interval, stretched "
            "when the daily API budget cannot afford it. Values change at most this often.",
            [target("max by (instance) (exec_exporter_refresh_interval_seconds)", "{{instance}}",
                    instant=True)],
            "s",
        ),
        stat(
            layout, "API budget left",
            "Requests the exporter may still send within its own budget (the quota minus the "
            "reserve) over the rolling minute and the rolling 24 hours.",
            [
                target('min(exec_exporter_api_budget_remaining{window="minute"})', "minute", "A",
                       instant=True),
                target('min(exec_exporter_api_budget_remaining{window="day"})', "day", "B",
                       instant=True),
            ],
            "short", w=6, decimals=0, text_mode="value_and_name",
            steps=thresholds(("red", None), ("orange", 1), ("green", 10)),
        ),
        alarm_stat(
            layout, "Active alerts",
            "Exec alerts firing now, by alert name (see docs/monitoring.md for the runbooks). "
            "'none' means no Exec alert is firing.",
            'sum by (alertname) (ALERTS{alertname=~"Exec.*", alertstate="firing"})',
            "alertname", "none", w=8,
        ),
        timeseries(
            layout, "Data age",
            "Seconds since each target's data was last fetched. It grows between refreshes "
            "and drops at each success; the dashed line is max_staleness (default three "
            "effective refresh intervals), past which the data series are dropped and "
            "ExecExporterDataStale fires.",
            [
                target(f"time() - exec_exporter_target_last_success_timestamp_seconds{{{TARGET}}}",
                       LEGEND, "A"),
                target("max(exec_exporter_max_staleness_seconds)", "stale after", "B"),
            ],
            "s",
            overrides=overrides_by_name(**{
                "stale after": {
                    "color": {"mode": "fixed", "fixedColor": "red"},
                    "custom.lineStyle": {"dash": [10, 10], "fill": "dash"},
                    "custom.fillOpacity": 0,
                },
            }),
        ),
        timeseries(
            layout, "API requests by status",
            "Requests the exporter sends to the Exec API per minute, by HTTP status ('error' "
            "for timeouts and connection failures). 429: rate limited; 401/403: key rejected.",
            [target(
                "sum by (code) (rate(exec_exporter_api_requests_total[$__rate_interval])) * 60",
                "{{code}}",
            )],
            "reqpm", bars=True, stack=True,
            overrides=overrides_by_name(**{
                "200": {"color": {"mode": "fixed", "fixedColor": "green"}},
                "429": {"color": {"mode": "fixed", "fixedColor": "orange"}},
                "401": {"color": {"mode": "fixed", "fixedColor": "red"}},
                "403": {"color": {"mode": "fixed", "fixedColor": "dark-red"}},
            }),
        ),
        timeseries(
            layout, "Failed requests by reason",
            "Failed API requests per minute, of every kind, by reason (timeout, connection, "
            "rate_limited, unauthorized, forbidden, not_found, server_error, bad_request, "
            "invalid_response). 'none' means no request failed.",
            [target(
                or_none("sum by (reason) (rate(exec_exporter_errors_total[$__rate_interval])) * 60",
                        "reason"),
                "{{reason}}",
            )],
            "cpm", bars=True, stack=True,
        ),
        timeseries(
            layout, "Target refresh failures",
            "Failed refreshes per minute of the selected targets, their own failures only "
            "(a workspace-wide 429/401/403 pause is shown under Quota, not here). 'none' means "
            "no refresh failed.",
            [target(
                or_none(f"sum by (scenario, cohort) (rate(exec_exporter_target_errors_total"
                        f"{{{TARGET}}}[$__rate_interval])) * 60 > 0", "scenario"),
                LEGEND,
            )],
            "cpm", bars=True, stack=True,
        ),
        timeseries(
            layout, "API request latency",
            "Exec API response time by kind of request: 90th percentile from the exporter's "
            "request histogram (a participants page or a list page takes longer than a "
            "summary).",
            [target(
                "histogram_quantile(0.9, sum by (le, kind) "
                "(rate(exec_exporter_api_request_duration_seconds_bucket[$__rate_interval])))",
                "p90 {{kind}}",
            )],
            "s",
        ),
        table(
            layout, "Targets",
            "Every target with its state and the age of its data; failing targets first.",
            [
                target(up, ref="A", instant=True, table=True),
                target(f"time() - exec_exporter_target_last_success_timestamp_seconds{{{TARGET}}}",
                       ref="B", instant=True, table=True),
            ],
            "short",
            columns={
                "scenario": "Scenario",
                "cohort": "Cohort",
                "instance": "Instance",
                "Value #A": "State",
                "Value #B": "Data age",
            },
            sort_by="Value #B", w=24,
            overrides=overrides_by_name(**{
                "State": {
                    "unit": "none",
                    "mappings": [{
                        "type": "value",
                        "options": {
                            "0": {"color": "red", "index": 0, "text": "failing"},
                            "1": {"color": "green", "index": 1, "text": "up"},
                        },
                    }],
                    "custom.cellOptions": {"type": "color-text"},
                },
                "Data age": {"unit": "s", "decimals": 0},
            }),
        ),
    ]


def quota_panels(layout: Layout) -> list[dict[str, Any]]:
    """Where the quota goes: requests by kind, pauses, the plan's cost, derived cohorts."""
    return [
        row(layout, "Quota"),
        alarm_stat(
            layout, "Requests paused",
            "1 (red) while every request is paused for the whole workspace: rate_limited "
            "(429, until retry_after), unauthorized (401) or forbidden (403, until a probe "
            "gets through). 'not paused' otherwise.",
            "max by (reason) (exec_exporter_api_paused) == 1", "reason", "not paused", w=6,
        ),
        stat(
            layout, "Plan: requests per cycle",
            "What one full refresh of every target costs under the current plan: summaries, "
            "participants pages, member lists and cross-checks. Times the cycles per day, it "
            "is what the targets take of the daily quota.",
            [target("max by (instance) (exec_exporter_plan_requests_per_cycle)",
                    "{{instance}}", instant=True)],
            "short", w=6, decimals=1,
        ),
        stat(
            layout, "Target sources",
            "Targets by where their values come from: their own summary requests, or derived "
            "from their scenario's participants pull (planner.mode: auto).",
            [target(f"sum by (source) (exec_exporter_target_source{{{TARGET}}})", "{{source}}",
                    instant=True)],
            "short", w=6, decimals=0, text_mode="value_and_name",
        ),
        stat(
            layout, "Cross-check verdicts",
            "Cross-checks of derived values against the summary endpoint over the time range, "
            "by verdict. A mismatch sends the scenario's cohorts back to summary requests.",
            [target(
                'sum by (result) (increase(exec_exporter_cross_checks_total{scenario=~"$scenario"}'
                "[$__range]))",
                "{{result}}", instant=True,
            )],
            "short", w=6, decimals=0, text_mode="value_and_name",
        ),
        timeseries(
            layout, "API requests by kind",
            "Requests sent per minute by kind: summary (targets and cross-checks), "
            "participants pages, member lists, and the scenarios, groups, skills and "
            "assignments listings. Every one counts against the workspace's quota.",
            [target(
                "sum by (kind) (rate(exec_exporter_api_requests_total[$__rate_interval])) * 60",
                "{{kind}}",
            )],
            "reqpm", bars=True, stack=True,
        ),
        timeseries(
            layout, "Refused requests by kind",
            "Requests per minute answered 429 (rate limited), 401 or 403, by kind: which "
            "requests meet the workspace's limit or the rejected key. 'none' means none.",
            [target(
                or_none('sum by (kind, code) (rate(exec_exporter_api_requests_total'
                        '{code=~"429|401|403"}[$__rate_interval])) * 60 > 0', "kind"),
                "{{kind}} {{code}}",
            )],
            "reqpm", bars=True, stack=True,
        ),
    ]


def variables() -> list[dict[str, Any]]:
    """The datasource, scenario, cohort and skill variables."""

    def label_values(name: str, query: str) -> dict[str, Any]:
        return {
            "allValue": ".*",
            "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
            "datasource": DATASOURCE,
            "definition": query,
            "hide": 0,
            "includeAll": True,
            "label": name.capitalize(),
            "multi": True,
            "name": name,
            "options": [],
            # A plain string: every Grafana version since 8 reads it.
            "query": query,
            "refresh": 2,
            "regex": "",
            "skipUrlSync": False,
            "sort": 1,
            "type": "query",
        }

    return [
        {
            "current": {},
            "hide": 0,
            "includeAll": False,
            "label": "Data source",
            "multi": False,
            "name": "datasource",
            "options": [],
            "query": "prometheus",
            "refresh": 1,
            "regex": "",
            "skipUrlSync": False,
            "type": "datasource",
        },
        label_values("scenario", "label_values(exec_scenario_average_best_score, scenario)"),
        label_values(
            "cohort",
            'label_values(exec_scenario_average_best_score{scenario=~"$scenario"}, cohort)',
        ),
        label_values("skill", "label_values(exec_skill_info, skill)"),
    ]


def build() -> dict[str, Any]:
    """The whole dashboard as a JSON-ready dict."""
    layout = Layout()
    panels = (score_panels(layout) + engagement_panels(layout) + assignment_panels(layout)
              + skill_panels(layout) + health_panels(layout)
              + quota_panels(layout))
    return {
        "annotations": {
            "list": [{
                "builtIn": 1,
                "datasource": {"type": "grafana", "uid": "-- Grafana --"},
                "enable": True,
                "hide": True,
                "iconColor": "rgba(0, 211, 255, 1)",
                "name": "Annotations & Alerts",
                "type": "dashboard",
            }],
        },
        "description": "Exec scenario analytics (scores, ranks, practice) and exporter health, "
                       "from exec-exporter.",
        "editable": True,
        "fiscalYearStartMonth": 0,
        "graphTooltip": 1,
        "id": None,
        "links": [{
            "icon": "doc",
            "targetBlank": True,
            "title": "Runbooks and panel guide",
            "tooltip": "docs/monitoring.md",
            "type": "link",
            "url": DOCS,
        }],
        "panels": panels,
        "refresh": "5m",
        "schemaVersion": 39,
        "tags": ["exec", "exec-exporter"],
        "templating": {"list": variables()},
        "time": {"from": "now-7d", "to": "now"},
        "timepicker": {},
        "timezone": "",
        "title": TITLE,
        "uid": UID,
        "version": 1,
        "weekStart": "",
    }


def render() -> str:
    """The dashboard JSON exactly as committed."""
    return json.dumps(build(), indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help=f"exit 1 if {OUTPUT.name} differs from what this script builds")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = OUTPUT.read_text(encoding="utf-8") if OUTPUT.exists() else ""
        if current != text:
            print(f"{OUTPUT} is out of date; run python {Path(__file__).as_posix()}",
                  file=sys.stderr)
            return 1
        return 0
    OUTPUT.write_text(text, encoding="utf-8")
    print(f"wrote {OUTPUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
