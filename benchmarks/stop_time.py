"""Stop time: from SIGTERM to the process's exit, for an idle exporter.

Starts ``python -m exporter demo`` (15 targets against the simulated API inside the
process), with and without ``--state.file``, waits until /-/ready answers 200 and
the exporter has been idle a moment, sends SIGTERM and times the exit. Prints every
run and the median. docs/operations.md quotes these figures.

Run from the repository root with the project's virtual environment:

    .venv/bin/python benchmarks/stop_time.py
    .venv/bin/python benchmarks/stop_time.py --runs 5 --idle 2
"""

from __future__ import annotations

import argparse
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from harness import Subprocess, wait_until


def stop_seconds(state: bool, idle: float) -> float:
    """One start, an idle wait, SIGTERM: seconds from the signal to the exit (code 0)."""
    with tempfile.TemporaryDirectory() as tmp:
        args = ["demo"] + (["--state.file", f"{tmp}/state.json"] if state else [])
        proc = Subprocess(args, {}, Path(tmp) / "exporter.log")
        try:
            proc.wait_serving(30)
            wait_until(lambda: proc.get("/-/ready").status_code == 200, 60, what="ready")
            time.sleep(idle)
            sent = time.monotonic()
            proc.signal(signal.SIGTERM)
            code = proc.wait(30)
            took = time.monotonic() - sent
        finally:
            proc.kill()
        if code != 0:
            raise SystemExit(f"exit code {code}:\n{proc.logs()}")
        return took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--idle", type=float, default=2.0, help="seconds idle before SIGTERM")
    args = parser.parse_args()
    for state in (False, True):
        times = [stop_seconds(state, args.idle) for _ in range(args.runs)]
        label = "with --state.file" if state else "without a state file"
        print(f"demo, idle, {label}: median {statistics.median(times):.2f} s "
              f"({', '.join(f'{t:.2f}' for t in times)})")


if __name__ == "__main__":
    main()
