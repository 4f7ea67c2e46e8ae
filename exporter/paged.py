"""Every list the API pages, read one page per job and checked as a whole.

Scenarios, workspace groups, member lists, skills, assignments and participants
come as ``{"data": [...], "pagination": {page, page_size, total_count,
total_pages}}``. Each page is one job of the scheduler (:mod:`exporter.jobs`);
a :class:`PagedRead` is the one place that knows the pagination: which page
to ask for next, when the list is complete, and whether its pages agree.

A read is used whole or not at all. It is dropped (:class:`ListChanged`,
an ``invalid_response``) when

* ``total_count`` or ``total_pages`` changes between two pages,
* a page other than the last is short (fewer items than the page size),
* an item (by its key) appears twice,
* the items read differ from ``total_count`` at the end, or
* the answer is another page than the one asked for, or the list runs past
  :data:`MAX_PAGES`;

whoever reads the list keeps its last complete value and retries by
:func:`retry_at`, the one backoff rule of list reads. A malformed item of a
lenient list (one read with ``parse``) is skipped and counted
(``skipped``), and the rest is used; lists whose every item matters (member
lists, participants: a missing user is a wrong cohort) are parsed strictly
by the client instead, and a bad item fails the page.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Hashable, Mapping
from typing import Any, Generic, TypeVar

from .client import PAUSE_REASONS, ApiError, InvalidResponse
from .models import Page

log = logging.getLogger(__name__)

PAGE_SIZE = 100  # the API's maximum: fewest requests per list
MAX_PAGES = 1000  # a guard against a pagination that never ends
RETRY_FIRST = 60.0  # the first retry of a failed list read; doubles up to the list's interval
T = TypeVar("T")


def page_query(filters: Mapping[str, str] | None, page: int,
               page_size: int = PAGE_SIZE) -> dict[str, str]:
    """A page's request parameters: ``filters`` plus ``page`` and ``page_size``."""
    return {**(filters or {}), "page": str(page), "page_size": str(page_size)}


class ListChanged(InvalidResponse):
    """The pages of one read disagree: the read is dropped whole."""


def retry_at(error: ApiError, failures: int, now: float, cap: float) -> float:
    """When a list read that has now failed ``failures`` times in a row is tried again.

    A workspace-wide refusal (429, 401, 403) is retried at once: the scheduler's pause
    holds every request until it is over. Anything else waits 60 s, doubling with each
    failure in a row, at most ``cap`` (the list's interval).
    """
    if error.reason in PAUSE_REASONS:
        return now
    return now + min(RETRY_FIRST * 2 ** (max(failures, 1) - 1), cap)


class PagedRead(Generic[T]):
    """One read of a paged list, page by page.

    ``parse`` (optional) reads each raw item; an item it refuses with
    :class:`InvalidResponse` is skipped and counted. ``key`` gives an item's identity
    for the duplicate check (None: no check for that item). :meth:`query` is the next
    request's parameters, :meth:`take` the answer to it.
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
        its items are read with ``parse`` (False: they are items already).

        Raises :class:`ListChanged` when the page disagrees with the pages before it
        or, on the last page, with ``total_count``: the read is then of no use.
        """
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
