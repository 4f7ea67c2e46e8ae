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
from typing import Any, Generic, TextIO, TypeVar

from ..client import ApiError, Member, Page, ParticipantRow, Summary
from ..config import Config
from .window import UsageError, Window

JOURNAL_VERSION = 1
SUMMARY = "summary"
PARTICIPANTS = "participants"
MEMBERS = "members"
_ITEM_TYPES: dict[str, type[ParticipantRow] | type[Member]] = {
    PARTICIPANTS: ParticipantRow, MEMBERS: Member}

# A request, as sent: its kind (SUMMARY or a list: PARTICIPANTS, MEMBERS), its scenario or
# group, and its sorted query parameters (a list page's page and page_size included).
RequestKey = tuple[str, str, tuple[tuple[str, str], ...]]
A = TypeVar("A")


def request_key(subject: str, params: Mapping[str, str], kind: str = SUMMARY) -> RequestKey:
    """A hashable, order-independent name for one request."""
    return (kind, subject, tuple(sorted(params.items())))


# The settings that decide the file's content (the API, the targets); limits, intervals,
# the planner and the listings change only how and when the same values are fetched.
CONTENT_SETTINGS: dict[str, Any] = {
    "api": {"base_url"}, "scenarios": True, "cohorts": True,
    "discovery": {"scenarios", "group_cohorts"}, "max_targets": True}


def fingerprint(config: Config, window: Window) -> str:
    """A digest of :data:`CONTENT_SETTINGS` and the time range."""
    doc = config.model_dump(mode="json", include=CONTENT_SETTINGS)
    doc["backfill"] = {"since": window.since, "until": window.until, "step": window.step}
    text = json.dumps(doc, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:32]


@dataclass
class Outcome(Generic[A]):
    """A finished request: its answer (a Summary, a Page), or why the API refused it."""

    answer: A | None
    error: str | None = None


class Journal:
    """A header line, a JSON line per finished request (a summary: ``scenario``,
    ``params``, ``summary``; a list page: ``kind``, ``subject``, ``params``, the page) and
    one per request sent (``{"sent": t}``: a resumed run counts the stopped run's spend)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._handle: TextIO | None = None

    def read(self) -> tuple[dict[str, Any] | None, dict[RequestKey, Outcome[Any]], list[float]]:
        """The header (None: no journal), the finished requests and the send times."""
        try:
            lines = self.path.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return None, {}, []
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"--output: cannot read the journal {self.path}: {exc}") from None
        try:
            header = json.loads(lines[0]) if lines else None
        except ValueError:
            header = None
        if not isinstance(header, dict) or header.get("kind") != "exec-exporter-backfill":
            raise UsageError(f"--output: {self.path} is not a backfill journal; remove it or "
                             "choose another --output")
        done: dict[RequestKey, Outcome[Any]] = {}
        sent: list[float] = []
        for line in lines[1:]:
            try:
                item = json.loads(line)
                if "sent" in item:
                    sent.append(float(item["sent"]))
                    continue
                kind = item.get("kind", SUMMARY)
                subject = item["scenario" if kind == SUMMARY else "subject"]
                key = request_key(str(subject), dict(item["params"]), kind)
                done[key] = Outcome(_answer(kind, item), item.get("error"))
            except (ValueError, KeyError, TypeError, AttributeError, ApiError):
                continue
        return header, done, sent

    def start(self, header: dict[str, Any], fresh: bool) -> None:
        """Open for appending; ``fresh`` writes a new file with ``header``."""
        if fresh:
            self.path.write_text(json.dumps(header, sort_keys=True) + "\n", encoding="utf-8")
        self._handle = self.path.open("a", encoding="utf-8")

    def add(self, key: RequestKey, outcome: Outcome[Any]) -> None:
        """Record one finished request (flushed at once: a stop loses nothing)."""
        kind, subject, params = key
        answer = outcome.answer
        item: dict[str, Any] = {"params": dict(params), "error": outcome.error}
        if kind == SUMMARY:
            item.update(scenario=subject, summary=answer.to_json() if answer else None)
        else:
            item.update(kind=kind, subject=subject, **dataclasses.asdict(answer) if answer else {})
        self._write(json.dumps(item, sort_keys=True, separators=(",", ":")))

    def add_sent(self, at: float) -> None:
        """Record that a request was sent at ``at`` (before it is sent)."""
        self._write(json.dumps({"sent": round(at, 3)}))

    def _write(self, line: str) -> None:
        assert self._handle is not None
        self._handle.write(line + "\n")
        self._handle.flush()

    def close(self) -> None:
        """Flush to disk and close."""
        if self._handle is not None:
            with contextlib.suppress(OSError):
                os.fsync(self._handle.fileno())
            self._handle.close()
            self._handle = None


def _answer(kind: str, item: Mapping[str, Any]) -> Summary | Page[Any] | None:
    if kind == SUMMARY:
        return Summary.from_json(item["summary"]) if item.get("summary") else None
    if item.get("items") is None:
        return None
    make = _ITEM_TYPES[kind]
    total = item.get("total_count")
    size = item.get("page_size")  # absent in journals written before it was recorded
    return Page(tuple(make(**x) for x in item["items"]), int(item["page"]),
                None if total is None else int(total), int(item["total_pages"]),
                None if size is None else int(size))
