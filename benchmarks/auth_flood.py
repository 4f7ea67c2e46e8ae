"""Basic auth under a flood of wrong passwords: how long the authorised scrape takes.

Starts the real exporter (``python -m exporter``, 100 fresh targets from a state
file, so it makes no API request) with a ``--web.config.file`` holding two bcrypt
users, then:

1. baseline: the authorised client (keep-alive, like Prometheus) scrapes /metrics;
2. flood: ``--clients`` threads send wrong passwords as fast as they get answers
   (known and unknown users, passwords of 1 to 300 bytes) for ``--seconds``, while
   the authorised client keeps scraping every 0.25 s, and a second correct user whose
   credentials have not succeeded yet (so are not cached) scrapes a few times on new
   connections.

Prints the authorised latencies (median, p99, max) and what the flood got: every
answer must be 401 (wrong, or given up after waiting BCRYPT_WAIT for a check).
Usage: ``python benchmarks/auth_flood.py [--clients 100] [--seconds 10] [--cost 10]``.
"""

from __future__ import annotations

import argparse
import base64
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import _workload as w
import bcrypt
from _http import Connection

TARGETS = 100


def _auth(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def _summary(name: str, seconds: list[float]) -> str:
    ms = sorted(s * 1e3 for s in seconds)
    p99 = ms[min(len(ms) - 1, int(len(ms) * 0.99))]
    return (f"| {name} | {len(ms)} | {statistics.median(ms):.1f} | {p99:.1f} | "
            f"{ms[-1]:.1f} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--cost", type=int, default=10, help="bcrypt cost of the users")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="exec-auth-") as tmp:
        work = Path(tmp)
        base_url = "http://127.0.0.1:9/v1"  # never called: every target is fresh
        config = work / "config.yaml"
        config.write_text(w.config_yaml(TARGETS, base_url))
        state = work / "state.json"
        state.write_bytes(w.state_file_bytes(TARGETS, time.time(), base_url))
        salt = bcrypt.gensalt(args.cost)
        web = work / "web.yml"
        web.write_text("basic_auth_users:\n"
                       f"  prometheus: {bcrypt.hashpw(b'right', salt).decode()}\n"
                       f"  second: {bcrypt.hashpw(b'also right', salt).decode()}\n")
        port = w.free_port()
        cmd = [*w.exporter_command(config, port, state), f"--web.config.file={web}"]
        proc = w.start(cmd, work / "exporter.log")
        try:
            scraper = Connection(port)
            good = _auth("prometheus", "right")
            def up() -> bool:
                try:
                    return scraper.get("/metrics", good).status == 200
                except OSError:
                    return False

            if w.wait_until(up, 15) is None:
                print(f"exporter did not start; see {work / 'exporter.log'}", file=sys.stderr)
                return 1
            baseline = [scraper.get("/metrics", good).seconds for _ in range(20)]

            stop = threading.Event()
            answers: Counter[int] = Counter()
            lock = threading.Lock()

            def flood(i: int) -> None:
                conn = Connection(port)
                n = 0
                while not stop.is_set():
                    n += 1
                    user = "prometheus" if (i + n) % 2 else "nobody"
                    try:
                        status = conn.get("/metrics",
                                          _auth(user, "x" * (1 + (i * 7 + n) % 300))).status
                    except OSError:
                        status = 0  # no answer at all
                    with lock:
                        answers[status] += 1
                conn.close()

            threads = [threading.Thread(target=flood, args=(i,), daemon=True)
                       for i in range(args.clients)]
            for t in threads:
                t.start()
            time.sleep(1.0)  # let the flood fill the bcrypt queue
            during: list[float] = []
            first_contact: list[float] = []
            first_statuses: Counter[int] = Counter()
            deadline = time.monotonic() + args.seconds
            while time.monotonic() < deadline:
                response = scraper.get("/metrics", good)
                assert response.status == 200, response.status
                during.append(response.seconds)
                if len(during) % 10 == 5 and len(first_contact) < 3:
                    # A correct credential not yet cached queues for bcrypt like the
                    # flood, and may give up (401) after BCRYPT_WAIT.
                    fresh = Connection(port)
                    started = time.perf_counter()
                    status = fresh.get("/metrics", _auth("second", "also right")).status
                    first_contact.append(time.perf_counter() - started)
                    fresh.close()
                    first_statuses[status] += 1
                time.sleep(0.25)
            stop.set()
            for t in threads:
                t.join(60)
        finally:
            w.stop(proc)

    print(f"{args.clients} wrong-password clients for {args.seconds:.0f}s, bcrypt cost "
          f"{args.cost}, {TARGETS} targets")
    print("| authorised scrape | n | median ms | p99 ms | max ms |")
    print("| --- | --- | --- | --- | --- |")
    print(_summary("baseline (no flood)", baseline))
    print(_summary("during the flood, credentials cached", during))
    print(_summary("during the flood, first contact (bcrypt)", first_contact))
    print(f"first contact answers: {dict(first_statuses)}")
    total = sum(answers.values())
    print(f"flood: {total} answers in {args.seconds + 1:.0f}s "
          f"({total / (args.seconds + 1):.0f}/s), statuses {dict(answers)}")
    return 0 if set(answers) <= {401} else 1


if __name__ == "__main__":
    sys.exit(main())
