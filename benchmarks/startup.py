"""Start-up: how soon a fresh process serves, with and without a state file.

For each size, against a FakeExecAPI on 127.0.0.1, it starts ``python -m exporter``
and polls (every 10 ms) until:

* with a restored ``--state.file`` (every target fresh): /-/healthy answers, then
  /-/ready answers 200 (every target has a value), and /metrics carries data;
* with no state file: /metrics carries the first scenario sample (the first
  refresh landed), and /-/ready answers 200 when the first fill completes
  within the time limit (it runs at the minute budget, 54 requests a minute
  by default, so only sizes up to ~50 targets finish within a minute).

Times are from just before the process is spawned; each is the median of
``--runs`` starts.

    python benchmarks/startup.py
    python benchmarks/startup.py --targets 20,2000 --runs 5
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import _workload as w
from _http import Connection

sys.path.insert(0, str(w.TESTS))
from fakeapi import FakeExecAPI, summary_body

POLL = 0.01
DATA_SAMPLE = b"\nexec_scenario_participants{"


def status(port: int, path: str) -> tuple[int, bytes]:
    conn = Connection(port, timeout=5.0)
    try:
        response = conn.get(path, keep_body=True)
        return response.status, response.body
    except OSError:
        return 0, b""
    finally:
        conn.close()


def run_once(targets: int, with_state: bool, limit: float) -> dict[str, float | None]:
    fake = FakeExecAPI(w.API_KEY).start()
    proc = None
    try:
        scenarios, _ = w.shape(targets)
        for i in range(scenarios):
            fake.set_summary(w.scenario_slug(i), summary_body())
        with tempfile.TemporaryDirectory(prefix="exec-bench-") as tmp:
            work = Path(tmp)
            config = work / "config.yaml"
            config.write_text(w.config_yaml(targets, fake.base_url))
            state = work / "state.json" if with_state else None
            if state is not None:
                state.write_bytes(w.state_file_bytes(targets, time.time(), fake.base_url))
            port = w.free_port()
            started = time.monotonic()
            proc = w.start(w.exporter_command(config, port, state), work / "exporter.log")
            deadline = started + limit
            marks: dict[str, float | None] = {"healthy": None, "data": None, "ready": None}
            checks: dict[str, Callable[[], bool]] = {
                "healthy": lambda: status(port, "/-/healthy")[0] == 200,
                "data": lambda: DATA_SAMPLE in status(port, "/metrics")[1],
                "ready": lambda: status(port, "/-/ready")[0] == 200,
            }
            while time.monotonic() < deadline and None in marks.values():
                if proc.poll() is not None:
                    raise RuntimeError(f"exporter exited; see {work / 'exporter.log'}")
                for name, check in checks.items():
                    if marks[name] is None and (name == "healthy" or marks["healthy"]) \
                            and check():
                        marks[name] = time.monotonic() - started
                time.sleep(POLL)
            w.stop(proc)
            proc = None
            return marks
    finally:
        w.stop(proc)
        fake.stop()


def fmt(values: list[float | None]) -> str:
    done = [v for v in values if v is not None]
    if len(done) < len(values):
        return "not within the limit" if not done else f"{statistics.median(done):.2f} s (some)"
    return f"{statistics.median(done):.2f} s"


def main() -> int:
    parser = argparse.ArgumentParser(description="Start-up times of the exporter.")
    parser.add_argument("--targets", default="20,100,2000")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--limit", type=float, default=90.0,
                        help="seconds to wait for each mark (default: %(default)s)")
    args = parser.parse_args()
    rows = []
    for n in (int(x) for x in args.targets.split(",") if x):
        for with_state in (True, False):
            label = "restored state" if with_state else "no state"
            print(f"{n} targets, {label} ...", file=sys.stderr, flush=True)
            runs = [run_once(n, with_state, args.limit) for _ in range(args.runs)]
            rows.append([n, label, fmt([r["healthy"] for r in runs]),
                         fmt([r["data"] for r in runs]), fmt([r["ready"] for r in runs])])
    print(f"Median of {args.runs} starts, from spawning the process (limit {args.limit:.0f} s)")
    print(w.table(rows, ["targets", "start", "/-/healthy", "first data in /metrics",
                         "/-/ready"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
