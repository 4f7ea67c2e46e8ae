"""Rendering /metrics cheaply: the snapshot part once per change, the live part per scrape.

Scenario data only changes when a refresh lands, so the exposition of the
snapshot (text and OpenMetrics, and the gzip of each) is rendered when the
store changes and served from memory; a scrape renders only the small live
part (budget windows, process metrics) and appends it.

How the snapshot part is kept:

* the per-target families are written directly (prometheus_client's
  families and ``generate_latest`` cost ~8 µs a sample: 0.3 s at 2,000
  targets) in blocks of :data:`BLOCK_TARGETS` consecutive targets. A change
  re-renders only the blocks whose targets changed, so a refresh landing
  costs a few milliseconds, not a full render. The sample lines are the same
  in both formats; only the HELP/TYPE headers differ, and those come from
  prometheus_client itself;
* the exporter-wide families (a few dozen samples) go through
  prometheus_client once per store version;
* for gzip each block is deflated on its own (raw deflate, sync-flushed, as
  pigz does) and cached, so a change recompresses only its blocks. A scrape
  appends the live tail as a stored (uncompressed) deflate block, ~1 KiB,
  and writes one ordinary gzip stream: header, cached blocks, tail, CRC-32
  and length;
* the live part itself is written directly too where prometheus_client would
  write the same bytes (plain gauges and counters), through prometheus_client
  otherwise.

``tests/test_exposition.py`` proves the result identical to prometheus_client's
``generate_latest`` over the collectors, in both formats, gzip included.
"""

from __future__ import annotations

import math
import re
import struct
import threading
import zlib
from collections.abc import Iterable, Iterator, Sequence
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
    FamilySpec,
    SnapshotCollector,
    exporter_families,
    info_samples,
    is_fresh,
    target_samples,
)
from .scheduler import Clock
from .store import Snapshot, TargetState

TEXT_CONTENT_TYPE = text_format.CONTENT_TYPE_LATEST
OPENMETRICS_CONTENT_TYPE = openmetrics_format.CONTENT_TYPE_LATEST
_EOF = b"# EOF\n"

# Targets per cached block. Smaller blocks make a change cheaper to re-render
# and recompress; larger ones compress better (deflate's window is 32 KiB; a
# block of one family is ~100 bytes a target). 128 costs ~14% in gzip size.
BLOCK_TARGETS = 128
GZIP_LEVEL = 6
# A gzip member header: deflate, no name, no mtime (the body changes anyway), OS unknown.
_GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"

# --- rendering --------------------------------------------------------------------


class _Families(Collector):
    """A collector over fixed families, to hand them to prometheus_client's writers."""

    def __init__(self, families: Iterable[Metric]) -> None:
        self._families = list(families)

    def collect(self) -> Iterator[Metric]:
        return iter(self._families)


def _generate(collector: Collector, openmetrics: bool) -> bytes:
    """prometheus_client's own rendering, without OpenMetrics' closing ``# EOF``."""
    if openmetrics:
        return openmetrics_format.generate_latest(collector).removesuffix(_EOF)
    return text_format.generate_latest(collector)


def _header(spec: FamilySpec, openmetrics: bool) -> bytes:
    """The HELP and TYPE lines of ``spec``, exactly as prometheus_client writes them."""
    return _generate(_Families([spec.family()]), openmetrics)


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


def _render_targets(states: Sequence[TargetState], fresh: Sequence[bool]) -> tuple[bytes, ...]:
    """The sample lines of ``states``, one bytes per family of TARGET_FAMILIES."""
    lines: list[list[str]] = [[] for _ in TARGET_FAMILIES]
    templates = _TEMPLATES
    for state, is_fresh_ in zip(states, fresh, strict=True):
        for index, labels, value in target_samples(state, is_fresh_):
            lines[index].append(templates[index].format(*map(_escape, labels))
                                + floatToGoString(value) + "\n")
    return tuple("".join(family).encode() for family in lines)


def _render_info(samples: Iterable[tuple[str, ...]]) -> bytes:
    return "".join(_INFO_TEMPLATE.format(*map(_escape, labels)) + "1.0\n"
                   for labels in samples).encode()


# Names that need no quoting or escaping in either format.
_PLAIN_METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_PLAIN_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_OPENMETRICS_ONLY = ("_created", "_gsum", "_gcount")  # samples the text format moves elsewhere
_MAX_LIVE_CACHE = 1024  # bounds the caches should a collector invent names


class _LiveRenderer:
    """Writes the live registry per scrape, skipping prometheus_client's per-sample overhead.

    Plain gauges and counters (no unit, timestamps, exemplars or OpenMetrics-only
    samples; plain names) are written directly, with HELP/TYPE lines rendered
    once by prometheus_client and remembered. Any other family goes through
    prometheus_client as it is, so the output is always what it would write.
    """

    def __init__(self) -> None:
        self._headers: dict[tuple[str, str, str, bool], bytes] = {}
        self._plain_samples: set[tuple[str, ...]] = set()  # (family, sample, *label names)

    def render(self, registry: Collector, openmetrics: bool) -> bytes:
        out = [self._family(metric, openmetrics) for metric in registry.collect()]
        if openmetrics:
            out.append(_EOF)
        return b"".join(out)

    def _family(self, metric: Metric, openmetrics: bool) -> bytes:
        if metric.unit or metric.type not in ("gauge", "counter"):
            return _generate(_Families([metric]), openmetrics)
        key = (metric.type, metric.name, metric.documentation, openmetrics)
        header = self._headers.get(key)
        if header is None:
            if not _PLAIN_METRIC_NAME.fullmatch(metric.name):
                return _generate(_Families([metric]), openmetrics)
            if len(self._headers) >= _MAX_LIVE_CACHE:
                self._headers.clear()
            header = self._headers[key] = _header_of(metric, openmetrics)
        lines = []
        plain = self._plain_samples
        for sample in metric.samples:
            if (sample.timestamp is not None or sample.exemplar is not None
                    or sample.value is None
                    or getattr(sample, "native_histogram", None) is not None):
                return _generate(_Families([metric]), openmetrics)
            shape = (metric.name, sample.name, *sample.labels)
            if shape not in plain:
                if not _plain_sample(metric.name, sample.name, sample.labels):
                    return _generate(_Families([metric]), openmetrics)
                if len(plain) >= _MAX_LIVE_CACHE:
                    plain.clear()
                plain.add(shape)
            if sample.labels:
                pairs = ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(sample.labels.items()))
                lines.append(f"{sample.name}{{{pairs}}} {floatToGoString(sample.value)}\n")
            else:
                lines.append(f"{sample.name} {floatToGoString(sample.value)}\n")
        return header + "".join(lines).encode()


def _header_of(metric: Metric, openmetrics: bool) -> bytes:
    """HELP and TYPE of ``metric``'s family, as prometheus_client writes them."""
    return _generate(_Families([Metric(metric.name, metric.documentation, metric.type)]),
                     openmetrics)


def _plain_sample(family: str, name: str, labels: Iterable[str]) -> bool:
    """A sample the fast path writes exactly as prometheus_client would."""
    return (_PLAIN_METRIC_NAME.fullmatch(name) is not None
            and name not in {family + suffix for suffix in _OPENMETRICS_ONLY}
            and all(_PLAIN_LABEL_NAME.fullmatch(k) for k in labels))


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


def _deflate(data: bytes, final: bool = False) -> bytes:
    """Raw deflate of ``data`` on its own: byte-aligned, so pieces can be concatenated."""
    compressor = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, -15)
    return compressor.compress(data) + compressor.flush(
        zlib.Z_FINISH if final else zlib.Z_SYNC_FLUSH)


@dataclass
class _Deflated:
    """A deflated prefix of the body: the bytes, the CRC-32 and length of what it holds."""

    data: bytes
    crc: int
    length: int

    @classmethod
    def of(cls, pieces: Iterable[tuple[bytes, bytes]], crc: int = 0) -> _Deflated:
        """From (plain, deflated) pairs."""
        out, length = [], 0
        for plain, deflated in pieces:
            if plain:
                out.append(deflated)
                crc = zlib.crc32(plain, crc)
                length += len(plain)
        return cls(b"".join(out), crc, length)


class _Headers:
    """HELP/TYPE lines of the per-target families in one format, plain and deflated."""

    def __init__(self, openmetrics: bool) -> None:
        self.families = [_header(spec, openmetrics) for spec in TARGET_FAMILIES]
        self.info = _header(INFO_FAMILY, openmetrics)
        self.families_deflated = [_deflate(h) for h in self.families]
        self.info_deflated = _deflate(self.info)


_HEADERS: dict[bool, _Headers] = {}


def _headers(openmetrics: bool) -> _Headers:
    headers = _HEADERS.get(openmetrics)
    if headers is None:
        headers = _HEADERS[openmetrics] = _Headers(openmetrics)
    return headers


# --- the cache ---------------------------------------------------------------------


def _signature(state: TargetState) -> tuple[object, ...]:
    """What a target's lines depend on besides freshness (not next_due, not error messages)."""
    return (state.target, state.summary, state.last_success, state.up, state.errors)


@dataclass
class _Block:
    """The lines of up to BLOCK_TARGETS consecutive targets, one bytes per family."""

    states: tuple[TargetState, ...]
    fresh: tuple[bool, ...]
    signature: tuple[tuple[object, ...], ...]
    sections: tuple[bytes, ...]
    info: tuple[tuple[str, str, str], ...]  # its candidates for exec_scenario_info
    limit: float  # the staleness limit ``fresh`` was computed with
    built_at: float
    valid_until: float  # when one of its fresh targets turns stale
    deflated: tuple[bytes, ...] | None = None  # filled at the first gzip scrape

    def still_valid(self, states: tuple[TargetState, ...], limit: float, now: float) -> bool:
        """Whether the block stands as it is for ``states`` at ``now``."""
        # Tuple equality tries identity first: cheap when nothing changed.
        return (self.limit == limit and self.built_at <= now < self.valid_until
                and self.states == states)

    def deflate(self) -> tuple[bytes, ...]:
        if self.deflated is None:
            self.deflated = tuple(_deflate(s) if s else b"" for s in self.sections)
        return self.deflated


@dataclass
class _TargetPart:
    """The per-target families and the scenario info: everything but the exporter-wide part."""

    blocks: tuple[_Block, ...]
    info_labels: tuple[tuple[str, str, str], ...]
    info: bytes
    _pieces: dict[bool, list[bytes]] = field(default_factory=dict)
    _info_deflated: bytes | None = None
    _deflated: dict[bool, _Deflated] = field(default_factory=dict)

    def pieces(self, openmetrics: bool) -> list[bytes]:
        """The part's bytes in order, as a list to join."""
        pieces = self._pieces.get(openmetrics)
        if pieces is None:
            headers = _headers(openmetrics)
            pieces = []
            for i in range(len(TARGET_FAMILIES)):
                if i == INFO_POSITION:
                    pieces += (headers.info, self.info)
                pieces.append(headers.families[i])
                pieces.extend(block.sections[i] for block in self.blocks)
            self._pieces[openmetrics] = pieces
        return pieces

    def deflated(self, openmetrics: bool) -> _Deflated:
        """The part deflated (not final), with its CRC-32 and length."""
        result = self._deflated.get(openmetrics)
        if result is None:
            headers = _headers(openmetrics)
            if self._info_deflated is None:
                self._info_deflated = _deflate(self.info) if self.info else b""
            pairs: list[tuple[bytes, bytes]] = []
            deflated_blocks = [block.deflate() for block in self.blocks]
            for i in range(len(TARGET_FAMILIES)):
                if i == INFO_POSITION:
                    pairs += ((headers.info, headers.info_deflated),
                              (self.info, self._info_deflated))
                pairs.append((headers.families[i], headers.families_deflated[i]))
                pairs.extend((block.sections[i], deflated[i])
                             for block, deflated in zip(self.blocks, deflated_blocks,
                                                        strict=True))
            result = self._deflated[openmetrics] = _Deflated.of(pairs)
        return result


@dataclass
class _Page:
    """The whole snapshot part for one store version, valid until ``valid_until``."""

    version: int
    built_at: float  # a clock stepping back can make stale data fresh again
    valid_until: float
    snapshot: Snapshot
    targets: _TargetPart
    _exporter: dict[bool, bytes] = field(default_factory=dict)
    _plain: dict[bool, bytes] = field(default_factory=dict)
    _deflated: dict[bool, _Deflated] = field(default_factory=dict)

    def exporter(self, openmetrics: bool) -> bytes:
        """The exporter-wide families, rendered by prometheus_client."""
        body = self._exporter.get(openmetrics)
        if body is None:
            body = self._exporter[openmetrics] = _generate(
                _Families(exporter_families(self.snapshot)), openmetrics)
        return body

    def plain(self, openmetrics: bool) -> bytes:
        """Target part and exporter part, as one bytes."""
        body = self._plain.get(openmetrics)
        if body is None:
            body = self._plain[openmetrics] = b"".join(
                (*self.targets.pieces(openmetrics), self.exporter(openmetrics)))
        return body

    def deflated(self, openmetrics: bool) -> _Deflated:
        """Gzip header, then target part and exporter part deflated (not final)."""
        result = self._deflated.get(openmetrics)
        if result is None:
            prefix = self.targets.deflated(openmetrics)
            exporter = self.exporter(openmetrics)
            result = self._deflated[openmetrics] = _Deflated(
                b"".join((_GZIP_HEADER, prefix.data, _deflate(exporter))),
                zlib.crc32(exporter, prefix.crc), prefix.length + len(exporter))
        return result


class Exposition:
    """Caches the snapshot part of /metrics and appends the live part per scrape.

    Thread-safe: scrapes may run concurrently; the first one after a change
    updates the cache, the others wait for it or use the previous page.
    """

    def __init__(self, collector: SnapshotCollector, live: CollectorRegistry,
                 clock: Clock) -> None:
        self.collector = collector
        self.live = live
        self.clock = clock
        self._lock = threading.Lock()
        self._page: _Page | None = None
        self._blocks: list[_Block] = []
        self._targets: _TargetPart | None = None
        self._live = _LiveRenderer()

    # --- the cached part ---------------------------------------------------------

    def _current(self) -> _Page:
        """The page for the store's current version, rebuilt if it changed or expired."""
        now = self.clock.time()
        store = self.collector.store
        with self._lock:
            page = self._page
            if (page is None or page.version != store.version
                    or not page.built_at <= now < page.valid_until):
                snapshot = store.snapshot()
                page = self._page = self._build(snapshot, now)
            return page

    def _build(self, snapshot: Snapshot, now: float) -> _Page:
        states = snapshot.targets
        limit = snapshot.staleness_limit()
        blocks: list[_Block] = []
        changed = len(states) != sum(len(b.states) for b in self._blocks)
        for n, start in enumerate(range(0, len(states), BLOCK_TARGETS)):
            block_states = states[start:start + BLOCK_TARGETS]
            old = self._blocks[n] if n < len(self._blocks) else None
            if old is not None and old.still_valid(block_states, limit, now):
                blocks.append(old)
                continue
            block = _block(snapshot, block_states, now)
            if old is not None and old.fresh == block.fresh and old.signature == block.signature:
                # Only what is not exported changed (next_due, error messages): keep the lines.
                block.sections, block.info, block.deflated = old.sections, old.info, old.deflated
            else:
                changed = True
                block.sections = _render_targets(block_states, block.fresh)
            blocks.append(block)
        self._blocks = blocks
        info = _merge_info(blocks)
        if changed or self._targets is None or info != self._targets.info_labels:
            self._targets = _TargetPart(tuple(blocks), info, _render_info(info))
        valid_until = min((b.valid_until for b in blocks), default=math.inf)
        return _Page(snapshot.version, now, valid_until, snapshot, self._targets)

    # --- per scrape ------------------------------------------------------------------

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
        live = self._live.render(self.live, openmetrics)
        if not gzip:
            with self._lock:
                return page.plain(openmetrics), live
        with self._lock:
            prefix = page.deflated(openmetrics)
        size = (prefix.length + len(live)) & 0xFFFFFFFF
        trailer = struct.pack("<II", zlib.crc32(live, prefix.crc), size)
        return prefix.data, _stored(live) + trailer


def _block(snapshot: Snapshot, states: tuple[TargetState, ...], now: float) -> _Block:
    """A block's freshness, signature and info candidates; the caller fills in its lines."""
    limit = snapshot.staleness_limit()
    fresh = tuple(is_fresh(s, snapshot, now) for s in states)
    expiries = [s.last_success + limit for s, f in zip(states, fresh, strict=True)
                if f and s.last_success is not None]
    return _Block(states, fresh, tuple(_signature(s) for s in states), (),
                  tuple(info_samples(states)),
                  limit, now, min(expiries, default=math.inf))


def _merge_info(blocks: Iterable[_Block]) -> tuple[tuple[str, str, str], ...]:
    """The info samples of all blocks: per scenario, the first, as info_samples() picks."""
    seen: set[str] = set()
    out = []
    for block in blocks:
        for labels in block.info:
            if labels[0] not in seen:
                seen.add(labels[0])
                out.append(labels)
    return tuple(out)
