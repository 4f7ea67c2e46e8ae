"""The one paged reader: every list read page by page and checked as a whole.

Unit cases feed :class:`PagedRead` the pages a real API could send; the
integration cases run a real Exporter against the fake API over loopback with
the world changing between two page requests.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from conftest import FakeClock, make_key, metric_values, sample
from fakeapi import FakeExecAPI, summary_body
from prometheus_client import generate_latest
from prometheus_client.registry import CollectorRegistry

from exporter.client import (
    PAUSE_REASONS,
    BadRequest,
    Forbidden,
    InvalidResponse,
    Member,
    RateLimited,
    Timeout,
    Unauthorized,
)
from exporter.collector import SnapshotCollector
from exporter.config import ApiKey, parse_config
from exporter.daemon import Exporter
from exporter.discovery import parse_scenario
from exporter.models import Page
from exporter.paged import ListChanged, PagedRead, Schedule, retry_at


def scenario(i: int) -> dict[str, Any]:
    return {"id": f"uuid-{i:03d}", "slug": f"scenario-{i:03d}", "name": f"Scenario {i}"}


def scenarios_read() -> PagedRead[Any]:
    return PagedRead("scenario list", key=lambda s: s.id, parse=parse_scenario, page_size=2)


# --- the reader ----------------------------------------------------------------------------


def test_a_consistent_read_completes_on_its_last_page() -> None:
    read = scenarios_read()
    assert read.query({"include_archived": "true"}) == {
        "include_archived": "true", "page": "1", "page_size": "2"}
    assert read.take(Page((scenario(0), scenario(1)), 1, 3, 2)) is False
    assert read.query() == {"page": "2", "page_size": "2"}
    assert read.take(Page((scenario(2),), 2, 3, 2)) is True
    assert [s.slug for s in read.items] == ["scenario-000", "scenario-001", "scenario-002"]
    assert read.pages == 2 and read.skipped == 0


def test_a_total_count_that_changes_mid_read_drops_the_read() -> None:
    read = scenarios_read()
    read.take(Page((scenario(0), scenario(1)), 1, 3, 2))
    # A scenario was added between the two requests: the pages no longer fit together.
    with pytest.raises(ListChanged, match="changed between pages") as caught:
        read.take(Page((scenario(2), scenario(3)), 2, 4, 2))
    assert caught.value.reason == "invalid_response" and caught.value.code == "200"


def test_an_early_short_page_drops_the_read() -> None:
    read = scenarios_read()
    # Page 1 of 2 with one item where two fit: a partial list must not be stored.
    with pytest.raises(ListChanged, match="page 1 of 2 has 1 items, not 2"):
        read.take(Page((scenario(0),), 1, 3, 2, page_size=2))
    # An empty page before the last is short too (it used to end the read quietly).
    read = scenarios_read()
    with pytest.raises(ListChanged, match="has 0 items"):
        read.take(Page((), 1, 3, 2))
    # Without page_size in the envelope, the first page sets the size the others keep.
    read = scenarios_read()
    assert read.take(Page((scenario(0), scenario(1)), 1, 5, 3)) is False
    with pytest.raises(ListChanged, match="page 2 of 3 has 1 items, not 2"):
        read.take(Page((scenario(2),), 2, 5, 3))


def test_a_server_that_caps_the_page_size_still_reads_whole() -> None:
    # Asked for 100 a page, served 1: said in the envelope, or not said at all.
    for said in (1, None):
        read = PagedRead[Any]("scenario list", key=lambda s: s.id, parse=parse_scenario)
        assert read.take(Page((scenario(0),), 1, 2, 2, page_size=said)) is False
        assert read.take(Page((scenario(1),), 2, 2, 2, page_size=said)) is True
        assert [s.id for s in read.items] == ["uuid-000", "uuid-001"]


def test_a_duplicate_across_pages_drops_the_read() -> None:
    read = scenarios_read()
    read.take(Page((scenario(0), scenario(1)), 1, 4, 2))
    # One row was deleted and one added before it: the order moved, uuid-001 comes again
    # and another row is never seen, while the total stays 4.
    with pytest.raises(ListChanged, match="uuid-001"):
        read.take(Page((scenario(1), scenario(3)), 2, 4, 2))


def test_a_total_the_items_do_not_reach_drops_the_read() -> None:
    read = scenarios_read()
    with pytest.raises(ListChanged, match="1 items in 1 pages, total_count 5"):
        read.take(Page((scenario(0),), 1, 5, 1))


def test_another_page_than_asked_drops_the_read() -> None:
    read = scenarios_read()
    read.take(Page((scenario(0), scenario(1)), 1, 4, 2))
    with pytest.raises(ListChanged, match="asked for page 2, got page 1"):
        read.take(Page((scenario(0), scenario(1)), 1, 4, 2))


def test_a_malformed_item_is_skipped_and_counted_and_the_rest_used() -> None:
    read = scenarios_read()
    bad = {"id": 7, "slug": "broken"}
    assert read.take(Page((scenario(0), bad), 1, 3, 2)) is False
    assert read.take(Page((scenario(2),), 2, 3, 2)) is True
    # The skipped item still counts towards total_count: the pages are consistent.
    assert [s.id for s in read.items] == ["uuid-000", "uuid-002"] and read.skipped == 1


def test_strict_lists_take_items_already_read() -> None:
    read = PagedRead[Member]("members of group g1", key=lambda m: m.user_id, page_size=1)
    assert read.take(Page((Member("u1", None),), 1, 2, 2), raw=False) is False
    with pytest.raises(ListChanged, match="'u1' listed twice"):
        read.take(Page((Member("u1", None),), 2, 2, 2), raw=False)


def test_one_backoff_rule_and_one_set_of_pause_reasons() -> None:
    assert {"rate_limited", "unauthorized", "forbidden"} == PAUSE_REASONS
    for paused in (RateLimited("slow down", 30), Unauthorized("no"), Forbidden("no")):
        assert retry_at(paused, 3, 1000.0, 3600.0) == 1000.0  # the scheduler's pause decides
    failed = Timeout("late")
    assert [retry_at(failed, n, 0.0, 3600.0) for n in (1, 2, 3, 7)] == [60, 120, 240, 3600]
    assert retry_at(BadRequest("no", 400), 1, 0.0, 30.0) == 30.0  # capped at the interval
    assert issubclass(ListChanged, InvalidResponse)


def test_one_schedule_reads_again_backs_off_and_reports() -> None:
    """Discovery, member lists, skills and assignments all keep their reads on this."""
    reports: list[tuple[Any, ...]] = []
    schedule = Schedule[str]("skills", lambda *args: reports.append(args))
    assert schedule.begin(0.0, lambda: "read 1") == "read 1"
    assert schedule.begin(5.0, lambda: "read 2") == "read 1"  # one read at a time
    schedule.failed(Timeout("late"), 10.0, 3600.0)
    assert (schedule.run, schedule.next_at, schedule.failures) == (None, 70.0, 1)
    assert schedule.begin(69.0, lambda: "too early") is None and schedule.next_due() == 70.0
    assert schedule.begin(70.0, lambda: "read 2") == "read 2" and schedule.next_due() == -1.0
    schedule.failed(Timeout("late"), 80.0, 3600.0)
    assert schedule.next_at == 80.0 + 120
    schedule.begin(200.0, lambda: "read 3")
    # A workspace-wide refusal: the scheduler's pause decides, the failures stay as they are.
    schedule.failed(RateLimited("slow down", 30), 210.0, 3600.0)
    assert (schedule.next_at, schedule.failures) == (210.0, 2)
    schedule.begin(210.0, lambda: "read 4")
    schedule.done(220.0, 3820.0, skipped=1)
    assert (schedule.run, schedule.next_at, schedule.failures, schedule.error) == (
        None, 3820.0, 0, None)
    assert [(at, error) for _, at, error, _ in reports] == [
        (None, "timeout: late"), (None, "timeout: late"), (None, "rate_limited: slow down"),
        (220.0, None)]
    assert reports[-1] == ("skills", 220.0, None, 1)


# --- against the fake API ------------------------------------------------------------------


@pytest.fixture
def api() -> Iterator[FakeExecAPI]:
    fake = FakeExecAPI(make_key()).start()
    items = [scenario(i) for i in range(150)]
    for item in items:
        fake.set_summary(item["slug"], summary_body())
    fake.set_scenarios(items)
    try:
        yield fake
    finally:
        fake.stop()


def exporter_for(api: FakeExecAPI, clock: FakeClock, extra: dict[str, Any]) -> Exporter:
    raw: dict[str, Any] = {
        "api": {"base_url": api.base_url, "timeout": "2s",
                "rate_limit": {"requests_per_minute": 6000, "requests_per_day": 10_000_000,
                               "reserve": 0}},
        "refresh_interval": "1h",
        **extra,
    }
    return Exporter(parse_config(raw), ApiKey(make_key(), "test"), None, None, clock)


def step(exporter: Exporter, clock: FakeClock, steps: int = 1) -> None:
    for _ in range(steps):
        clock.now = max(clock.now, exporter.poller.step())


def scrape(exporter: Exporter, clock: FakeClock) -> dict[Any, float]:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector(exporter.store, clock))
    return metric_values(generate_latest(registry).decode())


def slugs(exporter: Exporter) -> set[str]:
    return {state.target.scenario for state in exporter.store.snapshot().targets}


def test_discovery_drops_a_list_that_changed_between_pages_and_keeps_the_last(
        api: FakeExecAPI, clock: FakeClock) -> None:
    exporter = exporter_for(api, clock, {"discovery": {"scenarios": {}}})
    step(exporter, clock, 2)
    assert len(slugs(exporter)) == 150
    clock.now += 6 * 3600  # the next discovery
    step(exporter, clock)  # page 1 of the new read
    api.set_scenarios([scenario(i) for i in range(151)])  # a scenario added meanwhile
    step(exporter, clock)  # page 2 says 151: the read is dropped
    assert len(slugs(exporter)) == 150  # the last complete list stays
    # Said where a user looks (the status page's lists section reads it from the store).
    error = exporter.store.snapshot().discovery_error["scenarios"]
    assert error.startswith("invalid_response: ") and "changed between pages" in error
    # Retried after a minute, whole: now 151.
    clock.now += 60
    step(exporter, clock, 2)
    assert len(slugs(exporter)) == 151


def test_a_malformed_scenario_is_skipped_counted_and_the_rest_discovered(
        api: FakeExecAPI, clock: FakeClock) -> None:
    api.set_scenarios([scenario(0), {"id": ["not", "text"], "slug": "x"}, scenario(2)])
    exporter = exporter_for(api, clock, {"discovery": {"scenarios": {}}})
    step(exporter, clock)
    assert slugs(exporter) == {"scenario-000", "scenario-002"}
    values = scrape(exporter, clock)
    assert sample(values, "exec_exporter_invalid_items_total", kind="scenarios") == 1
    assert sample(values, "exec_exporter_invalid_items_total", kind="groups") == 0
    assert "scenarios" not in exporter.store.snapshot().discovery_error


def test_a_malformed_assignment_is_skipped_counted_and_the_rest_counted(
        api: FakeExecAPI, clock: FakeClock) -> None:
    def row(i: int, status: str) -> dict[str, Any]:
        return {"id": f"a{i}", "user": {"id": f"u{i}"}, "status": status,
                "scenario": {"id": "uuid-000", "slug": "scenario-000", "name": "Scenario 0"}}

    api.set_assignments([row(1, "past_due"), {"id": "a2", "scenario": {"id": 5},
                                              "status": "past_due"},
                         row(3, "past_due"), row(4, "completed")])
    exporter = exporter_for(api, clock, {"scenarios": [{"id": "scenario-000", "name": "Zero"}],
                                         "assignments": {}})
    step(exporter, clock, 3)
    assert len(api.listing_requests("assignments")) == 1
    values = metric_values(exporter.exposition.render().decode())
    assert sample(values, "exec_assignments", scenario="scenario-000", status="past_due") == 2
    assert sample(values, "exec_assignments", scenario="scenario-000", status="completed") == 1
    assert sample(values, "exec_exporter_invalid_items_total", kind="assignments") == 1


def test_an_assignment_listed_twice_across_pages_drops_the_read(
        api: FakeExecAPI, clock: FakeClock) -> None:
    # The order moved under the read: a0 is served again at the top of page 2 and a100
    # is never served, with a total that adds up. Counted as is, a0 would count twice.
    rows = [{"id": f"a{i}", "user": {"id": f"u{i}"}, "status": "completed",
             "scenario": {"id": "uuid-000", "slug": "scenario-000"}} for i in range(150)]
    api.set_assignments([*rows[:100], rows[0], *rows[101:149]])
    exporter = exporter_for(api, clock, {"scenarios": [{"id": "scenario-000", "name": "Zero"}],
                                         "assignments": {}})
    step(exporter, clock, 4)
    assert [r.query["page"] for r in api.listing_requests("assignments")] == ["1", "2"]
    assert exporter.assignments is not None and exporter.assignments.read_at is None
    assert "listed twice" in (exporter.assignments.error or "")
    values = metric_values(exporter.exposition.render().decode())
    assert sample(values, "exec_assignments", scenario="scenario-000", status="completed") is None
