"""The request budget: a ledger of every request sent in the last 24 hours.

The exporter may send at most ``minute_limit`` requests in any rolling 60 s and
``day_limit`` in any rolling 24 h. Every request counts: polls, retries,
probes and discovery listings.
"""

from __future__ import annotations

import bisect
import threading
from collections import deque
from collections.abc import Iterable

MINUTE = 60.0
DAY = 86400.0
# A request leaves the ledger's window this long after the API's own window would
# let it go: a margin for clock skew and for where exactly the API draws its edges.
GRACE = 1.0


class Budget:
    """A rolling-window ledger of request times with a minute and a day limit."""

    def __init__(self, minute_limit: int, day_limit: int, sent: Iterable[float] = ()) -> None:
        self.minute_limit = minute_limit
        self.day_limit = day_limit
        self._sent: deque[float] = deque(sorted(sent))
        self._lock = threading.Lock()

    def _expire(self, now: float) -> None:
        while self._sent and self._sent[0] <= now - DAY - GRACE:
            self._sent.popleft()

    def record(self, at: float) -> None:
        """Count one request sent at ``at``."""
        with self._lock:
            if self._sent and at < self._sent[-1]:
                bisect.insort(self._sent, at)
            else:
                self._sent.append(at)

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
            self._expire(now)
            minute = self.minute_limit - self._count_since(now - MINUTE - GRACE)
            day = self.day_limit - len(self._sent)
        return max(minute, 0), max(day, 0)

    def next_allowed(self, now: float, count: int = 1) -> float:
        """The earliest time (>= now) at which ``count`` more requests fit both windows
        (a participants pull's pages are sent back to back)."""
        with self._lock:
            self._expire(now)
            when = now
            count = max(1, min(count, self.day_limit, self.minute_limit))
            sent = len(self._sent)
            if sent + count > self.day_limit:
                # The requests that must leave the 24 h window first.
                when = max(when, self._sent[sent - self.day_limit + count - 1] + DAY + GRACE)
            in_minute = self._count_since(now - MINUTE - GRACE)
            if in_minute + count > self.minute_limit:
                when = max(when,
                           self._sent[sent - self.minute_limit + count - 1] + MINUTE + GRACE)
            return when

    def resize(self, minute_limit: int, day_limit: int) -> None:
        """Apply new limits (after a reload); the ledger is kept."""
        with self._lock:
            self.minute_limit = minute_limit
            self.day_limit = day_limit

    def ledger(self, now: float) -> list[float]:
        """Request times in the last 24 h (for the state file)."""
        with self._lock:
            self._expire(now)
            return list(self._sent)

    @property
    def last_sent(self) -> float | None:
        """When the latest request was sent, if any."""
        with self._lock:
            return self._sent[-1] if self._sent else None
