"""``exec-exporter backfill``: the flags, the checks before anything is sent, and the run."""

from __future__ import annotations

import argparse
import functools
import logging
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

from .. import logs
from ..budget import open_budget
from ..client import PERSISTENT_REASONS, ExecClient
from ..config import Config, ConfigError, load_api_key, load_config
from ..discovery import Discovery, Lists
from ..state import SavedState, StateFile, write_atomically
from ..targets import Target, select_targets
from .derive import Derivation
from .journal import JOURNAL_VERSION, SUMMARY, Journal, Outcome, RequestKey, fingerprint
from .openmetrics import render
from .plan import describe, estimate_seconds, make_plan, plan_pulls
from .progress import Progress
from .sender import TRANSIENT_TRIES, Sender, Stopped, WorkspaceError
from .window import HEAD_RANGE, UsageError, Window, iso, parse_window

log = logging.getLogger(__name__)


def discover_targets(config: Config, sender: Sender, lists: Lists | None) -> tuple[
        list[Target], int]:
    """The targets as the daemon polls them (the state file's lists, else read by
    discovery's jobs) and the listing requests sent; a listing that fails
    :data:`TRANSIENT_TRIES` times, or is refused for good, stops the run."""
    settings = config.discovery
    sent = sender.sent_count
    if settings is not None and (settings.scenarios is not None
                                 or settings.group_cohorts is not None):
        discovery = Discovery(settings, lists)

        def settled() -> bool:
            if discovery.failures >= TRANSIENT_TRIES or sender.last_failure in PERSISTENT_REASONS:
                raise WorkspaceError("discovery: " + "; ".join(
                    f"reading {kind} failed: {error}" for kind, error in discovery.errors.items()))
            return not discovery.errors and discovery.next_due() > sender.now()

        sender.drive(settled, discovery)
        lists = discovery.lists
    targets, _dropped = select_targets(config, lists)  # it logs what max_targets drops
    return targets, sender.sent_count - sent


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The backfill flags (``exec-exporter backfill ...``)."""
    group = parser.add_argument_group("backfill (exec-exporter backfill ...)")
    group.add_argument("--since", help="how far back to start, a duration such as 30d")
    group.add_argument("--until",
                       help="the last instant: ISO 8601, unix seconds or 'now' (default: the "
                            "latest UTC midnight, or hour for steps of hours, 3h ago or more)")
    group.add_argument("--step", default="1d",
                       help="one point per target every STEP, at least 1h (default: %(default)s)")
    group.add_argument("--label", dest="labels", action="append", metavar="NAME=VALUE",
                       help="a label for every backfilled sample, repeatable: the target labels "
                            "Prometheus adds to the live series (job, instance, ...)")
    group.add_argument("--output",
                       help="the OpenMetrics file to write (its journal: OUTPUT.journal)")


_LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
# Labels the exporter itself sets on some exec_scenario_* family.
OWN_LABELS = frozenset({"scenario", "cohort", "rank", "name", "id"})


def parse_labels(items: Sequence[str] | None) -> dict[str, str]:
    """``--label=NAME=VALUE`` flags into a mapping; raise UsageError on a bad one."""
    labels: dict[str, str] = {}
    for item in items or []:
        name, sep, value = item.partition("=")
        if not sep:
            raise UsageError(f"--label: {item!r} is not NAME=VALUE "
                             "(e.g. --label=job=exec-exporter)")
        if not _LABEL_NAME.match(name) or name.startswith("__"):
            raise UsageError(f"--label: {name!r} is not a valid label name")
        if name in OWN_LABELS:
            raise UsageError(f"--label: {name!r} is set by the exporter itself")
        if name in labels:
            raise UsageError(f"--label: {name!r} is given twice")
        labels[name] = value
    return labels


def main(args: argparse.Namespace, now: Callable[[], float] = time.time,
         out: TextIO | None = None, err: TextIO | None = None,
         sleep: Callable[[float], bool] | None = None) -> int:
    """Run ``exec-exporter backfill``: 0 done (or stopped cleanly), 2 bad input, 1 failure.
    ``now`` and ``sleep`` (seconds -> whether a stop was asked) are the clock."""
    out, err = out or sys.stdout, err or sys.stderr
    say = functools.partial(print, file=out, flush=True)
    try:
        config, key, window, output, journal, header, done, own, labels = _prepare(args, now())
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"error: {problem}", file=err)
        return 2
    except UsageError as exc:
        print(f"error: {exc}", file=err)
        return 2
    client = ExecClient(config.api.base_url, key, config.api.timeout)
    rate = config.api.rate_limit
    saved = StateFile(args.state_file).load(now()) if args.state_file else None
    budget = open_budget(rate.minute_budget, rate.day_budget, args.state_file,
                         saved.ledger if saved else own, now())
    daemon_spent = None
    if saved is not None:  # the others' requests: the ledger less this run's journal
        mine = {round(t, 3) for t in own}
        daemon_spent = sum(1 for t in budget.ledger(now()) if round(t, 3) not in mine)
        budget.merge(own, now())  # a stopped run's requests sent without this state file
    sender = Sender(client, budget, now=now, sleep=sleep, own=own)
    # The journal opens before any request (discovery included), so every send is in it.
    journal.start(header, fresh=not journal.path.exists())
    sender.journal, sender.done = journal, done
    handlers: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        handlers = {sig: signal.signal(sig, lambda signum, frame: sender.stop.set())
                    for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        try:
            targets, listing = discover_targets(config, sender, saved.lists if saved else None)
        except Stopped:
            print("stopped before the plan was made; nothing to resume", file=err)
            return 0
        except WorkspaceError as exc:
            print(f"error: {exc}", file=err)
            return 1
        if saved is not None:  # a daemon on this state file polls these targets
            sender.share_with(len(targets), config.refresh_interval)
        plan = make_plan(targets, window)
        groups = (plan_pulls(plan, done, _member_counts(saved))
                  if config.planner.mode == "auto" else None)
        wanted = set(plan.requests)
        summaries = sum(1 for k in done if k in wanted)
        if groups is None:
            total, finished = len(plan.requests), summaries
        else:  # an estimate until the pulls say how many pages they have
            total = sum(g.cost for g in groups)
            finished = min(total, summaries + sum(1 for k in done if k[0] != SUMMARY))
        say(describe(plan, total - finished, budget, now(), listing, daemon_spent, groups,
                     sender.sharing(now())))
        say("labels on every sample: " + ", ".join(f"{k}={v!r}" for k, v in labels.items())
            if labels else "note: no --label: the series will lack the job/instance labels "
            "Prometheus adds when scraping (see docs/backfill.md)")
        progress = Progress(total, finished, err,
                            lambda n: estimate_seconds(n, budget, now(), sender.leave))
        sender.on_wait, sender.on_answer = progress.waiting, progress.advance
        derivation = Derivation(groups or [], sender, config.planner.tolerance)
        try:
            try:
                derivation.run()
                for note in derivation.notes:
                    say(f"planner: {note}")
                derived = derivation.values
                needed = list(dict.fromkeys(p.request for p in plan.points
                                            if (p.target.key, p.instant) not in derived))
                progress.set_total(progress.done + sum(1 for k in needed if k not in done))
                failed = sum(1 for request in needed if sender.fetch(request) is None)
            finally:
                progress.close()
        except Stopped:
            kept = sum(1 for k in done if k in wanted or k[0] != SUMMARY)
            print(f"stopped: {kept} requests done and kept in {journal.path}; run the same "
                  "command again to resume", file=err)
            return 0
        except OSError as exc:
            print(f"error: cannot write the journal {journal.path} ({exc}); the requests "
                  "written before are kept in it", file=err)
            return 1
        except WorkspaceError as exc:
            print(f"error: the API refused the key or the workspace ({exc}); finished "
                  f"requests are kept in {journal.path}", file=err)
            return 1
    finally:
        journal.close()
        client.close()
        budget.close()
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    if failed:
        print(f"error: {failed} requests kept failing (see the log); {output} not written. "
              "Run the same command again to retry them", file=err)
        return 1
    data = render(plan, done, labels, derived)
    write_atomically(output, data)  # private, as the state file; promtool may be another
    umask = os.umask(0)  # user: the file gets the mode a plain write would give it
    os.umask(umask)
    output.chmod(0o666 & ~umask)
    samples = sum(1 for line in data.splitlines() if line and not line.startswith(b"#"))
    refused = sum(1 for k in needed if done[k].error)
    print(f"wrote {output}: {samples} samples from {iso(window.until - window.since)} to "
          f"{iso(window.until)}; {sender.sent_count} requests sent this run"
          + (f"; {refused} requests refused by the API (no value for those points)"
             if refused else ""), file=out)
    if derived:
        print(f"derived: {len(derived)} points of {len(derivation.proven)} cohorts from "
              f"{derivation.pulls} participants pulls (each cohort proven against its "
              "summary at the newest instant)", file=out)
    print(f"next: promtool tsdb create-blocks-from openmetrics {output} DATA_DIR "
          "(then move the blocks into Prometheus's data directory; see docs/backfill.md)",
          file=out)
    return 0


def _prepare(args: argparse.Namespace, now: float) -> tuple[
        Config, str, Window, Path, Journal, dict[str, Any], dict[RequestKey, Outcome[Any]],
        list[float], dict[str, str]]:
    """Every check that must pass before a request is sent; raise UsageError/ConfigError."""
    if not args.output:
        raise UsageError("--output: required (the OpenMetrics file to write)")
    output = Path(args.output)
    if output.is_dir():
        raise UsageError(f"--output: {output} is a directory")
    if not output.parent.is_dir():
        raise UsageError(f"--output: directory {str(output.parent)!r} does not exist")
    labels = parse_labels(args.labels)
    config = load_config(args.config_file)
    key, warnings = load_api_key(config)
    for warning in warnings:
        log.warning("%s", warning)
    if key is None:
        raise ConfigError(["no API key: set the EXEC_API_KEY environment variable or "
                           "api.api_key_file in the configuration"])
    logs.add_secret(key.value)
    journal = Journal(output.with_name(output.name + ".journal"))
    previous, done, own = journal.read()
    # Check the flags first (their errors say more), then whether a previous run is resumed.
    window = parse_window(args.since, args.until, args.step, now)
    resumed = None
    base = fingerprint(config, Window(window.since, 0, window.step))  # without --until
    if (args.until is None and previous is not None and previous.get("base") == base
            and isinstance(previous.get("until"), int)):
        resumed = previous["until"]
        window = Window(window.since, resumed, window.step)
    header = {"kind": "exec-exporter-backfill", "version": JOURNAL_VERSION,
              "fingerprint": fingerprint(config, window), "base": base,
              "since": window.since, "until": window.until, "step": window.step}
    if previous is not None and previous.get("fingerprint") != header["fingerprint"]:
        raise UsageError(f"--output: {output} (journal {journal.path.name}) is from another "
                         "configuration or time range; remove both or choose another --output")
    if previous is None and output.exists():
        raise UsageError(f"--output: {output} exists and was not written by this backfill "
                         "(no matching journal); remove it or choose another --output")
    if resumed is not None:
        log.info("resuming the run up to %s (pass --until for another range)", iso(resumed))
    if window.until > now - HEAD_RANGE:
        log.warning("--until is within the last 3 hours: Prometheus's head block may "
                    "already hold that range; see docs/backfill.md")
    return config, key.value, window, output, journal, header, done, own, labels


def _member_counts(saved: SavedState | None) -> dict[str, int]:
    """Members per group in the daemon's saved lists: a member list costs its real pages."""
    members = (saved.planner.get("members") if saved is not None else None) or {}
    return {g: len(m["user_ids"]) for g, m in members.items()
            if isinstance(m, dict) and isinstance(m.get("user_ids"), list)}
