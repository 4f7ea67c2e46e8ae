"""The cached, directly rendered /metrics is what prometheus_client would write.

Every check compares :class:`~exporter.exposition.Exposition` output byte for
byte with ``generate_latest`` (text and OpenMetrics) over a registry holding
the same collectors, gzip decompressed, through store changes, reloads and
staleness expiry on a fake clock.
"""

from __future__ import annotations

import gzip
import os
import threading
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import FakeClock, metric_values
from prometheus_client import ProcessCollector
from prometheus_client import exposition as text_format
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
    StateSetMetricFamily,
    SummaryMetricFamily,
)
from prometheus_client.openmetrics import exposition as openmetrics_format
from prometheus_client.registry import Collector, CollectorRegistry
from prometheus_client.samples import Sample

from exporter.client import Summary
from exporter.collector import (
    FixedFamily,
    LiveCollector,
    PreRendered,
    ProcessMetrics,
    SnapshotCollector,
)
from exporter.config import CohortConfig
from exporter.exposition import Exposition
from exporter.store import Store
from exporter.targets import Target

INTERVAL = 900.0
MANY = 128  # enough targets for several scenarios of every kind below
FULL = Summary(participants=45, sessions=128, average_best_score=74.2,
               average_best_rank="silver", average_score_lift=18.5, practice_seconds=44520.0,
               average_session_duration_seconds=348.0,
               rank_participants={"gold": 12, "silver": 18, "unranked": 5})
SPARSE = Summary(participants=3, sessions=None, average_best_score=None,
                 average_best_rank=None, average_score_lift=-2.5, practice_seconds=1e-7,
                 average_session_duration_seconds=1.5e21, rank_participants=None)


def cohort(name: str) -> CohortConfig:
    # model_construct: label values the configuration would refuse, to test escaping.
    return CohortConfig.model_construct(name=name)


def targets(count: int, odd: bool = True) -> list[Target]:
    """``count`` targets over scenarios of 3 cohorts; a few with awkward names."""
    out = []
    for i in range(count):
        scenario = f"scenario-{i // 3:03d}"
        name: str | None = f"Scenario {i // 3}"
        uuid = None
        if odd and i // 3 == 1:
            scenario, name = 'we"ird\\slug\nx', 'Quote " back\\slash\nnewline — ünïcode'
        if i // 3 == 2:
            name = None  # no display name: no exec_scenario_info
        if i // 3 == 4:
            uuid = "0b1e2c3d-0000-4000-8000-000000000004"  # a discovered scenario
        cohort_name = ("all", "sales team", "q3:pilot@acme.com")[i % 3]
        out.append(Target(scenario=scenario, cohort=cohort(cohort_name), display_name=name,
                          scenario_uuid=uuid))
    return out


class FixedBudget:
    """Remaining requests as a fake clock's function, for LiveCollector."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock

    def remaining(self, now: float) -> tuple[int, int]:
        return int(now) % 54, int(now) % 900


class Odd(Collector):
    """Families the live renderer must hand to prometheus_client unchanged."""

    def collect(self) -> Iterator[Metric]:
        yield HistogramMetricFamily("odd_latency_seconds", "A histogram.",
                                    buckets=[("0.1", 1), ("+Inf", 3)], sum_value=0.7)
        yield CounterMetricFamily("odd_created", "A counter with a created time.", value=3,
                                  created=1_700_000_000.5)
        yield GaugeMetricFamily("odd_size_bytes", "A gauge with a unit.", value=5, unit="bytes")
        yield InfoMetricFamily("odd_build", "An info family.", value={"v": "1"})
        yield StateSetMetricFamily("odd_state", "A state set.", value={"a": True, "b": False})
        yield SummaryMetricFamily("odd_summary", "A summary.", count_value=2, sum_value=1.5)
        plain = GaugeMetricFamily("odd_plain", 'Help with "quotes" and \\ and\nnewline.',
                                  labels=["b", "a"])
        plain.add_metric(["x\"y", "z\\\n"], float("inf"))
        plain.add_metric(["1", "2"], float("nan"))
        plain.add_metric(["3", "4"], -0.0)
        yield plain
        stamped = GaugeMetricFamily("odd_stamped", "With a timestamp.", labels=["k"])
        stamped.add_metric(["v"], 1.0, timestamp=1_700_000_000)
        yield stamped
        yield GaugeMetricFamily("odd_empty", "No samples at all.", labels=["k"])
        yield GaugeMetricFamily("odd_single", "One plain sample.", value=1e-9)
        yield CounterMetricFamily("odd_single", "One plain counter sample.", value=12)
        yield GaugeMetricFamily("odd_single", "Same name, other help.", value=float("-inf"))


class Setup:
    """A store, the exposition under test and a reference registry of the same collectors."""

    def __init__(self, clock: FakeClock, count: int, odd_live: bool = True) -> None:
        self.clock = clock
        self.store = Store()
        self.targets = targets(count)
        self.store.set_targets(self.targets)
        self.store.record_schedule(INTERVAL, {})
        self.store.record_reload(True, clock.now)
        budget = FixedBudget(clock)
        # The budget's collector writes its own bytes; Odd goes family by family.
        live: list[Collector] = [LiveCollector(budget.remaining, clock)]
        if odd_live:
            live.append(Odd())
        collector = SnapshotCollector(self.store, clock)
        self.exposition = Exposition(collector, live, clock)
        self.reference = CollectorRegistry(auto_describe=False)
        self.reference.register(collector)
        self.reference.register(LiveCollector(budget.remaining, clock))
        if odd_live:
            self.reference.register(Odd())

    def check(self) -> str:
        """Assert all four renderings match; return the text exposition."""
        text = text_format.generate_latest(self.reference)
        om = openmetrics_format.generate_latest(self.reference)
        assert self.exposition.render() == text
        assert self.exposition.render(openmetrics=True) == om
        assert gunzip(self.exposition.render(gzip=True)) == text
        assert gunzip(self.exposition.render(openmetrics=True, gzip=True)) == om
        return text.decode()

    def succeed(self, index: int, summary: Summary = FULL, age: float = 0.0) -> None:
        self.store.record_success(self.targets[index].key, summary, self.clock.now - age)


def gunzip(data: bytes) -> bytes:
    """Decompress, insisting on exactly one well-formed gzip member."""
    decompressor = zlib.decompressobj(31)
    out = decompressor.decompress(data) + decompressor.flush()
    assert decompressor.eof and decompressor.unused_data == b""
    assert gzip.decompress(data) == out  # checks CRC-32 and length as well
    return out


@pytest.fixture
def big(clock: FakeClock) -> Setup:
    """Some 300 targets, most with data, some failing, some never polled."""
    s = Setup(clock, 2 * MANY + 50)
    for i in range(len(s.targets)):
        if i % 17 == 5:
            continue  # never polled
        s.succeed(i, SPARSE if i % 5 == 0 else FULL, age=i)
        if i % 11 == 0:
            s.store.record_failure(s.targets[i].key, "timeout", "read timed out", clock.now)
        if i % 23 == 0:
            s.store.record_failure(s.targets[i].key, "server_error", "HTTP 502", clock.now)
    for kind, code in (("summary", "200"), ("cross_check", "200"), ("members", "429"),
                       ("list_skills", "error")):
        s.store.record_request(kind, code, 0.3, None if code == "200" else "timeout")
    s.store.record_discovery("scenarios", clock.now)
    return s


def test_empty_store(clock: FakeClock) -> None:
    s = Setup(clock, 0)
    s.check()


def test_identical_to_prometheus_client(big: Setup) -> None:
    text = big.check()
    values = metric_values(text)
    assert values  # and it parses
    assert '\\"ird\\\\slug\\nx' in text  # label values escaped as prometheus_client does
    assert 'id="0b1e2c3d-0000-4000-8000-000000000004"' in text


def test_after_changes(big: Setup, clock: FakeClock) -> None:
    big.check()
    clock.advance(30)
    big.succeed(MANY + 3, SPARSE)  # a change in the middle
    big.check()
    big.store.record_request("participants", "200", 0.1)  # the exporter-wide part alone
    big.check()
    big.store.record_failure(big.targets[0].key, "not_found", "gone", clock.now)
    big.check()
    big.store.record_schedule(INTERVAL, {}, pause=("unauthorized", clock.now + 30))
    big.check()  # every target down with the pause's reason
    big.store.record_schedule(INTERVAL, {}, pause=None)
    big.check()
    big.store.record_schedule(INTERVAL, {t.key: clock.now + 60 for t in big.targets})
    big.check()  # next_due changed every state object, but nothing exported
    big.succeed(len(big.targets) - 1)
    big.check()


def test_target_set_changes(big: Setup, clock: FakeClock) -> None:
    big.check()
    kept = big.targets[5:]  # every target shifts
    big.store.set_targets(kept)
    big.targets = kept
    big.check()
    renamed = [Target(t.scenario, t.cohort, (t.display_name or "") + " v2", t.scenario_uuid)
               for t in kept]  # a reload changes display names only
    big.store.set_targets(renamed)
    big.targets = renamed
    big.check()
    big.store.set_targets(renamed[:MANY])  # many targets disappear
    big.targets = renamed[:MANY]
    big.check()
    big.store.set_targets([])
    big.check()


def test_staleness_expiry(clock: FakeClock) -> None:
    s = Setup(clock, MANY + 10)
    for i in range(len(s.targets)):
        s.succeed(i, age=i * 10.0)
    text = s.check()
    assert "exec_scenario_participants" in text
    limit = 3 * INTERVAL
    for seconds in (limit - (len(s.targets) - 1) * 10.0 + 1, 100.0, 500.0, limit):
        clock.advance(seconds)  # targets turn stale one by one, without a store change
        s.check()
    assert not [k for k in metric_values(s.check()) if k[0] == "exec_scenario_participants"]
    clock.advance(-limit)  # a clock stepped back makes some data fresh again
    s.check()
    clock.advance(limit)
    s.check()
    s.store.set_max_staleness(100 * INTERVAL)  # a reload makes them fresh again
    s.check()
    s.succeed(3)
    s.check()


def test_the_old_limit_expires_without_a_store_change(clock: FakeClock) -> None:
    # The interval shrinks: the cached page keeps the old limit while it is in force,
    # then is rebuilt with the new one (the gauge and the data agree at every instant).
    s = Setup(clock, MANY + 10)
    for i in range(len(s.targets)):
        s.succeed(i, age=i * 10.0)
    s.store.record_schedule(INTERVAL / 10, {}, at=clock.now)
    text = s.check()
    assert "exec_exporter_max_staleness_seconds 2700.0" in text
    assert len([k for k in metric_values(text) if k[0] == "exec_scenario_participants"]) == \
        len(s.targets)
    clock.advance(3 * INTERVAL)
    s.check()
    clock.advance(1)
    text = s.check()
    assert "exec_exporter_max_staleness_seconds 270.0" in text
    assert not [k for k in metric_values(text) if k[0] == "exec_scenario_participants"]


def test_cached_between_changes(big: Setup, clock: FakeClock) -> None:
    first = big.exposition.render()
    clock.advance(1)  # the live part moves with the clock; the snapshot part is reused
    second = big.exposition.render()
    assert first != second
    big.check()
    page = big.exposition._page
    big.exposition.render(gzip=True)
    assert big.exposition._page is page


def test_live_part_fallbacks(clock: FakeClock) -> None:
    s = Setup(clock, 4, odd_live=True)
    s.check()
    clock.advance(7)
    s.check()


def test_concurrent_scrapes_during_changes(clock: FakeClock) -> None:
    s = Setup(clock, MANY * 2, odd_live=False)
    errors: list[BaseException] = []
    stop = threading.Event()

    def scrape() -> None:
        try:
            for n in range(200):
                if stop.is_set():
                    return
                body = s.exposition.render(openmetrics=n % 2 == 0, gzip=n % 3 == 0)
                text = gunzip(body) if n % 3 == 0 else body
                metric_values(text.decode().removesuffix("# EOF\n"))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=scrape) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        for i in range(len(s.targets)):
            s.succeed(i)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert not errors
    s.check()


def test_process_metrics_match_prometheus_client() -> None:
    ours = CollectorRegistry(auto_describe=False)
    ours.register(ProcessMetrics())
    theirs = CollectorRegistry(auto_describe=False)
    theirs.register(ProcessCollector(registry=None))
    a = {f.name: f for f in ours.collect()}
    b = {f.name: f for f in theirs.collect()}
    assert list(a) == list(b)
    for name, family in a.items():
        assert (family.type, family.documentation) == (b[name].type, b[name].documentation)
        assert [s.name for s in family.samples] == [s.name for s in b[name].samples]
    value = {name: f.samples[0].value for name, f in a.items()}
    other = {name: f.samples[0].value for name, f in b.items()}
    assert value["process_start_time_seconds"] == pytest.approx(
        other["process_start_time_seconds"], abs=0.02)
    assert value["process_max_fds"] == other["process_max_fds"]
    assert abs(value["process_open_fds"] - other["process_open_fds"]) <= 2
    assert value["process_resident_memory_bytes"] > 0


def test_live_collectors_written_directly_match_prometheus_client(tmp_path: Path,
                                                                  clock: FakeClock) -> None:
    # A frozen /proc: the same values for the direct writer and for prometheus_client.
    proc = tmp_path / "proc"
    (proc / "self" / "fd").mkdir(parents=True)
    for fd in range(5):
        (proc / "self" / "fd" / str(fd)).touch()
    (proc / "stat").write_text("cpu  1 2 3\nbtime 1790000000\n")
    fields = ["S"] + [str(n * 37) for n in range(1, 50)]
    (proc / "self" / "stat").write_text("4242 (python 3) " + " ".join(fields) + "\n")
    budget = FixedBudget(clock)
    parts = [LiveCollector(budget.remaining, clock), ProcessMetrics(str(proc))]
    store = Store()
    exposition = Exposition(SnapshotCollector(store, clock), parts, clock)
    reference = CollectorRegistry(auto_describe=False)
    reference.register(SnapshotCollector(store, clock))
    for part in parts:
        reference.register(part)
    assert b"process_open_fds 5.0\n" in exposition.render()
    assert exposition.render() == text_format.generate_latest(reference)
    assert exposition.render(openmetrics=True) == openmetrics_format.generate_latest(reference)
    assert gunzip(exposition.render(gzip=True)) == text_format.generate_latest(reference)


class _Fixed(Collector):
    def __init__(self, family: Metric) -> None:
        self.family = family

    def collect(self) -> Iterator[Metric]:
        yield self.family


@pytest.mark.parametrize("openmetrics", [False, True], ids=["text", "openmetrics"])
def test_pre_rendered_families_with_percent_signs_match_prometheus_client(
        openmetrics: bool) -> None:
    # The values go through a % template: a % in help or label values is text.
    families = [("exec_test_share", "Share in % (100%s means %d).", "gauge",
                 [{"kind": "50%"}, {"kind": "%s%%"}]),
                ("exec_test_events", "Events, %(name)s.", "counter", [{}])]
    values = [12.5, float("inf"), 1234567890.0]
    rendered = PreRendered(families)
    reference = CollectorRegistry(auto_describe=False)
    for (name, documentation, typ, label_sets), start in zip(families, (0, 2), strict=True):
        sample = name + "_total" if typ == "counter" else name
        reference.register(_Fixed(FixedFamily(name, documentation, typ, [
            Sample(sample, labels, value)
            for labels, value in zip(label_sets, values[start:], strict=False)])))
    writer = (openmetrics_format if openmetrics else text_format).generate_latest
    expected = writer(reference).removesuffix(b"# EOF\n")
    assert rendered.render(values, openmetrics) == expected
    with pytest.raises(ValueError, match="2 values for 3 samples"):
        rendered.render(values[:2], openmetrics)


def test_the_descriptor_count_follows_descriptors_opened_and_closed() -> None:
    """On this kernel the count is the size of /proc/self/fd (one fstat); it moves with
    every descriptor as a listing would."""
    metrics = ProcessMetrics()
    before = metrics.values()
    assert before is not None
    opened = [os.open(os.devnull, os.O_RDONLY) for _ in range(5)]
    try:
        during = metrics.values()
        # Other threads of the test run may open or close one meanwhile.
        assert during is not None and abs(during[4] - (before[4] + 5)) <= 1
        listed = len(os.listdir("/proc/self/fd")) - 1  # less the listing's own
        assert abs(during[4] - listed) <= 1
    finally:
        for fd in opened:
            os.close(fd)
    after = metrics.values()
    assert after is not None and abs(after[4] - before[4]) <= 1
