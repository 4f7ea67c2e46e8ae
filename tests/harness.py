"""End-to-end helpers for the reliability tests: the real exporter over real HTTP.

Two ways to run it:

* :class:`InProcess` builds :class:`exporter.daemon.Exporter` in this process
  (fast; used where signals, exit codes and log capture do not matter);
* :class:`Subprocess` runs ``python -m exporter`` with ``EXEC_API_KEY`` in its
  environment (signals, exit codes, stderr logs, RSS).

Both offer ``get()`` and ``scrape()`` against the exporter's own port and a
bounded :func:`wait_until`. Configs use a 1 s refresh and a budget wide enough
that it never stretches anything, so recoveries take about a second.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

import requests
from fakeapi import FakeExecAPI, summary_body
from prometheus_client.parser import text_string_to_metric_families

from exporter.config import ApiKey, load_config
from exporter.daemon import Exporter
from exporter.webconfig import WebConfig

ROOT = Path(__file__).resolve().parent.parent
T = TypeVar("T")

Values = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@contextlib.contextmanager
def fake_api(participants: Mapping[str, int]) -> Iterator[FakeExecAPI]:
    """A started fake Exec API answering each scenario with ``participants`` of its own."""
    fake = FakeExecAPI(make_key()).start()
    for scenario, count in participants.items():
        fake.set_summary(scenario, summary_body(participant_count=count))
    try:
        yield fake
    finally:
        fake.stop()


def make_key(tag: str = "k") -> str:
    """A fake API key built at run time (never a real-looking literal)."""
    return "exec_test_" + tag * 12


def wait_until(predicate: Callable[[], T], timeout: float = 10.0, interval: float = 0.05,
               what: str = "condition") -> T:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = predicate()
        except (requests.RequestException, OSError, AssertionError) as exc:
            last = exc
        else:
            if last:
                return last
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")
        time.sleep(interval)


def config_text(base_url: str, scenarios: Iterable[str | Mapping[str, Any]],
                cohorts: Iterable[str | Mapping[str, Any]] | None = None,
                refresh: str = "1s", timeout: str = "1s", extra: str = "",
                key_file: str | os.PathLike[str] | None = None) -> str:
    """A YAML configuration polling the fake API at ``base_url`` quickly."""
    lines = [
        "api:",
        f"  base_url: {base_url}",
        f"  timeout: {timeout}",
        "  rate_limit:",
        "    requests_per_minute: 60000",
        "    requests_per_day: 86400000",
        "    reserve: 0",
    ]
    if key_file is not None:
        lines.append(f"  api_key_file: {key_file}")
    lines.append(f"refresh_interval: {refresh}")
    lines.append("scenarios:")
    for scenario in scenarios:
        if isinstance(scenario, str):
            lines.append(f"  - id: {scenario}")
        else:
            lines.append(f"  - id: {scenario['id']}")
            if scenario.get("name"):
                lines.append(f"    name: {scenario['name']}")
            if scenario.get("cohorts"):
                lines.append(f"    cohorts: [{', '.join(scenario['cohorts'])}]")
    if cohorts is not None:
        lines.append("cohorts:")
        for cohort in cohorts:
            if isinstance(cohort, str):
                lines.append(f"  - name: {cohort}")
            else:
                lines.append(f"  - name: {cohort['name']}")
                for k, v in cohort.items():
                    if k != "name":
                        lines.append(f"    {k}: {v}")
    text = "\n".join(lines) + "\n"
    if extra:
        text += textwrap.dedent(extra)
    return text


def parse_metrics(text: str) -> Values:
    """An exposition as {(sample name, sorted labels): value}."""
    values: Values = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            values[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return values


def sample(values: Values, metric: str, /, **labels: str) -> float | None:
    """One sample's value, or None when it is absent (``name`` may be a label)."""
    return values.get((metric, tuple(sorted(labels.items()))))


def series(values: Values, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """Every sample of ``name``: {sorted labels: value}."""
    return {labels: v for (n, labels), v in values.items() if n == name}


class _Client:
    """HTTP against the exporter's own port."""

    scheme = "http"
    port: int

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def get(self, path: str = "/metrics", **kw: Any) -> requests.Response:
        kw.setdefault("timeout", 5)
        return requests.get(self.url + path, **kw)

    def post(self, path: str, **kw: Any) -> requests.Response:
        kw.setdefault("timeout", 15)
        return requests.post(self.url + path, **kw)

    def scrape(self, **kw: Any) -> tuple[Values, float]:
        """Parsed /metrics and how long the scrape took (seconds)."""
        started = time.monotonic()
        response = self.get("/metrics", **kw)
        elapsed = time.monotonic() - started
        response.raise_for_status()
        return parse_metrics(response.text), elapsed

    def value(self, name: str, **labels: str) -> float | None:
        return sample(self.scrape()[0], name, **labels)


class OffsetClock:
    """The real clock plus an offset tests can move forward (to skip a 30 s probe wait
    or age data past max_staleness without sleeping). Wake the poller after a jump."""

    def __init__(self) -> None:
        self.offset = 0.0

    def time(self) -> float:
        return time.time() + self.offset


class InProcess(_Client):
    """The real :class:`Exporter`, started in this process on an ephemeral port."""

    def __init__(self, config_path: Path, key: str, state_file: Path | None = None,
                 web_config: WebConfig | None = None, scheme: str = "http",
                 clock: OffsetClock | None = None) -> None:
        self.config_path = config_path
        self.scheme = scheme
        self.clock = clock or OffsetClock()
        config = load_config(config_path)
        self.exporter = Exporter(config, ApiKey(key, "test"), str(config_path),
                                 str(state_file) if state_file else None, self.clock)
        self.exporter.start(("127.0.0.1", 0), "/metrics", web_config)
        self.port = self.exporter.server.server_address[1]

    def advance(self, seconds: float) -> None:
        """Move the exporter's clock forward and let the poller re-decide at once."""
        self.clock.offset += seconds
        self.exporter.poller.wake()

    def stop(self) -> None:
        self.exporter.stop()

    def __enter__(self) -> InProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Subprocess(_Client):
    """``python -m exporter`` in a child process, stderr captured to a file."""

    def __init__(self, args: list[str], env: Mapping[str, str] | None, log_path: Path,
                 port: int | None = None, scheme: str = "http") -> None:
        self.port = port or free_port()
        self.scheme = scheme
        self.log_path = log_path
        full_env = {k: v for k, v in os.environ.items() if k != "EXEC_API_KEY"}
        full_env["PYTHONPATH"] = str(ROOT) + os.pathsep + full_env.get("PYTHONPATH", "")
        full_env.update(env or {})
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in wait()/kill()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "exporter", "--web.listen-address",
             f"127.0.0.1:{self.port}", *args],
            cwd=str(ROOT), env=full_env, stdout=self._log, stderr=subprocess.STDOUT)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_serving(self, timeout: float = 10.0, **kw: Any) -> None:
        def up() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError(f"exporter exited {self.proc.returncode}:\n{self.logs()}")
            return self.get("/-/healthy", timeout=1, **kw).status_code == 200
        wait_until(up, timeout, what="the exporter to serve")

    def signal(self, signum: int = signal.SIGTERM) -> None:
        self.proc.send_signal(signum)

    def wait(self, timeout: float = 15.0) -> int:
        try:
            return self.proc.wait(timeout)
        finally:
            if self.proc.poll() is not None:
                self._log.close()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        self._log.close()

    def rss_kib(self) -> int:
        return status_kib(self.pid, "VmRSS")

    def __enter__(self) -> Subprocess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()


def status_kib(pid: int | str, field: str) -> int:
    """A ``/proc/PID/status`` field in KiB (VmRSS, VmHWM) or count (Threads)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)
