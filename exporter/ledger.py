"""One quota ledger per workspace: ``<state file>.ledger``, one request time per line.

The daemon and any backfill on the same ``--state.file`` append a request's time
before sending it, under ``fcntl.flock``, after reading the others' new lines and
checking it still fits (:meth:`exporter.budget.Budget.claim`). A torn line is skipped;
the file is rewritten with the last day's entries once most of its lines expired.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import math
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from .state import write_atomically

log = logging.getLogger(__name__)

SUFFIX = ".ledger"
# Rewrite the file past twice its live entries plus this: rare (a day is ~15 KB).
COMPACT_SLACK = 256


def ledger_path(state_file: str | os.PathLike[str]) -> Path:
    """The ledger beside a state file: ``<state file>.ledger``."""
    path = Path(state_file)
    return path.with_name(path.name + SUFFIX)


def _parse(data: bytes) -> list[float]:
    times = []
    for line in data.split(b"\n"):
        try:
            at = float(line)
        except ValueError:
            continue  # a torn or foreign line: skipped, never fatal
        if math.isfinite(at):
            times.append(at)
    return times


class LedgerFile:
    """The shared ledger file. Not thread-safe: its Budget serialises calls; other
    processes are excluded by the lock."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._fd: int | None = None
        self._offset = 0  # bytes of complete lines already read
        self._lines = 0  # complete lines in the file (for compaction)
        self._failed = False  # an unusable ledger is logged once, never fatal

    def _open(self) -> int:
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
            self._offset = 0
            self._lines = 0
        return self._fd

    def _reopen_if_replaced(self) -> tuple[bool, int]:
        """(reopened, size): reopen when another writer replaced the file (compaction) or
        it was removed; ``reopened`` when what was read so far no longer describes it."""
        # A compaction renames a new file over this one and a removal unlinks it: either
        # way the inode held has no name left. One fstat, no path lookup per scrape.
        if self._fd is not None:
            held = os.fstat(self._fd)
            if held.st_nlink > 0:
                return False, held.st_size
            self.close()
        return True, os.fstat(self._open()).st_size

    def close(self) -> None:
        """Close the file (it is reopened when used again)."""
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the exclusive lock on the current file (not a replaced one)."""
        while True:
            self._reopen_if_replaced()
            fcntl.flock(self._open(), fcntl.LOCK_EX)
            if not self._reopen_if_replaced()[0]:
                break
            # Replaced while we waited for the lock: lock the new file instead.
        try:
            yield
        finally:
            if self._fd is not None:
                fcntl.flock(self._fd, fcntl.LOCK_UN)

    def read_new(self) -> tuple[bool, list[float]]:
        """(whole, times): the complete lines appended since the last call; ``whole``
        when they are the whole file (first read, replaced or truncated)."""
        reopened, size = self._reopen_if_replaced()
        whole = reopened or self._offset == 0
        fd = self._open()
        if size < self._offset:  # truncated by someone: start over
            self._offset, self._lines, whole = 0, 0, True
        data = os.pread(fd, size - self._offset, self._offset) if size > self._offset else b""
        end = data.rfind(b"\n") + 1
        complete = data[:end]
        self._offset += end
        self._lines += complete.count(b"\n")
        return whole, _parse(complete)

    def append(self, times: Iterable[float]) -> None:
        """Append ``times``; call under :meth:`locked` right after :meth:`read_new`."""
        lines = "".join(f"{at:.3f}\n" for at in times).encode()
        try:
            fd = self._open()
            size = os.fstat(fd).st_size
            if size > self._offset:  # a torn line from a killed writer: end it first
                lines = b"\n" + lines
            os.write(fd, lines)
            self._offset = os.fstat(fd).st_size
            self._lines += lines.count(b"\n")
        except OSError:
            self.close()
            raise

    def needs_rewrite(self, live: int) -> bool:
        """Whether the file holds mostly expired lines."""
        return self._lines > 2 * live + COMPACT_SLACK

    def rewrite(self, times: Iterable[float]) -> None:
        """Replace the file with ``times`` through a rename; call under :meth:`locked`."""
        data = "".join(f"{at:.3f}\n" for at in times).encode()
        write_atomically(self.path, data)
        # The lock held is the old file's: waiting writers notice the new inode.
        if self._fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            self.close()

    def failed(self, exc: OSError) -> None:
        """Say (once) that the file cannot be used, and close it."""
        self.close()
        if not self._failed:
            self._failed = True
            log.warning("cannot write the quota ledger %s (%s); other processes on this "
                        "state file do not see this one's requests", self.path,
                        exc.strerror or exc)
