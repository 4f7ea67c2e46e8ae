"""Two exporter trees side by side: median scrape time of each, scrapes alternating.

For a per-request change (the request parser, header handling) whose effect is
smaller than the run-to-run noise of scrape_cost.py: both exporters run at once
on the same configuration and state, and every round scrapes both, in
alternating order, so machine load hits them alike.

Usage: ``python benchmarks/ab_scrape.py OTHER_TREE [--scrapes 4000] [--targets 2000]``
(``OTHER_TREE`` is another checkout, e.g. ``git worktree add /tmp/before HEAD~1``;
"this" is the tree this file is in). Prints medians, this/other ratios, and each
exporter's CPU time a scrape.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _workload as w
from _http import Connection

PROMETHEUS_HEADERS = {
    "Accept": "application/openmetrics-text;version=1.0.0,application/openmetrics-text;"
              "version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
    "Accept-Encoding": "gzip", "User-Agent": "Prometheus/2.53.0",
    "X-Prometheus-Scrape-Timeout-Seconds": "10",
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("other", type=Path, help="the other tree")
    parser.add_argument("--scrapes", type=int, default=4000)
    parser.add_argument("--targets", type=int, default=2000)
    args = parser.parse_args()
    trees = {"this": w.ROOT, "other": args.other.resolve()}
    base_url = "http://127.0.0.1:9/v1"  # never called: every target is fresh
    with tempfile.TemporaryDirectory(prefix="exec-ab-") as tmp:
        work = Path(tmp)
        config = work / "config.yaml"
        config.write_text(w.config_yaml(args.targets, base_url))
        procs: dict[str, subprocess.Popen[bytes]] = {}
        conns: dict[str, Connection] = {}
        try:
            for name, root in trees.items():
                state = work / f"{name}.json"
                state.write_bytes(w.state_file_bytes(args.targets, time.time(), base_url))
                port = w.free_port()
                env = w.child_env()
                env["PYTHONPATH"] = str(root)
                procs[name] = subprocess.Popen(
                    w.exporter_command(config, port, state), env=env, cwd=root,
                    stdout=subprocess.DEVNULL, stderr=(work / f"{name}.log").open("wb"))
                conns[name] = Connection(port)
            for name, conn in conns.items():
                def ready(conn: Connection = conn) -> bool:
                    try:
                        return conn.get("/-/ready").status == 200
                    except OSError:
                        return False
                if w.wait_until(ready, 20) is None:
                    print(f"{name} did not get ready", file=sys.stderr)
                    return 1
            for path, headers in (("/metrics", PROMETHEUS_HEADERS), ("/-/healthy", {})):
                times: dict[str, list[float]] = {name: [] for name in trees}
                cpu = {name: w.cpu_seconds(proc.pid) for name, proc in procs.items()}
                for i in range(args.scrapes):
                    for name in (trees if i % 2 else reversed(list(trees))):
                        response = conns[name].get(path, headers)
                        assert response.status == 200, (name, response.status)
                        times[name].append(response.seconds)
                # CPU a scrape (all threads, user + system; /proc ticks, so over many).
                cpu = {name: (w.cpu_seconds(proc.pid) - cpu[name]) / args.scrapes * 1e6
                       for name, proc in procs.items()}
                med = {name: statistics.median(t) * 1e6 for name, t in times.items()}
                print(f"{path} ({args.targets} targets, {args.scrapes} scrapes each): "
                      f"this {med['this']:.0f} us, other {med['other']:.0f} us, "
                      f"this/other {med['this'] / med['other']:.3f}; CPU a scrape "
                      f"this {cpu['this']:.0f} us, other {cpu['other']:.0f} us")
        finally:
            for proc in procs.values():
                w.stop(proc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
