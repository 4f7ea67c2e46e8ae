"""Metric families built from a store snapshot. A scrape never calls the API.

Two collectors:

* :class:`SnapshotCollector` exports everything that changes only when the
  store changes (the scenario data and the per-target self-metrics), so its
  output can be rendered once per change and cached;
* :class:`LiveCollector` exports what moves with the clock alone: the
  requests left in the budget's rolling windows.

Sample output::

    # HELP exec_scenario_average_best_score Average of participants' best scores (0-100 ...
    # TYPE exec_scenario_average_best_score gauge
    exec_scenario_average_best_score{cohort="all",scenario="discovery-call-it-director"} 74.2
    # HELP exec_exporter_target_up 1 if the last refresh of the target succeeded, else 0.
    # TYPE exec_exporter_target_up gauge
    exec_exporter_target_up{cohort="all",scenario="discovery-call-it-director"} 1.0
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from . import __version__
from .client import RANKS
from .scheduler import Clock
from .store import REQUEST_BUCKETS, Snapshot, Store, TargetState

TARGET_LABELS = ("scenario", "cohort")
CACHED = "as of the last successful poll"

# (metric name, help, Summary attribute)
DATA_GAUGES = (
    ("exec_scenario_participants",
     f"Unique participants with graded sessions, {CACHED}.", "participants"),
    ("exec_scenario_sessions",
     f"Graded sessions, {CACHED}.", "sessions"),
    ("exec_scenario_average_best_score",
     f"Average of participants' best scores (0-100 points), {CACHED}.", "average_best_score"),
    ("exec_scenario_average_score_lift",
     f"Average best minus first score, in score points, {CACHED}.", "average_score_lift"),
    ("exec_scenario_practice_seconds",
     f"Total practice time across all sessions in seconds, {CACHED}.", "practice_seconds"),
    ("exec_scenario_average_session_duration_seconds",
     f"Average session duration in seconds, {CACHED}.", "average_session_duration_seconds"),
)


def is_fresh(state: TargetState, snapshot: Snapshot, now: float) -> bool:
    """Whether ``state`` has data young enough to export."""
    return (state.summary is not None and state.last_success is not None
            and now - state.last_success <= snapshot.staleness_limit())


class SnapshotCollector(Collector):
    """Scenario data and per-target self-metrics from the store's snapshot."""

    def __init__(self, store: Store, clock: Clock) -> None:
        self.store = store
        self.clock = clock

    def describe(self) -> list[Metric]:
        # Registration must not trigger work; the families are dynamic anyway.
        return []

    def collect(self) -> Iterator[Metric]:
        yield from self.collect_from(self.store.snapshot(), self.clock.time())

    def collect_from(self, snapshot: Snapshot, now: float) -> Iterator[Metric]:
        """The families for ``snapshot`` at time ``now``."""
        fresh = [s for s in snapshot.targets if is_fresh(s, snapshot, now)]
        yield from _data_families(fresh)
        yield from _target_families(snapshot)
        yield from _exporter_families(snapshot)


def _data_families(fresh: list[TargetState]) -> Iterator[Metric]:
    for name, help_text, attr in DATA_GAUGES:
        family = GaugeMetricFamily(name, help_text, labels=TARGET_LABELS)
        for state in fresh:
            value = getattr(state.summary, attr)
            if value is not None:
                family.add_metric(state.target.key, value)
        yield family

    rank = GaugeMetricFamily(
        "exec_scenario_average_best_rank",
        f"Rank of the average best score, one-hot over gold/silver/bronze/unranked, {CACHED}.",
        labels=(*TARGET_LABELS, "rank"))
    counts = GaugeMetricFamily(
        "exec_scenario_rank_participants",
        f"Participants whose best score earns each rank, {CACHED}.",
        labels=(*TARGET_LABELS, "rank"))
    for state in fresh:
        summary = state.summary
        assert summary is not None
        if summary.average_best_rank is not None:
            for r in RANKS:
                rank.add_metric((*state.target.key, r), 1 if r == summary.average_best_rank else 0)
        if summary.rank_participants is not None:
            for r in RANKS:
                counts.add_metric((*state.target.key, r), summary.rank_participants.get(r, 0))
    yield rank
    yield counts

    info = GaugeMetricFamily(
        "exec_scenario_info", "Scenario display name and id; always 1.",
        labels=("scenario", "name", "id"))
    seen: set[str] = set()
    for state in fresh:
        target = state.target
        if target.display_name is not None and target.scenario not in seen:
            seen.add(target.scenario)
            info.add_metric((target.scenario, target.display_name,
                             target.scenario_uuid or target.scenario), 1)
    yield info


def _target_families(snapshot: Snapshot) -> Iterator[Metric]:
    up = GaugeMetricFamily("exec_exporter_target_up",
                           "1 if the last refresh of the target succeeded, else 0.",
                           labels=TARGET_LABELS)
    last = GaugeMetricFamily("exec_exporter_target_last_success_timestamp_seconds",
                             "Unix time the target's data was last fetched successfully.",
                             labels=TARGET_LABELS)
    errors = CounterMetricFamily("exec_exporter_target_errors",
                                 "Failed refreshes of the target, by reason.",
                                 labels=(*TARGET_LABELS, "reason"))
    for state in snapshot.targets:
        key = state.target.key
        up.add_metric(key, 1 if state.up else 0)
        if state.last_success is not None:
            last.add_metric(key, state.last_success)
        for reason, count in sorted(state.errors.items()):
            errors.add_metric((*key, reason), count)
    yield up
    yield last
    yield errors


def _exporter_families(snapshot: Snapshot) -> Iterator[Metric]:
    requests = CounterMetricFamily("exec_exporter_api_requests",
                                   "Requests sent to the Exec API, by HTTP status or 'error'.",
                                   labels=("code",))
    for code, count in sorted(snapshot.api_requests.items()):
        requests.add_metric((code,), count)
    yield requests

    buckets = [(_bound(b), c) for b, c in zip(REQUEST_BUCKETS, snapshot.latency_buckets,
                                                strict=True)]
    buckets.append(("+Inf", snapshot.latency_count))
    yield HistogramMetricFamily("exec_exporter_api_request_duration_seconds",
                                "Latency of Exec API requests.",
                                buckets=buckets, sum_value=snapshot.latency_sum)

    yield GaugeMetricFamily("exec_exporter_refresh_interval_seconds",
                            "Effective refresh interval per target after budget stretching.",
                            value=snapshot.interval)
    yield GaugeMetricFamily("exec_exporter_targets", "Targets being polled.",
                            value=len(snapshot.targets))
    yield GaugeMetricFamily("exec_exporter_targets_dropped",
                            "Targets left out by max_targets.", value=snapshot.targets_dropped)
    discovery = GaugeMetricFamily("exec_exporter_discovery_last_success_timestamp_seconds",
                                  "Unix time a discovery listing last completed.",
                                  labels=("kind",))
    for kind, at in sorted(snapshot.discovery_success.items()):
        discovery.add_metric((kind,), at)
    yield discovery
    yield GaugeMetricFamily("exec_exporter_config_last_reload_successful",
                            "Whether the last configuration reload succeeded.",
                            value=1 if snapshot.reload_ok else 0)
    reload_time = GaugeMetricFamily("exec_exporter_config_last_reload_success_timestamp_seconds",
                                    "Unix time of the last successful configuration load.")
    if snapshot.reload_time is not None:
        reload_time.add_metric((), snapshot.reload_time)
    yield reload_time
    build = GaugeMetricFamily("exec_exporter_build_info", "Exporter version; always 1.",
                              labels=("version",))
    build.add_metric((__version__,), 1)
    yield build


def _bound(value: float) -> str:
    return repr(float(value))


class LiveCollector(Collector):
    """Self-metrics that change with time alone (the budget's rolling windows)."""

    def __init__(self, remaining: Callable[[float], tuple[int, int]], clock: Clock) -> None:
        self.remaining = remaining
        self.clock = clock

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        minute, day = self.remaining(self.clock.time())
        family = GaugeMetricFamily("exec_exporter_api_budget_remaining",
                                   "Requests left in the exporter's own budget, by rolling window.",
                                   labels=("window",))
        family.add_metric(("minute",), minute)
        family.add_metric(("day",), day)
        yield family
