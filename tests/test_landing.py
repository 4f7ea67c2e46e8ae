"""The landing page and /-/ready in every state the scheduler can be in.

The exporter runs in-process on a fake clock against the fake API over loopback,
its poller stepped by hand: filling (more targets than the minute budget), never
tried, backing off, paused (429 and 401), restored from a state file, and zero
targets after discovery. The page must render in each, and say the right thing.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import FakeClock, make_key
from fakeapi import FakeExecAPI, summary_body
from harness import wait_until

from exporter.config import ApiKey, parse_config
from exporter.daemon import Exporter
from exporter.landing import landing_page
from exporter.server import Web, serve

SCENARIOS = [f"scenario-{i:02d}" for i in range(55)]


@pytest.fixture
def api() -> Iterator[FakeExecAPI]:
    fake = FakeExecAPI(make_key()).start()
    for i, scenario in enumerate(SCENARIOS):
        fake.set_summary(scenario, summary_body(participant_count=10 + i))
    try:
        yield fake
    finally:
        fake.stop()


def exporter_for(api: FakeExecAPI, clock: FakeClock, scenarios: list[str],
                 state_file: Path | None = None, **extra: Any) -> Exporter:
    raw: dict[str, Any] = {
        "api": {"base_url": api.base_url, "timeout": "2s"},  # default quota: 54/min
        "refresh_interval": "15m",
        "scenarios": [{"id": s} for s in scenarios],
    }
    raw.update(extra)
    return Exporter(parse_config(raw), ApiKey(make_key(), "test"), None,
                    str(state_file) if state_file else None, clock)


def page(exporter: Exporter, clock: FakeClock) -> str:
    return landing_page(Web(exporter.store, exporter.exposition, clock=clock.time))


def step(exporter: Exporter, clock: FakeClock, times: int) -> None:
    """Run ``times`` poller steps, moving the clock only to wake-ups due within a second
    (so a budget wait or a pause is not skipped)."""
    for _ in range(times):
        wake = exporter.poller.step()
        if wake - clock.now <= 1.0:
            clock.now = max(clock.now, wake)


def rows(html_text: str) -> dict[str, str]:
    """Scenario -> its table row."""
    return {m.group(1): m.group(0) for m in re.finditer(r"<tr><td>([^<]+)</td>.*?</tr>",
                                                        html_text)}


def test_never_tried_targets_are_waiting_not_down(api: FakeExecAPI, clock: FakeClock) -> None:
    exporter = exporter_for(api, clock, SCENARIOS[:3])
    text = page(exporter, clock)
    assert len(rows(text)) == 3
    assert all("class=waiting>waiting<" in r for r in rows(text).values())
    assert "class=down" not in text
    assert "effective refresh interval 15m" in text


def test_first_fill_over_the_minute_budget_renders(api: FakeExecAPI, clock: FakeClock) -> None:
    # 55 targets, 54 requests a minute: the 55th waits for the budget, due at -inf.
    exporter = exporter_for(api, clock, SCENARIOS)
    step(exporter, clock, 60)
    assert len(api.requests) == 54
    text = page(exporter, clock)
    table = rows(text)
    assert len(table) == 55
    waiting = [r for r in table.values() if "class=waiting" in r]
    # Shown due when the minute budget lets the next request go (the first went at 0 s).
    assert len(waiting) == 1 and re.search(r"\(in (59s|1m|1m1s)\)</td></tr>", waiting[0])
    # Over real HTTP too: the page answers 200, readiness says not yet.
    server = serve(("127.0.0.1", 0), Web(exporter.store, exporter.exposition,
                                         clock=clock.time))
    try:
        import requests
        base = f"http://127.0.0.1:{server.server_address[1]}"
        assert requests.get(base + "/", timeout=5).status_code == 200
        assert requests.get(base + "/-/ready", timeout=5).status_code == 503
    finally:
        server.shutdown()
        server.server_close()


def test_backing_off_target_shows_its_error_and_retry(api: FakeExecAPI,
                                                      clock: FakeClock) -> None:
    api.set_fault(SCENARIOS[1], "500")
    exporter = exporter_for(api, clock, SCENARIOS[:3])
    step(exporter, clock, 3)
    table = rows(page(exporter, clock))
    broken = table[SCENARIOS[1]]
    assert "class=down>down<" in broken and "server_error" in broken
    assert re.search(r"\(in \d+s\)</td></tr>", broken)  # its backoff retry
    assert "class=up>up<" in table[SCENARIOS[0]]


def test_rate_limit_pause_notice_and_fill_resumes(api: FakeExecAPI, clock: FakeClock,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    api.set_fault(SCENARIOS[2], "429_header", retry_after=120, times=1)
    exporter = exporter_for(api, clock, SCENARIOS[:10])
    with caplog.at_level(logging.WARNING, logger="exporter"):
        step(exporter, clock, 12)
    assert len(api.requests) == 3  # the third got 429: nothing more during the pause
    text = page(exporter, clock)
    assert "All requests are paused" in text and "429" in text and "(in 2m)" in text
    pauses = [r.getMessage() for r in caplog.records if "pausing all requests" in r.getMessage()]
    assert len(pauses) == 1 and "for 2m" in pauses[0]
    # After the pause the fill resumes where it stopped, the refused target included.
    clock.advance(121)
    step(exporter, clock, 12)
    assert len(api.requests) == 11
    assert exporter.store.get((SCENARIOS[2], "all")).summary is not None  # type: ignore[union-attr]
    text = page(exporter, clock)
    assert "All requests are paused" not in text
    assert all("class=up>up<" in r for r in rows(text).values())
    assert Web(exporter.store, exporter.exposition, clock=clock.time).ready()


def test_unauthorized_pause_notice(api: FakeExecAPI, clock: FakeClock) -> None:
    exporter = Exporter(parse_config({"api": {"base_url": api.base_url},
                                      "scenarios": [{"id": s} for s in SCENARIOS[:3]]}),
                        ApiKey(make_key("w"), "test"), None, None, clock)
    step(exporter, clock, 3)
    assert len(api.requests) == 1
    text = page(exporter, clock)
    assert "All requests are paused" in text and "refused the key" in text
    assert all("unauthorized" in r and "class=down" in r for r in rows(text).values())
    assert "1 requests sent since start; failed: unauthorized 1." in text
    # Workspace-wide: counted once by reason, against no target.
    snapshot = exporter.store.snapshot()
    assert snapshot.errors == {"unauthorized": 1}
    assert all(not s.errors for s in snapshot.targets)


def test_restored_targets_render_with_their_age(api: FakeExecAPI, clock: FakeClock,
                                                tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    first = exporter_for(api, clock, SCENARIOS[:3], state_file=state)
    step(first, clock, 3)
    first._save_state(force=True)
    clock.advance(300)
    second = exporter_for(api, clock, SCENARIOS[:3], state_file=state)
    text = page(second, clock)
    assert all("class=up>up<" in r and "(5m ago)" in r for r in rows(text).values())
    assert all("(in 10m)" in r for r in rows(text).values())
    assert Web(second.store, second.exposition, clock=clock.time).ready()


def test_zero_targets_after_discovery_is_ready_and_says_why(api: FakeExecAPI,
                                                            clock: FakeClock) -> None:
    api.set_scenarios([])
    exporter = Exporter(parse_config({"api": {"base_url": api.base_url},
                                      "discovery": {"scenarios": {}}}),
                        ApiKey(make_key(), "test"), None, None, clock)
    web = Web(exporter.store, exporter.exposition, clock=clock.time)
    assert not web.ready()
    assert "waiting for discovery" in landing_page(web)
    step(exporter, clock, 2)
    assert web.ready()
    assert "found no scenario to poll" in landing_page(web)


def test_discovery_says_what_it_decided(api: FakeExecAPI, clock: FakeClock,
                                        caplog: pytest.LogCaptureFixture) -> None:
    api.set_scenarios([{"id": f"uuid-{s}", "slug": s, "name": s} for s in SCENARIOS[:30]])
    exporter = Exporter(parse_config({"api": {"base_url": api.base_url},
                                      "refresh_interval": "5m",
                                      "discovery": {"scenarios": {}}}),
                        ApiKey(make_key(), "test"), None, None, clock)
    with caplog.at_level(logging.INFO, logger="exporter"):
        step(exporter, clock, 1)
    lines = [r.getMessage() for r in caplog.records if "targets; effective" in r.getMessage()]
    # 30 targets on 900 - 4 listing requests a day: 48m13s, stretched from 5m.
    assert lines == ["discovery: 30 targets; effective refresh interval 48m13s (stretched "
                     "from refresh_interval 5m by the day budget)"]
    wait_until(lambda: len(exporter.store.snapshot().targets) == 30, 1)


def test_times_the_scheduler_can_produce_never_break_the_page() -> None:
    from exporter.landing import _when
    now = 1_790_000_000.0
    assert _when(-math.inf, now) == "now"
    assert _when(math.inf, now) == "not planned"
    assert _when(math.nan, now) == "not planned"
    assert _when(1e300, now) == "not planned"
    assert _when(-1e300, now) == "long ago"
    assert _when(None, now) == "never"
    assert _when(now + 1056, now).endswith("(in 17m36s)")
