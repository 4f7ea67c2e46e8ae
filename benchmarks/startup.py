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

It needs Python 3.11 or later with the project's dependencies installed: the
interpreter that runs this script also runs the exporter (``sys.executable -m
exporter``), so use the project's virtual environment, from the repository root:

    .venv/bin/python benchmarks/startup.py
    .venv/bin/python benchmarks/startup.py --targets 20,2000 --runs 5

If a start fails, the exporter's log is copied out of the temporary directory
(its path is printed) before that directory is removed.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

NEEDS = ("Python 3.11+ with the project installed; from the repository root: "
         "python3 -m venv .venv && .venv/bin/pip install -e . && "
         ".venv/bin/python benchmarks/startup.py")
if sys.version_info < (3, 11):  # noqa: UP036 - this script may be run by any python3
    sys.exit(f"startup.py: this is Python {sys.version.split()[0]}; it needs {NEEDS}")
try:
    import _workload as w
    from _http import Connection
except ModuleNotFoundError as exc:  # the exporter's dependencies are not installed here
    sys.exit(f"startup.py: {sys.executable} cannot import {exc.name!r}; it needs {NEEDS}")

sys.path.insert(0, str(w.TESTS))
from fakeapi import FakeExecAPI, summary_body  # noqa: E402 - needs the path above

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
            log = work / "exporter.log"
            started = time.monotonic()
            proc = w.start(w.exporter_command(config, port, state), log)
            deadline = started + limit
            marks: dict[str, float | None] = {"healthy": None, "data": None, "ready": None}
            checks: dict[str, Callable[[], bool]] = {
                "healthy": lambda: status(port, "/-/healthy")[0] == 200,
                "data": lambda: DATA_SAMPLE in status(port, "/metrics")[1],
                "ready": lambda: status(port, "/-/ready")[0] == 200,
            }
            try:
                while time.monotonic() < deadline and None in marks.values():
                    if proc.poll() is not None:
                        raise RuntimeError(f"exporter exited with code {proc.returncode}")
                    for name, check in checks.items():
                        if marks[name] is None and (name == "healthy" or marks["healthy"]) \
                                and check():
                            marks[name] = time.monotonic() - started
                    time.sleep(POLL)
            except BaseException:
                w.stop(proc)  # so the log is complete
                proc = None
                keep_log(log, targets, with_state)
                raise
            w.stop(proc)
            proc = None
            return marks
    finally:
        w.stop(proc)
        fake.stop()


def keep_log(log: Path, targets: int, with_state: bool) -> None:
    """Copy a failed start's log out of the temporary directory, which is about to go."""
    if not log.exists():
        return
    kind = "state" if with_state else "nostate"
    fd, kept = tempfile.mkstemp(prefix=f"exec-bench-startup-{targets}-{kind}-", suffix=".log")
    with open(fd, "wb") as out, log.open("rb") as src:
        shutil.copyfileobj(src, out)
    print(f"startup.py: the exporter's log is kept in {kept}", file=sys.stderr, flush=True)


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
