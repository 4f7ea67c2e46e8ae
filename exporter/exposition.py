"""Rendering /metrics cheaply: the snapshot part once per change, the live part per scrape.

The per-target sample lines are written directly (the HELP/TYPE headers and the
exporter-wide families come from prometheus_client), cached with their gzip per store
version, and a scrape appends its live part (a stored deflate block for gzip). What
each piece buys, and what was left out: docs/performance.md. ``tests/test_exposition.py``
proves the bytes identical to prometheus_client's ``generate_latest``.
"""

from __future__ import annotations

import functools
import math
import struct
import threading
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field

from prometheus_client import exposition as text_format
from prometheus_client.core import Metric
from prometheus_client.openmetrics import exposition as openmetrics_format
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from .collector import (
    TARGET_FAMILIES,
    Families,
    FamilySpec,
    SnapshotCollector,
    exporter_families,
    generate,
    target_samples,
)
from .scheduler import Clock
from .store import Snapshot, TargetState

TEXT_CONTENT_TYPE = text_format.CONTENT_TYPE_LATEST
OPENMETRICS_CONTENT_TYPE = openmetrics_format.CONTENT_TYPE_LATEST

GZIP_LEVEL = 6
# A gzip member header: deflate, no name, no mtime (the body changes anyway), OS unknown.
_GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"
# Targets rendered at a time, kept as one piece per family: rendered all at once and
# joined, the freed pieces fragmented the heap (RSS +6-21 MiB at 10,000 targets).
_RENDER_SLICE = 128


def _template(spec: FamilySpec) -> str:
    """A ``str.format`` template of a sample line up to its value: labels sorted by name,
    as prometheus_client writes them, taking the values in the family's own order."""
    order = sorted(range(len(spec.labels)), key=lambda i: spec.labels[i])
    pairs = ",".join(f'{spec.labels[i]}="{{{i}}}"' for i in order)
    return spec.sample_name + ("{{" + pairs + "}}" if pairs else "") + " "


def _escape(value: str) -> str:
    """A label value escaped as in the text formats (backslash, newline, double quote)."""
    if "\\" in value or "\n" in value or '"' in value:
        return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")
    return value


_TEMPLATES = tuple(_template(spec) for spec in TARGET_FAMILIES)


def _render_targets(states: Sequence[TargetState], fresh: Sequence[bool],
                    paused: str | None = None) -> tuple[list[bytes], ...]:
    """The sample lines of ``states`` (``paused``: the workspace-wide pause in force):
    per family of TARGET_FAMILIES, pieces to join."""
    parts: list[list[bytes]] = [[] for _ in TARGET_FAMILIES]
    templates = _TEMPLATES
    seen: set[str] = set()  # the scenarios whose info is out
    for start in range(0, len(states), _RENDER_SLICE):
        lines: list[list[str]] = [[] for _ in TARGET_FAMILIES]
        for state, is_fresh in zip(states[start:start + _RENDER_SLICE],
                                   fresh[start:start + _RENDER_SLICE], strict=True):
            scenario = state.target.scenario
            for index, labels, value in target_samples(state, is_fresh, paused,
                                                       info=scenario not in seen):
                lines[index].append(templates[index].format(*map(_escape, labels))
                                    + floatToGoString(value) + "\n")
            seen.add(scenario)
        for family, family_lines in zip(parts, lines, strict=True):
            family.append("".join(family_lines).encode())
    return tuple(parts)


def _stored(data: bytes) -> bytes:
    """``data`` as final stored (uncompressed) deflate blocks: for the ~1-2 KiB live
    tail, cheaper than a compressor's set-up."""
    out = []
    for start in range(0, max(len(data), 1), 0xFFFF):
        chunk = data[start:start + 0xFFFF]
        final = start + 0xFFFF >= len(data)
        out.append(struct.pack("<BHH", 1 if final else 0, len(chunk), len(chunk) ^ 0xFFFF))
        out.append(chunk)
    return b"".join(out)


@functools.cache
def _headers(openmetrics: bool) -> tuple[bytes, ...]:
    """HELP/TYPE lines of the per-target families, in one format."""
    return tuple(generate(Families([spec.family()]), openmetrics) for spec in TARGET_FAMILIES)


@dataclass
class _Page:
    """The snapshot part for one store version, valid until a fresh target turns stale."""

    version: int
    built_at: float  # a clock stepping back can make stale data fresh again
    valid_until: float  # the last instant every fresh target is still fresh (inclusive)
    snapshot: Snapshot
    sections: tuple[list[bytes], ...]  # sample lines per family of TARGET_FAMILIES
    extra: tuple[Metric, ...] = ()  # families that change only with the store's version
    _plain: dict[bool, bytes] = field(default_factory=dict)
    _gzipped: dict[bool, tuple[bytes, int, int]] = field(default_factory=dict)

    @classmethod
    def build(cls, snapshot: Snapshot, now: float, extra: tuple[Metric, ...] = ()) -> _Page:
        """Render the snapshot part of ``snapshot`` as of ``now``."""
        states = snapshot.targets
        fresh = [snapshot.is_fresh(state, now) for state in states]
        expiries = [until for state, is_new in zip(states, fresh, strict=True)
                    if is_new and (until := snapshot.fresh_until(state, now)) is not None]
        # Valid until a fresh target turns stale, or the staleness limit itself changes.
        valid_until = min(min(expiries, default=math.inf), snapshot.limit_changes_at(now))
        return cls(snapshot.version, now, valid_until, snapshot,
                   _render_targets(states, fresh, snapshot.pause_reason), extra)

    def plain(self, openmetrics: bool) -> bytes:
        """Per-target families (scenario info included) and exporter-wide ones, one bytes."""
        body = self._plain.get(openmetrics)
        if body is None:
            pieces: list[bytes] = []
            for header, lines in zip(_headers(openmetrics), self.sections, strict=True):
                pieces.append(header)
                pieces += lines
            # The exporter-wide families are few: prometheus_client renders them.
            pieces.append(generate(Families([*exporter_families(self.snapshot, self.built_at),
                                             *self.extra]), openmetrics))
            body = self._plain[openmetrics] = b"".join(pieces)
        return body

    def gzipped(self, openmetrics: bool) -> tuple[bytes, int, int]:
        """``plain()`` deflated once as the start of a gzip member (header and body, not
        final, for a live tail to follow), with the CRC-32 and length of what it holds."""
        result = self._gzipped.get(openmetrics)
        if result is None:
            body = self.plain(openmetrics)
            compressor = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, -15)
            data = compressor.compress(body) + compressor.flush(zlib.Z_SYNC_FLUSH)
            result = self._gzipped[openmetrics] = (_GZIP_HEADER + data, zlib.crc32(body),
                                                   len(body))
        return result


class Exposition:
    """Caches the snapshot part of /metrics and appends the live part per scrape.

    Thread-safe: scrapes may run concurrently; the first one after a change
    renders the new page while the others wait for it.
    """

    def __init__(self, collector: SnapshotCollector, live: Sequence[Collector],
                 clock: Clock, with_page: Collector | None = None) -> None:
        self.collector = collector
        # Per scrape: a PreRendered writes its own bytes (``exposition()``), any other
        # goes through prometheus_client.
        self.live = tuple(live)
        # Collected once per page, not per scrape: its output may change only when the
        # store's version does (the listings report every completed read to the store).
        self.with_page = with_page
        self.clock = clock
        self._lock = threading.Lock()
        self._page: _Page | None = None

    def _current(self) -> _Page:
        """The page for the store's current version, rebuilt if it changed or expired."""
        now = self.clock.time()
        store = self.collector.store
        with self._lock:
            page = self._page
            if (page is None or page.version != store.version
                    or not page.built_at <= now <= page.valid_until):
                extra = tuple(self.with_page.collect()) if self.with_page else ()
                page = self._page = _Page.build(store.snapshot(), now, extra)
            return page

    def _live(self, openmetrics: bool) -> bytes:
        """The live part of one scrape; in OpenMetrics with the closing ``# EOF``."""
        out = []
        for part in self.live:
            # Not isinstance(): a check against a typing.Protocol subclass is slow.
            direct = getattr(part, "exposition", None)
            out.append(direct(openmetrics) if direct is not None else generate(part, openmetrics))
        if openmetrics:
            out.append(b"# EOF\n")
        return b"".join(out)

    def render(self, openmetrics: bool = False, gzip: bool = False) -> bytes:
        """The full exposition, optionally in OpenMetrics and/or gzip-compressed."""
        return b"".join(self.render_chunks(openmetrics, gzip))

    def render_chunks(self, openmetrics: bool = False, gzip: bool = False) -> tuple[bytes, ...]:
        """The exposition as a few chunks to write in order (one ``sendmsg``), uncopied:
        the cached snapshot part (for gzip: with the gzip header, deflated), then this
        scrape's live part."""
        page = self._current()
        live = self._live(openmetrics)
        if not gzip:
            with self._lock:
                return page.plain(openmetrics), live
        with self._lock:
            deflated, crc, length = page.gzipped(openmetrics)
        trailer = struct.pack("<II", zlib.crc32(live, crc), (length + len(live)) & 0xFFFFFFFF)
        return deflated, _stored(live) + trailer
