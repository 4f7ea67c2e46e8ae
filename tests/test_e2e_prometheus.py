"""End to end: the demo exporter scraped by a real Prometheus with the project's rules.

Starts ``python -m exporter demo`` (a simulated Exec API inside the process)
and Debian's ``prometheus`` on 127.0.0.1, with a temporary TSDB, a 1 s scrape
and evaluation interval and every rule file of ``prometheus/``, then checks:

- the live /metrics passes ``promtool check metrics`` with no findings;
- Prometheus scrapes the exporter (``up == 1``);
- every rule loads and evaluates without error (``/api/v1/rules``);
- every query of every dashboard panel returns data.

Skips without the Prometheus binaries, except in CI (see e2e_helpers).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests
import yaml
from e2e_helpers import ROOT, Process, require_tool, rule_files, wait_for
from harness import free_port

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


class Stack:
    """The running exporter and Prometheus, and how to reach them."""

    def __init__(self, exporter: Process, exporter_url: str, prometheus: Process,
                 prometheus_url: str) -> None:
        self.exporter = exporter
        self.exporter_url = exporter_url
        self.prometheus = prometheus
        self.prometheus_url = prometheus_url

    def diagnostics(self) -> str:
        return self.exporter.tail() + "\n" + self.prometheus.tail()

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


def prometheus_config(exporter_port: int) -> dict[str, Any]:
    return {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s",
                   "evaluation_interval": "1s"},
        "rule_files": [str(path) for path in rule_files()],
        "scrape_configs": [{
            "job_name": JOB,
            "static_configs": [{"targets": [f"127.0.0.1:{exporter_port}"]}],
        }],
    }


def is_ready(url: str) -> bool:
    return requests.get(f"{url}/-/ready", timeout=TIMEOUT).status_code == 200


@pytest.fixture(scope="module")
def stack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
          ) -> Iterator[Stack]:
    prometheus_bin = require_tool("prometheus")
    require_tool("promtool")
    tmp = tmp_path_factory.mktemp("e2e")

    exporter_port = free_port()
    exporter_url = f"http://127.0.0.1:{exporter_port}"
    exporter = Process(
        "exporter",
        [sys.executable, "-m", "exporter", "demo",
         "--web.listen-address", f"127.0.0.1:{exporter_port}"],
        tmp / "exporter.log", cwd=ROOT,
    )
    request.addfinalizer(exporter.stop)
    wait_for(lambda: exporter.running() and is_ready(exporter_url), 30,
             "the demo exporter's /-/ready", diagnostics=exporter.tail)

    prometheus_port = free_port()
    prometheus_url = f"http://127.0.0.1:{prometheus_port}"
    config = tmp / "prometheus.yml"
    config.write_text(yaml.safe_dump(prometheus_config(exporter_port)))
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

    yield Stack(exporter, exporter_url, prometheus, prometheus_url)


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
    targets = stack.api("targets")["activeTargets"]
    assert [(t["health"], t["lastError"]) for t in targets] == [("up", "")]
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
    assert loaded == {str(path) for path in rule_files()}
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
