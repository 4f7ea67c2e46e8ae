"""``--state.file``: last good summaries, discovery lists, the listings' last reads and
what the planner learned, kept across restarts. The quota ledger lives beside it
(:mod:`exporter.ledger`); a ledger in a file of an earlier version is read once to
migrate it.

Written atomically. A missing, corrupt or unreadable file is logged and ignored: the
exporter starts fresh, never stops.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import tempfile
import threading
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from .client import ApiError, Summary
from .discovery import Lists, parse_group, parse_scenario
from .store import Key, Snapshot, TargetState
from .targets import Target

log = logging.getLogger(__name__)
FORMAT_VERSION = 1


@dataclass
class SavedTarget:
    """One target's state as read back from the file: the fields of
    :class:`~exporter.store.TargetState` that are saved."""

    summary: Summary | None
    last_success: float | None
    up: bool
    last_error: str | None = None
    last_error_message: str | None = None
    last_error_time: float | None = None
    errors: dict[str, int] = field(default_factory=dict)

    def state(self, target: Target) -> TargetState:
        """The state of ``target`` restored from this."""
        return TargetState(target=target, **{name: getattr(self, name) for name in _SAVED})


_SAVED = tuple(f.name for f in fields(SavedTarget))


@dataclass
class SavedState:
    """Everything restored from the state file."""

    targets: dict[Key, SavedTarget] = field(default_factory=dict)
    # The ledger an earlier version kept here, migrated by Budget.merge, never written.
    ledger: list[float] = field(default_factory=list)
    lists: Lists | None = None  # the discovery lists, so a restart need not re-read them
    # As saved, validated by their owners: Planner.state, and Skills.state and
    # Assignments.state by kind.
    planner: dict[str, Any] = field(default_factory=dict)
    listings: dict[str, Any] = field(default_factory=dict)


def encode(snapshot: Snapshot, now: float,
           lists: Lists | None = None, planner: Mapping[str, Any] | None = None,
           listings: Mapping[str, Any] | None = None) -> bytes:
    """The file's bytes for ``snapshot``, discovery ``lists``, the planner's state and
    the listings' last reads."""
    targets = [{"scenario": state.target.scenario, "cohort": state.target.cohort.name,
                **{name: getattr(state, name) for name in _SAVED},  # in this order, then:
                "summary": state.summary.to_json() if state.summary else None,
                "errors": dict(state.errors)}
               for state in snapshot.targets
               if state.summary is not None or state.last_error is not None]
    doc: dict[str, Any] = {"version": FORMAT_VERSION, "saved_at": now, "targets": targets}
    if lists is not None:
        doc["discovery"] = {
            "scenarios": None if lists.scenarios is None else list(map(asdict, lists.scenarios)),
            "scenarios_at": lists.scenarios_at,
            "groups": None if lists.groups is None else list(map(asdict, lists.groups)),
            "groups_at": lists.groups_at,
        }
    if planner:
        doc["planner"] = dict(planner)
    if listings:
        doc["listings"] = dict(listings)
    return json.dumps(doc, separators=(",", ":")).encode()


def _time(value: object, now: float, what: str) -> float | None:
    """A saved time (None: none); ValueError if it is no number or in the future."""
    if value is None:
        return None
    if not isinstance(value, int | float) or value > now + 60:
        raise ValueError(f"{what} in the future")
    return float(value)


def decode(data: bytes, now: float) -> SavedState:
    """Parse the file's bytes; raise ValueError when they are not a usable state."""
    doc = json.loads(data)
    if not isinstance(doc, dict) or doc.get("version") != FORMAT_VERSION:
        raise ValueError("not an exec-exporter state file of a known version")
    saved = SavedState()
    ledger = doc.get("ledger", [])
    if not isinstance(ledger, list):
        raise ValueError("ledger is not a list")
    # Entries past the day are dropped by Budget.merge, which moves them to the ledger file.
    saved.ledger = sorted(float(t) for t in ledger
                          if isinstance(t, int | float) and t <= now + 60)
    found = doc.get("discovery")
    if isinstance(found, dict):
        try:
            scenarios, groups = found.get("scenarios"), found.get("groups")
            saved.lists = Lists(
                scenarios=None if scenarios is None else list(map(parse_scenario, scenarios)),
                groups=None if groups is None else list(map(parse_group, groups)),
                scenarios_at=None if scenarios is None else _time(
                    found.get("scenarios_at"), now, "list time"),
                groups_at=None if groups is None else _time(
                    found.get("groups_at"), now, "list time"))
        except (TypeError, ValueError, ApiError) as exc:
            log.warning("state file: ignoring the saved discovery lists: %s", exc)
    found_planner = doc.get("planner")
    if isinstance(found_planner, dict):
        saved.planner = found_planner
    elif isinstance(doc.get("members"), dict):
        saved.planner = {"members": doc["members"]}  # a file of an earlier version
    found_listings = doc.get("listings")
    if isinstance(found_listings, dict):
        saved.listings = found_listings
    for item in doc.get("targets", []):
        try:
            saved.targets[(str(item["scenario"]), str(item["cohort"]))] = SavedTarget(
                summary=Summary.from_json(item["summary"]) if item.get("summary") else None,
                last_success=_time(item.get("last_success"), now, "last_success"),
                up=bool(item.get("up")), last_error=item.get("last_error"),
                last_error_message=item.get("last_error_message"),
                last_error_time=item.get("last_error_time"),
                errors={str(k): int(v) for k, v in (item.get("errors") or {}).items()})
        except (KeyError, TypeError, ValueError, AttributeError, ApiError) as exc:
            log.warning("state file: skipping a malformed target entry: %s", exc)
    return saved


class StateFile:
    """Reads and writes the state file; writes at most every ``min_gap`` seconds.

    A change that arrives inside the gap is written when the gap ends (the latest one
    wins), so a crash loses at most ``min_gap`` seconds of changes.
    """

    def __init__(self, path: str | os.PathLike[str], min_gap: float = 1.0) -> None:
        self.path = Path(path)
        self.min_gap = min_gap
        self._last_save = float("-inf")
        self._lock = threading.Lock()
        # What the timer writes: the file's bytes, encoded then, and when they were saved.
        self._pending: tuple[Callable[[], bytes], float] | None = None
        self._timer: threading.Timer | None = None

    def load(self, now: float) -> SavedState:
        """The saved state, or an empty one (with a warning) if it cannot be used."""
        try:
            saved = decode(self.path.read_bytes(), now)
        except FileNotFoundError:
            log.info("no state file at %s yet; starting fresh", self.path)
            return SavedState()
        except OSError as exc:
            log.warning("cannot read state file %s (%s); starting fresh", self.path,
                        exc.strerror or exc)
            return SavedState()
        except (ValueError, TypeError, AttributeError) as exc:
            log.warning("state file %s is unusable (%s); starting fresh", self.path, exc)
            return SavedState()
        log.info("restored %d targets from %s", len(saved.targets), self.path)
        return saved

    def save(self, snapshot: Snapshot, now: float,
             force: bool = False, lists: Lists | None = None,
             planner: Mapping[str, Any] | None = None,
             listings: Mapping[str, Any] | None = None) -> bool:
        """Write atomically now (returns True), or, inside ``min_gap`` of the last
        write, remember the data and write it when the gap ends (returns False)."""
        data = functools.partial(encode, snapshot, now, lists, planner, listings)
        with self._lock:
            wait = self.min_gap - (now - self._last_save)
            if not force and wait > 0:
                self._pending = data, now
                if self._timer is None:
                    self._timer = threading.Timer(wait, self._flush)
                    self._timer.daemon = True
                    self._timer.start()
                return False
            self._pending = None
            if force and self._timer is not None:
                self._timer.cancel()
                self._timer = None
            return self._write(data, now)

    def _flush(self) -> None:
        with self._lock:
            self._timer = None
            pending, self._pending = self._pending, None
            if pending is not None:
                self._write(*pending)

    def _write(self, data: Callable[[], bytes], now: float) -> bool:
        try:
            write_atomically(self.path, data())
        except OSError as exc:
            log.warning("cannot write state file %s: %s", self.path, exc.strerror or exc)
            return False
        self._last_save = now
        return True


def write_atomically(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` whole or not at all (a private temporary file beside
    it, fsync, rename, then fsync of the directory); raise OSError."""
    directory = path.parent
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=directory)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):  # make the rename itself durable
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
