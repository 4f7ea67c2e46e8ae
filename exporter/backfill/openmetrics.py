"""The backfill's output: the ``exec_scenario_*`` families as OpenMetrics for promtool."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.openmetrics.exposition import generate_latest

from ..client import Summary
from ..collector import (
    CACHED,
    INFO_FAMILY,
    INFO_POSITION,
    TARGET_FAMILIES,
    Families,
    info_samples,
    target_samples,
)
from ..store import TargetState
from ..targets import TargetKey
from .journal import Outcome, RequestKey
from .plan import Plan

# The HELP strings of /metrics say "as of the last successful poll"; a backfilled value
# is the API's answer as of its sample's timestamp.
AS_OF = "as of the sample's timestamp (backfilled)"


def render(plan: Plan, results: Mapping[RequestKey, Outcome],
           extra: Mapping[str, str] | None = None,
           derived: Mapping[tuple[TargetKey, int], Summary] | None = None) -> bytes:
    """The OpenMetrics text: the ``exec_scenario_*`` families with the names, HELP, types
    and labels of ``/metrics``, each series' samples together and in time order (the
    format wants every family, and promtool every series, contiguous), then ``# EOF``.

    ``extra`` labels go on every sample: the target labels Prometheus adds when it
    scrapes (``job``, ``instance``...), so backfilled and scraped samples are one series.
    ``derived`` values (a proven cohort aggregated from a participants pull) stand in for
    the summary request of their point.
    """
    extra = dict(extra or {})
    derived = derived or {}
    data_specs = TARGET_FAMILIES[:INFO_POSITION]
    series: list[dict[tuple[str, ...], list[tuple[int, float]]]] = [{} for _ in data_specs]
    info: dict[tuple[str, ...], list[tuple[int, float]]] = {}
    by_instant: dict[int, list[TargetState]] = {}
    for point in plan.points:
        summary = derived.get((point.target.key, point.instant))
        if summary is None:
            outcome = results.get(point.request)
            summary = outcome.summary if outcome is not None else None
        if summary is None:
            continue
        state = TargetState(target=point.target, summary=summary,
                            last_success=float(point.instant), up=True)
        by_instant.setdefault(point.instant, []).append(state)
        for index, labels, value in target_samples(state, fresh=True):
            if index < INFO_POSITION:  # data only: self-metrics describe the daemon
                series[index].setdefault(labels, []).append((point.instant, value))
    for instant, states in by_instant.items():
        for labels in info_samples(states):
            info.setdefault(labels, []).append((instant, 1.0))
    families: list[Metric] = []
    for spec, found in [*zip(data_specs, series, strict=True), (INFO_FAMILY, info)]:
        family = GaugeMetricFamily(spec.name, spec.documentation.replace(CACHED, AS_OF),
                                   labels=[*spec.labels, *extra])
        for labels in sorted(found):
            for instant, value in sorted(found[labels]):
                family.add_metric([*labels, *extra.values()], value, timestamp=instant)
        if family.samples:
            families.append(family)
    return generate_latest(Families(families))


def write_atomically(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename; unlike the state
    file's private one, the file gets the umask's mode (promtool may run as another user)."""
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
