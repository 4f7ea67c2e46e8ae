"""The backfill's progress: a bar on a terminal, a plain line every 30 s otherwise."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TextIO

from ..config import format_duration

PROGRESS_EVERY = 30.0  # seconds between plain progress lines (not a terminal)


class Progress:
    """A tqdm bar on a terminal; a plain line every 30 s (and at the end) otherwise. The
    time left is the budget's estimate (``time_left``), not the rate so far: a run that
    sent its first minute's requests in seconds is not about to finish."""

    BAR = "{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} requests [{elapsed}{postfix}]"

    def __init__(self, total: int, done: int, stream: TextIO,
                 time_left: Callable[[int], float] | None = None) -> None:
        self.total = total
        self.done = done
        self.stream = stream
        self.time_left = time_left
        self.bar: Any = None
        self._last_line = time.monotonic()
        if stream.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=done, file=stream, desc="backfill",
                            bar_format=self.BAR, dynamic_ncols=True)
            self.bar.set_postfix_str(self._left(), refresh=True)

    def _left(self) -> str:
        if self.time_left is None or self.done >= self.total:
            return ""
        seconds = self.time_left(self.total - self.done)
        return f"about {format_duration(seconds)} left" if seconds >= 60 else "under a minute left"

    def set_total(self, total: int) -> None:
        """The total once it is known (the pulls' pages, the summaries left)."""
        self.total = max(total, self.done)
        if self.bar is not None:
            self.bar.total = self.total
            self.bar.refresh()

    def waiting(self, until: float) -> None:
        """Say the run waits for the quota (or a 429)."""
        if self.bar is not None:
            clock = time.strftime("%H:%M:%S UTC", time.gmtime(until))
            self.bar.set_postfix_str(f"waiting for quota until {clock}", refresh=True)

    def advance(self) -> None:
        """One more request finished."""
        self.done += 1
        if self.done > self.total:  # a pull had more pages than the estimate said
            self.set_total(self.done)
        if self.bar is not None:
            self.bar.set_postfix_str(self._left(), refresh=False)
            self.bar.update(1)
            return
        now = time.monotonic()
        if now - self._last_line >= PROGRESS_EVERY or self.done == self.total:
            self._last_line = now
            share = self.done / self.total if self.total else 1.0
            left = self._left()
            print(f"backfill: {self.done}/{self.total} requests ({share:.0%})"
                  + (f", {left}" if left else ""), file=self.stream, flush=True)

    def close(self) -> None:
        """Remove the bar."""
        if self.bar is not None:
            self.bar.close()
