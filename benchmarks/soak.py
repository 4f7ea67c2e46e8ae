"""Soak test: the real exporter against the fault-injecting fake API for a while.

Runs ``python -m exporter`` (a child process, so its RSS, file descriptors and
threads can be read from /proc) against :class:`tests.fakeapi.FakeExecAPI` with
a fast refresh interval and a minute budget that binds, injects a random fault
every few seconds (every kind the fake knows, plus the API going away and coming
back, plus the occasional reload), scrapes /metrics all the while, and prints:

* RSS, open file descriptors and threads of the exporter at start (after the
  first fill and a warm-up) and at the end;
* scrapes attempted, failed and the slowest one;
* the most requests the API saw in any rolling minute, against the exporter's
  own budget and the workspace quota, and the total against the day budget;
* how the exporter stopped (exit code and time after SIGTERM).

Usage::

    python benchmarks/soak.py                  # 10 minutes
    python benchmarks/soak.py --duration 120   # 2 minutes
"""

from __future__ import annotations

import argparse
import bisect
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import requests
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from fakeapi import FakeExecAPI, summary_body  # noqa: E402

SCENARIOS = ["discovery-call", "pricing-objection", "renewal-negotiation",
             "cold-call-opener", "exec-sponsor-review", "churn-save"]
COHORTS = ["all", "sales"]
# (fault, weight, options): 401/403 pause everything for 30 s, so they are rarer.
FAULTS = [
    ("500", 6, {}), ("503_html", 6, {}), ("invalid_json", 4, {}), ("json_array", 3, {}),
    ("wrong_types", 3, {}), ("negative_count", 3, {}), ("score_250", 3, {}),
    ("rank_platinum", 3, {}), ("hang", 4, {"seconds": 4}), ("huge_body", 4, {}),
    ("429_error_object", 2, {}), ("429_top_level", 2, {}), ("429_header", 2, {}),
    ("404", 3, {}), ("400", 2, {}), ("401", 1, {"times": 1}), ("403", 1, {"times": 1}),
]
RPM, RPD, RESERVE = 600, 1_000_000, 0.1


@dataclass
class Process:
    """What /proc says about the exporter."""

    rss_kib: int
    fds: int
    threads: int


@dataclass
class Result:
    duration_s: float
    targets: int
    scrapes: int = 0
    scrape_failures: int = 0
    slowest_scrape_s: float = 0.0
    faults_injected: int = 0
    outages: int = 0
    reloads: int = 0
    api_requests: int = 0
    minute_budget: int = 0
    minute_quota: int = RPM
    max_requests_any_minute: int = 0
    day_budget: int = 0
    budget_exceeded: bool = False
    quota_exceeded: bool = False
    start: Process | None = None
    end: Process | None = None
    exit_code: int | None = None
    stop_s: float | None = None
    failures: list[str] = field(default_factory=list)


def proc_stats(pid: int) -> Process:
    status = Path(f"/proc/{pid}/status").read_text().splitlines()
    fields = {name: rest.split()[0] for name, _, rest in (line.partition(":") for line in status)
              if rest.split()}
    return Process(int(fields["VmRSS"]), len(os.listdir(f"/proc/{pid}/fd")),
                   int(fields["Threads"]))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_config(path: Path, base_url: str, cohorts: list[str]) -> None:
    lines = ["api:", f"  base_url: {base_url}", "  timeout: 2s", "  rate_limit:",
             f"    requests_per_minute: {RPM}", f"    requests_per_day: {RPD}",
             f"    reserve: {RESERVE}", "refresh_interval: 1s", "max_staleness: 1h",
             "scenarios:"]
    lines += [f"  - id: {s}\n    cohorts: [{', '.join(cohorts)}]" for s in SCENARIOS]
    lines += ["cohorts:", "  - name: all", "  - name: sales", "    group_ids: [g1h2i3j4k5l6]"]
    path.write_text("\n".join(lines) + "\n")


def max_in_window(times: list[float], window: float) -> int:
    """The most events in any half-open window of ``window`` seconds."""
    times = sorted(times)
    best = 0
    for i, start in enumerate(times):
        best = max(best, bisect.bisect_left(times, start + window) - i)
    return best


class Scraper(threading.Thread):
    """Scrapes /metrics (and now and then / and a gzip scrape) until stopped."""

    def __init__(self, url: str, interval: float, result: Result) -> None:
        super().__init__(name="scraper", daemon=True)
        self.url, self.interval, self.result = url, interval, result
        self.stopping = threading.Event()
        self.lock = threading.Lock()

    def run(self) -> None:
        session = requests.Session()
        n = 0
        while not self.stopping.is_set():
            n += 1
            path = "/" if n % 20 == 0 else "/metrics"
            headers = {"Accept-Encoding": "gzip"} if n % 3 == 0 else {}
            started = time.monotonic()
            error = None
            try:
                response = session.get(self.url + path, headers=headers, timeout=5)
                if response.status_code != 200:
                    error = f"HTTP {response.status_code} on {path}"
                elif path == "/metrics":
                    list(text_string_to_metric_families(response.text))
            except (requests.RequestException, ValueError) as exc:
                error = f"{type(exc).__name__} on {path}: {str(exc)[:120]}"
            elapsed = time.monotonic() - started
            with self.lock:
                self.result.scrapes += 1
                self.result.slowest_scrape_s = max(self.result.slowest_scrape_s, elapsed)
                if error:
                    self.result.scrape_failures += 1
                    if len(self.result.failures) < 20:
                        self.result.failures.append(error)
            self.stopping.wait(self.interval)


def soak(duration: float, seed: int, scrape_interval: float, fault_every: float,
         log_path: Path | None) -> Result:
    rng = random.Random(seed)
    key = "exec_soak_" + "".join(rng.choice("abcdefghijklmnop") for _ in range(16))
    api = FakeExecAPI(key).start()
    for i, scenario in enumerate(SCENARIOS):
        api.set_summary(scenario, summary_body(participant_count=10 + i))
    work = Path(tempfile.mkdtemp(prefix="exec-soak-"))
    config = work / "config.yaml"
    write_config(config, api.base_url, COHORTS)
    port = free_port()
    log_file = open(log_path or work / "exporter.log", "wb")  # noqa: SIM115
    env = {**os.environ, "EXEC_API_KEY": key,
           "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "exporter", "--config.file", str(config),
         "--web.listen-address", f"127.0.0.1:{port}", "--state.file", str(work / "state.json")],
        cwd=ROOT, env=env, stdout=log_file, stderr=subprocess.STDOUT)
    result = Result(duration_s=duration, targets=len(SCENARIOS) * len(COHORTS),
                    minute_budget=int(RPM * (1 - RESERVE)), day_budget=int(RPD * (1 - RESERVE)))
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                if requests.get(url + "/-/ready", timeout=1).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                raise SystemExit("the exporter did not become ready")
            time.sleep(0.1)
        scraper = Scraper(url, scrape_interval, result)
        scraper.start()
        time.sleep(min(10.0, duration / 10))  # warm-up: imports, first renders, pools
        result.start = proc_stats(proc.pid)
        started = time.monotonic()
        next_reload = started + 60
        while time.monotonic() - started < duration:
            time.sleep(rng.uniform(0.5, 1.5) * fault_every)
            api.set_fault(None, None)
            if rng.random() < 0.05:  # the API goes away for a few seconds
                api.stop()
                time.sleep(rng.uniform(1, 4))
                api.start()
                result.outages += 1
            else:
                names = [f[0] for f in FAULTS]
                weights = [f[1] for f in FAULTS]
                fault = rng.choices(names, weights)[0]
                options = dict(next(f[2] for f in FAULTS if f[0] == fault))
                if fault.startswith("429"):
                    options["retry_after"] = rng.randint(1, 5)
                api.set_fault(rng.choice(SCENARIOS), fault, **options)
                result.faults_injected += 1
            if time.monotonic() > next_reload:  # drop or restore the "sales" cohort
                result.reloads += 1
                write_config(config, api.base_url,
                             COHORTS if result.reloads % 2 == 0 else ["all"])
                proc.send_signal(signal.SIGHUP)
                next_reload += 60
        api.set_fault(None, None)
        time.sleep(3)  # let it settle before the end reading
        result.end = proc_stats(proc.pid)
        scraper.stopping.set()
        scraper.join(10)
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        result.exit_code = proc.wait(15)
        result.stop_s = round(time.monotonic() - sent, 2)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log_file.close()
        api.stop()
    times = [r.time for r in api.requests]
    result.api_requests = len(times)
    result.max_requests_any_minute = max_in_window(times, 60.0)
    result.budget_exceeded = (result.max_requests_any_minute > result.minute_budget
                              or max_in_window(times, 86400.0) > result.day_budget)
    result.quota_exceeded = result.max_requests_any_minute > RPM or len(times) > RPD
    result.slowest_scrape_s = round(result.slowest_scrape_s, 3)
    return result


def report(result: Result) -> str:
    s, e = result.start, result.end
    assert s is not None and e is not None
    lines = [
        f"soak: {result.duration_s:.0f} s, {result.targets} targets, refresh 1s, "
        f"budget {result.minute_budget}/min (quota {result.minute_quota}/min)",
        f"faults injected: {result.faults_injected}, API outages: {result.outages}, "
        f"reloads: {result.reloads}",
        f"{'':12}{'start':>10}{'end':>10}",
        f"{'RSS (KiB)':12}{s.rss_kib:>10}{e.rss_kib:>10}",
        f"{'open fds':12}{s.fds:>10}{e.fds:>10}",
        f"{'threads':12}{s.threads:>10}{e.threads:>10}",
        f"scrapes: {result.scrapes}, failed: {result.scrape_failures}, "
        f"slowest: {result.slowest_scrape_s:.3f} s",
        f"API requests: {result.api_requests}; most in any rolling minute: "
        f"{result.max_requests_any_minute} (budget {result.minute_budget}, quota "
        f"{result.minute_quota})",
        f"budget exceeded: {'YES' if result.budget_exceeded else 'no'}; "
        f"quota exceeded: {'YES' if result.quota_exceeded else 'no'}",
        f"stop: exit code {result.exit_code} after {result.stop_s} s",
    ]
    lines += [f"  failure: {f}" for f in result.failures]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=600.0, help="seconds (default 600)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--scrape-interval", type=float, default=0.25)
    parser.add_argument("--fault-every", type=float, default=4.0,
                        help="mean seconds between fault changes")
    parser.add_argument("--log", type=Path, default=None, help="keep the exporter's log here")
    parser.add_argument("--json", type=Path, default=None, help="also write the result here")
    args = parser.parse_args()
    result = soak(args.duration, args.seed, args.scrape_interval, args.fault_every, args.log)
    print(report(result))
    if args.json:
        args.json.write_text(json.dumps(asdict(result), indent=2) + "\n")
    ok = (result.scrape_failures == 0 and not result.budget_exceeded
          and not result.quota_exceeded and result.exit_code == 0)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
