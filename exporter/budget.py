"""The request budget: a ledger of every request sent in the last 24 hours, at most
``minute_limit`` in any rolling 60 s and ``day_limit`` in any rolling 24 h (polls,
retries, probes and listings alike). With ``--state.file`` the ledger is the
workspace's file (:mod:`exporter.ledger`), shared by the daemon and any backfill."""

from __future__ import annotations

import bisect
import logging
import os
import threading
from collections import deque
from collections.abc import Callable, Iterable

from .ledger import LedgerFile, ledger_path

log = logging.getLogger(__name__)

MINUTE = 60.0
DAY = 86400.0
# A request leaves the ledger's window this long after the API's own window would
# let it go: a margin for clock skew and for where exactly the API draws its edges.
GRACE = 1.0


class Budget:
    """A rolling-window ledger of request times with a minute and a day limit, shared
    with other processes through ``shared`` (then ``sent`` is not used: :meth:`merge`)."""

    def __init__(self, minute_limit: int, day_limit: int, sent: Iterable[float] = (),
                 shared: LedgerFile | None = None) -> None:
        self.minute_limit = minute_limit
        self.day_limit = day_limit
        self._sent: deque[float] = deque(sorted(sent))
        self._lock = threading.Lock()
        self._shared = shared
        if shared is not None:
            with self._lock:
                self._on_shared(self._sync)

    def _expire(self, now: float) -> None:
        while self._sent and self._sent[0] <= now - DAY - GRACE:
            self._sent.popleft()

    def _insert(self, at: float) -> None:
        if self._sent and at < self._sent[-1]:
            bisect.insort(self._sent, at)
        else:
            self._sent.append(at)

    def _sync(self) -> None:
        """Take in what the shared ledger gained since the last look."""
        assert self._shared is not None
        whole, times = self._shared.read_new()
        if whole:
            self._sent = deque(sorted(times))
        else:
            for at in times:
                self._insert(at)

    def _on_shared(self, action: Callable[[], None]) -> bool:
        """Run ``action`` on the shared ledger; on an OS error say so once and go on with
        this process's own ledger: a request is never refused for a file."""
        assert self._shared is not None
        try:
            action()
        except OSError as exc:
            self._shared.failed(exc)
            self._shared = None
            return False
        return True

    def _read_shared(self, now: float) -> None:
        if self._shared is not None:
            self._on_shared(self._sync)
        self._expire(now)

    def _update(self, change: Callable[[], list[float]]) -> None:
        """Apply ``change`` (it inserts and returns what it inserted): with a shared file,
        under its lock after taking in the others' entries, then append what it inserted;
        if the file fails before the change ran, on this process's own ledger."""
        if self._shared is None:
            change()
            return
        shared = self._shared
        ran = False

        def locked() -> None:
            nonlocal ran
            with shared.locked():
                self._sync()
                ran = True
                added = change()
                if not added:
                    return
                if shared.needs_rewrite(len(self._sent)):
                    shared.rewrite(self._sent)
                else:
                    shared.append(added)

        if not self._on_shared(locked) and not ran:
            change()

    def claim(self, now: float, leave: tuple[int, int] = (0, 0)) -> bool:
        """Count one request sent at ``now`` if it fits both windows (``leave`` as in
        :meth:`next_allowed`); say whether it did. Shared, under the file's lock: two
        processes never both take the last slot."""
        taken = False

        def take() -> list[float]:
            nonlocal taken
            self._expire(now)
            taken = self._next_allowed(now, 1, leave) <= now
            if taken:
                self._insert(now)
            return [now] if taken else []

        with self._lock:
            self._update(take)
        return taken

    def merge(self, times: Iterable[float], now: float) -> int:
        """Add request times not already in the ledger (to the millisecond), such as a
        stopped backfill's journal; return how many were new."""
        wanted = {round(at, 3) for at in times if at > now - DAY - GRACE}
        new: list[float] = []

        def add() -> list[float]:
            self._expire(now)
            new[:] = sorted(wanted - {round(at, 3) for at in self._sent})
            for at in new:
                self._insert(at)
            return new

        with self._lock:
            self._update(add)
        return len(new)

    def _count_since(self, since: float) -> int:
        # deque has no bisect; index from the right, where recent entries are.
        count = 0
        for at in reversed(self._sent):
            if at <= since:
                break
            count += 1
        return count

    def remaining(self, now: float) -> tuple[int, int]:
        """Requests still allowed now: (in the rolling minute, in the rolling day)."""
        with self._lock:
            self._read_shared(now)
            minute = self.minute_limit - self._count_since(now - MINUTE - GRACE)
            day = self.day_limit - len(self._sent)
        return max(minute, 0), max(day, 0)

    def next_allowed(self, now: float, count: int = 1,
                     leave: tuple[int, int] = (0, 0)) -> float:
        """The earliest time (>= now) at which ``count`` more requests fit both windows
        with ``leave`` = (minute, day) requests still free after them for another process."""
        with self._lock:
            self._read_shared(now)
            return self._next_allowed(now, count, leave)

    def _next_allowed(self, now: float, count: int, leave: tuple[int, int] = (0, 0)) -> float:
        when = now
        count = max(1, min(count, self.day_limit, self.minute_limit))
        minute_need = min(count + leave[0], self.minute_limit)
        day_need = min(count + leave[1], self.day_limit)
        sent = len(self._sent)
        if sent + day_need > self.day_limit:
            # The requests that must leave the 24 h window first.
            when = max(when, self._sent[sent - self.day_limit + day_need - 1] + DAY + GRACE)
        in_minute = self._count_since(now - MINUTE - GRACE)
        if in_minute + minute_need > self.minute_limit:
            when = max(when,
                       self._sent[sent - self.minute_limit + minute_need - 1] + MINUTE + GRACE)
        return when

    def resize(self, minute_limit: int, day_limit: int) -> None:
        """Apply new limits (after a reload); the ledger is kept."""
        with self._lock:
            self.minute_limit = minute_limit
            self.day_limit = day_limit

    def ledger(self, now: float) -> list[float]:
        """Request times in the last 24 h, every process's when shared."""
        with self._lock:
            self._read_shared(now)
            return list(self._sent)

    def close(self) -> None:
        """Close the shared ledger file, if any (it is reopened if used again)."""
        with self._lock:
            if self._shared is not None:
                self._shared.close()

    @property
    def last_sent(self) -> float | None:
        """When the latest request was sent, if any."""
        with self._lock:
            return self._sent[-1] if self._sent else None


def open_budget(minute_limit: int, day_limit: int,
                state_file: str | os.PathLike[str] | None, legacy: Iterable[float],
                now: float) -> Budget:
    """The budget of a process on ``state_file``: shared through ``<state file>.ledger``,
    or its own without one. ``legacy`` (the ledger an earlier version kept in the state
    file) is moved into the ledger file once."""
    if state_file is None:
        return Budget(minute_limit, day_limit, legacy)
    shared = LedgerFile(ledger_path(state_file))
    budget = Budget(minute_limit, day_limit, shared=shared)
    moved = budget.merge(legacy, now)
    if moved:
        log.info("moved %d ledger entries from the state file into %s", moved, shared.path)
    log.info("quota ledger %s: %d requests in the last 24 h (shared with every process "
             "on this state file)", shared.path, len(budget.ledger(now)))
    return budget
