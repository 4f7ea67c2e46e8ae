"""The command line and the whole exporter as a process, over real loopback HTTP."""

from __future__ import annotations

import argparse
import gzip
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from conftest import make_key, sample
from fakeapi import FakeExecAPI, summary_body
from harness import Subprocess, wait_until

from exporter import __version__

BAD = Path(__file__).parent / "data" / "bad"


ROOT = Path(__file__).resolve().parent.parent


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 30,
            cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if k != "EXEC_API_KEY"}
    full_env["PYTHONPATH"] = str(ROOT) + os.pathsep + full_env.get("PYTHONPATH", "")
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "exporter", *args], capture_output=True,
                          text=True, env=full_env, timeout=timeout, cwd=cwd)


def start(tmp_path: Path, args: list[str], env: dict[str, str]) -> Subprocess:
    """The exporter as a child process on a free loopback port."""
    return Subprocess(args, env, tmp_path / "exporter.log")


def stop(proc: Subprocess) -> tuple[int, str]:
    """SIGTERM, then the exit code and everything it logged."""
    try:
        if proc.proc.poll() is None:
            proc.signal(signal.SIGTERM)
        code = proc.wait(15)
    finally:
        proc.kill()
    return code, proc.logs()


def metrics(proc: Subprocess) -> dict:
    return proc.scrape()[0]


@pytest.fixture
def api() -> Iterator[FakeExecAPI]:
    fake = FakeExecAPI(make_key()).start()
    try:
        yield fake
    finally:
        fake.stop()


# --- offline ---------------------------------------------------------------------


def test_version() -> None:
    result = run_cli("--version")
    assert result.returncode == 0
    assert __version__ in result.stdout


def test_config_check_prints_the_plan(write_config) -> None:
    scenarios = ", ".join(f"{{id: scenario-{i}}}" for i in range(10))
    path = write_config(f"""
        refresh_interval: 15m
        scenarios: [{scenarios}]
        cohorts: [{{name: all}}, {{name: sales, group_ids: [g1]}}]
        planner: {{mode: summary}}  # the summary plan's arithmetic (auto: test_planner)
    """)
    result = run_cli("--config.check", f"--config.file={path}")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "targets: 20" in out
    assert "requests/day needed at refresh_interval 15m: 1920" in out
    assert "daily budget: 900 requests (1000/day less 10% reserve)" in out
    assert "effective refresh interval: 32m (1920s)" in out
    assert "warning: no API key found" in out


def test_config_check_does_not_print_the_key(write_config, tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text(make_key())
    key_file.chmod(0o600)
    path = write_config(f"""
        api: {{api_key_file: {key_file}}}
        scenarios: [{{id: s}}]
    """)
    result = run_cli("--config.check", f"--config.file={path}")
    assert result.returncode == 0
    assert "api key: found (file" in result.stdout
    assert make_key() not in result.stdout + result.stderr


def test_config_check_only_warns_about_a_missing_key_file(write_config) -> None:
    path = write_config("""
        api: {api_key_file: /run/secrets/not-on-this-machine}
        scenarios: [{id: s}]
    """)
    result = run_cli("--config.check", f"--config.file={path}")
    assert result.returncode == 0
    # One line about the key, saying why it is missing, and nothing contradicting it.
    key_lines = [line for line in result.stdout.splitlines() if "key" in line.lower()]
    assert key_lines == ["warning: api key: api.api_key_file: cannot read "
                         "'/run/secrets/not-on-this-machine': No such file or directory "
                         "(running needs it)"]
    # Running for real with that file is an error.
    result = run_cli(f"--config.file={path}", "--web.listen-address=127.0.0.1:0")
    assert result.returncode == 2
    assert "api.api_key_file: cannot read" in result.stderr


@pytest.mark.parametrize("name", sorted(p.name for p in BAD.glob("*.yaml")))
def test_bad_files_exit_2_with_a_message_and_no_traceback(name: str) -> None:
    result = run_cli("--config.check", f"--config.file={BAD / name}")
    assert result.returncode == 2
    assert result.stderr.startswith("error: ")
    assert "Traceback" not in result.stderr


def test_running_without_a_key_exits_2(write_config) -> None:
    path = write_config("scenarios: [{id: s}]")
    result = run_cli(f"--config.file={path}", "--web.listen-address=127.0.0.1:0")
    assert result.returncode == 2
    assert "no API key" in result.stderr


def test_bad_listen_address_exits_2(write_config) -> None:
    path = write_config("scenarios: [{id: s}]")
    result = run_cli(f"--config.file={path}", "--web.listen-address=nowhere",
                     env={"EXEC_API_KEY": make_key()})
    assert result.returncode == 2


# --- running ---------------------------------------------------------------------


def test_exports_what_the_api_returned(api: FakeExecAPI, write_config,
                                       tmp_path: Path) -> None:
    api.set_summary("disc", summary_body())
    api.set_summary("renew", summary_body(average_best_score=None, average_best_rank=None,
                                          participant_count=3))
    path = write_config(f"""
        api:
          base_url: {api.base_url}
          timeout: 2s
          rate_limit: {{requests_per_minute: 600, requests_per_day: 100000}}
        refresh_interval: 1h
        scenarios:
          - {{id: disc, name: Discovery call}}
          - {{id: renew}}
        cohorts:
          - {{name: all}}
          - name: sales
            group_ids: [g1, g2]
            exclude_system_users: true
          - {{name: last-7d, window: 7d}}
          - name: q3
            user_emails: [jane@acme.com]
            start_date: 2026-07-01T00:00:00Z
            end_date: 2026-09-30T23:59:59Z
    """)
    proc = start(tmp_path, [f"--config.file={path}", "--log.level=debug"],
                 {"EXEC_API_KEY": make_key()})
    try:
        wait_until(lambda: proc.get("/-/ready").status_code == 200)
        v = metrics(proc)
        disc = {"scenario": "disc", "cohort": "sales"}
        assert sample(v, "exec_scenario_participants", **disc) == 45
        assert sample(v, "exec_scenario_average_best_score", **disc) == 74.2
        assert sample(v, "exec_scenario_practice_seconds", **disc) == 742 * 60
        assert sample(v, "exec_scenario_rank_participants", rank="gold", **disc) == 12
        assert sample(v, "exec_scenario_info", scenario="disc", name="Discovery call",
                      id="disc") == 1
        renew = {"scenario": "renew", "cohort": "q3"}
        assert sample(v, "exec_scenario_participants", **renew) == 3
        assert sample(v, "exec_scenario_average_best_score", **renew) is None
        assert sample(v, "exec_exporter_targets") == 8
        assert sample(v, "exec_exporter_target_up", **renew) == 1

        # Filters reached the API as it expects.
        queries = {tuple(sorted(r.query.items())) for r in api.requests_for("disc")}
        assert (("exclude_system_users", "true"), ("group_ids", "g1,g2")) in queries
        assert (("end_date", "2026-09-30T23:59:59Z"), ("start_date", "2026-07-01T00:00:00Z"),
                ("user_emails", "jane@acme.com")) in queries
        windows = [dict(q)["start_date"] for q in queries if len(q) == 1]
        assert len(windows) == 1 and windows[0].endswith("Z")
        assert all(r.headers["Authorization"] == f"Bearer {make_key()}" for r in api.requests)

        # Scrapes never cause API requests.
        before = len(api.requests)
        for _ in range(30):
            assert proc.get("/metrics").status_code == 200
        assert len(api.requests) == before
        # One summary per target; planner.mode auto also tried one participants pull per
        # scenario (this fake has none: 404, so summaries only) and read the group lists.
        assert len(api.requests_to("/summary")) == 8

        # gzip and OpenMetrics when asked for.
        raw = requests.get(proc.url + "/metrics", headers={"Accept-Encoding": "gzip"},
                           timeout=5, stream=True)
        assert raw.headers["Content-Encoding"] == "gzip"
        body = gzip.decompress(raw.raw.read())
        assert b"exec_scenario_participants" in body
        om = proc.get("/metrics", headers={"Accept": "application/openmetrics-text"})
        assert om.headers["Content-Type"].startswith("application/openmetrics-text")
        assert om.text.endswith("# EOF\n")

        page = proc.get("/")
        assert page.status_code == 200 and "disc" in page.text and "/metrics" in page.text
        assert proc.get("/-/healthy").status_code == 200
        assert make_key() not in page.text + proc.get("/metrics").text
    finally:
        code, out = stop(proc)
    assert code == 0
    assert make_key() not in out
    assert "shutting down" in out


def test_ready_only_once_every_target_has_a_value(api: FakeExecAPI, write_config,
                                                  tmp_path: Path) -> None:
    api.set_summary("a", summary_body())
    api.set_fault("b", "500")
    path = write_config(f"""
        api: {{base_url: {api.base_url}, timeout: 2s}}
        scenarios: [{{id: a}}, {{id: b}}]
    """)
    proc = start(tmp_path, [f"--config.file={path}"], {"EXEC_API_KEY": make_key()})
    try:
        wait_until(lambda: len(api.requests) >= 2)
        assert proc.get("/-/ready").status_code == 503
        api.set_fault("b", None)
        api.set_summary("b", summary_body())
        wait_until(lambda: proc.get("/-/ready").status_code == 200, timeout=30)
    finally:
        stop(proc)


def test_effective_interval_on_metrics_matches_the_plan(api: FakeExecAPI, write_config,
                                                        tmp_path: Path) -> None:
    scenarios = ", ".join(f"{{id: s{i}}}" for i in range(10))
    path = write_config(f"""
        api: {{base_url: {api.base_url}}}
        scenarios: [{scenarios}]
        cohorts: [{{name: all}}, {{name: sales, group_ids: [g1]}}]
    """)
    for i in range(10):
        api.set_summary(f"s{i}", summary_body())
    proc = start(tmp_path, [f"--config.file={path}"], {"EXEC_API_KEY": make_key()})
    try:
        wait_until(lambda: sample(metrics(proc), "exec_exporter_refresh_interval_seconds")
                 == 1920)
        v = metrics(proc)
        assert sample(v, "exec_exporter_api_budget_remaining", window="day") <= 900
        assert sample(v, "exec_exporter_api_budget_remaining", window="minute") <= 54
    finally:
        stop(proc)


def test_demo_serves_data_without_key_or_file(tmp_path: Path) -> None:
    proc = start(tmp_path, ["demo"], {})
    try:
        wait_until(lambda: sample(metrics(proc), "exec_scenario_participants",
                                scenario="discovery-call-it-director", cohort="all")
                 is not None, timeout=30)
        v = metrics(proc)
        up = [value for (name, _), value in v.items() if name == "exec_exporter_target_up"]
        assert len(up) == 15
    finally:
        code, _ = stop(proc)
    assert code == 0


def test_config_check_of_the_demo_prints_its_plan() -> None:
    result = run_cli("--config.check", "demo")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "configuration OK: built-in demo configuration"
    assert "targets: 15" in lines and lines[-1] == "api key: found (built-in demo key)"
    assert "Traceback" not in result.stderr


def test_each_subcommand_prints_its_own_help() -> None:
    top, past, demo = (run_cli(*args, "--help") for args in ([], ["backfill"], ["demo"]))
    assert all(r.returncode == 0 for r in (top, past, demo))
    assert top.stdout.startswith("usage: exec-exporter [")
    assert "{demo,backfill}" in top.stdout and "--since" not in top.stdout
    assert past.stdout.startswith("usage: exec-exporter backfill ")
    for flag in ("--since", "--until", "--step", "--output", "--label", "--config.file",
                 "--state.file"):
        assert flag in past.stdout
    assert "--web.listen-address" not in past.stdout and "--config.check" not in past.stdout
    assert demo.stdout.startswith("usage: exec-exporter demo ")
    assert "--web.listen-address" in demo.stdout and "--since" not in demo.stdout


@pytest.mark.parametrize("flag", ["--since=3d", "--output=x.om", "--step=1d"])
def test_backfill_flags_without_the_subcommand_are_refused(write_config, flag: str) -> None:
    path = write_config("scenarios: [{id: s}]")
    result = run_cli(flag, "--config.check", f"--config.file={path}")
    assert result.returncode == 2
    assert "configuration OK" not in result.stdout
    name = flag.split("=")[0]
    assert f"unrecognized arguments: {flag} ({name} belongs to a subcommand: " \
           f"exec-exporter backfill {name}=..." in result.stderr


def test_backfill_reports_every_missing_flag_in_one_run(write_config, tmp_path: Path) -> None:
    path = write_config("scenarios: [{id: s}]")
    result = run_cli("backfill", f"--config.file={path}", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "error: --since: required (how far back, e.g. --since=30d)",
        "error: --output: required (the OpenMetrics file to write, e.g. --output=backfill.om)"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]


def test_a_negative_backfill_duration_must_be_positive(write_config, tmp_path: Path) -> None:
    path = write_config("scenarios: [{id: s}]")
    output = tmp_path / "out.om"
    joined = run_cli("backfill", f"--config.file={path}", "--since=-5d", f"--output={output}",
                     env={"EXEC_API_KEY": make_key()})
    assert joined.returncode == 2
    assert joined.stderr == "error: --since: duration '-5d' must be positive, e.g. '5d'\n"
    apart = run_cli("backfill", f"--config.file={path}", "--since", "-5d", f"--output={output}")
    assert apart.returncode == 2
    assert apart.stderr.splitlines()[-1].endswith(
        "argument --since: expected one argument (a value starting with '-' goes after '=': "
        "--since=VALUE)")
    assert not output.exists() and not output.with_name("out.om.journal").exists()


def test_daemon_flags_a_subcommand_does_not_use_are_refused(write_config) -> None:
    path = write_config("scenarios: [{id: s}]")
    demo = run_cli(f"--config.file={path}", "demo")
    assert demo.returncode == 2
    assert demo.stderr == ("error: --config.file: does not apply to 'demo' "
                           "(see exec-exporter demo --help)\n")
    past = run_cli("--web.listen-address=:1", "--config.check", "backfill",
                   f"--config.file={path}", "--since=1d", "--output=x.om")
    assert past.returncode == 2
    assert past.stderr.splitlines() == [
        "error: --web.listen-address: does not apply to 'backfill' "
        "(see exec-exporter backfill --help)",
        "error: --config.check checks the daemon's configuration: run "
        "exec-exporter --config.check --config.file=PATH"]


def test_flags_given_before_a_subcommand_are_kept() -> None:
    from exporter.cli import build_parser
    args = build_parser().parse_args(["--config.file=a.yaml", "--log.level=debug", "backfill",
                                      "--since=1d"])
    assert (args.mode, args.config_file, args.log_level, args.since) == (
        "backfill", "a.yaml", "debug", "1d")
    args = build_parser().parse_args(["backfill", "--config.file=b.yaml"])
    assert (args.config_file, args.log_level, args.state_file) == ("b.yaml", "info", None)
    args = build_parser().parse_args(["demo", "--web.listen-address=127.0.0.1:0"])
    assert (args.listen, args.telemetry_path, args.config_check) == (
        "127.0.0.1:0", "/metrics", False)


def test_no_configuration_file_says_how_to_get_one(tmp_path: Path) -> None:
    for args in ([], ["--config.check"], ["backfill", "--since=1d", "--output=x.om"]):
        result = run_cli(*args, cwd=tmp_path, env={"EXEC_API_KEY": make_key()})
        assert result.returncode == 2, args
        assert result.stderr == (f"error: config.yaml: no such file in {tmp_path}; pass "
                                 "--config.file=PATH or create one from the example: "
                                 "cp config.example.yaml config.yaml\n"), args


def test_a_misspelt_key_and_a_negative_duration_in_a_real_run(write_config) -> None:
    path = write_config("""
        refresh_intervall: 15m
        max_staleness: -5m
        scenarios: [{id: s}]
    """)
    for args in (["--config.check"], []):
        result = run_cli(*args, f"--config.file={path}", env={"EXEC_API_KEY": make_key()})
        assert result.returncode == 2
        assert sorted(result.stderr.splitlines()) == [
            "error: max_staleness: duration '-5m' must be positive, e.g. '5m'",
            "error: refresh_intervall: unknown key; did you mean refresh_interval?"]


def test_help_says_where_the_key_comes_from() -> None:
    from exporter.cli import build_parser
    text = build_parser().format_help()
    assert "EXEC_API_KEY" in text and "api_key_file" in text


# --- the README's command line ----------------------------------------------------------


def _readme_block(after: str) -> str:
    """The README's text from the line after ``after`` (itself or a heading before the
    block) to the end of the code block that holds or follows it."""
    text = (ROOT / "README.md").read_text()
    start = text.index("\n", text.index(after)) + 1
    if text.startswith("```", start):
        start = text.index("\n", start) + 1
    elif after.startswith("#"):
        start = text.index("\n", text.index("```", start)) + 1
    return text[start:text.index("```", start)]


def _synopsis() -> dict[str, set[str]]:
    """The README's synopsis: each subcommand (``""`` for the daemon) and its flags."""
    commands: dict[str, set[str]] = {}
    current = ""
    for line in _readme_block("## Command line").splitlines():
        if line.startswith("exec-exporter "):
            word = line.split()[1]
            current = "" if word.startswith(("-", "[")) else word
            commands.setdefault(current, set())
        elif not line.startswith(" "):
            continue  # python -m exporter ...
        commands[current].update(flag.split("=")[0] for flag in
                                 re.findall(r"--[a-z][\w.-]*=?", line))
    return commands


def test_the_readme_is_short_and_its_synopsis_matches_the_help() -> None:
    assert len((ROOT / "README.md").read_text().splitlines()) <= 300
    synopsis = _synopsis()
    from exporter.cli import build_parser
    parser = build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert set(synopsis) - {""} == set(subparsers.choices)
    for name, flags in synopsis.items():
        command = parser if not name else subparsers.choices[name]
        known = {option for action in command._actions for option in action.option_strings
                 if option not in ("-h", "--help")}
        assert flags == known, (name or "the daemon", flags ^ known)


def test_the_readmes_config_check_example_is_the_real_output() -> None:
    example = _readme_block("$ exec-exporter --config.check --config.file=config.example.yaml")
    result = run_cli("--config.check", "--config.file=config.example.yaml", cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert result.stdout == example
