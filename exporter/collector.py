"""Metric families built from a store snapshot. A scrape never calls the API.

Two collectors:

* :class:`SnapshotCollector` exports everything that changes only when the
  store changes (the scenario data and the per-target self-metrics), so its
  output can be rendered once per change and cached;
* :class:`LiveCollector` exports what moves with the clock alone: the
  requests left in the budget's rolling windows.

Metrics by scope: what concerns the whole workspace (a pause for 429/401/403,
failed requests by reason, requests by kind) has no target labels; a target
carries only its own: ``up``, last success, its error count, its source and,
only while it is down, ``last_error{reason}``. While a workspace-wide pause is
in force every target is shown down with the pause's reason (its own state
returns when the pause ends).

Counters start at 0 for their known label sets: each target's error counter,
``exec_exporter_errors_total`` for every reason of
:data:`exporter.client.REASONS`, and the API request counter for every kind of
:data:`exporter.store.REQUEST_KINDS` and code of :data:`API_CODES`, so
``increase()`` sees the first of each. ``exec_scenario_info`` has one sample
per scenario polled, fresh or not.

The live part, rendered on every scrape, is written directly:
:class:`ProcessMetrics` replaces prometheus_client's ``ProcessCollector`` (a
descriptor kept open for /proc/self/stat: ~7 us to read instead of ~32), and it and
:class:`LiveCollector` write their own bytes through :class:`PreRendered`
(~19 us a scrape for both, in process, instead of ~55 through
prometheus_client's families). Their ``collect()`` gives the same families
for any other consumer (the tests compare the two byte for byte).

Sample output::

    # HELP exec_scenario_average_best_score Average of participants' best scores (0-100 ...
    # TYPE exec_scenario_average_best_score gauge
    exec_scenario_average_best_score{cohort="all",scenario="discovery-call-it-director"} 74.2
    # HELP exec_exporter_target_up 1 if the last refresh of the target succeeded, else 0.
    # TYPE exec_exporter_target_up gauge
    exec_exporter_target_up{cohort="all",scenario="discovery-call-it-director"} 1.0
"""

from __future__ import annotations

import os
import resource
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from prometheus_client import exposition as text_writer
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.openmetrics import exposition as openmetrics_writer
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString

from . import __version__
from .client import RANKS, REASONS
from .scheduler import Clock
from .store import (
    CROSS_CHECK_RESULTS,
    PAUSE_REASONS,
    REQUEST_BUCKETS,
    REQUEST_KINDS,
    SOURCES,
    Latency,
    Snapshot,
    Store,
    TargetState,
)

TARGET_LABELS = ("scenario", "cohort")
CACHED = "as of the last successful poll"


@dataclass(frozen=True)
class FamilySpec:
    """The fixed description of one metric family: name, HELP, type and labels."""

    name: str  # for a counter, without the ``_total`` of its samples
    documentation: str
    labels: tuple[str, ...]
    type: str = "gauge"  # "gauge" or "counter"

    @property
    def sample_name(self) -> str:
        """The name its samples carry."""
        return self.name + "_total" if self.type == "counter" else self.name

    def family(self) -> GaugeMetricFamily | CounterMetricFamily:
        """An empty prometheus_client family of this description."""
        if self.type == "counter":
            return CounterMetricFamily(self.name, self.documentation, labels=self.labels)
        return GaugeMetricFamily(self.name, self.documentation, labels=self.labels)


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
_DATA_ATTRS = tuple(attr for _, _, attr in DATA_GAUGES)

# Every family with one or more samples per target, in exposition order. The
# scenario info family (one sample per scenario) goes between the data
# families and the self-metrics: see INFO_POSITION.
TARGET_FAMILIES: tuple[FamilySpec, ...] = (
    *(FamilySpec(name, help_text, TARGET_LABELS) for name, help_text, _ in DATA_GAUGES),
    FamilySpec("exec_scenario_average_best_rank",
               "Rank of the average best score, one-hot over gold/silver/bronze/unranked, "
               f"{CACHED}.", (*TARGET_LABELS, "rank")),
    FamilySpec("exec_scenario_rank_participants",
               f"Participants whose best score earns each rank, {CACHED}.",
               (*TARGET_LABELS, "rank")),
    FamilySpec("exec_exporter_target_up",
               "1 if the last refresh of the target succeeded, else 0.", TARGET_LABELS),
    FamilySpec("exec_exporter_target_last_success_timestamp_seconds",
               "Unix time the target's data was last fetched successfully.", TARGET_LABELS),
    FamilySpec("exec_exporter_target_errors",
               "Failed refreshes of the target (its own failures; workspace-wide refusals "
               "are in exec_exporter_errors_total).", TARGET_LABELS, "counter"),
    FamilySpec("exec_exporter_target_source",
               "Where the target's exported values come from: its own summary requests, or "
               "aggregated from the scenario's participants pull (state set).",
               (*TARGET_LABELS, "source")),
    FamilySpec("exec_exporter_target_last_error",
               "Why the target is down (present only while it is down); always 1.",
               (*TARGET_LABELS, "reason")),
)
(_RANK, _RANK_COUNTS, _UP, _LAST_SUCCESS, _ERRORS, _SOURCE,
 _LAST_ERROR) = range(len(DATA_GAUGES), len(TARGET_FAMILIES))
INFO_POSITION = _UP  # the info family is exposed just before TARGET_FAMILIES[INFO_POSITION]
# The lists whose malformed items are skipped and counted (exec_exporter_invalid_items_total).
LIST_KINDS = ("scenarios", "groups", "skills", "assignments")
INFO_FAMILY = FamilySpec("exec_scenario_info", "Scenario display name and id; always 1.",
                         ("scenario", "name", "id"))

# Status codes exec_exporter_api_requests_total starts at 0 (with ``error``: no
# response): those the API documents for the summary and listing requests, so
# increase() (ExecExporterRateLimited on 429) sees the first one. Other codes
# (5xx, unexpected 4xx) appear when first seen.
API_CODES = ("200", "400", "401", "403", "404", "429", "error")

# One sample: (index into TARGET_FAMILIES, label values in the family's order, value).
TargetSample = tuple[int, tuple[str, ...], float]


def is_fresh(state: TargetState, snapshot: Snapshot, now: float) -> bool:
    """Whether ``state`` has data young enough to export (the rule is the snapshot's)."""
    return snapshot.is_fresh(state, now)


def target_samples(state: TargetState, fresh: bool,
                   paused: str | None = None) -> list[TargetSample]:
    """Every sample one target contributes; its data only when ``fresh``.

    ``paused``: the reason of a workspace-wide pause in force, which shows the
    target down with that reason whatever its own state. The single definition of
    what a target exports: :class:`SnapshotCollector` and the exposition's direct
    renderer both build on it.
    """
    key = state.target.key
    out: list[TargetSample] = []
    summary = state.summary
    if fresh and summary is not None:
        for i, attr in enumerate(_DATA_ATTRS):
            value = getattr(summary, attr)
            if value is not None:  # a null field is no sample, not 0
                out.append((i, key, value))
        best = summary.average_best_rank
        if best is not None:
            out.extend((_RANK, (*key, r), 1 if r == best else 0) for r in RANKS)
        counts = summary.rank_participants
        if counts is not None:
            out.extend((_RANK_COUNTS, (*key, r), counts.get(r, 0)) for r in RANKS)
    up = state.up and paused is None
    out.append((_UP, key, 1 if up else 0))
    if state.last_success is not None:
        out.append((_LAST_SUCCESS, key, state.last_success))
    out.append((_ERRORS, key, sum(state.errors.values())))  # from 0: increase() sees the 1st
    out.extend((_SOURCE, (*key, name), 1 if name == state.source else 0) for name in SOURCES)
    reason = paused or (None if state.up else state.last_error)
    if reason is not None:
        out.append((_LAST_ERROR, (*key, reason), 1))
    return out


def info_samples(states: Iterable[TargetState]) -> Iterator[tuple[str, str, str]]:
    """Label values of ``exec_scenario_info``: one per scenario, fresh or not.

    ``name`` is the display name (configured, or from the scenario list), ``""``
    while none is known; ``id`` the scenario's UUID when known, else its id or slug.
    """
    seen: set[str] = set()
    for state in states:
        target = state.target
        if target.scenario not in seen:
            seen.add(target.scenario)
            yield (target.scenario, target.display_name or "",
                   target.scenario_uuid or target.scenario)


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
        families = [spec.family() for spec in TARGET_FAMILIES]
        for state in snapshot.targets:
            for i, labels, value in target_samples(state, is_fresh(state, snapshot, now),
                                                   snapshot.pause_reason):
                families[i].add_metric(labels, value)
        info = INFO_FAMILY.family()
        for labels in info_samples(snapshot.targets):
            info.add_metric(labels, 1)
        yield from families[:INFO_POSITION]
        yield info
        yield from families[INFO_POSITION:]
        yield from exporter_families(snapshot, now)


def exporter_families(snapshot: Snapshot, now: float) -> Iterator[Metric]:
    """The exporter-wide families (API requests, latency, schedule, reloads, build)."""
    requests = CounterMetricFamily(
        "exec_exporter_api_requests",
        "Requests sent to the Exec API (every one counts against the quota), by kind of "
        "request and HTTP status or 'error'.", labels=("kind", "code"))
    counts = {(kind, code): 0 for kind in REQUEST_KINDS for code in API_CODES}
    counts.update(snapshot.api_requests)
    for (kind, code), count in sorted(counts.items()):
        requests.add_metric((kind, code), count)
    yield requests

    latency = HistogramMetricFamily("exec_exporter_api_request_duration_seconds",
                                    "Latency of Exec API requests, by kind of request.",
                                    labels=("kind",))
    for kind, histogram in sorted((dict.fromkeys(REQUEST_KINDS, Latency())
                                   | dict(snapshot.latency)).items()):
        buckets = [(_bound(b), c) for b, c in zip(REQUEST_BUCKETS, histogram.buckets,
                                                    strict=True)]
        buckets.append(("+Inf", histogram.count))
        latency.add_metric((kind,), buckets, histogram.total)
    yield latency

    errors = CounterMetricFamily(
        "exec_exporter_errors",
        "Failed API requests of any kind, by reason (workspace-wide refusals included).",
        labels=("reason",))
    for reason, count in (dict.fromkeys(REASONS, 0) | dict(snapshot.errors)).items():
        errors.add_metric((reason,), count)
    yield errors

    paused = GaugeMetricFamily(
        "exec_exporter_api_paused",
        "1 while all requests are paused for this reason (429 rate_limited: until "
        "retry_after; 401 unauthorized, 403 forbidden: until a probe succeeds); state set.",
        labels=("reason",))
    for reason in PAUSE_REASONS:
        paused.add_metric((reason,), 1 if snapshot.pause_reason == reason else 0)
    yield paused

    yield GaugeMetricFamily("exec_exporter_refresh_interval_seconds",
                            "Effective refresh interval per target after budget stretching.",
                            value=snapshot.interval)
    yield GaugeMetricFamily("exec_exporter_max_staleness_seconds",
                            "Data older than this is no longer exported: max_staleness, "
                            "default 3 x the effective refresh interval, never under 2 x.",
                            value=snapshot.staleness_limit(now))
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
    invalid = CounterMetricFamily(
        "exec_exporter_invalid_items",
        "Malformed items skipped in the workspace lists (the rest of the list is used).",
        labels=("kind",))
    for kind, count in sorted((dict.fromkeys(LIST_KINDS, 0)
                               | dict(snapshot.invalid_items)).items()):
        invalid.add_metric((kind,), count)
    yield invalid
    yield GaugeMetricFamily("exec_exporter_config_last_reload_successful",
                            "Whether the last configuration reload succeeded.",
                            value=1 if snapshot.reload_ok else 0)
    reload_time = GaugeMetricFamily("exec_exporter_config_last_reload_success_timestamp_seconds",
                                    "Unix time of the last successful configuration load.")
    if snapshot.reload_time is not None:
        reload_time.add_metric((), snapshot.reload_time)
    yield reload_time
    # Derived cohorts: verdicts from 0 for every polled scenario, and the plan's cost.
    checks = CounterMetricFamily(
        "exec_exporter_cross_checks",
        "Cross-checks of derived values against the summary endpoint with equal counts, "
        "by verdict.", labels=("scenario", "result"))
    scenarios = dict.fromkeys(state.target.scenario for state in snapshot.targets)
    verdicts = {(s, r): 0 for s in scenarios for r in CROSS_CHECK_RESULTS}
    verdicts.update(snapshot.cross_checks)
    for (scenario, result), count in sorted(verdicts.items()):
        checks.add_metric((scenario, result), count)
    yield checks
    if snapshot.plan_requests_per_cycle is not None:
        yield GaugeMetricFamily("exec_exporter_plan_requests_per_cycle",
                                "Requests one full refresh of every target costs under the "
                                "current plan, member lists and cross-checks included.",
                                value=snapshot.plan_requests_per_cycle)
    build = GaugeMetricFamily("exec_exporter_build_info", "Exporter version; always 1.",
                              labels=("version",))
    build.add_metric((__version__,), 1)
    yield build


def _bound(value: float) -> str:
    return repr(float(value))


class FixedFamily(Metric):
    """A family of a constant, valid name, built without prometheus_client's name check.

    ``Metric.__init__`` validates the name with a regular expression on every
    call: a noticeable share of a scrape's live part, spent on constants.
    """

    def __init__(self, name: str, documentation: str, typ: str,
                 samples: list[Sample]) -> None:
        self.name = name
        self.documentation = documentation
        self.unit = ""
        self.type = typ
        self.samples = samples


def _one(name: str, documentation: str, value: float, typ: str = "gauge") -> FixedFamily:
    sample = name + "_total" if typ == "counter" else name
    return FixedFamily(name, documentation, typ, [Sample(sample, {}, value)])


class Families(Collector):
    """A collector over fixed families, to hand them to prometheus_client's writers."""

    def __init__(self, families: Iterable[Metric]) -> None:
        self._families = list(families)

    def collect(self) -> Iterator[Metric]:
        return iter(self._families)


def generate(collector: Collector, openmetrics: bool) -> bytes:
    """prometheus_client's own rendering, without OpenMetrics' closing ``# EOF``."""
    if openmetrics:
        return openmetrics_writer.generate_latest(collector).removesuffix(b"# EOF\n")
    return text_writer.generate_latest(collector)


class PreRendered:
    """Plain families of constant names, labels and help whose bytes are written
    directly, per scrape: the sample lines up to their values are rendered once by
    prometheus_client (so the bytes are its own), the values are filled in with its
    ``floatToGoString``.

    What it buys (in process, gzip scrape at 2,000 targets over loopback, 3,000
    scrapes): ~125 us a scrape with the live part going through prometheus_client's
    families, ~70 us with no live part at all; written this way the live part costs
    ~10 us instead of ~55.
    """

    def __init__(self, families: list[tuple[str, str, str, list[dict[str, str]]]]) -> None:
        # (name, help, type, the label sets of its samples in order)
        self._families = families
        self._parts: dict[bool, list[bytes]] = {}
        self._templates: dict[bool, str] = {}

    def _prefixes(self, openmetrics: bool) -> list[bytes]:
        """Per sample, the bytes before its value (its family's HELP/TYPE first)."""
        parts = self._parts.get(openmetrics)
        if parts is None:
            parts = []
            for name, documentation, typ, label_sets in self._families:
                sample = name + "_total" if typ == "counter" else name
                header = generate(Families([FixedFamily(name, documentation, typ, [])]),
                                  openmetrics)
                for i, labels in enumerate(label_sets):
                    line = generate(Families([FixedFamily(name, documentation, typ,
                                                          [Sample(sample, labels, 0.0)])]),
                                    openmetrics).removeprefix(header)
                    assert line.endswith(b" 0.0\n"), line
                    parts.append((header if i == 0 else b"") + line[:-4])
            self._parts[openmetrics] = parts
        return parts

    def render(self, values: list[float], openmetrics: bool) -> bytes:
        """The families with ``values`` (one per sample, in order).

        One ``%`` template for all samples instead of a piece per sample: ~0.4 us
        less for six samples in isolation; side by side in the server
        (``ab_scrape.py``, six runs, roles swapped in three), a gzip scrape with it
        took 0.85-1.02x the time of one without, ~0.95x in the median of runs."""
        prefixes = self._prefixes(openmetrics)
        if len(values) != len(prefixes):
            raise ValueError(f"{len(values)} values for {len(prefixes)} samples")
        template = self._templates.get(openmetrics)
        if template is None:
            template = self._templates[openmetrics] = "".join(
                prefix.decode("utf-8").replace("%", "%%") + "%s\n" for prefix in prefixes)
        return (template % tuple(map(floatToGoString, values))).encode()


class ProcessMetrics(Collector):
    """The ``process_*`` families of prometheus_client's ``ProcessCollector``, cheaper.

    Same names, types, help and meaning (Linux only, like the original), for a
    quarter of the cost per scrape (~15 µs instead of ~50 µs): ``/proc/self/stat``
    is re-read through a descriptor kept open (``pread``) instead of opened and
    closed each time, and the descriptor limit comes from ``getrlimit`` instead of
    parsing ``/proc/self/limits``. The descriptor count lists ``/proc/self/fd`` as
    prometheus_client does: its size (Linux 6.2+, one ``fstat``, ~3 us less) counted
    more descriptors than the listing while other threads opened and closed sockets.
    Without ``/proc`` it exports nothing.
    """

    def __init__(self, proc: str = "/proc") -> None:
        self._proc = proc
        self._ticks = float(os.sysconf("SC_CLK_TCK")) if hasattr(os, "sysconf") else 100.0
        self._pagesize = resource.getpagesize()
        self._stat_fd: int | None = None
        self._btime = 0.0
        try:
            with open(os.path.join(proc, "stat"), "rb") as stat:
                for line in stat:
                    if line.startswith(b"btime "):
                        self._btime = float(line.split()[1])
                        break
            self._stat_fd = os.open(os.path.join(proc, "self", "stat"), os.O_RDONLY)
        except OSError:
            self._stat_fd = None

    def describe(self) -> list[Metric]:
        return []

    _FAMILIES = (
        ("process_virtual_memory_bytes", "Virtual memory size in bytes.", "gauge"),
        ("process_resident_memory_bytes", "Resident memory size in bytes.", "gauge"),
        ("process_start_time_seconds", "Start time of the process since unix epoch in seconds.",
         "gauge"),
        ("process_cpu_seconds", "Total user and system CPU time spent in seconds.", "counter"),
        ("process_open_fds", "Number of open file descriptors.", "gauge"),
        ("process_max_fds", "Maximum number of open file descriptors.", "gauge"),
    )
    _RENDERED = PreRendered([(name, doc, typ, [{}]) for name, doc, typ in _FAMILIES])

    def _values(self) -> list[float] | None:
        """The six values in :attr:`_FAMILIES`' order, or None without /proc."""
        if self._stat_fd is None or not self._btime:
            return None
        try:
            parts = os.pread(self._stat_fd, 4096, 0).rsplit(b")", 1)[-1].split()
            open_fds = len(os.listdir(os.path.join(self._proc, "self", "fd")))
        except OSError:
            return None
        ticks = self._ticks
        return [float(parts[20]), float(parts[21]) * self._pagesize,
                float(parts[19]) / ticks + self._btime,
                (float(parts[11]) + float(parts[12])) / ticks, float(open_fds),
                float(resource.getrlimit(resource.RLIMIT_NOFILE)[0])]

    def collect(self) -> Iterator[Metric]:
        values = self._values()
        if values is None:
            return
        for (name, documentation, typ), value in zip(self._FAMILIES, values, strict=True):
            yield _one(name, documentation, value, typ)

    def exposition(self, openmetrics: bool) -> bytes:
        """What :meth:`collect` gives, written directly (see :class:`PreRendered`)."""
        values = self._values()
        return b"" if values is None else self._RENDERED.render(values, openmetrics)

    def close(self) -> None:
        """Release the kept descriptor."""
        if self._stat_fd is not None:
            os.close(self._stat_fd)
            self._stat_fd = None


class LiveCollector(Collector):
    """Self-metrics that change with time alone (the budget's rolling windows)."""

    def __init__(self, remaining: Callable[[float], tuple[int, int]], clock: Clock) -> None:
        self.remaining = remaining
        self.clock = clock

    def describe(self) -> list[Metric]:
        return []

    _NAME = "exec_exporter_api_budget_remaining"
    _HELP = "Requests left in the exporter's own budget, by rolling window."
    _RENDERED = PreRendered([(_NAME, _HELP, "gauge", [{"window": "minute"}, {"window": "day"}])])

    def collect(self) -> Iterator[Metric]:
        minute, day = self.remaining(self.clock.time())
        name = self._NAME
        yield FixedFamily(name, self._HELP, "gauge", [Sample(name, {"window": "minute"}, minute),
                                                       Sample(name, {"window": "day"}, day)])

    def exposition(self, openmetrics: bool) -> bytes:
        """What :meth:`collect` gives, written directly (see :class:`PreRendered`)."""
        minute, day = self.remaining(self.clock.time())
        return self._RENDERED.render([minute, day], openmetrics)
