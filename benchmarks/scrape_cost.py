"""Scrape cost: the real exporter beside a naive exporter and nginx, in one run.

For each size (targets = scenarios x 10 cohorts) it starts, all on 127.0.0.1:

* the exporter (``python -m exporter``) with a generated configuration and a
  pre-written ``--state.file`` in which every target is fresh, so every series
  is served at once and no API request is due (its base URL points at a
  FakeExecAPI on loopback all the same);
* the naive exporter (``naive_exporter.py``): prometheus_client ``Gauge``s with
  the same series and values, served by ``start_http_server``;
* nginx (Debian's nginx-light) serving the exporter's very bytes from files:
  the physical limit of a scrape on this machine;

then scrapes them in turn over keep-alive connections (the naive exporter
closes after each response; its reconnect is part of its time): for each kind
of scrape (plain text, gzip text, gzip OpenMetrics) a phase of rounds, each
round one naive scrape and K scrapes of the exporter and of nginx,
interleaved ("interleaved": most exporter and nginx scrapes follow one
another, caches warm). The sizes of ``--strict-targets`` are measured again
with K = 1 ("strict 1:1:1"): every scrape follows a 0.1-1 s naive scrape that
has evicted the caches, as a scrape every 15 s in production would find them.
CPU seconds come from /proc/<pid>/stat, memory from /proc/<pid>/status, per
server process.

Also reported: the exporter's memory alone at ``--rss-targets`` (10,000), and
its scrape times while its first fill lands (``--fill-targets``, no state file).

    python benchmarks/scrape_cost.py                      # the whole suite, ~15 minutes
    python benchmarks/scrape_cost.py --targets 2000 --rss-targets '' --fill-targets ''
    python benchmarks/scrape_cost.py --plot scrape_cost.png   # needs matplotlib (the bench extra)
    EXPORTER_ROOT=/path/to/other/checkout python benchmarks/scrape_cost.py   # compare a change
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import json
import math
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import _workload as w
from _http import Connection

from exporter.exposition import OPENMETRICS_CONTENT_TYPE, TEXT_CONTENT_TYPE

sys.path.insert(0, str(w.TESTS))
from fakeapi import FakeExecAPI, summary_body

OPENMETRICS = "application/openmetrics-text; version=1.0.0,text/plain;version=0.0.4;q=0.5"
KINDS: dict[str, dict[str, str]] = {
    "plain": {},
    "gzip": {"Accept-Encoding": "gzip"},
    "om+gzip": {"Accept": OPENMETRICS, "Accept-Encoding": "gzip"},
}
NGINX_FILES = {"plain": "metrics.txt", "gzip": "metrics.txt.gz", "om+gzip": "metrics.om.gz"}
SERVERS = ("exporter", "naive", "nginx")
GOAL_NAIVE = 0.05
# Against nginx serving the same bytes: plain text is bound by copying the body; a gzip
# scrape sends a cached, compressed body plus a small live tail (issue 20: within 1.6x).
GOAL_NGINX = {"plain": 3.0, "gzip": 1.6, "om+gzip": 1.6}
MIB = 1024


@dataclass
class Server:
    """One server under test: its process and a keep-alive connection to it."""

    name: str
    port: int
    proc: subprocess.Popen[bytes]
    paths: dict[str, str]
    conn: Connection = field(init=False)
    times: dict[str, list[float]] = field(default_factory=dict)
    cpu: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.conn = Connection(self.port)

    def scrape(self, kind: str, keep: bool = False) -> bytes:
        response = self.conn.get(self.paths[kind], KINDS[kind], keep_body=keep)
        if response.status != 200:
            raise RuntimeError(f"{self.name}: {kind} scrape answered {response.status}")
        if kind != "plain" and response.headers.get("content-encoding") != "gzip":
            raise RuntimeError(f"{self.name}: {kind} scrape is not gzip-encoded")
        self.times.setdefault(kind, []).append(response.seconds)
        return response.body


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))
    return ordered[index]


# --- starting the servers ---------------------------------------------------------


def http_ok(port: int, path: str) -> Callable[[], bool]:
    def check() -> bool:
        conn = Connection(port, timeout=2.0)
        try:
            return conn.get(path).status == 200
        except OSError:
            return False
        finally:
            conn.close()
    return check


def nginx_config(root: Path, port: int) -> str:
    locations = []
    for kind, name in NGINX_FILES.items():
        content_type = OPENMETRICS_CONTENT_TYPE if kind.startswith("om") else TEXT_CONTENT_TYPE
        encoding = "add_header Content-Encoding gzip; " if kind != "plain" else ""
        locations.append(f"    location = /{name} {{ {encoding}default_type '{content_type}'; }}")
    files = "\n".join(locations)
    temp = root / "nginx-tmp"
    return f"""
daemon off;
master_process off;
worker_processes 1;
pid {root}/nginx.pid;
error_log {root}/nginx-error.log warn;
events {{ worker_connections 64; }}
http {{
  access_log off;
  sendfile on;
  tcp_nopush on;
  tcp_nodelay on;
  keepalive_requests 10000000;
  keepalive_timeout 120s;
  client_body_temp_path {temp}/body;
  proxy_temp_path {temp}/proxy;
  fastcgi_temp_path {temp}/fastcgi;
  uwsgi_temp_path {temp}/uwsgi;
  scgi_temp_path {temp}/scgi;
  types {{ }}
  server {{
    listen 127.0.0.1:{port};
    root {root}/www;
{files}
  }}
}}
"""


@contextlib.contextmanager
def servers(targets: int, work: Path, log: Callable[[str], None],
            with_others: bool = True, with_state: bool = True) -> Iterator[dict[str, Server]]:
    """Start the three servers for ``targets``; stop every one of them on the way out."""
    now = time.time()
    fake = FakeExecAPI(w.API_KEY).start()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        scenarios, _ = w.shape(targets)
        for i in range(scenarios):
            fake.set_summary(w.scenario_slug(i), summary_body())
        config = work / "config.yaml"
        config.write_text(w.config_yaml(targets, fake.base_url))
        state = work / "state.json" if with_state else None
        if state is not None:
            state.write_bytes(w.state_file_bytes(targets, now, fake.base_url))

        port = w.free_port()
        proc = w.start(w.exporter_command(config, port, state), work / "exporter.log")
        procs.append(proc)
        took = w.wait_until(http_ok(port, "/-/ready" if with_state else "/-/healthy"),
                            timeout=120)
        if took is None:
            raise RuntimeError(f"exporter not ready; see {work / 'exporter.log'}")
        log(f"  exporter up in {took:.2f}s (pid {proc.pid})")
        found: dict[str, Server] = {
            "exporter": Server("exporter", port, proc, {k: "/metrics" for k in KINDS})}
        if not with_others:
            yield found
            return

        # The very bytes the exporter serves, for nginx and for the naive exporter.
        www = work / "www"
        www.mkdir(exist_ok=True)
        exporter = found["exporter"]
        plain = exporter.scrape("plain", keep=True)
        (www / NGINX_FILES["plain"]).write_bytes(plain)
        (www / NGINX_FILES["gzip"]).write_bytes(exporter.scrape("gzip", keep=True))
        (www / NGINX_FILES["om+gzip"]).write_bytes(exporter.scrape("om+gzip", keep=True))
        if gzip.decompress((www / NGINX_FILES["gzip"]).read_bytes())[:200] != plain[:200]:
            raise RuntimeError("the exporter's gzip body does not decompress to its text")
        exposition = work / "exposition.txt"
        exposition.write_bytes(plain)
        exporter.times.clear()

        naive_port = w.free_port()
        naive = w.start([sys.executable, str(Path(__file__).with_name("naive_exporter.py")),
                         "--port", str(naive_port), "--exposition", str(exposition)],
                        work / "naive.log")
        procs.append(naive)

        nginx_port = w.free_port()
        (work / "nginx-tmp").mkdir(exist_ok=True)
        conf = work / "nginx.conf"
        conf.write_text(nginx_config(work, nginx_port))
        nginx_bin = shutil.which("nginx") or "/usr/sbin/nginx"
        nginx = w.start([nginx_bin, "-p", str(work), "-c", str(conf), "-e",
                         str(work / "nginx-error.log")], work / "nginx.log")
        procs.append(nginx)

        if w.wait_until(http_ok(nginx_port, "/" + NGINX_FILES["plain"]), timeout=20) is None:
            raise RuntimeError(f"nginx did not start; see {work}/nginx*.log")
        took = w.wait_until(http_ok(naive_port, "/metrics"), timeout=300, interval=0.2)
        if took is None:
            raise RuntimeError(f"naive exporter did not start; see {work / 'naive.log'}")
        found["naive"] = Server("naive", naive_port, naive, {k: "/metrics" for k in KINDS})
        found["nginx"] = Server("nginx", nginx_port, nginx,
                                {k: "/" + f for k, f in NGINX_FILES.items()})
        yield found
    finally:
        for proc in reversed(procs):
            w.stop(proc)
        fake.stop()


# --- measuring ---------------------------------------------------------------------


def measure(found: dict[str, Server], kinds: list[str], seconds: float, fast_scrapes: int,
            log: Callable[[str], None], per_round: int = 0) -> None:
    """Per kind: warm up, then alternate naive x1 / (exporter, nginx) x K per round.

    K is ``per_round``, or when 0 what it takes to reach ``fast_scrapes`` exporter
    and nginx scrapes in the rounds ``seconds`` of naive scrapes allow.
    """
    exporter, naive, nginx = found["exporter"], found["naive"], found["nginx"]
    for kind in kinds:
        for server in found.values():  # warm-up, not counted
            for _ in range(3):
                server.scrape(kind)
            server.times[kind] = []
        started = time.perf_counter()
        naive.scrape(kind)
        naive_cost = time.perf_counter() - started
        naive.times[kind] = []
        rounds = int(min(200, max(20, seconds / max(naive_cost, 1e-3))))
        k = per_round or max(1, math.ceil(fast_scrapes / rounds))
        cpu0 = {s.name: w.cpu_seconds(s.proc.pid) for s in found.values()}
        counts = dict.fromkeys(found, 0)
        for r in range(rounds):
            order = [naive] + [exporter, nginx] * k
            if r % 2:  # the naive scrape first in even rounds, last in odd ones
                order.reverse()
            for server in order:
                server.scrape(kind)
                counts[server.name] += 1
        for s in found.values():
            s.cpu[kind] = (w.cpu_seconds(s.proc.pid) - cpu0[s.name]) / counts[s.name] * 1000
        log(f"  {kind}: {rounds} rounds, {counts['exporter']} exporter/nginx scrapes, "
            f"{counts['naive']} naive")


def run_size(targets: int, kinds: list[str], seconds: float, fast_scrapes: int,
             log: Callable[[str], None], per_round: int = 0) -> dict[str, Any]:
    scenarios, cohorts = w.shape(targets)
    log(f"{targets} targets ({scenarios} scenarios x {cohorts} cohorts)")
    with tempfile.TemporaryDirectory(prefix="exec-bench-") as tmp, \
            servers(targets, Path(tmp), log) as found:
        sizes = {k: len(found["exporter"].scrape(k, keep=True)) for k in kinds}
        found["exporter"].times.clear()
        measure(found, kinds, seconds, fast_scrapes, log, per_round)
        result: dict[str, Any] = {"targets": targets, "bytes": sizes, "servers": {},
                                  "strict": per_round == 1}
        for name, s in found.items():
            mem = w.memory_kib(s.proc.pid)
            result["servers"][name] = {
                "median_ms": {k: statistics.median(s.times[k]) * 1e3 for k in kinds},
                "p99_ms": {k: percentile(s.times[k], 0.99) * 1e3 for k in kinds},
                "n": {k: len(s.times[k]) for k in kinds},
                "cpu_s_per_1000": dict(s.cpu),
                "rss_mib": mem.get("VmRSS", 0) / MIB,
                "hwm_mib": mem.get("VmHWM", 0) / MIB,
                "connects": s.conn.connects,
            }
            s.conn.close()
    return result


def rss_only(targets: int, kinds: list[str], log: Callable[[str], None]) -> dict[str, Any]:
    """The exporter alone at ``targets``: memory after a few scrapes of every kind."""
    log(f"{targets} targets: exporter memory only")
    with tempfile.TemporaryDirectory(prefix="exec-bench-") as tmp, \
            servers(targets, Path(tmp), log, with_others=False) as found:
        exporter = found["exporter"]
        for kind in kinds:
            for _ in range(20):
                exporter.scrape(kind)
        mem = w.memory_kib(exporter.proc.pid)
        med = {k: statistics.median(exporter.times[k][1:]) * 1e3 for k in kinds}
        exporter.conn.close()
    return {"targets": targets, "rss_mib": mem["VmRSS"] / MIB, "hwm_mib": mem["VmHWM"] / MIB,
            "median_ms": med}


def during_fill(targets: int, seconds: float, kinds: list[str],
                log: Callable[[str], None]) -> dict[str, Any]:
    """The exporter alone, no state file: scrapes every 20 ms while its first fill lands.

    The store changes with every response (about one a second at the default
    minute budget), so a share of scrapes find it changed and pay for
    re-rendering the blocks that changed.
    """
    log(f"{targets} targets: exporter scraped during its first fill for {seconds:.0f}s")
    with tempfile.TemporaryDirectory(prefix="exec-bench-") as tmp, \
            servers(targets, Path(tmp), log, with_others=False, with_state=False) as found:
        exporter = found["exporter"]
        cpu0 = w.cpu_seconds(exporter.proc.pid)
        deadline = time.monotonic() + seconds
        count = 0
        while time.monotonic() < deadline:
            for kind in kinds:
                exporter.scrape(kind)
                count += 1
            time.sleep(0.02)
        cpu = w.cpu_seconds(exporter.proc.pid) - cpu0
        size = len(exporter.scrape("plain", keep=True))
        exporter.conn.close()
    return {"targets": targets, "seconds": seconds, "scrapes": count, "cpu_s": cpu,
            "final_bytes": size,
            "ms": {k: {"median": statistics.median(exporter.times[k]) * 1e3,
                       "p90": percentile(exporter.times[k], 0.90) * 1e3,
                       "p99": percentile(exporter.times[k], 0.99) * 1e3,
                       "max": max(exporter.times[k]) * 1e3} for k in kinds}}


# --- reporting ---------------------------------------------------------------------


def report(results: list[dict[str, Any]], rss: list[dict[str, Any]],
           fills: list[dict[str, Any]], kinds: list[str]) -> str:
    out: list[str] = []
    rows = []
    for r in results:
        e, n, x = (r["servers"][k] for k in SERVERS)
        row: list[object] = [r["targets"], "strict 1:1:1" if r["strict"] else "interleaved"]
        for k in kinds:
            to_naive = e["median_ms"][k] / n["median_ms"][k]
            to_nginx = e["median_ms"][k] / x["median_ms"][k]
            row += [f"{to_naive:.4f}{'' if to_naive <= GOAL_NAIVE else ' (!)'}",
                    f"{to_nginx:.2f}{'' if to_nginx <= GOAL_NGINX[k] else ' (!)'}"]
        row.append(f"{e['rss_mib']:.1f} / {e['hwm_mib']:.1f}")
        rows.append(row)
    header = ["targets", "alternation"]
    for k in kinds:
        header += [f"{k} vs naive", f"{k} vs nginx"]
    header.append("exporter RSS / HWM MiB")
    if rows:
        goals = ", ".join(f"{k} {v}" for k, v in GOAL_NGINX.items())
        out.append("Median scrape time ratios (exporter / other; goals: <= "
                   f"{GOAL_NAIVE} vs naive, vs nginx <= {goals}; (!) marks a miss)")
        out.append(w.table(rows, header))

    for r in results:
        out.append("")
        sizes = ", ".join(f"{k} {v / 1024:.0f} KiB" for k, v in r["bytes"].items())
        mode = "strict 1:1:1 alternation" if r["strict"] else "interleaved"
        out.append(f"{r['targets']} targets, {mode} ({sizes})")
        rows = []
        for name in SERVERS:
            s = r["servers"][name]
            for k in kinds:
                rows.append([name, k, f"{s['median_ms'][k]:.3f}", f"{s['p99_ms'][k]:.3f}",
                             s["n"][k], f"{s['cpu_s_per_1000'][k]:.2f}",
                             f"{s['rss_mib']:.1f}", f"{s['hwm_mib']:.1f}"])
        out.append(w.table(rows, ["server", "scrape", "median ms", "p99 ms", "n",
                                  "CPU s / 1000", "RSS MiB", "HWM MiB"]))
    if rss:
        out.append("")
        out.append("Exporter memory alone (after 20 scrapes of each kind; goal <= 80 MiB at "
                   "2,000 targets, <= 150 MiB at 10,000)")
        out.append(w.table(
            [[r["targets"], f"{r['rss_mib']:.1f}", f"{r['hwm_mib']:.1f}",
              ", ".join(f"{k} {v:.2f}" for k, v in r["median_ms"].items())] for r in rss],
            ["targets", "RSS MiB", "HWM MiB", "median ms"]))
    if fills:
        out.append("")
        out.append("Exporter alone while its first fill lands (no state file; a scrape of each "
                   "kind every 20 ms)")
        out.append(w.table(
            [[f["targets"], k, f"{v['median']:.3f}", f"{v['p90']:.3f}", f"{v['p99']:.3f}",
              f"{v['max']:.3f}", f"{f['cpu_s'] / f['scrapes'] * 1000:.2f}",
              f"{f['final_bytes'] / 1024:.0f} KiB"]
             for f in fills for k, v in f["ms"].items()],
            ["targets", "scrape", "median ms", "p90 ms", "p99 ms", "max ms",
             "CPU s / 1000 (all work)", "plain size at the end"]))
    return "\n".join(out)


def plot(results: list[dict[str, Any]], kinds: list[str], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, axes = plt.subplots(1, len(kinds), figsize=(5 * len(kinds), 4), squeeze=False)
    results = [r for r in results if not r["strict"]]
    xs = [r["targets"] for r in results]
    for ax, kind in zip(axes[0], kinds, strict=True):
        for name in SERVERS:
            ax.plot(xs, [r["servers"][name]["median_ms"][kind] for r in results], marker="o",
                    label=name)
        ax.set(title=f"{kind} scrape, median", xlabel="targets", ylabel="ms", xscale="log",
               yscale="log")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return True


def main() -> int:
    parser = argparse.ArgumentParser(description="Scrape cost: exporter vs naive vs nginx.")
    parser.add_argument("--targets", default="100,1000,2000,5000",
                        help="comma-separated target counts (default: %(default)s)")
    parser.add_argument("--rss-targets", default="10000",
                        help="sizes measured for exporter memory only ('' for none)")
    parser.add_argument("--kinds", default=",".join(KINDS),
                        help=f"scrape kinds among {', '.join(KINDS)} (default: all)")
    parser.add_argument("--seconds", type=float, default=15.0,
                        help="rough time spent on naive scrapes per kind and size")
    parser.add_argument("--fast-scrapes", type=int, default=1500,
                        help="exporter and nginx scrapes per kind and size")
    parser.add_argument("--strict-targets", default="2000",
                        help="sizes measured again in strict alternation: exporter, naive, "
                             "nginx, one scrape each, so every scrape follows a slow naive "
                             "one with cold caches ('' for none; default: %(default)s)")
    parser.add_argument("--fill-targets", default="2000",
                        help="sizes also scraped during a first fill ('' for none)")
    parser.add_argument("--fill-seconds", type=float, default=30.0)
    parser.add_argument("--json", type=Path, help="also write the raw results here")
    parser.add_argument("--plot", type=Path, help="a PNG of median times (needs matplotlib)")
    args = parser.parse_args()
    kinds = [k for k in args.kinds.split(",") if k]
    unknown = set(kinds) - set(KINDS)
    if unknown:
        parser.error(f"unknown kinds: {', '.join(sorted(unknown))}")

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    results = [run_size(int(n), kinds, args.seconds, args.fast_scrapes, log)
               for n in args.targets.split(",") if n]
    results += [run_size(int(n), kinds, 2 * args.seconds, args.fast_scrapes, log, per_round=1)
                for n in args.strict_targets.split(",") if n]
    rss = [rss_only(int(n), kinds, log) for n in args.rss_targets.split(",") if n]
    fills = [during_fill(int(n), args.fill_seconds, kinds, log)
             for n in args.fill_targets.split(",") if n]
    print(report(results, rss, fills, kinds))
    if args.json:
        args.json.write_text(json.dumps({"results": results, "rss": rss, "fill": fills},
                                        indent=1))
    if args.plot:
        if plot(results, kinds, args.plot):
            log(f"plot written to {args.plot}")
        else:
            log("matplotlib is not installed (pip install .[bench]); no plot")
    return 0


if __name__ == "__main__":
    sys.exit(main())
