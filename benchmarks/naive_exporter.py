"""The naive exporter the scrape benchmark compares against.

What a straightforward prometheus_client exporter would do: module-level
``Gauge``/``Counter`` objects in the default registry, one labelled child per
series, served by ``start_http_server`` (which renders, and gzips when asked,
on every scrape). It serves the same series with the same values as the real
exporter: it reads them from an exposition file the benchmark fetched from the
real exporter.

    python benchmarks/naive_exporter.py --port 9100 --exposition metrics.txt
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path

from prometheus_client import Counter, Gauge, start_http_server
from prometheus_client.parser import text_string_to_metric_families


def load(text: str) -> int:
    """Create one metric per family in the default registry; returns the series count."""
    series = 0
    for family in text_string_to_metric_families(text):
        if family.name.startswith(("process_", "python_")) or not family.samples:
            continue  # the default registry exports its own process_* and python_* series
        labelnames = sorted({k for s in family.samples for k in s.labels})
        if family.type == "counter":
            counter = Counter(family.name, family.documentation, labelnames)
            for s in family.samples:
                if s.name.endswith("_total"):
                    child = counter.labels(**s.labels) if labelnames else counter
                    child.inc(s.value)
                    series += 1
            continue
        # Gauges, and the histogram's samples flattened into gauges (a naive exporter
        # would observe() a Histogram; the series and values are what matter here).
        gauges: dict[str, Gauge] = {}
        for s in family.samples:
            names = sorted(s.labels)
            gauge = gauges.get(s.name)
            if gauge is None:
                gauge = gauges[s.name] = Gauge(s.name, family.documentation, names)
            (gauge.labels(**s.labels) if names else gauge).set(s.value)
            series += 1
    return series


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--exposition", type=Path, required=True)
    args = parser.parse_args()
    series = load(args.exposition.read_text())
    start_http_server(args.port, addr="127.0.0.1")
    print(f"naive exporter: {series} series on 127.0.0.1:{args.port}", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    while not stop.wait(1.0):
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
