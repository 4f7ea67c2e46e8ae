"""Metric families built from a store snapshot. A scrape never calls the API.

:class:`SnapshotCollector` exports what changes only with the store (scenario data,
per-target and exporter-wide self-metrics); the exposition renders it once per change.
:class:`LiveCollector` (the budget's rolling windows) and :class:`ProcessMetrics` move
with the clock and write their own bytes per scrape (:class:`PreRendered`). Which metric
has which scope and labels: docs/metrics.md; what each trick buys: docs/performance.md.
"""

from __future__ import annotations

import contextlib
import os
import resource
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
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
from .targets import Target

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

    def family(self, samples: Iterable[tuple[tuple[str, ...], float]] = (),
               ) -> GaugeMetricFamily | CounterMetricFamily:
        """A prometheus_client family of this description with ``samples`` (label values,
        value)."""
        kind = CounterMetricFamily if self.type == "counter" else GaugeMetricFamily
        family = kind(self.name, self.documentation, labels=self.labels)
        for labels, value in samples:
            family.add_metric(labels, value)
        return family


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

INFO_FAMILY = FamilySpec("exec_scenario_info", "Scenario display name and id; always 1.",
                         ("scenario", "name", "id"))
# Every family with samples per target, in exposition order; the scenario info family
# (a sample per scenario, on its first target) between the data and the self-metrics.
TARGET_FAMILIES: tuple[FamilySpec, ...] = (
    *(FamilySpec(name, help_text, TARGET_LABELS) for name, help_text, _ in DATA_GAUGES),
    FamilySpec("exec_scenario_average_best_rank",
               "Rank of the average best score, one-hot over gold/silver/bronze/unranked, "
               f"{CACHED}.", (*TARGET_LABELS, "rank")),
    FamilySpec("exec_scenario_rank_participants",
               f"Participants whose best score earns each rank, {CACHED}.",
               (*TARGET_LABELS, "rank")),
    INFO_FAMILY,
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
(_RANK, _RANK_COUNTS, INFO_POSITION, _UP, _LAST_SUCCESS, _ERRORS, _SOURCE,
 _LAST_ERROR) = range(len(DATA_GAUGES), len(TARGET_FAMILIES))
# The lists whose malformed items are skipped and counted (exec_exporter_invalid_items_total).
LIST_KINDS = ("scenarios", "groups", "skills", "assignments")

# Status codes exec_exporter_api_requests_total starts at 0 (with ``error``: no
# response): those the API documents for the summary and listing requests, so
# increase() (ExecExporterRateLimited on 429) sees the first one. Other codes
# (5xx, unexpected 4xx) appear when first seen.
API_CODES = ("200", "400", "401", "403", "404", "429", "error")

# One sample: (index into TARGET_FAMILIES, label values in the family's order, value).
TargetSample = tuple[int, tuple[str, ...], float]


def target_samples(state: TargetState, fresh: bool, paused: str | None = None,
                   info: bool = False) -> list[TargetSample]:
    """Every sample one target contributes: its data only when ``fresh``, the scenario's
    info with ``info`` (the first target of its scenario). ``paused``: the reason of a
    workspace-wide pause in force, which shows the target down with that reason."""
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
    if info:
        out.append((INFO_POSITION, info_labels(state.target), 1))
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


def info_labels(target: Target) -> tuple[str, str, str]:
    """Label values of ``exec_scenario_info``: the display name (configured, or from the
    scenario list; ``""`` while none is known), the scenario's UUID if known, else its
    id or slug."""
    return target.scenario, target.display_name or "", target.scenario_uuid or target.scenario


class SnapshotCollector(Collector):
    """Scenario data and per-target self-metrics from the store's snapshot."""

    def __init__(self, store: Store, clock: Clock) -> None:
        self.store = store
        self.clock = clock

    def collect(self) -> Iterator[Metric]:
        snapshot, now = self.store.snapshot(), self.clock.time()
        families = [spec.family() for spec in TARGET_FAMILIES]
        seen: set[str] = set()
        for state in snapshot.targets:
            for i, labels, value in target_samples(
                    state, snapshot.is_fresh(state, now), snapshot.pause_reason,
                    info=state.target.scenario not in seen):
                families[i].add_metric(labels, value)
            seen.add(state.target.scenario)
        yield from families
        yield from exporter_families(snapshot, now)


def _by_label(counts: Mapping[str, float]) -> Iterator[tuple[tuple[str], float]]:
    return (((label,), value) for label, value in counts.items())


_REQUESTS = FamilySpec(
    "exec_exporter_api_requests", "Requests sent to the Exec API (every one counts against "
    "the quota), by kind of request and HTTP status or 'error'.", ("kind", "code"), "counter")
_REQUEST_ERRORS = FamilySpec(
    "exec_exporter_errors", "Failed API requests of any kind, by reason (workspace-wide "
    "refusals included).", ("reason",), "counter")
_PAUSED = FamilySpec(
    "exec_exporter_api_paused", "1 while all requests are paused for this reason (429 "
    "rate_limited: until retry_after; 401 unauthorized, 403 forbidden: until a probe "
    "succeeds); state set.", ("reason",))
_INTERVAL = FamilySpec("exec_exporter_refresh_interval_seconds",
                       "Effective refresh interval per target after budget stretching.", ())
_STALENESS = FamilySpec("exec_exporter_max_staleness_seconds",
                        "Data older than this is no longer exported: max_staleness, default "
                        "3 x the effective refresh interval, never under 2 x.", ())
_TARGETS = FamilySpec("exec_exporter_targets", "Targets being polled.", ())
_DROPPED = FamilySpec("exec_exporter_targets_dropped", "Targets left out by max_targets.", ())
_DISCOVERY = FamilySpec("exec_exporter_discovery_last_success_timestamp_seconds",
                        "Unix time a discovery listing last completed.", ("kind",))
_INVALID = FamilySpec("exec_exporter_invalid_items", "Malformed items skipped in the "
                      "workspace lists (the rest of the list is used).", ("kind",), "counter")
_RELOAD_OK = FamilySpec("exec_exporter_config_last_reload_successful",
                        "Whether the last configuration reload succeeded.", ())
_RELOAD_TIME = FamilySpec("exec_exporter_config_last_reload_success_timestamp_seconds",
                          "Unix time of the last successful configuration load.", ())
_CROSS_CHECKS = FamilySpec(
    "exec_exporter_cross_checks", "Cross-checks of derived values against the summary "
    "endpoint with equal counts, by verdict.", ("scenario", "result"), "counter")
_PLAN_COST = FamilySpec("exec_exporter_plan_requests_per_cycle",
                        "Requests one full refresh of every target costs under the current "
                        "plan, member lists and cross-checks included.", ())
_BUILD = FamilySpec("exec_exporter_build_info", "Exporter version; always 1.", ("version",))


def exporter_families(snapshot: Snapshot, now: float) -> Iterator[Metric]:
    """The exporter-wide families (API requests, latency, schedule, reloads, build)."""
    requests = {(kind, code): 0 for kind in REQUEST_KINDS for code in API_CODES}
    yield _REQUESTS.family(sorted((requests | dict(snapshot.api_requests)).items()))
    latency = HistogramMetricFamily("exec_exporter_api_request_duration_seconds",
                                    "Latency of Exec API requests, by kind of request.",
                                    labels=("kind",))
    for kind, histogram in sorted((dict.fromkeys(REQUEST_KINDS, Latency())
                                   | dict(snapshot.latency)).items()):
        buckets = [(repr(float(bound)), count)
                   for bound, count in zip(REQUEST_BUCKETS, histogram.buckets, strict=True)]
        latency.add_metric((kind,), [*buckets, ("+Inf", histogram.count)], histogram.total)
    yield latency
    yield _REQUEST_ERRORS.family(_by_label(dict.fromkeys(REASONS, 0) | dict(snapshot.errors)))
    yield _PAUSED.family(((reason,), 1 if snapshot.pause_reason == reason else 0)
                         for reason in PAUSE_REASONS)
    yield _INTERVAL.family([((), snapshot.interval)])
    yield _STALENESS.family([((), snapshot.staleness_limit(now))])
    yield _TARGETS.family([((), len(snapshot.targets))])
    yield _DROPPED.family([((), snapshot.targets_dropped)])
    yield _DISCOVERY.family(_by_label(dict(sorted(snapshot.discovery_success.items()))))
    yield _INVALID.family(_by_label(dict(sorted((dict.fromkeys(LIST_KINDS, 0)
                                                 | dict(snapshot.invalid_items)).items()))))
    yield _RELOAD_OK.family([((), 1 if snapshot.reload_ok else 0)])
    reload_time = snapshot.reload_time
    yield _RELOAD_TIME.family([] if reload_time is None else [((), reload_time)])
    # Verdicts from 0 for every polled scenario.
    scenarios = dict.fromkeys(state.target.scenario for state in snapshot.targets)
    verdicts = {(s, r): 0 for s in scenarios for r in CROSS_CHECK_RESULTS}
    yield _CROSS_CHECKS.family(sorted((verdicts | dict(snapshot.cross_checks)).items()))
    if snapshot.plan_requests_per_cycle is not None:
        yield _PLAN_COST.family([((), snapshot.plan_requests_per_cycle)])
    yield _BUILD.family([((__version__,), 1)])


class FixedFamily(Metric):
    """A family of a constant, valid name, built without prometheus_client's name check
    (a regular expression per call: a noticeable share of a scrape's live part)."""

    def __init__(self, name: str, documentation: str, typ: str,
                 samples: list[Sample]) -> None:
        self.name = name
        self.documentation = documentation
        self.unit = ""
        self.type = typ
        self.samples = samples


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


class PreRendered(Collector):
    """Plain families of constant names, labels and help, written directly per scrape
    (``exposition()``): the sample lines up to their values are rendered once by
    prometheus_client (so the bytes are its own), the values filled in with its
    ``floatToGoString``. ``collect()`` gives the same families to prometheus_client."""

    def __init__(self, families: list[tuple[str, str, str, list[dict[str, str]]]]) -> None:
        # (name, help, type, the label sets of its samples in order)
        self._families = families
        self._count = sum(len(label_sets) for *_, label_sets in families)
        self._templates: dict[bool, str] = {}

    def families(self, values: Sequence[float]) -> list[Metric]:
        """The families with ``values`` (one per sample, in order), for prometheus_client."""
        rest = iter(values)
        return [FixedFamily(name, documentation, typ,
                            [Sample(name + "_total" if typ == "counter" else name, labels,
                                    next(rest)) for labels in label_sets])
                for name, documentation, typ, label_sets in self._families]

    def _template(self, openmetrics: bool) -> str:
        """One ``%`` template of every sample line, each family's HELP/TYPE first."""
        template = self._templates.get(openmetrics)
        if template is None:
            pieces = []
            for family in self.families([0.0] * self._count):
                samples, family.samples = family.samples, []
                header = generate(Families([family]), openmetrics)
                pieces.append(header.decode("utf-8").replace("%", "%%"))
                for sample in samples:
                    family.samples = [sample]
                    line = generate(Families([family]), openmetrics).removeprefix(header)
                    assert line.endswith(b" 0.0\n"), line
                    pieces.append(line[:-4].decode("utf-8").replace("%", "%%") + "%s\n")
            template = self._templates[openmetrics] = "".join(pieces)
        return template

    def render(self, values: list[float], openmetrics: bool) -> bytes:
        """The families with ``values`` (one per sample, in order)."""
        if len(values) != self._count:
            raise ValueError(f"{len(values)} values for {self._count} samples")
        template = self._templates.get(openmetrics) or self._template(openmetrics)
        return (template % tuple(map(floatToGoString, values))).encode()

    def values(self) -> list[float] | None:
        """The samples' values now, in order (None: nothing to export)."""
        raise NotImplementedError

    def collect(self) -> Iterator[Metric]:
        values = self.values()
        return iter(() if values is None else self.families(values))

    def exposition(self, openmetrics: bool) -> bytes:
        """What :meth:`collect` gives, written directly."""
        values = self.values()
        return b"" if values is None else self.render(values, openmetrics)


class ProcessMetrics(PreRendered):
    """The ``process_*`` families of prometheus_client's ``ProcessCollector``, cheaper
    (Linux only, like the original; without ``/proc`` it exports nothing).

    ``/proc/self/stat`` is re-read through a descriptor kept open (``pread``) and the
    descriptor limit comes from ``getrlimit``; the descriptor count lists
    ``/proc/self/fd`` as prometheus_client does (its ``fstat`` size counted more while
    other threads opened and closed sockets)."""

    def __init__(self, proc: str = "/proc") -> None:
        super().__init__([(name, documentation, typ, [{}]) for name, documentation, typ in (
            ("process_virtual_memory_bytes", "Virtual memory size in bytes.", "gauge"),
            ("process_resident_memory_bytes", "Resident memory size in bytes.", "gauge"),
            ("process_start_time_seconds",
             "Start time of the process since unix epoch in seconds.", "gauge"),
            ("process_cpu_seconds", "Total user and system CPU time spent in seconds.",
             "counter"),
            ("process_open_fds", "Number of open file descriptors.", "gauge"),
            ("process_max_fds", "Maximum number of open file descriptors.", "gauge"),
        )])
        self._proc = proc
        self._ticks = float(os.sysconf("SC_CLK_TCK")) if hasattr(os, "sysconf") else 100.0
        self._pagesize = resource.getpagesize()
        self._stat_fd: int | None = None
        self._fd_dir = -1
        self._sized = False
        self._btime = 0.0
        with contextlib.suppress(OSError):
            with open(os.path.join(proc, "stat"), "rb") as stat:
                for line in stat:
                    if line.startswith(b"btime "):
                        self._btime = float(line.split()[1])
                        break
            self._stat_fd = os.open(os.path.join(proc, "self", "stat"), os.O_RDONLY)
            self._fd_dir = os.open(os.path.join(proc, "self", "fd"), os.O_RDONLY)
            # Linux >= 6.2 gives the count as the size of /proc/self/fd: one fstat
            # instead of a listing (~3 us warm, ~45 us of a scrape under load). Used
            # when it agrees with a listing (any other kernel or directory: listed).
            # (a listing counts the descriptor it reads the directory through).
            listed = len(os.listdir(os.path.join(proc, "self", "fd")))
            self._sized = os.fstat(self._fd_dir).st_size == listed - 1

    def _open_fds(self) -> int:
        if self._sized:
            return os.fstat(self._fd_dir).st_size
        return len(os.listdir(os.path.join(self._proc, "self", "fd")))

    def values(self) -> list[float] | None:
        if self._stat_fd is None or not self._btime:
            return None
        try:
            parts = os.pread(self._stat_fd, 4096, 0).rsplit(b")", 1)[-1].split()
            open_fds = self._open_fds()
        except OSError:
            return None
        ticks = self._ticks
        return [float(parts[20]), float(parts[21]) * self._pagesize,
                float(parts[19]) / ticks + self._btime,
                (float(parts[11]) + float(parts[12])) / ticks, float(open_fds),
                float(resource.getrlimit(resource.RLIMIT_NOFILE)[0])]


class LiveCollector(PreRendered):
    """Self-metrics that change with time alone (the budget's rolling windows)."""

    def __init__(self, remaining: Callable[[float], tuple[int, int]], clock: Clock) -> None:
        super().__init__([("exec_exporter_api_budget_remaining",
                           "Requests left in the exporter's own budget, by rolling window.",
                           "gauge", [{"window": "minute"}, {"window": "day"}])])
        self.remaining = remaining
        self.clock = clock

    def values(self) -> list[float]:
        minute, day = self.remaining(self.clock.time())
        return [minute, day]
