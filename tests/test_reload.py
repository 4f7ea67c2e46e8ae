"""Live reload: SIGHUP and ``POST /-/reload`` reread the configuration.

Added targets are polled, removed ones vanish, unchanged ones keep their data
and schedule; a bad file keeps the running configuration and sets
``exec_exporter_config_last_reload_successful`` to 0.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fakeapi import FakeExecAPI
from harness import (
    InProcess,
    Subprocess,
    Values,
    config_text,
    fake_api,
    make_key,
    parse_metrics,
    sample,
    series,
    wait_until,
)

SCENARIOS = {"discovery-call": 45, "pricing-objection": 12, "renewal-negotiation": 7}
SALES = {"name": "sales", "group_ids": "[g1h2i3j4k5l6]"}


@pytest.fixture
def api() -> Iterator[FakeExecAPI]:
    with fake_api(SCENARIOS) as fake:
        yield fake


def targets(values: Values) -> set[tuple[str, str]]:
    return {(dict(labels)["scenario"], dict(labels)["cohort"])
            for labels in series(values, "exec_exporter_target_up")}


def data_targets(values: Values) -> set[tuple[str, str]]:
    return {(dict(labels)["scenario"], dict(labels)["cohort"])
            for labels in series(values, "exec_scenario_participants")}


def reload_ok(values: Values) -> float | None:
    return sample(values, "exec_exporter_config_last_reload_successful")


def test_sighup_adds_a_cohort_removes_a_scenario_and_keeps_the_rest(
        tmp_path: Path, api: FakeExecAPI) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(config_text(api.base_url, ["discovery-call", "pricing-objection"],
                                  ["all"], refresh="10m"))
    with Subprocess(["--config.file", str(config)], {"EXEC_API_KEY": api.api_key},
                    tmp_path / "exporter.log") as proc:
        proc.wait_serving()
        before = wait_until(lambda: (v := proc.scrape()[0]) and len(data_targets(v)) == 2
                            and v, 10, what="the first fill")
        loaded_at = sample(before, "exec_exporter_config_last_reload_success_timestamp_seconds")
        kept_success = sample(before, "exec_exporter_target_last_success_timestamp_seconds",
                              scenario="discovery-call", cohort="all")
        api.clear_requests()
        # Add a cohort, drop a scenario, add another scenario.
        config.write_text(config_text(api.base_url, ["discovery-call", "renewal-negotiation"],
                                      ["all", SALES], refresh="10m"))
        proc.signal(signal.SIGHUP)
        wanted = {("discovery-call", "all"), ("discovery-call", "sales"),
                  ("renewal-negotiation", "all"), ("renewal-negotiation", "sales")}
        after = wait_until(lambda: (v := proc.scrape()[0]) and data_targets(v) == wanted
                           and v, 10, what="the new targets polled")
        assert targets(after) == wanted  # pricing-objection vanished, self-metrics too
        assert not [n for (n, labels) in after if ("scenario", "pricing-objection") in labels]
        assert reload_ok(after) == 1
        assert sample(after, "exec_exporter_config_last_reload_success_timestamp_seconds") > (
            loaded_at)
        # Unchanged: same data, same success time, not requested again.
        assert sample(after, "exec_exporter_target_last_success_timestamp_seconds",
                      scenario="discovery-call", cohort="all") == kept_success
        time.sleep(0.3)
        # Summaries only: planner.mode auto also tries the participants of the new pairs.
        polled = sorted((r.scenario_id or "", "group_ids" in r.query)
                        for r in api.requests_to("/summary"))
        assert polled == [("discovery-call", True), ("renewal-negotiation", False),
                          ("renewal-negotiation", True)]

        # A broken file on SIGHUP keeps the running configuration and says so.
        config.write_text("scenarios: [\n  - id: oops\n")
        proc.signal(signal.SIGHUP)
        broken = wait_until(lambda: (v := proc.scrape()[0]) and reload_ok(v) == 0 and v, 5,
                            what="the failed reload reported")
        assert targets(broken) == wanted
        assert data_targets(broken) == wanted
        assert proc.proc.poll() is None
        assert "reload failed" in proc.logs()
        proc.signal(signal.SIGTERM)
        assert proc.wait(10) == 0


def write(path: Path, api: FakeExecAPI, scenarios: list[str | dict[str, object]],
          cohorts: list[str | dict[str, object]] | None = None, **kw: str) -> Path:
    path.write_text(config_text(api.base_url, scenarios, cohorts, **kw))
    return path


@pytest.fixture
def running(tmp_path: Path, api: FakeExecAPI,
            monkeypatch: pytest.MonkeyPatch) -> Iterator[InProcess]:
    monkeypatch.setenv("EXEC_API_KEY", api.api_key)  # a reload reads the key again
    config = write(tmp_path / "config.yaml", api, ["discovery-call"], refresh="10m")
    with InProcess(config, api.api_key) as exporter:
        wait_until(lambda: data_targets(exporter.scrape()[0]), 5, what="the first fill")
        yield exporter


def test_post_reload_adds_targets(running: InProcess, api: FakeExecAPI) -> None:
    write(running.config_path, api, ["discovery-call"], ["all", SALES], refresh="10m")
    response = running.post("/-/reload")
    assert response.status_code == 200
    wait_until(lambda: data_targets(running.scrape()[0]) == {
        ("discovery-call", "all"), ("discovery-call", "sales")}, 5, what="the new cohort")


@pytest.mark.parametrize("content", [
    b"scenarios: [\n  - id: oops\n",             # YAML syntax
    b"scenarios:\n  - id: a\nunknown_key: 1\n",   # unknown key
    b"",                                           # empty: no scenarios
    b"\xff\xfe not utf-8",                         # undecodable
    b"- just\n- a list\n",                         # not a mapping
    b"scenarios:\n  - id: a\n    cohorts: [nope]\n",  # undefined cohort
    b"refresh_interval: soon\nscenarios: [{id: a}]\n",  # bad duration
], ids=["syntax", "unknown-key", "empty", "binary", "list", "cohort", "duration"])
def test_post_reload_of_a_bad_file_keeps_the_running_configuration(
        running: InProcess, content: bytes) -> None:
    before = running.scrape()[0]
    running.config_path.write_bytes(content)
    response = running.post("/-/reload")
    assert response.status_code >= 400
    assert "Traceback" not in response.text
    values = running.scrape()[0]
    assert reload_ok(values) == 0
    assert targets(values) == targets(before)
    assert data_targets(values) == data_targets(before)
    assert sample(values, "exec_exporter_config_last_reload_success_timestamp_seconds") == (
        sample(before, "exec_exporter_config_last_reload_success_timestamp_seconds"))


def test_reload_of_a_missing_or_unreadable_file(running: InProcess, tmp_path: Path,
                                                api: FakeExecAPI) -> None:
    good = running.config_path.read_text()
    running.config_path.unlink()
    assert running.post("/-/reload").status_code >= 400
    running.config_path.mkdir()
    assert running.post("/-/reload").status_code >= 400
    assert reload_ok(running.scrape()[0]) == 0
    running.config_path.rmdir()
    running.config_path.write_text(good)
    # A good file afterwards: success again.
    assert running.post("/-/reload").status_code == 200
    assert reload_ok(running.scrape()[0]) == 1


def test_reload_needs_post(running: InProcess) -> None:
    response = running.get("/-/reload")
    assert response.status_code == 405
    assert reload_ok(running.scrape()[0]) == 1


def test_reload_applies_a_new_interval(running: InProcess, api: FakeExecAPI) -> None:
    write(running.config_path, api, ["discovery-call"], refresh="20m")
    assert running.post("/-/reload").status_code == 200
    assert running.value("exec_exporter_refresh_interval_seconds") == 1200


def test_reload_while_the_api_hangs_answers(running: InProcess, api: FakeExecAPI) -> None:
    """A reload and a scrape answer while a request hangs: neither waits for the hang
    (30 s) to end. The HTTP timeouts below are bounded waits well short of it."""
    api.set_fault(None, "hang", seconds=30)
    write(running.config_path, api, ["discovery-call"], ["all", SALES], refresh="10m")
    running.post("/-/reload")  # the new target is requested at once, and hangs
    wait_until(lambda: any(r.query.get("group_ids") for r in api.requests), 5,
               what="the new target's request to start (and hang)")
    write(running.config_path, api, ["discovery-call", "pricing-objection"], ["all", SALES],
          refresh="10m")
    assert running.post("/-/reload", timeout=10).status_code == 200
    response = running.get("/metrics", timeout=10)
    assert response.status_code == 200
    values = parse_metrics(response.text)
    assert reload_ok(values) == 1
    assert ("pricing-objection", "sales") in targets(values)  # the second reload applied


def test_changed_cohort_filter_is_refetched(running: InProcess, api: FakeExecAPI) -> None:
    reloaded = time.time()
    write(running.config_path, api, ["discovery-call"],
          [{"name": "all", "group_ids": "[g9r0s1t2u3v4]"}], refresh="10m")
    assert running.post("/-/reload").status_code == 200
    wait_until(lambda: (running.value("exec_exporter_target_last_success_timestamp_seconds",
                                      scenario="discovery-call", cohort="all") or 0) > reloaded,
               2, what="the changed target refetched")
    assert api.requests[-1].query.get("group_ids") == "g9r0s1t2u3v4"


def test_rotated_key_file_resumes_at_once_after_reload(tmp_path: Path,
                                                       api: FakeExecAPI) -> None:
    key_file = tmp_path / "key"
    key_file.write_text(make_key("w") + "\n")
    key_file.chmod(0o600)
    config = write(tmp_path / "config.yaml", api, ["discovery-call"], refresh="10m",
                   key_file=key_file)
    with InProcess(config, make_key("w")) as exporter:
        wait_until(lambda: exporter.value("exec_exporter_api_paused", reason="unauthorized"),
                   5, what="the 401")
        key_file.write_text(api.api_key + "\n")
        assert exporter.post("/-/reload").status_code == 200
        wait_until(lambda: exporter.value("exec_exporter_target_up", scenario="discovery-call",
                                          cohort="all") == 1, 2, what="polling with the new key")
