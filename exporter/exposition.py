"""Rendering /metrics cheaply: the snapshot part once per change, the live part per scrape.

Each optimisation here is kept because the scrape benchmark at 2,000 targets
(``benchmarks/scrape_cost.py``, figures in docs/performance.md) shows what it
buys; the rest is plain code.

* **The snapshot part is rendered once per store change and served from
  memory** (text and OpenMetrics, and the gzip of each, on first use).
  Scenario data only changes when a refresh lands, so a scrape copies bytes
  instead of rendering ~50,000 samples: 2.4 ms a plain scrape instead of the
  0.7-1.4 s prometheus_client's ``generate_latest`` takes per scrape (the
  naive exporter), and 0.3 ms a gzip scrape instead of 0.9-1.2 s.
* **The per-target families are written directly**, not through
  prometheus_client's families and ``generate_latest``: rendering after a
  change costs ~85 ms instead of ~300 ms, which the first scrape after a
  refresh waits for (during a first fill, a refresh a second, most scrapes
  do). The sample lines are the same in both formats; the HELP/TYPE headers
  and the few exporter-wide families come from prometheus_client itself.
  Targets are rendered :data:`_RENDER_SLICE` at a time and kept as pieces:
  rendered all at once and joined per family, the freed pieces fragmented the
  heap (153-168 MiB RSS at 10,000 targets instead of 147; goal 150).
* **gzip: the cached part is deflated once per change** (~30 ms) and a scrape
  appends its live tail (~1 KiB) as a stored, uncompressed deflate block,
  then the CRC-32 and length: one ordinary gzip member, no compressor set up
  per scrape.
* **The live part (budget windows, process metrics) is written by its
  collectors** (``exposition()``, :class:`~exporter.collector.PreRendered`):
  ~19 us a scrape in process instead of ~55 through prometheus_client's
  families; any other live collector goes through prometheus_client as it is.
  (It replaced a generic writer of plain families, ~50 us a scrape.)

Left out because the benchmark showed no need: caching and recompressing the
page in 128-target blocks so a change re-renders only its blocks (7-10 ms a
change instead of 85-115 ms, but no scrape median moved; with a scrape every
20 ms during a first fill, p99 8.9/9.6 ms with blocks against 8.5/7.8 ms
without; it did save memory: 121 MiB at 10,000 targets instead of 147), and a
special case for one-sample families in the live writer (~5 us).

``tests/test_exposition.py`` proves the result identical to prometheus_client's
``generate_latest`` over the collectors, in both formats, gzip included, on
every prometheus_client version pyproject.toml allows (CI runs it on the
lowest too).
"""

from __future__ import annotations

import functools
import math
import struct
import threading
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from prometheus_client import exposition as text_format
from prometheus_client.core import Metric
from prometheus_client.openmetrics import exposition as openmetrics_format
from prometheus_client.registry import Collector, CollectorRegistry
from prometheus_client.utils import floatToGoString

from .collector import (
    INFO_FAMILY,
    INFO_POSITION,
    TARGET_FAMILIES,
    Families,
    FamilySpec,
    SnapshotCollector,
    exporter_families,
    generate,
    info_samples,
    target_samples,
)
from .scheduler import Clock
from .store import Snapshot, TargetState

TEXT_CONTENT_TYPE = text_format.CONTENT_TYPE_LATEST
OPENMETRICS_CONTENT_TYPE = openmetrics_format.CONTENT_TYPE_LATEST
_EOF = b"# EOF\n"

GZIP_LEVEL = 6
# A gzip member header: deflate, no name, no mtime (the body changes anyway), OS unknown.
_GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"

# --- rendering --------------------------------------------------------------------


def _header(spec: FamilySpec, openmetrics: bool) -> bytes:
    """The HELP and TYPE lines of ``spec``, exactly as prometheus_client writes them."""
    return generate(Families([spec.family()]), openmetrics)


def _template(spec: FamilySpec) -> str:
    """A ``str.format`` template of a sample line up to its value.

    Labels are written sorted by name, as prometheus_client does; the template
    takes the label values in the family's own order.
    """
    order = sorted(range(len(spec.labels)), key=lambda i: spec.labels[i])
    pairs = ",".join(f'{spec.labels[i]}="{{{i}}}"' for i in order)
    return spec.sample_name + ("{{" + pairs + "}}" if pairs else "") + " "


def _escape(value: str) -> str:
    """A label value escaped as in the text formats (backslash, newline, double quote)."""
    if "\\" in value or "\n" in value or '"' in value:
        return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")
    return value


_TEMPLATES = tuple(_template(spec) for spec in TARGET_FAMILIES)
_INFO_TEMPLATE = _template(INFO_FAMILY)


# Targets rendered at a time, kept as one bytes piece per family. Rendering all
# at once and joining each family left the heap fragmented: 153-168 MiB RSS at
# 10,000 targets instead of ~147 MiB (goal: 150).
_RENDER_SLICE = 128


def _render_targets(states: Sequence[TargetState], fresh: Sequence[bool],
                    paused: str | None = None) -> tuple[list[bytes], ...]:
    """The sample lines of ``states`` (``paused``: the workspace-wide pause in force):
    per family of TARGET_FAMILIES, pieces to join."""
    parts: list[list[bytes]] = [[] for _ in TARGET_FAMILIES]
    templates = _TEMPLATES
    for start in range(0, len(states), _RENDER_SLICE):
        lines: list[list[str]] = [[] for _ in TARGET_FAMILIES]
        for state, is_fresh_ in zip(states[start:start + _RENDER_SLICE],
                                    fresh[start:start + _RENDER_SLICE], strict=True):
            for index, labels, value in target_samples(state, is_fresh_, paused):
                lines[index].append(templates[index].format(*map(_escape, labels))
                                    + floatToGoString(value) + "\n")
        for family, family_lines in zip(parts, lines, strict=True):
            family.append("".join(family_lines).encode())
    return tuple(parts)


def _render_info(samples: Iterable[tuple[str, ...]]) -> bytes:
    return "".join(_INFO_TEMPLATE.format(*map(_escape, labels)) + "1.0\n"
                   for labels in samples).encode()


def _render_live(parts: Sequence[Collector], openmetrics: bool) -> bytes:
    """The live part, per scrape: a collector that writes its own bytes
    (``exposition(openmetrics)``, see :class:`~exporter.collector.PreRendered`) does;
    any other goes through prometheus_client as it is."""
    out = []
    for part in parts:
        direct = getattr(part, "exposition", None)
        out.append(direct(openmetrics) if direct is not None
                   else generate(part, openmetrics))
    if openmetrics:
        out.append(_EOF)
    return b"".join(out)


def _stored(data: bytes) -> bytes:
    """``data`` as final stored (uncompressed) deflate blocks.

    The live tail is ~1-2 KiB: sending it as it is costs less than a
    compressor's set-up, and needs no state kept from the cached part.
    """
    out = []
    for start in range(0, max(len(data), 1), 0xFFFF):
        chunk = data[start:start + 0xFFFF]
        final = start + 0xFFFF >= len(data)
        out.append(struct.pack("<BHH", 1 if final else 0, len(chunk), len(chunk) ^ 0xFFFF))
        out.append(chunk)
    return b"".join(out)


@functools.cache
def _headers(openmetrics: bool) -> tuple[tuple[bytes, ...], bytes]:
    """HELP/TYPE lines of the per-target families and of the info family, in one format."""
    return (tuple(_header(spec, openmetrics) for spec in TARGET_FAMILIES),
            _header(INFO_FAMILY, openmetrics))


# --- the cache ---------------------------------------------------------------------


@dataclass
class _Gzipped:
    """The cached part as the start of a gzip member: header and deflated body (not
    final), with the CRC-32 and length of what it holds."""

    data: bytes
    crc: int
    length: int


@dataclass
class _Page:
    """The snapshot part for one store version, valid until a fresh target turns stale."""

    version: int
    built_at: float  # a clock stepping back can make stale data fresh again
    valid_until: float  # the last instant every fresh target is still fresh (inclusive)
    snapshot: Snapshot
    sections: tuple[list[bytes], ...]  # sample lines per family of TARGET_FAMILIES
    info: bytes  # the exec_scenario_info sample lines
    extra: tuple[Metric, ...] = ()  # families that change only with the store's version
    _plain: dict[bool, bytes] = field(default_factory=dict)
    _gzipped: dict[bool, _Gzipped] = field(default_factory=dict)

    def plain(self, openmetrics: bool) -> bytes:
        """Per-target families, scenario info and exporter-wide families, as one bytes."""
        body = self._plain.get(openmetrics)
        if body is None:
            headers, info_header = _headers(openmetrics)
            pieces: list[bytes] = []
            for i, (header, lines) in enumerate(zip(headers, self.sections, strict=True)):
                if i == INFO_POSITION:
                    pieces += (info_header, self.info)
                pieces.append(header)
                pieces += lines
            # The exporter-wide families are few: prometheus_client renders them.
            pieces.append(generate(Families(exporter_families(self.snapshot, self.built_at)),
                                    openmetrics))
            if self.extra:
                pieces.append(generate(Families(self.extra), openmetrics))
            body = self._plain[openmetrics] = b"".join(pieces)
        return body

    def gzipped(self, openmetrics: bool) -> _Gzipped:
        """``plain()`` deflated once, ready for a live tail to be appended."""
        result = self._gzipped.get(openmetrics)
        if result is None:
            body = self.plain(openmetrics)
            compressor = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, -15)
            data = compressor.compress(body) + compressor.flush(zlib.Z_SYNC_FLUSH)
            result = self._gzipped[openmetrics] = _Gzipped(_GZIP_HEADER + data,
                                                           zlib.crc32(body), len(body))
        return result


def _build(snapshot: Snapshot, now: float, extra: tuple[Metric, ...] = ()) -> _Page:
    """Render the snapshot part of ``snapshot`` as of ``now``."""
    states = snapshot.targets
    fresh = [snapshot.is_fresh(state, now) for state in states]
    expiries = [until for state, is_new in zip(states, fresh, strict=True)
                if is_new and (until := snapshot.fresh_until(state, now)) is not None]
    # Valid until a fresh target turns stale, or the staleness limit itself changes.
    valid_until = min(min(expiries, default=math.inf), snapshot.limit_changes_at(now))
    return _Page(snapshot.version, now, valid_until, snapshot,
                 _render_targets(states, fresh, snapshot.pause_reason),
                 _render_info(info_samples(states)), extra)


class Exposition:
    """Caches the snapshot part of /metrics and appends the live part per scrape.

    Thread-safe: scrapes may run concurrently; the first one after a change
    renders the new page while the others wait for it.
    """

    def __init__(self, collector: SnapshotCollector,
                 live: CollectorRegistry | Sequence[Collector],
                 clock: Clock, with_page: Collector | None = None) -> None:
        self.collector = collector
        # The live part: a registry, or the collectors themselves (then those that can
        # write their own bytes do).
        self.live: tuple[Collector, ...] = tuple(live) if isinstance(live, Sequence) else (live,)
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
                page = self._page = _build(store.snapshot(), now, extra)
            return page

    def render(self, openmetrics: bool = False, gzip: bool = False) -> bytes:
        """The full exposition, optionally in OpenMetrics and/or gzip-compressed."""
        return b"".join(self.render_chunks(openmetrics, gzip))

    def render_chunks(self, openmetrics: bool = False, gzip: bool = False) -> tuple[bytes, ...]:
        """The exposition as a few chunks to write in order (one ``sendmsg``), uncopied.

        The first chunk is the cached snapshot part (for gzip: with the gzip
        header, deflated); the rest is this scrape's live part.
        """
        page = self._current()
        # The live part is rendered per scrape; in OpenMetrics it carries the closing # EOF.
        live = _render_live(self.live, openmetrics)
        if not gzip:
            with self._lock:
                return page.plain(openmetrics), live
        with self._lock:
            prefix = page.gzipped(openmetrics)
        size = (prefix.length + len(live)) & 0xFFFFFFFF
        trailer = struct.pack("<II", zlib.crc32(live, prefix.crc), size)
        return prefix.data, _stored(live) + trailer
