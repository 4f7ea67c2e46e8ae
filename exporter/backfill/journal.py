"""``OUTPUT.journal``: every finished request of a run, so a stopped run resumes where it
was; and the fingerprint that tells whether a journal belongs to this run."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from ..client import ApiError, Member, Page, ParticipantRow, Summary
from ..config import Config
from .window import UsageError, Window

JOURNAL_VERSION = 1

# A request, as sent: the scenario and its sorted query parameters.
RequestKey = tuple[str, tuple[tuple[str, str], ...]]

# A page of a list, as sent: its kind (PARTICIPANTS or MEMBERS), the scenario or
# group, and the sorted query parameters (page and page_size included).
PageKey = tuple[str, str, tuple[tuple[str, str], ...]]
PARTICIPANTS = "participants"
MEMBERS = "members"
SUMMARY = "summary"


def request_key(scenario: str, params: Mapping[str, str]) -> RequestKey:
    """A hashable, order-independent name for one request."""
    return (scenario, tuple(sorted(params.items())))


# The settings that decide the file's content (the API, the targets); limits, intervals,
# the planner and the listings change only how and when the same values are fetched.
CONTENT_SETTINGS: dict[str, Any] = {
    "api": {"base_url"}, "scenarios": True, "cohorts": True,
    "discovery": {"scenarios", "group_cohorts"}, "max_targets": True}


def fingerprint(config: Config, window: Window) -> str:
    """A digest of :data:`CONTENT_SETTINGS` and the time range: any other edit of the
    configuration lets a stopped run resume."""
    doc = config.model_dump(mode="json", include=CONTENT_SETTINGS)
    doc["backfill"] = {"since": window.since, "until": window.until, "step": window.step}
    text = json.dumps(doc, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def base_fingerprint(config: Config, since: int, step: int) -> str:
    """The fingerprint without ``until``: a rerun without ``--until`` resumes its run."""
    return fingerprint(config, Window(since, 0, step))


@dataclass
class Outcome:
    """A finished request: its summary, or the reason the API refused it for good."""

    summary: Summary | None
    error: str | None = None


@dataclass
class PageOutcome:
    """A finished list page request: the page, or the reason the API refused it."""

    page: Page | None
    error: str | None = None


def page_key(kind: str, subject: str, params: Mapping[str, str]) -> PageKey:
    """A hashable, order-independent name for one list page request."""
    return (kind, subject, tuple(sorted(params.items())))


_ITEM_TYPES: dict[str, type[ParticipantRow] | type[Member]] = {
    PARTICIPANTS: ParticipantRow, MEMBERS: Member}


class Journal:
    """``OUTPUT.journal``: a header line, then a JSON line per finished request (a
    summary: ``scenario``, ``params``, ``summary``; a list page: ``kind``, ``subject``,
    ``params`` and the page's envelope and ``items``) and one per request sent
    (``{"sent": t}``), so a resumed run counts the stopped run's spend."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._handle: TextIO | None = None

    def read(self) -> tuple[dict[str, Any] | None, dict[RequestKey, Outcome],
                            dict[PageKey, PageOutcome], list[float]]:
        """The header (None without a journal), the finished summary and list page
        requests, and when requests were sent; a torn last line is ignored."""
        try:
            lines = self.path.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return None, {}, {}, []
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"--output: cannot read the journal {self.path}: {exc}") from None
        try:
            header = json.loads(lines[0]) if lines else None
        except ValueError:
            header = None
        if not isinstance(header, dict) or header.get("kind") != "exec-exporter-backfill":
            raise UsageError(f"--output: {self.path} is not a backfill journal; remove it or "
                             "choose another --output")
        done: dict[RequestKey, Outcome] = {}
        pages: dict[PageKey, PageOutcome] = {}
        sent: list[float] = []
        for line in lines[1:]:
            try:
                item = json.loads(line)
                if "sent" in item:
                    sent.append(float(item["sent"]))
                    continue
                kind = item.get("kind")
                if kind in _ITEM_TYPES:
                    pkey = page_key(kind, str(item["subject"]), dict(item["params"]))
                    pages[pkey] = PageOutcome(_page_from_json(kind, item), item.get("error"))
                    continue
                key = request_key(str(item["scenario"]), dict(item["params"]))
                summary = Summary.from_json(item["summary"]) if item.get("summary") else None
                done[key] = Outcome(summary, item.get("error"))
            except (ValueError, KeyError, TypeError, AttributeError, ApiError):
                continue
        return header, done, pages, sent

    def start(self, header: dict[str, Any], fresh: bool) -> None:
        """Open for appending; ``fresh`` writes a new file with ``header``."""
        if fresh:
            self.path.write_text(json.dumps(header, sort_keys=True) + "\n", encoding="utf-8")
        self._handle = self.path.open("a", encoding="utf-8")

    def add(self, key: RequestKey, outcome: Outcome) -> None:
        """Record one finished request (flushed at once: a stop loses nothing)."""
        assert self._handle is not None
        item = {"scenario": key[0], "params": dict(key[1]),
                "summary": outcome.summary.to_json() if outcome.summary else None,
                "error": outcome.error}
        self._handle.write(json.dumps(item, sort_keys=True, separators=(",", ":")) + "\n")
        self._handle.flush()

    def add_page(self, key: PageKey, outcome: PageOutcome) -> None:
        """Record one finished list page request (flushed at once)."""
        assert self._handle is not None
        kind, subject, params = key
        page = outcome.page
        item: dict[str, Any] = {"kind": kind, "subject": subject, "params": dict(params),
                                "error": outcome.error}
        if page is not None:
            item.update(items=[dataclasses.asdict(x) for x in page.items], page=page.page,
                        total_count=page.total_count, total_pages=page.total_pages,
                        page_size=page.page_size)
        self._handle.write(json.dumps(item, sort_keys=True, separators=(",", ":")) + "\n")
        self._handle.flush()

    def add_sent(self, at: float) -> None:
        """Record that a request was sent at ``at`` (before it is sent)."""
        assert self._handle is not None
        self._handle.write(json.dumps({"sent": round(at, 3)}) + "\n")
        self._handle.flush()

    def close(self) -> None:
        """Flush to disk and close."""
        if self._handle is not None:
            with contextlib.suppress(OSError):
                os.fsync(self._handle.fileno())
            self._handle.close()
            self._handle = None


def _page_from_json(kind: str, item: Mapping[str, Any]) -> Page | None:
    if item.get("items") is None:
        return None
    make = _ITEM_TYPES[kind]
    total = item.get("total_count")
    size = item.get("page_size")  # absent in journals written before it was recorded
    return Page(tuple(make(**x) for x in item["items"]), int(item["page"]),
                None if total is None else int(total), int(item["total_pages"]),
                None if size is None else int(size))
