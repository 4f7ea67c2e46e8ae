"""Rendering /metrics cheaply: the snapshot part once per change, the live part per scrape.

Scenario data only changes when a refresh lands, so its exposition (text,
OpenMetrics and the gzip of each) is rendered once per store version and served
from memory. Only the small live part (budget windows, process metrics) is
rendered on each scrape and appended. For gzip the compressor's state after the
cached part is kept, so a scrape compresses only the live tail and the result
is one ordinary gzip stream.
"""

from __future__ import annotations

import math
import threading
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

from prometheus_client import exposition as text_format
from prometheus_client.core import Metric
from prometheus_client.openmetrics import exposition as openmetrics_format
from prometheus_client.registry import Collector, CollectorRegistry

from .collector import SnapshotCollector, is_fresh
from .scheduler import Clock
from .store import Snapshot

TEXT_CONTENT_TYPE = text_format.CONTENT_TYPE_LATEST
OPENMETRICS_CONTENT_TYPE = openmetrics_format.CONTENT_TYPE_LATEST
_EOF = b"# EOF\n"


class _Frozen(Collector):
    """A collector over one fixed snapshot and time, for a consistent render."""

    def __init__(self, collector: SnapshotCollector, snapshot: Snapshot, now: float) -> None:
        self._collector, self._snapshot, self._now = collector, snapshot, now

    def collect(self) -> Iterator[Metric]:
        return self._collector.collect_from(self._snapshot, self._now)


@dataclass
class _Rendered:
    body: bytes
    gzip_prefix: bytes
    gzip_state: zlib._Compress


class Exposition:
    """Caches the snapshot part of /metrics and appends the live part per scrape."""

    def __init__(self, collector: SnapshotCollector, live: CollectorRegistry,
                 clock: Clock) -> None:
        self.collector = collector
        self.live = live
        self.clock = clock
        self._lock = threading.Lock()
        self._key: tuple[int, float] | None = None
        self._valid_until = -math.inf
        self._cache: dict[bool, _Rendered] = {}

    def _snapshot_part(self, openmetrics: bool) -> _Rendered:
        now = self.clock.time()
        store = self.collector.store
        with self._lock:
            if self._key is None or self._key[0] != store.version or now >= self._valid_until:
                snapshot = store.snapshot()
                self._cache.clear()
                self._key = (snapshot.version, now)
                self._frozen = _Frozen(self.collector, snapshot, now)
                self._valid_until = _expiry(snapshot, now)
            rendered = self._cache.get(openmetrics)
            if rendered is None:
                if openmetrics:
                    body = openmetrics_format.generate_latest(self._frozen)
                    body = body.removesuffix(_EOF)
                else:
                    body = text_format.generate_latest(self._frozen)
                state = zlib.compressobj(6, zlib.DEFLATED, 31)
                prefix = state.compress(body) + state.flush(zlib.Z_SYNC_FLUSH)
                rendered = _Rendered(body, prefix, state)
                self._cache[openmetrics] = rendered
            return rendered

    def render(self, openmetrics: bool = False, gzip: bool = False) -> bytes:
        """The full exposition, optionally in OpenMetrics and/or gzip-compressed."""
        cached = self._snapshot_part(openmetrics)
        if openmetrics:
            live = openmetrics_format.generate_latest(self.live)
        else:
            live = text_format.generate_latest(self.live)
        if not gzip:
            return cached.body + live
        with self._lock:
            tail = cached.gzip_state.copy()
        return cached.gzip_prefix + tail.compress(live) + tail.flush()


def _expiry(snapshot: Snapshot, now: float) -> float:
    """When the set of fresh targets next changes without a store change."""
    limit = snapshot.staleness_limit()
    times = [s.last_success + limit for s in snapshot.targets
             if s.last_success is not None and is_fresh(s, snapshot, now)]
    return min(times, default=math.inf)
