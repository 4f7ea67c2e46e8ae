"""End to end: the exporter scraped by a real Prometheus with the project's rules.

Starts, on 127.0.0.1, ``python -m exporter demo`` (a simulated Exec API inside the
process), four more exporters against fake Exec APIs (``tests/fakeapi.py``, served
from this process) in the states the alerts are about, with the planner on and both
listings on: a healthy workspace, a wrong key (401 on every request), a 429 storm
(every request refused, ``retry_after`` 1 s) and an API that hangs (every request
times out); and Debian's ``prometheus`` with a temporary TSDB, a 1 s scrape and
evaluation interval and ``prometheus/alerts.yml`` with every ``for:`` divided by 60
(30m -> 30s). Then checks:

- the live /metrics passes ``promtool check metrics`` with no findings;
- Prometheus scrapes the exporters (``up == 1``);
- every rule loads and evaluates without error (``/api/v1/rules``);
- through ``/api/v1/alerts`` and ``ALERTS``: each state fires exactly its alert and
  nothing else, ever (not even pending), and the healthy exporters fire nothing;
- every query of every dashboard panel returns data.

Skips without the Prometheus binaries, except in CI (see e2e_helpers).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from e2e_helpers import (
    ROOT,
    Process,
    alert_config,
    populate_alert_world,
    require_tool,
    rule_files,
    wait_for,
)
from fakeapi import FakeExecAPI
from harness import free_port, make_key

pytestmark = pytest.mark.e2e

JOB = "exec-exporter"
# What Grafana would put in the queries: the variables' "All" value and sane
# intervals for a 1 s scrape interval.
SUBSTITUTIONS = {
    "scenario": ".*",
    "cohort": ".*",
    "skill": ".*",
    "__rate_interval": "1m",
    "__interval": "15s",
    "__range": "5m",
}
TIMEOUT = 5.0


# The exporters in the alert states (besides the demo): what each must fire, and the
# configuration of its fake API. Every other alert must stay quiet, pending included.
STATES: dict[str, set[str]] = {
    "demo": set(),
    "healthy": set(),
    "unauthorized": {"ExecExporterUnauthorized"},
    "rate_limited": {"ExecExporterRateLimited"},
    "hanging": {"ExecExporterTargetFailing"},
}
FOR_SCALE = 60  # every for: of alerts.yml divided by this (30m -> 30s)


class Stack:
    """The running exporters and Prometheus, and how to reach them."""

    def __init__(self, exporters: dict[str, tuple[Process, str]], prometheus: Process,
                 prometheus_url: str, rules: list[Path]) -> None:
        self.exporters = exporters
        self.exporter, self.exporter_url = exporters["demo"]
        self.prometheus = prometheus
        self.prometheus_url = prometheus_url
        self.rules = rules  # the rule files Prometheus loaded (for: scaled down)

    def diagnostics(self) -> str:
        return "\n".join(p.tail() for p, _ in self.exporters.values()) + "\n" + \
            self.prometheus.tail()

    def api(self, path: str, **params: str) -> Any:
        response = requests.get(f"{self.prometheus_url}/api/v1/{path}", params=params,
                                timeout=TIMEOUT)
        body = response.json()
        assert body.get("status") == "success", f"{path} {params}: {body}"
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        data = self.api("query", query=expr)
        result = data["result"]
        if data["resultType"] == "scalar":
            return [{"value": result}]
        return list(result)


def prometheus_config(exporters: dict[str, int], rules: list[Path]) -> dict[str, Any]:
    return {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s",
                   "evaluation_interval": "1s"},
        "rule_files": [str(path) for path in rules],
        "scrape_configs": [{
            "job_name": JOB,
            "static_configs": [{"targets": [f"127.0.0.1:{port}"], "labels": {"state": state}}
                               for state, port in exporters.items()],
        }],
    }


def scaled_rules(path: Path, out: Path) -> Path:
    """``path`` with every ``for:`` divided by FOR_SCALE, written to ``out``."""
    document = yaml.safe_load(path.read_text())
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    for group in document["groups"]:
        for rule in group["rules"]:
            if "for" in rule:
                number, unit = re.fullmatch(r"(\d+)([smhd])", rule["for"]).groups()  # type: ignore[union-attr]
                rule["for"] = f"{max(int(number) * units[unit] // FOR_SCALE, 1)}s"
    out.write_text(yaml.safe_dump(document, sort_keys=False))
    return out


def is_ready(url: str) -> bool:
    return requests.get(f"{url}/-/ready", timeout=TIMEOUT).status_code == 200


def state_api(state: str) -> FakeExecAPI:
    """The fake Exec API of one alert state, started, its workspace filled."""
    api = FakeExecAPI(make_key()).start()
    populate_alert_world(api, time.time())
    if state == "rate_limited":
        api.set_fault(None, "429_header", retry_after=1)
        for which in ("scenarios", "groups", "members", "skills", "assignments"):
            api.set_list_fault(which, "429_header", retry_after=1)
    elif state == "hanging":
        api.set_fault(None, "hang", seconds=5)
        for which in ("scenarios", "groups", "members", "skills", "assignments"):
            api.set_list_fault(which, "hang", seconds=5)
    return api


def state_config(state: str, api: FakeExecAPI, path: Path) -> Path:
    """A configuration file for ``state``: refreshed every 10 s (quota of 60 a minute,
    86,400 a day), the member lists every 30 s, skills and assignments every minute."""
    config = alert_config(
        api.base_url, refresh_interval="10s",
        planner={"mode": "auto", "membership_interval": "30s"},
        skills={"interval": "1m"}, assignments={"interval": "1m"})
    config["api"].update(timeout="1s" if state == "hanging" else "5s",
                         rate_limit={"requests_per_minute": 60, "requests_per_day": 86400})
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def stack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
          ) -> Iterator[Stack]:
    prometheus_bin = require_tool("prometheus")
    require_tool("promtool")
    tmp = tmp_path_factory.mktemp("e2e")

    exporters: dict[str, tuple[Process, str]] = {}
    ports: dict[str, int] = {}
    for state in STATES:
        port = ports[state] = free_port()
        args = [sys.executable, "-m", "exporter"]
        env = None
        if state == "demo":
            args.append("demo")
        else:
            api = state_api(state)
            request.addfinalizer(api.stop)
            args.append(f"--config.file={state_config(state, api, tmp / f'{state}.yaml')}")
            key = make_key("wrong") if state == "unauthorized" else api.api_key
            env = {**os.environ, "EXEC_API_KEY": key}
        process = Process(state, [*args, "--web.listen-address", f"127.0.0.1:{port}"],
                          tmp / f"{state}.log", cwd=ROOT, env=env)
        request.addfinalizer(process.stop)
        exporters[state] = (process, f"http://127.0.0.1:{port}")
    exporter, exporter_url = exporters["demo"]
    wait_for(lambda: exporter.running() and is_ready(exporter_url), 30,
             "the demo exporter's /-/ready", diagnostics=exporter.tail)

    prometheus_port = free_port()
    prometheus_url = f"http://127.0.0.1:{prometheus_port}"
    rules = [scaled_rules(path, tmp / path.name) for path in rule_files()]
    config = tmp / "prometheus.yml"
    config.write_text(yaml.safe_dump(prometheus_config(ports, rules)))
    prometheus = Process(
        "prometheus",
        [prometheus_bin, f"--config.file={config}",
         f"--storage.tsdb.path={tmp / 'data'}",
         f"--web.listen-address=127.0.0.1:{prometheus_port}",
         "--log.level=warn"],
        tmp / "prometheus.log", cwd=tmp,
    )
    request.addfinalizer(prometheus.stop)
    wait_for(lambda: prometheus.running() and is_ready(prometheus_url), 30,
             "Prometheus' /-/ready", diagnostics=prometheus.tail)

    yield Stack(exporters, prometheus, prometheus_url, rules)


def test_live_metrics_pass_promtool_check(stack: Stack) -> None:
    promtool = require_tool("promtool")
    response = requests.get(f"{stack.exporter_url}/metrics", timeout=TIMEOUT)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    result = subprocess.run([promtool, "check", "metrics"], input=response.text,
                            capture_output=True, text=True, timeout=60)
    findings = (result.stdout + result.stderr).strip()
    assert result.returncode == 0 and not findings, f"promtool check metrics:\n{findings}"


def test_prometheus_scrapes_the_exporter(stack: Stack) -> None:
    def scraped() -> bool:
        result = stack.query(f'up{{job="{JOB}"}}')
        return bool(result) and result[0]["value"][1] == "1"

    wait_for(scraped, 30, f'up{{job="{JOB}"}} == 1', diagnostics=stack.diagnostics)

    def all_scraped() -> list[Any] | None:
        targets = stack.api("targets")["activeTargets"]
        return targets if all(t["health"] == "up" for t in targets) else None

    targets = wait_for(all_scraped, 30, "every exporter scraped", diagnostics=stack.diagnostics)
    assert sorted((t["labels"]["state"], t["lastError"]) for t in targets) == sorted(
        (state, "") for state in STATES)
    # The data itself arrived, with the labels the rules and dashboard expect.
    scores = stack.query("exec_scenario_average_best_score")
    assert scores and all({"scenario", "cohort", "job", "instance"} <= set(s["metric"])
                          for s in scores)


def test_rules_load_and_evaluate_without_errors(stack: Stack) -> None:
    def evaluated() -> list[dict[str, Any]] | None:
        groups = stack.api("rules")["groups"]
        rules = [rule for group in groups for rule in group["rules"]]
        if rules and all(rule["health"] != "unknown" for rule in rules):
            return groups
        return None

    groups = wait_for(evaluated, 30, "every rule to be evaluated once",
                      diagnostics=stack.diagnostics)
    loaded = {group["file"] for group in groups}
    assert loaded == {str(path) for path in stack.rules}
    problems = [
        f"{group['name']}/{rule['name']}: health={rule['health']} error={rule.get('lastError')}"
        for group in groups
        for rule in group["rules"]
        if rule["health"] != "ok" or rule.get("lastError")
    ]
    assert not problems, "\n".join(problems)
    alert_names = {rule["name"] for group in groups for rule in group["rules"]
                   if rule["type"] == "alerting"}
    assert len(alert_names) >= 6


def dashboard_queries() -> list[tuple[str, str, str, str]]:
    """(dashboard file, panel title, refId, expr) of every panel query in grafana/."""
    queries = []
    for path in sorted((ROOT / "grafana").glob("*.json")):
        dashboard = json.loads(path.read_text())
        panels = list(dashboard["panels"])
        while panels:
            panel = panels.pop(0)
            panels.extend(panel.get("panels", []))  # collapsed rows hold their panels
            for target in panel.get("targets", []):
                if target.get("expr") and not target.get("hide"):
                    queries.append((path.name, panel["title"], target["refId"], target["expr"]))
    return queries


def substitute(expr: str) -> str:
    """Replace Grafana's $var, ${var} and ${var:format} the way Grafana would."""

    def value(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        assert name in SUBSTITUTIONS, f"unknown dashboard variable ${name} in {expr}"
        return SUBSTITUTIONS[name]

    return re.sub(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)", value, expr)


def test_every_dashboard_query_returns_data(stack: Stack) -> None:
    queries = dashboard_queries()
    assert len(queries) >= 8
    wait_for(lambda: stack.query("exec_exporter_target_up"), 30, "the first scrape",
             diagnostics=stack.diagnostics)

    def empty_queries() -> list[str]:
        return [
            f"{file}: {title!r} {ref}: {substitute(expr)}"
            for file, title, ref, expr in queries
            if not stack.query(substitute(expr))
        ]

    # rate() needs two samples inside its window: give the scrapes a moment.
    deadline = time.monotonic() + 20
    missing = empty_queries()
    while missing and time.monotonic() < deadline:
        time.sleep(1)
        missing = empty_queries()
    share = 1 - len(missing) / len(queries)
    assert not missing, (
        f"{len(missing)} of {len(queries)} panel queries return no data "
        f"({share:.0%} do):\n" + "\n".join(missing)
    )


def test_each_state_fires_its_alert_and_nothing_else(stack: Stack) -> None:
    """The alerts on the exporters' real output, through Prometheus' own API: a wrong
    key fires ExecExporterUnauthorized (not a TargetFailing per target), a 429 storm
    ExecExporterRateLimited, a hanging API ExecExporterTargetFailing; the healthy
    exporters fire nothing, and nothing else is ever even pending."""
    exporter_alerts = {"ExecExporterUnauthorized", "ExecExporterTargetFailing",
                       "ExecExporterRateLimited", "ExecExporterDataStale",
                       "ExecExporterDown"}

    def firing() -> dict[str, set[str]]:
        found: dict[str, set[str]] = {state: set() for state in STATES}
        for alert in stack.api("alerts")["alerts"]:
            if alert["state"] == "firing" and "state" in alert["labels"]:
                found[alert["labels"]["state"]].add(alert["labels"]["alertname"])
        return found

    def all_fired() -> dict[str, set[str]] | None:
        found = firing()
        return found if all(found[s] >= want for s, want in STATES.items()) else None

    found = wait_for(all_fired, 150, "every state's alert to fire", interval=1.0,
                     diagnostics=lambda: f"firing: {firing()}\n{stack.diagnostics()}")
    # The healthy exporters have run for as long as the slowest alert took (the hang's
    # 30 s for: after the first timeouts): several refresh intervals (10 s), member
    # lists (30 s) and listings (1 min) included.
    assert {state: names & exporter_alerts for state, names in found.items()} == STATES
    # Never anything else, at any evaluation since the start, pending included.
    ever = stack.query('count by (state, alertname, alertstate) '
                       '(count_over_time(ALERTS{job="exec-exporter"}[10m]))')
    unexpected = sorted(
        (r["metric"]["state"], r["metric"]["alertname"], r["metric"]["alertstate"])
        for r in ever
        if r["metric"].get("alertname") not in STATES.get(r["metric"].get("state", ""), ()))
    assert not unexpected, unexpected
