"""The backfill's output: the ``exec_scenario_*`` families as OpenMetrics for promtool."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from prometheus_client.openmetrics.exposition import generate_latest

from ..client import Summary
from ..collector import CACHED, INFO_POSITION, TARGET_FAMILIES, Families, target_samples
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
    """The data and info families of ``/metrics``, each series' samples together and in
    time order, ``extra`` labels on every sample, ``derived`` values for their points."""
    extra = dict(extra or {})
    derived = derived or {}
    specs = TARGET_FAMILIES[:INFO_POSITION + 1]  # self-metrics describe the daemon
    series: list[dict[tuple[str, ...], dict[int, float]]] = [{} for _ in specs]
    for point in plan.points:
        summary = derived.get((point.target.key, point.instant))
        if summary is None:
            outcome = results.get(point.request)
            summary = outcome.answer if outcome is not None else None
        if summary is None:
            continue
        state = TargetState(target=point.target, summary=summary, up=True)
        # Every target of a scenario gives its info sample: one per scenario and instant.
        for index, labels, value in target_samples(state, fresh=True, info=True):
            if index <= INFO_POSITION:
                series[index].setdefault(labels, {})[point.instant] = value
    families = []
    for spec, found in zip(specs, series, strict=True):
        family = dataclasses.replace(spec, documentation=spec.documentation.replace(
            CACHED, AS_OF), labels=(*spec.labels, *extra)).family()
        for labels in sorted(found):
            for instant, value in sorted(found[labels].items()):
                family.add_metric([*labels, *extra.values()], value, timestamp=instant)
        if family.samples:
            families.append(family)
    return generate_latest(Families(families))

