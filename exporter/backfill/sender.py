"""Sending a backfill's requests through the budget, and answering them from the journal
first."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, TypeVar

from ..budget import Budget
from ..client import (
    ApiError,
    BadRequest,
    ExecClient,
    Forbidden,
    NotFound,
    Page,
    RateLimited,
    Unauthorized,
)
from ..paged import ListChanged, PagedRead
from .journal import PARTICIPANTS, Journal, Outcome, PageKey, PageOutcome, RequestKey, page_key

log = logging.getLogger(__name__)

TRANSIENT_TRIES = 4  # timeouts, 5xx, invalid bodies: tries per request before giving up
T = TypeVar("T")
K = TypeVar("K")
V = TypeVar("V")


class StopFlag:
    """Set by the SIGINT/SIGTERM handler, polled by the waits.

    A plain attribute rather than a ``threading.Event``: the handler runs on the main
    thread between two bytecodes, possibly while that thread holds the Event's
    internal lock inside ``wait()``, and ``Event.set()`` there would deadlock.
    """

    POLL = 0.2  # how soon a wait notices a stop

    def __init__(self) -> None:
        self.stopped = False

    def set(self) -> None:
        """Ask every wait to end (safe inside a signal handler)."""
        self.stopped = True

    def is_set(self) -> bool:
        """Whether a stop was asked for."""
        return self.stopped

    def wait(self, seconds: float) -> bool:
        """Sleep up to ``seconds``; True as soon as a stop is asked for."""
        deadline = time.monotonic() + seconds
        while not self.stopped:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            time.sleep(min(left, self.POLL))
        return True


class Stopped(Exception):
    """SIGINT or SIGTERM arrived: stop cleanly, keep the journal."""


class WorkspaceError(Exception):
    """401 or 403: no request can succeed; stop."""


class Unreadable(Exception):
    """A list not read whole: a page refused or failing, or the pages disagree."""


class Sender:
    """Sends requests one at a time through the :class:`~exporter.budget.Budget`.

    Pacing is the budget's: every request is claimed in its ledger before it is sent,
    retries included. With ``--state.file`` that ledger is the workspace's
    (:mod:`exporter.ledger`), so a daemon beside the backfill leaves less room for it
    and sees its requests, re-read at least every few seconds while waiting. A 429
    holds every request for ``retry_after``.
    """

    WAKE = 5.0  # the longest sleep: the stop flag and the shared ledger are rechecked

    def __init__(self, client: ExecClient, budget: Budget,
                 now: Callable[[], float] = time.time,
                 sleep: Callable[[float], bool] | None = None,
                 on_wait: Callable[[float], None] | None = None,
                 on_send: Callable[[float], None] | None = None,
                 own: Iterable[float] = ()) -> None:
        self.client = client
        self.budget = budget
        self.now = now
        self.stop = StopFlag()
        self.sleep = sleep or self.stop.wait
        self.on_wait = on_wait
        self.on_send = on_send
        self.sent_count = 0
        self.rate_limited = 0
        self._hold_until = 0.0
        self._claimed = 0.0
        # This run's requests (and a stopped run's, from the journal): the rest of the
        # ledger is other processes'.
        self._own: set[float] = {round(t, 3) for t in own}
        # What to leave free, per (minute, day), once another process is seen spending
        # the quota (a daemon on the same state file): see :meth:`share_with`.
        self._share = (0, 0)
        self.leave = (0, 0)

    def share_with(self, minute: int, day: int) -> None:
        """Leave ``minute`` and ``day`` requests of every window to other processes on
        the shared ledger (at most half of each, so the backfill always progresses),
        from the first request of theirs seen within the day: a daemon beside the
        backfill keeps what its polling needs. Alone, the backfill uses the whole
        budget."""
        self._share = (max(0, min(minute, self.budget.minute_limit // 2)),
                       max(0, min(day, self.budget.day_limit // 2)))

    def sharing(self, now: float) -> tuple[int, int]:
        """What this run leaves free per (minute, day): the share set by
        :meth:`share_with` once another process's request is in the ledger, else none."""
        if self.leave != self._share and any(round(t, 3) not in self._own
                                             for t in self.budget.ledger(now)):
            self.leave = self._share
            log.info("another process spends this workspace's quota: leaving it %d "
                     "requests a minute and %d a day", *self.leave)
        return self.leave

    def hold(self, seconds: float) -> None:
        """Send nothing for ``seconds`` (a 429's ``retry_after``, a transient backoff)."""
        self._hold_until = max(self._hold_until, self.now() + seconds)

    def acquire(self) -> None:
        """Wait until the budget (and any hold) lets one request go, and count it."""
        self._wait_for_slot()
        self.count_send()

    def _wait_for_slot(self) -> None:
        while True:
            if self.stop.is_set():
                raise Stopped
            now = self.now()
            leave = self.sharing(now)
            at = max(self.budget.next_allowed(now, leave=leave), self._hold_until)
            if at <= now:
                if self.budget.claim(now, leave=leave):
                    self._claimed = now
                    self._own.add(round(now, 3))
                    return
                continue  # another process took the slot: the ledger says until when
            if self.on_wait is not None:
                self.on_wait(at)
            if self.sleep(min(at - now, self.WAKE)):
                raise Stopped

    def count_send(self) -> None:
        """The request just claimed is about to be sent: count it (and journal it)."""
        self.sent_count += 1
        if self.on_send is not None:
            self.on_send(self._claimed)

    def fetch(self, key: RequestKey) -> Outcome | None:
        """The outcome of one request; None when it kept failing (try again next run)."""
        scenario, params = key
        sent = self._send(lambda: self.client.summary(scenario, dict(params)),
                          f"{scenario} {dict(params).get('end_date')}", "no value for this point")
        return None if sent is None else Outcome(*sent)

    def fetch_page(self, key: PageKey) -> PageOutcome | None:
        """The outcome of one list page request (a participants page or a member list
        page); None when it kept failing."""
        kind, subject, params = key
        query = dict(params)
        pull = kind == PARTICIPANTS
        what = (f"participants of {subject} {query.get('end_date')}" if pull
                else f"members of group {subject}")
        sent = self._send(lambda: (self.client.participants(subject, query) if pull
                                   else self.client.members(query)),
                          f"{what} page {query['page']}", "its cohorts use summary requests")
        return None if sent is None else PageOutcome(*sent)

    def _send(self, call: Callable[[], Any], what: str,
              refused: str) -> tuple[Any, str | None] | None:
        """(answer, None), or (None, reason) when the API refused it for good; None
        when it kept failing."""
        failures = 0
        while True:
            self.acquire()
            try:
                return call(), None
            except RateLimited as exc:
                # Not a failure of this request: every request waits, then it goes again.
                self.rate_limited += 1
                self.hold(exc.retry_after)
                log.warning("rate limited by the API; every request waits %.0fs", exc.retry_after)
            except (Unauthorized, Forbidden) as exc:
                raise WorkspaceError(f"{exc.reason}: {exc}") from None
            except (NotFound, BadRequest) as exc:
                # A scenario missing, or a query the API refuses, stays so.
                log.warning("%s: %s; %s", what, exc, refused)
                return None, exc.reason
            except ApiError as exc:
                failures += 1
                log.warning("%s: %s (try %d of %d)", what, exc, failures, TRANSIENT_TRIES)
                if failures >= TRANSIENT_TRIES:
                    return None
                self.hold(min(2.0 ** failures, 30.0))


# --- answering requests: the journal first, then the API ----------------------------


class Fetcher:
    """Answers each request from the journal when a run already finished it, else sends it
    through the :class:`Sender` and journals the answer at once. So every finished
    request, summary or list page, is sent once over any number of reruns, and the
    choices made from the answers come out the same on a rerun."""

    def __init__(self, sender: Sender, journal: Journal, done: dict[RequestKey, Outcome],
                 pages: dict[PageKey, PageOutcome],
                 on_sent: Callable[[], None] | None = None) -> None:
        self.sender = sender
        self.journal = journal
        self.done = done
        self.pages = pages
        self.on_sent = on_sent

    def summary(self, key: RequestKey) -> Outcome | None:
        """The outcome of a summary request; None when it kept failing this run."""
        return self._answer(key, self.done, self.sender.fetch, self.journal.add)

    def page(self, key: PageKey) -> PageOutcome | None:
        """The outcome of a list page request; None when it kept failing this run."""
        return self._answer(key, self.pages, self.sender.fetch_page, self.journal.add_page)

    def _answer(self, key: K, known: dict[K, V], fetch: Callable[[K], V | None],
                record: Callable[[K, V], None]) -> V | None:
        if key in known:
            return known[key]
        outcome = fetch(key)
        if outcome is not None:
            record(key, outcome)
            known[key] = outcome
            if self.on_sent is not None:
                self.on_sent()
        return outcome

    def read_list(self, kind: str, subject: str, filters: Mapping[str, str],
                  read: PagedRead[T]) -> Iterator[Page[T]]:
        """Every page of one list (a participants pull, a member list), read into
        ``read``, the daemon's :class:`~exporter.paged.PagedRead` and its checks.

        Each page is yielded before ``read`` takes it, so the caller may stop after
        any page (the first says how many there are) and no further page is asked
        for. Each comes from the journal or is sent and journaled (:meth:`page`): a
        rerun replays the same pages to the same verdict. Raises :class:`Unreadable`.
        """
        while True:
            outcome = self.page(page_key(kind, subject, read.query(filters)))
            if outcome is None or outcome.page is None:
                raise Unreadable(outcome.error if outcome is not None else "kept failing")
            yield outcome.page
            try:
                if read.take(outcome.page, raw=False):
                    return
            except ListChanged as exc:
                raise Unreadable(str(exc)) from None
