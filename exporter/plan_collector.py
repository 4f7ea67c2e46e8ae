"""Self-metrics of the planner (derived cohorts), read live from the planner at scrape.

Sample output::

    # HELP exec_exporter_target_source Where the target's exported values come from ...
    # TYPE exec_exporter_target_source gauge
    exec_exporter_target_source{cohort="sales",scenario="pitch",source="participants"} 1.0
    exec_exporter_target_source{cohort="sales",scenario="pitch",source="summary"} 0.0
    # TYPE exec_exporter_cross_checks_total counter
    exec_exporter_cross_checks_total{result="match",scenario="pitch"} 12.0
    # TYPE exec_exporter_plan_requests_per_cycle gauge
    exec_exporter_plan_requests_per_cycle 9.5
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .planner import RESULTS, SOURCES, Planner


class PlanCollector(Collector):
    """``exec_exporter_target_source``, ``exec_exporter_cross_checks_total`` and
    ``exec_exporter_plan_requests_per_cycle``; ``interval()`` is the effective
    refresh interval the plan runs at."""

    def __init__(self, planner: Planner, interval: Callable[[], float]) -> None:
        self.planner = planner
        self.interval = interval

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        source = GaugeMetricFamily(
            "exec_exporter_target_source",
            "Where the target's exported values come from: its own summary requests, or "
            "aggregated from the scenario's participants pull (state set).",
            labels=["scenario", "cohort", "source"])
        for (scenario, cohort), current in self.planner.sources():
            for name in SOURCES:
                source.add_metric([scenario, cohort, name], 1.0 if name == current else 0.0)
        yield source
        checks = CounterMetricFamily(
            "exec_exporter_cross_checks",
            "Cross-checks of derived values against the summary endpoint with equal counts, "
            "by verdict.", labels=["scenario", "result"])
        for (scenario, result), count in sorted(self.planner.counters().items()):
            if result in RESULTS:
                checks.add_metric([scenario, result], count)
        yield checks
        yield GaugeMetricFamily(
            "exec_exporter_plan_requests_per_cycle",
            "Requests one full refresh of every target costs under the current plan, member "
            "lists and cross-checks included.",
            value=self.planner.requests_per_cycle(self.interval()))
