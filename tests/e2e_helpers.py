"""Helpers for the tests that run promtool or a real Prometheus server.

The binaries come from Debian's ``prometheus`` package (``scripts/test.sh``
installs it). Without them the tests skip, except in CI (``CI`` set), where a missing
binary is a failure: an end-to-end check that silently skips proves nothing.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sysconfig
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import pytest

ROOT = Path(__file__).resolve().parent.parent
T = TypeVar("T")


def in_ci() -> bool:
    """True when the CI environment variable is set (to anything but false/0/no)."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def tool_path() -> str:
    """The search path for tools: this environment's scripts folder first, then PATH.

    The dev extras install some tools as wheels (kubectl, hadolint, docker-compose);
    looking in the running interpreter's own ``bin`` first finds those even when the
    tests run as ``.venv/bin/python -m pytest`` without the venv on PATH, and prefers
    them to whatever other version the machine happens to have.
    """
    scripts = sysconfig.get_path("scripts")
    return os.pathsep.join(p for p in (scripts, os.environ.get("PATH", "")) if p)


def require_tool(name: str, install: str = "Debian/Ubuntu: apt-get install prometheus") -> str:
    """The path of command ``name``: skip the test without it, or fail in CI."""
    path = shutil.which(name, path=tool_path())
    if path:
        return path
    reason = f"{name} is not in {sysconfig.get_path('scripts')} nor on PATH ({install})"
    if in_ci():
        pytest.fail(f"{reason}; CI is set, so this test must not be skipped", pytrace=False)
    pytest.skip(reason)


# The alert names of the contract (shared/CONTRACT.md).
CONTRACT_ALERTS = frozenset({
    "ExecScenarioScoreDrop",
    "ExecExporterDown",
    "ExecExporterTargetFailing",
    "ExecExporterDataStale",
    "ExecExporterRateLimited",
    "ExecExporterUnauthorized",
    "ExecAssignmentsPastDue",
    "ExecSkillProficiencyDrop",
})


def rule_files() -> list[Path]:
    """Every Prometheus rule file of the project (the unit-test files excluded)."""
    files = sorted((ROOT / "prometheus").glob("*.y*ml"))
    return [f for f in files if not f.stem.endswith("_test")]


def rule_test_files() -> list[Path]:
    """Every promtool unit-test file of the project."""
    return sorted((ROOT / "prometheus").glob("*_test.y*ml"))


def wait_for(probe: Callable[[], T | None], timeout: float, what: str,
             interval: float = 0.25, diagnostics: Callable[[], str] | None = None) -> T:
    """Call ``probe`` until it returns something truthy; fail after ``timeout`` s.

    Exceptions raised by the probe count as "not yet" (a server still
    starting refuses connections); the last one is shown on timeout.
    """
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while True:
        try:
            result = probe()
        except Exception as exc:  # a server that is not up yet
            last_error = exc
            result = None
        if result:
            return result
        if time.monotonic() >= deadline:
            details = f" (last error: {last_error!r})" if last_error else ""
            extra = f"\n{diagnostics()}" if diagnostics else ""
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}{details}{extra}",
                        pytrace=False)
        time.sleep(interval)


class Process:
    """A background process whose output goes to a log file; stopped by :meth:`stop`."""

    def __init__(self, name: str, args: Sequence[str], log: Path,
                 cwd: Path | None = None, env: dict[str, str] | None = None) -> None:
        self.name = name
        self.args = list(args)
        self.log = log
        self._log_file = log.open("wb")
        self.proc = subprocess.Popen(
            self.args, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
            stdout=self._log_file, stderr=subprocess.STDOUT,
        )

    def running(self) -> bool:
        return self.proc.poll() is None

    def tail(self, lines: int = 30) -> str:
        """The end of the process' output, for failure messages."""
        self._log_file.flush()
        text = self.log.read_text(errors="replace").splitlines()[-lines:]
        state = "running" if self.running() else f"exited with {self.proc.returncode}"
        return f"--- {self.name} ({state}), last {len(text)} lines of {self.log}:\n" + "\n".join(
            text)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL if it does not exit in time."""
        if self.running():
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.proc.wait(timeout)
        self._log_file.close()


# --- the workspace the alert tests run the exporter against -----------------------------

ALERT_SCENARIOS = ("discovery-call", "pricing-objection")
SALES_GROUP = "g-sales"


def populate_alert_world(api: Any, now: float) -> None:
    """Fill a ``tests/fakeapi.FakeExecAPI`` with a small, deterministic workspace: 24
    users (half in the sales group), sessions of both scenarios in the days before
    ``now``, a few skills and assignments. Summaries and participants tables are both
    computed from the sessions (the planner can derive the sales cohort)."""
    from fakeapi import Session, User

    users = [User(f"u{i:02d}", f"user{i}@acme.com",
                  frozenset({SALES_GROUP}) if i % 2 == 0 else frozenset())
             for i in range(24)]
    api.set_users(users)
    api.set_groups([{"id": SALES_GROUP, "name": "Sales"}])
    for n, scenario in enumerate(ALERT_SCENARIOS):
        api.set_sessions(scenario, [
            Session(u.id, now - 86400.0 * (1 + (i + k + n) % 5), float(40 + (7 * i + 11 * k
                                                                        + 5 * n) % 60),
                    300.0 + 10 * i)
            for i, u in enumerate(users) for k in range(2)])
    api.set_skills([{"id": "sk-1", "name": "Objection handling", "slug": "objection-handling",
                     "description": "x", "created_at": "2026-01-15T14:30:00Z",
                     "proficiency_summary": {"participant_count": 20,
                                             "scored_participant_count": 16,
                                             "pct_proficient_plus": 50, "avg_score": 70.5}}])
    api.set_assignments([{"id": f"a{i}-{scenario}", "user": {"id": f"u{i:02d}"},
                          "scenario": {"id": scenario, "name": scenario, "slug": scenario},
                          "status": ("completed", "past_due", "in_progress")[i % 3]}
                         for i in range(12) for scenario in ALERT_SCENARIOS])


def alert_config(base_url: str, **overrides: Any) -> dict[str, Any]:
    """The exporter's configuration for the alert tests: both scenarios, cohorts "all"
    and "sales" (a group: derived from the participants pull by the planner), skills
    and assignments on: every kind of request the exporter sends."""
    config: dict[str, Any] = {
        "api": {"base_url": base_url, "timeout": "1s"},
        "refresh_interval": "15m",
        "scenarios": [{"id": s} for s in ALERT_SCENARIOS],
        "cohorts": [{"name": "all"}, {"name": "sales", "group_ids": [SALES_GROUP]}],
        "planner": {"mode": "auto"},
        "skills": {"interval": "1h"},
        "assignments": {"interval": "1h"},
    }
    config.update(overrides)
    return config
