"""The shared quota ledger (``<state file>.ledger``): several writers, one lock, pruning,
torn lines, and the migration of the ledger an earlier version kept in the state file."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from exporter.budget import DAY, GRACE, MINUTE, Budget, open_budget
from exporter.ledger import COMPACT_SLACK, LedgerFile, ledger_path
from exporter.state import StateFile

NOW = 1_790_000_000.0


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


def test_two_writers_see_each_other_and_share_the_minute(tmp_path: Path) -> None:
    path = tmp_path / "state.json.ledger"
    daemon = Budget(5, 100, shared=LedgerFile(path))
    backfill = Budget(5, 100, shared=LedgerFile(path))
    assert daemon.claim(NOW) and daemon.claim(NOW + 1)
    assert backfill.remaining(NOW + 2) == (3, 98)  # the daemon's two, read from the file
    assert backfill.claim(NOW + 2) and backfill.claim(NOW + 3) and backfill.claim(NOW + 4)
    assert daemon.remaining(NOW + 5) == (0, 95)
    assert not daemon.claim(NOW + 5) and not backfill.claim(NOW + 5)  # the minute is full
    # Both agree when the next slot opens: when the daemon's first request leaves it.
    assert daemon.next_allowed(NOW + 5) == backfill.next_allowed(NOW + 5) == (
        NOW + MINUTE + GRACE)
    assert len(lines(path)) == 5


def test_a_restart_reads_the_ledger_back(tmp_path: Path) -> None:
    path = tmp_path / "l"
    first = Budget(60, 100, shared=LedgerFile(path))
    for i in range(7):
        first.claim(NOW + i)
    again = Budget(60, 100, shared=LedgerFile(path))
    assert again.ledger(NOW + 10) == [NOW + i for i in range(7)]


def test_the_last_slot_goes_to_one_process_only(tmp_path: Path) -> None:
    """Four processes claim 40 requests each at the same instant against a budget of 50:
    exactly 50 are granted and written (the check and the append share the lock)."""
    path, go = tmp_path / "l", tmp_path / "go"
    script = textwrap.dedent(f"""
        import os
        from exporter.budget import Budget
        from exporter.ledger import LedgerFile
        budget = Budget(50, 1000, shared=LedgerFile({str(path)!r}))
        for _ in range(2_000_000):  # all start together: the claims overlap
            if os.path.exists({str(go)!r}):
                break
        print(sum(budget.claim({NOW}) for _ in range(40)))
    """)
    procs = [subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                              text=True) for _ in range(4)]
    time.sleep(0.5)  # not a timing assertion: only lets the four reach their start line
    go.touch()
    granted = [int(p.communicate(timeout=60)[0]) for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert sum(granted) == 50, granted
    assert len(lines(path)) == 50


def test_a_held_lock_makes_a_claim_wait(tmp_path: Path) -> None:
    path = tmp_path / "l"
    holder = LedgerFile(path)
    budget = Budget(5, 100, shared=LedgerFile(path))
    done = threading.Event()
    claimed: list[bool] = []

    def claim() -> None:
        claimed.append(budget.claim(NOW))
        done.set()

    with holder.locked():
        worker = threading.Thread(target=claim)
        worker.start()
        assert not done.wait(0.3)  # blocked on the lock
        holder.read_new()
        holder.append([NOW - 1, NOW - 2, NOW - 3, NOW - 4, NOW - 5])  # fills the minute
    worker.join(5)
    assert claimed == [False]  # it read the holder's entries before deciding


def test_entries_older_than_a_day_are_dropped_and_the_file_pruned(tmp_path: Path) -> None:
    path = tmp_path / "l"
    old = [NOW - DAY - 10 - i for i in range(COMPACT_SLACK + 50)]
    path.write_text("".join(f"{t:.3f}\n" for t in sorted(old)))
    budget = Budget(60, 1000, shared=LedgerFile(path))
    other = Budget(60, 1000, shared=LedgerFile(path))  # holds the file before it is rewritten
    assert budget.remaining(NOW) == (60, 1000)
    assert budget.claim(NOW)
    assert lines(path) == [f"{NOW:.3f}"]  # rewritten: only what is within the day
    assert other.ledger(NOW) == [NOW]  # a writer of the old file reads the new one whole
    assert other.claim(NOW + 1)
    assert budget.ledger(NOW + 2) == [NOW, NOW + 1]
    assert lines(path) == [f"{NOW:.3f}", f"{NOW + 1:.3f}"]


def test_a_torn_or_corrupt_line_is_skipped(tmp_path: Path) -> None:
    path = tmp_path / "l"
    # A foreign line, a garbled one, and a last line cut mid-write by a killed writer
    # (its first digits: a time long past, never counted).
    path.write_bytes(f"{NOW - 5:.3f}\nnot a time\n\x00\x01\n{NOW - 4:.3f}\n17899".encode())
    budget = Budget(60, 100, shared=LedgerFile(path))
    assert budget.ledger(NOW) == [NOW - 5, NOW - 4]
    assert budget.claim(NOW)
    # The new entry starts its own line: the torn one stays a single skipped line.
    assert lines(path)[-1] == f"{NOW:.3f}"
    assert Budget(60, 100, shared=LedgerFile(path)).ledger(NOW) == [NOW - 5, NOW - 4, NOW]


def test_a_line_being_written_is_read_once_complete(tmp_path: Path) -> None:
    path = tmp_path / "l"
    reader = LedgerFile(path)
    with path.open("a") as handle:
        handle.write(f"{NOW:.3f}")
        handle.flush()
        assert reader.read_new() == (True, [])
        handle.write(f"\n{NOW + 1:.3f}\n")
    assert reader.read_new() == (True, [NOW, NOW + 1])  # the first lines: the whole file
    with path.open("a") as handle:
        handle.write(f"{NOW + 2:.3f}\n")
    assert reader.read_new() == (False, [NOW + 2])  # then only what is new


def test_an_unusable_ledger_is_a_warning_and_the_budget_still_counts(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    budget = Budget(2, 100, shared=LedgerFile(tmp_path / "missing" / "l"))
    assert budget.claim(NOW) and budget.claim(NOW + 1) and not budget.claim(NOW + 2)
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "quota ledger" in warnings[0]


def test_an_older_state_files_ledger_is_moved_once(tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    legacy = [NOW - 600, NOW - 60, NOW - DAY - 100]  # the last one is past the day
    state.write_text(json.dumps({"version": 1, "saved_at": NOW, "targets": [],
                                 "ledger": legacy}))
    for _ in range(2):  # a restart before the state file is rewritten moves nothing twice
        saved = StateFile(state).load(NOW)
        budget = open_budget(60, 100, state, saved.ledger, NOW)
        assert budget.ledger(NOW) == [NOW - 600, NOW - 60]
    assert lines(ledger_path(state)) == [f"{NOW - 600:.3f}", f"{NOW - 60:.3f}"]


def test_the_daemon_sends_nothing_when_another_process_took_the_slot_since_it_decided(
        tmp_path: Path) -> None:
    from exporter.jobs import Job
    from exporter.scheduler import Scheduler

    path = tmp_path / "l"
    scheduler = Scheduler(Budget(3, 100, shared=LedgerFile(path)), refresh_interval=600.0)
    scheduler.set_jobs([Job(kind="summary", key="t", fetch=lambda c, n: None,
                            apply=lambda a, t: None)])
    decision = scheduler.decide(NOW)
    assert decision.key == "t"
    backfill = Budget(3, 100, shared=LedgerFile(path))
    assert all(backfill.claim(NOW) for _ in range(3))  # between the decision and the send
    assert scheduler.sent("t", NOW) is False  # the request must not go out
    assert scheduler.times("t").last_attempt is None
    assert scheduler.decide(NOW).wake_at == NOW + MINUTE + GRACE


def test_a_removed_ledger_is_noticed_and_written_again(tmp_path: Path) -> None:
    """Replacement and removal are both seen through the descriptor held (its inode
    has no name left): a claim after someone removed the file writes a new one."""
    path = tmp_path / "l"
    budget = Budget(60, 100, shared=LedgerFile(path))
    assert budget.claim(NOW)
    path.unlink()
    assert budget.claim(NOW + 1)
    assert path.exists() and lines(path)[-1] == f"{NOW + 1:.3f}"
    other = Budget(60, 100, shared=LedgerFile(path))
    assert NOW + 1 in other.ledger(NOW + 2)
