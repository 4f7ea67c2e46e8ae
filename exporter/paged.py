"""Every list the API pages: one reader, one schedule, one backoff rule.

A :class:`PagedRead` reads one list page by page (one scheduler job a page) and
uses it whole or not at all: a read whose pages disagree is dropped
(:class:`ListChanged`, an ``invalid_response``; the checks are in docs/lists.md).
A :class:`Schedule` says when a list is read again and keeps the last complete
value through failures, retried by :func:`retry_at`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Hashable, Iterable, Mapping
from typing import Any, Generic, TypeVar

from .client import PAUSE_REASONS, ApiError, ExecClient, InvalidResponse
from .config import format_duration
from .jobs import Job
from .models import Page

log = logging.getLogger(__name__)

PAGE_SIZE = 100  # the API's maximum: fewest requests per list
MAX_PAGES = 1000  # a guard against a pagination that never ends
RETRY_FIRST = 60.0  # the first retry of a failed list read; doubles up to the list's interval
T = TypeVar("T")
R = TypeVar("R")
Fetch = Callable[[ExecClient, dict[str, str]], Page[Any]]
"""``fetch(client, params)``: sends one page's request."""
Report = Callable[[str, float | None, str | None, int], None]
"""``report(kind, at, error, skipped)``: a read of ``kind`` completed at ``at`` or failed
with ``error``, leaving out ``skipped`` malformed items (``store.record_discovery``)."""


def page_query(filters: Mapping[str, str] | None, page: int,
               page_size: int = PAGE_SIZE) -> dict[str, str]:
    """A page's request parameters: ``filters`` plus ``page`` and ``page_size``."""
    return {**(filters or {}), "page": str(page), "page_size": str(page_size)}


class ListChanged(InvalidResponse):
    """The pages of one read disagree: the read is dropped whole."""


def retry_at(error: ApiError, failures: int, now: float, cap: float) -> float:
    """When a list read that has now failed ``failures`` times in a row is tried again:
    60 s, doubling with each failure, at most ``cap``; at once after a workspace-wide
    refusal (429, 401, 403), as the scheduler's pause holds every request until it ends."""
    if error.reason in PAUSE_REASONS:
        return now
    return now + min(RETRY_FIRST * 2 ** (max(failures, 1) - 1), cap)


class PagedRead(Generic[T]):
    """One read of a paged list, page by page: :meth:`query` is the next request's
    parameters, :meth:`take` the answer to it.

    ``parse`` (optional) reads each raw item; an item it refuses with
    :class:`InvalidResponse` is skipped and counted. ``key`` gives an item's identity
    for the duplicate check (None: no check for that item).
    """

    def __init__(self, what: str, key: Callable[[T], Hashable | None] | None = None,
                 parse: Callable[[Any], T] | None = None, page_size: int = PAGE_SIZE) -> None:
        self.what = what
        self.key = key
        self.parse = parse
        self.page_size = page_size
        self.page = 1  # the page asked for next
        self.items: list[T] = []
        self.skipped = 0
        self.total_count: int | None = None
        self.total_pages: int | None = None
        self._keys: set[Hashable] = set()
        self._size: int | None = None  # a full page's length, once known

    def query(self, filters: Mapping[str, str] | None = None) -> dict[str, str]:
        """The parameters of the next page's request: ``filters`` plus the paging."""
        return page_query(filters, self.page, self.page_size)

    def take(self, page: Page[Any], raw: bool = True) -> bool:
        """Add the answer to :meth:`query`; True when the list is complete. ``raw``:
        its items are read with ``parse`` (False: they are items already). Raises
        :class:`ListChanged` when the page disagrees with the pages before it."""
        if page.page != self.page:
            raise self._changed(f"asked for page {self.page}, got page {page.page}")
        if self.page > 1 and (page.total_count, page.total_pages) != (self.total_count,
                                                                      self.total_pages):
            raise self._changed(f"the list changed between pages (total_count "
                                f"{self.total_count} then {page.total_count}, total_pages "
                                f"{self.total_pages} then {page.total_pages})")
        self.total_count, self.total_pages = page.total_count, page.total_pages
        for item in self._parsed(page.items) if raw else page.items:
            key = self.key(item) if self.key is not None else None
            if key is not None:
                if key in self._keys:
                    raise self._changed(f"rows moved between pages ({key!r} listed twice)")
                self._keys.add(key)
            self.items.append(item)
        if self.page < page.total_pages:
            # The envelope's page_size, else the first page's length: an API that caps
            # the size below the one asked for without saying so still reads whole.
            size = page.page_size or self._size or max(len(page.items), 1)
            self._size = size
            if len(page.items) < size:
                raise self._changed(f"page {self.page} of {page.total_pages} has "
                                    f"{len(page.items)} items, not {size}")
            if self.page >= MAX_PAGES:
                raise self._changed(f"more than {MAX_PAGES} pages")
            self.page += 1
            return False
        read = len(self.items) + self.skipped
        if page.total_count is not None and read != page.total_count:
            raise self._changed(f"{read} items in {self.page} pages, total_count "
                                f"{page.total_count}")
        if self.skipped:
            log.warning("%s: %d malformed items skipped", self.what, self.skipped)
        return True

    @property
    def pages(self) -> int:
        """Pages read so far (the last one included once :meth:`take` says complete)."""
        return self.page

    def job(self, kind: str, key: tuple[str, str], label: str, fetch: Fetch,
            filters: Mapping[str, str] | None, apply: Callable[[Page[Any], float], None],
            fail: Callable[[ApiError, float], None]) -> Job:
        """The job that asks for the next page: ``fetch(client, params)`` sends it."""
        params, page = self.query(filters), self.page
        return Job(kind=kind, key=(*key, page), fetch=lambda client, at: fetch(client, params),
                   apply=apply, fail=fail, label=f"{label} page {page}")

    def _parsed(self, raw: tuple[Any, ...]) -> list[T]:
        if self.parse is None:
            return list(raw)
        out = []
        for item in raw:
            try:
                out.append(self.parse(item))
            except InvalidResponse as exc:
                if not self.skipped:
                    log.warning("%s: skipping a malformed item (%s)", self.what, exc)
                self.skipped += 1
        return out

    def _changed(self, why: str) -> ListChanged:
        return ListChanged(f"{self.what}: {why}; the read is dropped", 200)


class Schedule(Generic[R]):
    """When one list is read: at ``next_at`` (-1: at once), again after each complete
    read, and after a failure by :func:`retry_at`. ``run`` is the read under way (None:
    none), ``started`` when it began; ``report`` hears how each read ended."""

    def __init__(self, kind: str, report: Report | None = None,
                 next_at: float = -1.0) -> None:
        self.kind = kind
        self.report = report
        self.next_at = next_at
        self.failures = 0  # in a row
        self.error: str | None = None  # the last read's, until one completes
        self.run: R | None = None
        self.started = 0.0

    def begin(self, now: float, start: Callable[[], R], not_before: float = -1.0) -> R | None:
        """The read under way, or a new one from ``start()`` when one is due."""
        if self.run is None and now >= max(self.next_at, not_before):
            self.run, self.started = start(), now
        return self.run

    def next_due(self) -> float:
        """When the next request is due (-1: a read is under way)."""
        return -1.0 if self.run is not None else self.next_at

    def done(self, now: float, next_at: float, skipped: int = 0) -> None:
        """The read completed at ``now``, leaving out ``skipped`` items; the next is
        due at ``next_at``."""
        self.run, self.failures, self.error, self.next_at = None, 0, None, next_at
        if self.report is not None:
            self.report(self.kind, now, None, skipped)

    def failed(self, error: ApiError, now: float, cap: float, wait: float | None = None,
               keeping: str = "keeping the last values") -> None:
        """The read failed: the next is due by :func:`retry_at` (at most ``cap`` away),
        or ``wait`` from now when given. A workspace-wide refusal is retried when the
        scheduler's pause ends, unlogged and uncounted."""
        self.run, self.error = None, f"{error.reason}: {error}"
        if self.report is not None:
            self.report(self.kind, None, self.error, 0)
        if error.reason in PAUSE_REASONS:
            self.next_at = now
            return
        self.failures += 1
        self.next_at = (now + wait if wait is not None
                        else retry_at(error, self.failures, now, cap))
        log.warning("%s: reading failed (%s); %s, retrying in %s", self.kind, self.error,
                    keeping, format_duration(self.next_at - now))


def first_of_each(items: Iterable[T], slug: Callable[[T], str], what: str,
                  reader: str) -> list[T]:
    """``items`` with one item a slug: the first stays, a repeat is logged (by
    ``reader``: discovery, skills) and left out."""
    out: dict[str, T] = {}
    for item in items:
        if slug(item) in out:
            log.warning("%s: two %s share the slug %r; keeping the first", reader, what,
                        slug(item))
        else:
            out[slug(item)] = item
    return list(out.values())
