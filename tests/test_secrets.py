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
from exporter.sim import APIRequest, APIResponse
from exporter.sim.protocol import error_response

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


# --- keys that cannot be sent in a header ----------------------------------------------

# A key as people paste it by mistake: wrapped in smart quotes, with a space, a stray
# line break, an accented letter, a control character. Each: (text around the real key,
# the 1-based position of the first bad character, its U+ name).
UNSENDABLE = {
    "smart quotes": ("\u201c{key}\u201d", 1, "U+201C LEFT DOUBLE QUOTATION MARK"),
    "inner space": ("{key} {key}", None, "U+0020 SPACE"),
    "line break": ("{key}\n{key}", None, "U+000A LINE FEED"),
    "non-latin-1": ("{key}\u2013x", None, "U+2013 EN DASH"),
    "latin-1 accent": ("{key}\u00e9", None, "U+00E9 LATIN SMALL LETTER E WITH ACUTE"),
    "control": ("{key}\x07", None, "U+0007"),
    "straight quotes": ('"{key}"', 1, "U+0022 QUOTATION MARK"),
}


def bad_key(kind: str, key: str) -> tuple[str, int, str]:
    template, position, name = UNSENDABLE[kind]
    value = template.format(key=key)
    return value, position or len(key) + 1, name


@pytest.mark.parametrize("kind", sorted(UNSENDABLE))
@pytest.mark.parametrize("source", ["env", "file"])
def test_a_key_that_cannot_be_sent_is_refused_at_start_and_by_the_check(
        tmp_path: Path, api: FakeExecAPI, kind: str, source: str) -> None:
    value, position, name = bad_key(kind, api.api_key)
    config = tmp_path / "config.yaml"
    env = {}
    if source == "file":
        path = tmp_path / "exec-api-key"
        path.write_text(value + "\n", encoding="utf-8")
        path.chmod(0o600)
        config.write_text(config_text(api.base_url, SCENARIOS, key_file=path))
        where = f"api.api_key_file: '{path}'"
    else:
        config.write_text(config_text(api.base_url, SCENARIOS))
        env = {"EXEC_API_KEY": value}
        where = "environment variable EXEC_API_KEY"
    for args in (["--config.check"], ["--web.listen-address=127.0.0.1:0"]):
        result = run_cli("--config.file", str(config), *args, env=env)
        assert result.returncode == 2, (args, result.stdout, result.stderr)
        assert result.stderr.startswith(f"error: {where}: the API key cannot be sent in an "
                                        f"HTTP header: {name}")
        assert f" at position {position} of {len(value)}" in result.stderr
        assert "Traceback" not in result.stderr
        assert not leaked(result.stdout + result.stderr, api.api_key)
        assert "configuration OK" not in result.stdout
    assert not api.requests


def test_a_key_in_the_environment_that_is_not_utf8_names_the_byte(tmp_path: Path,
                                                                   api: FakeExecAPI) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(config_text(api.base_url, SCENARIOS))
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)}
    environ = {k.encode(): v.encode() for k, v in env.items()}
    environ[b"EXEC_API_KEY"] = api.api_key.encode() + b"\xe9"  # a latin-1 byte
    result = subprocess.run([sys.executable, "-m", "exporter", "--config.check",
                             "--config.file", str(config)], cwd=ROOT, env=environ,
                            capture_output=True, text=True, timeout=20)
    assert result.returncode == 2
    assert result.stderr == (
        "error: environment variable EXEC_API_KEY: the API key cannot be sent in an HTTP "
        f"header: byte 0xE9 (not UTF-8) at position {len(api.api_key) + 1} of "
        f"{len(api.api_key) + 1}; a key is printable ASCII: no spaces, line breaks or "
        "accented letters\n")


def test_the_backfill_refuses_such_a_key_and_leaves_no_journal(tmp_path: Path,
                                                               api: FakeExecAPI) -> None:
    value, _, _ = bad_key("smart quotes", api.api_key)
    config = tmp_path / "config.yaml"
    config.write_text(config_text(api.base_url, SCENARIOS))
    output = tmp_path / "backfill.om"
    result = run_cli("backfill", "--config.file", str(config), "--since=3d",
                     f"--output={output}", env={"EXEC_API_KEY": value})
    assert result.returncode == 2
    assert result.stderr.startswith("error: environment variable EXEC_API_KEY: the API key "
                                    "cannot be sent in an HTTP header: U+201C LEFT DOUBLE "
                                    "QUOTATION MARK at position 1 of")
    assert "Traceback" not in result.stderr
    assert not leaked(result.stdout + result.stderr, api.api_key)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml"]  # no output, no journal
    assert not api.requests


def test_a_reload_refuses_such_a_key_and_keeps_the_running_one(tmp_path: Path,
                                                               api: FakeExecAPI) -> None:
    secret = api.api_key
    config = tmp_path / "config.yaml"
    path = key_file(tmp_path, secret)
    config.write_text(config_text(api.base_url, SCENARIOS, key_file=path))
    with Subprocess(["--config.file", str(config)], {}, tmp_path / "exporter.log") as proc:
        proc.wait_serving()
        path.write_text(bad_key("smart quotes", secret)[0], encoding="utf-8")
        answer = proc.post("/-/reload")
        before = len(api.requests)
        wait_until(lambda: len(api.requests) > before, what="a poll after the failed reload")
        page = proc.get("/metrics").text
        proc.signal(signal.SIGTERM)
        assert proc.wait(10) == 0
        logs = proc.logs()
    assert answer.status_code == 500
    assert "U+201C LEFT DOUBLE QUOTATION MARK" in answer.text
    assert "reload failed" in logs and "U+201C LEFT DOUBLE QUOTATION MARK" in logs
    assert "exec_exporter_config_last_reload_successful 0.0" in page
    # The running key still works: the polls after the reload are authorised.
    assert api.requests[-1].headers["Authorization"] == f"Bearer {secret}"
    assert not leaked(logs + answer.text + page, secret)
