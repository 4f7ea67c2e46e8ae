"""The API key never leaks: not in logs (at any level), exceptions, /metrics, the
landing page, ``--config.check`` output, the state file or ``repr()``; a wrong key
costs almost no quota; no key at all is a configuration error (exit 2).
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fakeapi import FakeExecAPI, summary_body
from harness import ROOT, InProcess, Subprocess, config_text, make_key, wait_until

from exporter.client import ExecClient
from exporter.config import load_api_key, load_config
from exporter.demo import APIRequest, APIResponse, error_response

SCENARIOS = ["discovery-call", "pricing-objection"]


@pytest.fixture
def api() -> Iterator[FakeExecAPI]:
    fake = FakeExecAPI(make_key()).start()
    for scenario in SCENARIOS:
        fake.set_summary(scenario, summary_body())
    try:
        yield fake
    finally:
        fake.stop()


def key_file(tmp_path: Path, key: str, mode: int = 0o600) -> Path:
    path = tmp_path / "exec-api-key"
    path.write_text(key + "\n")
    path.chmod(mode)
    return path


def leaked(text: str, key: str) -> bool:
    # The whole key, or a telling piece of it (its secret part), anywhere.
    return key in text or key[len("exec_test_"):] in text


def run_cli(*args: str, env: dict[str, str] | None = None,
            timeout: float = 20) -> subprocess.CompletedProcess[str]:
    full_env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run([sys.executable, "-m", "exporter", *args], cwd=ROOT, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("fmt", ["logfmt", "json"])
def test_wrong_key_from_a_file_costs_little_and_is_never_logged(
        tmp_path: Path, api: FakeExecAPI, fmt: str) -> None:
    wrong = make_key("w")
    config = tmp_path / "config.yaml"
    config.write_text(config_text(api.base_url, SCENARIOS, refresh="1s",
                                  key_file=key_file(tmp_path, wrong)))
    with Subprocess(["--config.file", str(config), "--log.level", "debug", "--log.format", fmt],
                    {}, tmp_path / "exporter.log") as proc:
        proc.wait_serving()
        started = time.time()

        def unauthorized() -> bool:
            values, _ = proc.scrape()
            # Paused for the whole workspace: every target down with the pause's reason.
            return values.get(("exec_exporter_api_paused", (("reason", "unauthorized"),))
                              ) == 1 and all(values.get(("exec_exporter_target_up", (
                                  ("cohort", "all"), ("scenario", s)))) == 0 for s in SCENARIOS)

        wait_until(unauthorized, 5, what="every target down as unauthorized")
        time.sleep(max(0.0, started + (3 if fmt == "logfmt" else 1.5) - time.time()))
        # At most 15 requests in 30 s: one refusal, then probes 30 s apart.
        window = time.time() - started
        sent = [r for r in api.requests if r.time >= started - 1]
        assert len(sent) <= max(3, 15 * window / 30), len(sent)
        pages = [proc.get(p).text for p in ("/metrics", "/", "/-/ready", "/-/healthy")]
        assert proc.get("/-/ready").status_code == 503
        proc.signal(signal.SIGTERM)
        assert proc.wait(10) == 0
        logs = proc.logs()
    assert "unauthorized" in logs or "refused the key" in logs
    for text in (logs, *pages):
        assert not leaked(text, wrong)
    # The key went out as a header to the API, and only there.
    assert api.requests[0].headers["Authorization"] == f"Bearer {wrong}"


def test_no_key_at_all_is_exit_2(tmp_path: Path, api: FakeExecAPI) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(config_text(api.base_url, SCENARIOS))
    result = run_cli("--config.file", str(config))
    assert result.returncode == 2
    assert "EXEC_API_KEY" in result.stderr
    assert "Traceback" not in result.stderr
    assert not api.requests


def test_unreadable_key_file_is_exit_2(tmp_path: Path, api: FakeExecAPI) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(config_text(api.base_url, SCENARIOS, key_file=tmp_path / "missing"))
    result = run_cli("--config.file", str(config))
    assert result.returncode == 2
    assert "api.api_key_file" in result.stderr and "Traceback" not in result.stderr


def test_key_file_readable_by_others_is_a_warning(tmp_path: Path, api: FakeExecAPI) -> None:
    secret = api.api_key
    config = tmp_path / "config.yaml"
    config.write_text(config_text(api.base_url, SCENARIOS,
                                  key_file=key_file(tmp_path, secret, 0o644)))
    loaded = load_config(config)
    key, warnings = load_api_key(loaded, {})
    assert key is not None and key.value == secret
    assert any("readable by other users" in w for w in warnings)
    assert not any(leaked(w, secret) for w in warnings)
    key_file(tmp_path, secret, 0o600)
    assert load_api_key(loaded, {})[1] == []
    # And the running exporter logs it.
    key_file(tmp_path, secret, 0o644)
    with Subprocess(["--config.file", str(config)], {}, tmp_path / "exporter.log") as proc:
        proc.wait_serving()
        proc.signal(signal.SIGTERM)
        assert proc.wait(10) == 0
        logs = proc.logs()
    assert "level=warn" in logs and "readable by other users" in logs
    assert not leaked(logs, secret)


@pytest.mark.parametrize("source", ["env", "file"])
def test_config_check_never_prints_the_key(tmp_path: Path, api: FakeExecAPI,
                                           source: str) -> None:
    secret = api.api_key
    config = tmp_path / "config.yaml"
    env = {}
    if source == "file":
        config.write_text(config_text(api.base_url, SCENARIOS,
                                      key_file=key_file(tmp_path, secret)))
    else:
        config.write_text(config_text(api.base_url, SCENARIOS))
        env["EXEC_API_KEY"] = secret
    result = run_cli("--config.check", "--config.file", str(config), "--log.level", "debug",
                     env=env)
    assert result.returncode == 0, result.stderr
    assert "api key: found" in result.stdout
    assert not leaked(result.stdout + result.stderr, secret)


def test_reprs_and_exceptions_never_show_the_key(tmp_path: Path, api: FakeExecAPI) -> None:
    secret = api.api_key
    config = tmp_path / "config.yaml"
    config.write_text(config_text(api.base_url, SCENARIOS, key_file=key_file(tmp_path, secret)))
    loaded = load_config(config)
    key, _ = load_api_key(loaded, {})
    assert key is not None
    client = ExecClient(api.base_url, secret, timeout=1)
    for text in (repr(loaded), str(loaded), repr(loaded.api), repr(key), str(key),
                 f"{key}", repr(client)):
        assert not leaked(text, secret), text
    # Every kind of failure the client raises.
    for fault in ("500", "503_html", "invalid_json", "json_array", "wrong_types", "404",
                  "400", "401", "403", "429_error_object", "huge_body"):
        api.set_fault(None, fault, retry_after=1)
        with pytest.raises(Exception) as info:
            client.summary("discovery-call", {})
        assert not leaked(repr(info.value) + str(info.value), secret), fault
        assert info.value.__cause__ is None or not leaked(repr(info.value.__cause__), secret)
    api.set_fault(None, None)
    api.stop()
    with pytest.raises(Exception) as info:
        client.summary("discovery-call", {})
    assert not leaked(repr(info.value) + str(info.value), secret)
    client.close()


def test_in_process_pages_and_state_never_show_the_key(tmp_path: Path,
                                                       api: FakeExecAPI) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(config_text(api.base_url, SCENARIOS))
    state = tmp_path / "state.json"
    api.set_fault("pricing-objection", "401")
    with InProcess(config, api.api_key, state) as exporter:
        wait_until(lambda: exporter.value("exec_exporter_errors_total",
                                          reason="unauthorized"), 5, what="the 401")
        texts = [exporter.get(p).text for p in ("/metrics", "/", "/-/ready", "/nowhere")]
        texts.append(repr(exporter.exporter.config))
    texts.append(state.read_text())
    for text in texts:
        assert not leaked(text, api.api_key)


class EchoingAPI(FakeExecAPI):
    """An API whose 401 message quotes the key it was sent (some APIs do)."""

    def handle(self, request: APIRequest) -> APIResponse:
        sent = (request.headers.get("Authorization") or "").removeprefix("Bearer ")
        return error_response(401, "authentication_error", "invalid_api_key",
                              f"Invalid API key: {sent}")


def test_key_echoed_by_the_api_is_not_shown(tmp_path: Path) -> None:
    secret = make_key("e")
    echo = EchoingAPI(make_key()).start()
    try:
        config = tmp_path / "config.yaml"
        config.write_text(config_text(echo.base_url, SCENARIOS))
        state = tmp_path / "state.json"
        with InProcess(config, secret, state) as exporter:
            wait_until(lambda: exporter.value("exec_exporter_target_up", scenario=SCENARIOS[0],
                                              cohort="all") == 0, 5, what="the 401")
            page = exporter.get("/").text
        assert not leaked(page, secret)
        assert not leaked(state.read_text(), secret)
    finally:
        echo.stop()


def test_malformed_key_file_is_refused_without_echoing_it(tmp_path: Path,
                                                          api: FakeExecAPI) -> None:
    first, second = make_key("a"), make_key("b")
    config = tmp_path / "config.yaml"
    path = tmp_path / "exec-api-key"
    path.write_text(f"{first}\n{second}\n")  # two keys pasted into one file
    path.chmod(0o600)
    config.write_text(config_text(api.base_url, SCENARIOS, key_file=path))
    state = tmp_path / "state.json"
    with Subprocess(["--config.file", str(config), "--state.file", str(state)], {},
                    tmp_path / "exporter.log") as proc:
        code = None
        try:
            proc.wait_serving(5)
            time.sleep(1.0)
            pages = proc.get("/").text + proc.get("/metrics").text
            proc.signal(signal.SIGTERM)
            proc.wait(10)
        except RuntimeError:
            code = proc.proc.returncode
            pages = ""
        logs = proc.logs()
    saved = state.read_text() if state.exists() else ""
    for text in (logs, pages, saved):
        assert not leaked(text, first) and not leaked(text, second)
    assert code == 2  # refused as a configuration error
