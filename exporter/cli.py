"""Command line and wiring: config -> client -> poller -> store -> collector -> server.

Exit codes: 0 clean stop, 2 bad usage or configuration, 1 anything else.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import TextIO

from prometheus_client.registry import CollectorRegistry

from . import __version__, backfill, logs
from .budget import Budget
from .client import ExecClient
from .collector import LiveCollector, ProcessMetrics, SnapshotCollector
from .config import (
    ApiKey,
    Config,
    ConfigError,
    format_duration,
    load_api_key,
    load_config,
    parse_config,
)
from .discovery import Discovery, Lists
from .exposition import Exposition
from .jobs import Job, Running, key_id, summary_job
from .listings import DAY_SHARE, Assignments, ListingsCollector, Skills
from .planner import Planner, offline_plan
from .scheduler import (
    Clock,
    Poller,
    Scheduler,
    ScheduleView,
    SystemClock,
    effective_interval,
)
from .server import Web, listen_failure, parse_listen_address, serve
from .state import SavedState, StateFile
from .store import Key, Store, TargetState
from .targets import Target, build_targets, select_targets
from .webconfig import WebConfig, load_web_config

log = logging.getLogger("exporter")

DEFAULT_PORT = 10025
SHUTDOWN_GRACE = 6.0  # in-flight request allowance on SIGTERM; the whole stop stays under 10 s


def build_parser() -> argparse.ArgumentParser:
    """The command line, Prometheus-style dotted flags."""
    parser = argparse.ArgumentParser(
        prog="exec-exporter",
        description="Prometheus exporter for Exec scenario analytics. "
                    "Run 'exec-exporter demo' to try it without an account.",
        epilog="The API key comes from the file named by api.api_key_file in the "
               "configuration, else from the EXEC_API_KEY environment variable (never a "
               "flag, so it stays out of process listings). The demo needs no key. "
               "SIGHUP or POST /-/reload rereads the configuration; SIGTERM stops cleanly.")
    parser.add_argument("mode", nargs="?", choices=["demo", "backfill"],
                        help="'demo': run against a simulated Exec API inside the process; "
                             "'backfill': write past values for promtool (docs/backfill.md)")
    parser.add_argument("--config.file", dest="config_file", default="config.yaml",
                        help="configuration file (default: %(default)s)")
    parser.add_argument("--config.check", dest="config_check", action="store_true",
                        help="validate the configuration, print the polling plan and exit")
    parser.add_argument("--web.listen-address", dest="listen", default=f":{DEFAULT_PORT}",
                        help="address to listen on, [HOST]:PORT (default: %(default)s)")
    parser.add_argument("--web.telemetry-path", dest="telemetry_path", default="/metrics",
                        help="path of the metrics endpoint (default: %(default)s)")
    parser.add_argument("--web.config.file", dest="web_config", default=None,
                        help="exporter-toolkit web configuration (TLS, basic auth, headers)")
    parser.add_argument("--state.file", dest="state_file", default=None,
                        help="where to keep data and the quota ledger across restarts")
    parser.add_argument("--log.level", dest="log_level", default="info",
                        choices=["debug", "info", "warn", "error"])
    parser.add_argument("--log.format", dest="log_format", default="logfmt",
                        choices=["logfmt", "json"])
    parser.add_argument("--version", action="version",
                        version=f"exec-exporter {__version__} (python {sys.version.split()[0]})")
    backfill.add_arguments(parser)
    return parser


# --- the plan ---------------------------------------------------------------------


def describe_plan(config: Config, key: ApiKey | None) -> str:
    """The polling plan that ``--config.check`` prints."""
    targets = build_targets(config)
    rate = config.api.rate_limit
    lines = []
    if config.discovery is not None and config.discovery.scenarios is not None:
        lines.append("discovery: on; the workspace's scenario list decides the targets at run "
                     "time (the counts below are the explicit targets only)")
    if config.discovery is not None and config.discovery.group_cohorts is not None:
        lines.append("discovery: one cohort per workspace group is added at run time")
    if (config.discovery is not None and config.discovery.scenarios is not None
            and config.discovery.scenarios.cohorts is not None):
        lines.append("discovery: discovered scenarios get the cohorts "
                     f"{', '.join(config.discovery.scenarios.cohorts)} (patterns are matched "
                     "against the group cohorts too, at run time)")
    # Offline, page counts are unknown: one page per list, the least discovery costs.
    listing = (Discovery(config.discovery).requests_per_day()
               if config.discovery is not None else 0.0)
    lines.append(f"targets: {len(targets)}")
    cohorts: dict[str, list[str]] = {}
    for target in targets:
        cohorts.setdefault(target.scenario, []).append(target.cohort.name)
    for scenario in config.scenarios:
        label = f" ({scenario.name})" if scenario.name else ""
        lines.append(f"  {scenario.id}{label}: {', '.join(cohorts[scenario.id])}")
    wanted = len(targets) * 86400 / config.refresh_interval
    wanted_at = format_duration(config.refresh_interval)
    lines.append(f"requests/day needed at refresh_interval {wanted_at}: {wanted:.0f}")
    day_budget = rate.day_budget - listing
    lines.append(f"daily budget: {rate.day_budget} requests ({rate.requests_per_day}/day less "
                 f"{rate.reserve:.0%} reserve); minute budget: {rate.minute_budget}")
    if listing:
        lines.append(f"discovery listings: about {listing:.0f} requests/day "
                     f"(at least one page per list every "
                     f"{format_duration(config.discovery.interval if config.discovery else 0)})")
    for line, cost in _listing_plan(config, targets):
        lines.append(line)
        day_budget -= cost
    if day_budget != rate.day_budget:
        lines.append(f"left for the targets: about {max(day_budget, 1):.0f} requests/day "
                     "(listings are paid for first)")
    plan = offline_plan(targets, config.planner)
    planner = config.planner
    cost = len(targets)
    if planner.mode == "auto":
        lines.append("planner: auto (each scenario and date range uses one participants pull "
                     "when that is cheaper than a summary per cohort; offline, a pull is "
                     "assumed to be one page: 100 participants)")
        for group in plan.groups:
            lines.append(f"  {group.scenario} ({group.describe_dates()}): "
                         f"{len(group.cohorts)} cohort{'s' if len(group.cohorts) > 1 else ''}"
                         f"; summary {group.summary_cost} "
                         f"requests/cycle, participants {group.participants_cost} "
                         f"({group.pages} page{'s' if group.pages > 1 else ''} + "
                         f"{group.participants_cost - group.pages} summaries) -> {group.source}")
        lists = len(plan.member_groups) * 86400 / planner.membership_interval
        share = planner.cross_check_share
        checks = share * min(rate.day_budget, (plan.chosen_cost * 86400 / config.refresh_interval
                                               + lists) / (1 - share))
        if not any(g.source == "participants" for g in plan.groups):
            lists = checks = 0.0
        summary_interval = effective_interval(len(targets), config.refresh_interval,
                                              max(day_budget, 1), rate.minute_budget)
        day_budget -= lists + checks
        cost = plan.chosen_cost
        lines.append(f"requests per cycle: {plan.summary_cost} on summary requests (every "
                     f"{format_duration(summary_interval)}), {plan.chosen_cost} with the plan "
                     f"once every derived cohort is proven, plus {lists:.0f} member-list and "
                     f"{checks:.0f} cross-check requests/day "
                     f"({len(plan.member_groups)} group"
                     f"{'s' if len(plan.member_groups) != 1 else ''} every "
                     f"{format_duration(planner.membership_interval)}; cross-checks "
                     f"{share:.0%} of the budget)")
        lines.append("  (every target starts on summary requests and moves to the participants "
                     "source once a pull reproduced its summary)")
    else:
        lines.append("planner: summary (one summary request per target)")
    interval = effective_interval(cost, config.refresh_interval, max(day_budget, 1),
                                  rate.minute_budget)
    stretched = (" (stretched from refresh_interval to fit the budget)"
                 if interval > config.refresh_interval else "")
    lines.append(f"effective refresh interval: {format_duration(interval)} "
                 f"({interval:.0f}s){stretched}")
    staleness = config.max_staleness or 3 * interval
    lines.append(f"max staleness: {format_duration(staleness)}")
    if key is None:
        lines.append("warning: no API key found: set EXEC_API_KEY or api.api_key_file "
                     "before running")
    else:
        lines.append(f"api key: found ({key.source})")
    return "\n".join(lines)


def _listing_plan(config: Config, targets: list[Target]) -> list[tuple[str, float]]:
    """The skills and assignments lines of the plan, each with its requests a day.

    Offline the sizes are unknown: a read is counted at its least, one request (one
    page of up to 100 rows); the line says what makes it grow."""
    day = config.api.rate_limit.day_budget
    out = []
    if config.skills is not None and config.skills.enabled:
        skills = Skills(config.skills, day)
        out.append((f"skills: on, every {format_duration(skills.interval)}; one request per "
                    f"100 skills a read (about {skills.requests_per_day():.0f} requests/day "
                    "for up to 100 skills)", skills.requests_per_day()))
    if config.assignments is not None and config.assignments.enabled:
        scenarios = {t.scenario: t.scenario_uuid for t in targets}
        assignments = Assignments(config.assignments, day, lambda: tuple(scenarios.items()))
        counting = 5 * len(scenarios)
        out.append((f"assignments: on, every {format_duration(assignments.interval)}; a read "
                    "costs one request per 100 assignments or "
                    f"{counting} counts (5 statuses x {len(scenarios)} scenarios), whichever the "
                    f"last read says is fewer (about {assignments.requests_per_day():.0f} "
                    "requests/day for up to 100 assignments; at most "
                    f"{DAY_SHARE:.0%} of the daily budget, the interval "
                    "stretches past that)", assignments.requests_per_day()))
    return out


# --- the running exporter -----------------------------------------------------------


class Exporter:
    """The long-running daemon: owns every part and their lifecycles.

    The poller works from :attr:`running`, one immutable
    :class:`~exporter.jobs.Running` value that start, reloads and discovery
    updates build in full and swap in one assignment.
    """

    def __init__(self, config: Config, key: ApiKey, config_path: str | None,
                 state_file: str | None = None, clock: Clock | None = None) -> None:
        self.config = config
        self.key = key
        self.config_path = config_path
        self.clock = clock or SystemClock()
        self.store = Store()
        self.state = StateFile(state_file) if state_file else None
        now = self.clock.time()
        saved = self.state.load(now) if self.state else SavedState()
        rate = config.api.rate_limit
        self.budget = Budget(rate.minute_budget, rate.day_budget, saved.ledger)
        self.scheduler = Scheduler(self.budget, config.refresh_interval,
                                   on_view=self._on_view)
        self._saved = saved
        self._targets: dict[Key, Target] = {}
        self._polled: tuple[tuple[str, str | None], ...] = ()
        # Serialises building the running value (reloads against discovery updates);
        # never held across a request.
        self._apply_lock = threading.RLock()
        self._reload_lock = threading.Lock()
        self.discovery: Discovery | None = self._discovery(config, saved.lists, reread=False)
        self.skills: Skills | None = None
        self.assignments: Assignments | None = None
        self._listings(config)
        self.planner = Planner(config.planner, self.store, saved.members,
                               on_change=self._on_plan)
        self.planner.configure(config.planner, rate.day_budget, config.refresh_interval)
        self.running = self._build(config, self._client(config), key)
        self.poller = Poller(self.scheduler, lambda: self.running, self.store, self.clock)
        self.store.record_reload(True, now)
        snapshot_collector = SnapshotCollector(self.store, self.clock)
        live = CollectorRegistry(auto_describe=False)
        live.register(LiveCollector(self.budget.remaining, self.clock))
        live.register(ProcessMetrics())
        # The listings change only with a completed read or a new target set, both of
        # which change the store: rendered with the cached page, not per scrape.
        self.exposition = Exposition(snapshot_collector, live, self.clock,
                                     ListingsCollector(lambda: (self.skills, self.assignments)))
        self._stop_saving = threading.Event()
        self._saver: threading.Thread | None = None

    @property
    def client(self) -> ExecClient:
        """The client of the running configuration."""
        return self.running.client

    def _client(self, config: Config) -> ExecClient:
        return ExecClient(config.api.base_url, self.key.value, config.api.timeout)

    def _on_view(self, view: ScheduleView) -> None:
        pause = (view.pause.reason, view.pause.until) if view.pause is not None else None
        next_due = dict(view.next_due)
        # A derived target is refreshed by its scenario's participants pull.
        for pull, targets in self.planner.served_by_pull().items():
            if pull in next_due:
                next_due.update(dict.fromkeys(targets, next_due[pull]))
        self.store.record_schedule(view.interval, next_due, pause,  # type: ignore[arg-type]
                                   view.stretched)

    def _on_plan(self) -> None:
        # A target was proven or refused, a scenario fell back, a pull's size changed or
        # a member list was first read: the recurring jobs change (in the poller thread).
        with self._apply_lock:
            self.running = self._build(self.config, self.running.client, self.key)
            self.poller.wake()

    def _interval(self, config: Config, jobs: tuple[Job, ...] | None = None) -> float:
        """The effective interval of the running plan, or of ``jobs`` (a pull of n
        pages counts n)."""
        cost = sum(max(job.cost, 1) for job in (self.running.jobs if jobs is None else jobs))
        return effective_interval(cost, config.refresh_interval, self._poll_day_budget(),
                                  config.api.rate_limit.minute_budget)

    def _discovery(self, config: Config, lists: Lists | None, reread: bool) -> Discovery | None:
        """Discovery for ``config`` (None when it reads no list)."""
        settings = config.discovery
        if settings is None or (settings.scenarios is None and settings.group_cohorts is None):
            return None
        discovery = Discovery(settings, lists, on_update=self._on_lists,
                              report=self.store.record_discovery)
        if reread:
            discovery.reread()
        return discovery

    def _listings(self, config: Config) -> None:
        """Start, reconfigure or stop the skills and assignments listings; a kept
        listing keeps its last values and schedule."""
        day = config.api.rate_limit.day_budget
        report = self.store.record_discovery
        if config.skills is None or not config.skills.enabled:
            self.skills = None
        elif self.skills is None:
            self.skills = Skills(config.skills, day, report)
        else:
            self.skills.configure(config.skills, day)
        if config.assignments is None or not config.assignments.enabled:
            self.assignments = None
        elif self.assignments is None:
            self.assignments = Assignments(config.assignments, day, self._polled_scenarios,
                                           report)
        else:
            self.assignments.configure(config.assignments, day)

    def _polled_scenarios(self) -> tuple[tuple[str, str | None], ...]:
        """The scenarios of the current targets: (label, id when known); the same
        object until the targets change."""
        return self._polled

    @property
    def sources(self) -> tuple[Discovery | Skills | Assignments | Planner, ...]:
        """The job sources: discovery first (it decides the scenarios), then the listings,
        then the planner's member lists and cross-checks (in auto mode)."""
        planner = self.planner if self.config.planner.mode == "auto" else None
        return tuple(s for s in (self.discovery, self.skills, self.assignments, planner)
                     if s is not None)

    def _on_lists(self, lists: Lists) -> None:
        # Runs in the poller thread, inside a listing job's handler: new lists, new targets.
        with self._apply_lock:
            self.running = self._build(self.config, self.running.client, self.key)
            self.poller.wake()
        interval = self._interval(self.config)
        wanted = format_duration(self.config.refresh_interval)
        how = (f"stretched from refresh_interval {wanted} to fit the budget"
               if interval > self.config.refresh_interval else "as configured")
        log.info("discovery: %d targets; effective refresh interval %s (%s)",
                 len(self._targets), format_duration(interval), how)

    def _poll_day_budget(self) -> float:
        listing = sum(source.requests_per_day() for source in self.sources)
        return max(self.config.api.rate_limit.day_budget - listing, 1.0)

    def _build(self, config: Config, client: ExecClient, key: ApiKey) -> Running:
        """Make ``config`` (with the current discovery lists) the running target set:
        update the store and return the running value to swap in."""
        kept, dropped = select_targets(config,
                                       self.discovery.lists if self.discovery else None)
        self.store.set_targets_dropped(dropped)
        # Same labels, other filters: the old values describe another population.
        changed = {t.key for t in kept if t.key in self._targets
                   and (self._targets[t.key].cohort, self._targets[t.key].scenario_uuid)
                   != (t.cohort, t.scenario_uuid)}
        restored: dict[Key, TargetState] = {}
        for t in kept:
            s = self._saved.targets.get(t.key) if t.key not in changed else None
            if s is not None:
                restored[t.key] = TargetState(
                    target=t, summary=s.summary, last_success=s.last_success, up=s.up,
                    last_error=s.last_error, last_error_message=s.last_error_message,
                    last_error_time=s.last_error_time, errors=s.errors)
        self.store.set_targets(kept, restored, forget=changed)
        self.store.set_max_staleness(config.max_staleness)
        self._targets = {t.key: t for t in kept}
        self._polled = tuple({t.scenario: t.scenario_uuid for t in kept}.items())
        known: dict[Key, float] = {}
        for t in kept:
            state = self.store.get(t.key)
            if state is not None and state.last_success is not None:
                known[t.key] = state.last_success
        rate = config.api.rate_limit
        jobs = self.planner.jobs(kept, self.clock.time())
        for refetch in self.planner.take_refetch():
            known.pop(refetch, None)  # suspect derived values: its summary is due now
        for pull, members in self.planner.pull_targets().items():
            # A pull is as old as the oldest data it would refresh: no burst on restart.
            if all(t in known for t in members):
                known[pull] = min(known[t] for t in members)  # type: ignore[index]
        if config.planner.mode == "summary":
            jobs = tuple(summary_job(t, self.store) for t in kept)  # exactly as before
            self.store.set_sources(dict.fromkeys(self._targets, "summary"))
        else:
            self.store.set_sources(dict(self.planner.sources()))
        # Published with the store (cached exposition), not computed per scrape.
        self.store.set_plan_cost(self.planner.requests_per_cycle(self._interval(config, jobs)))
        return Running(
            client=client,
            jobs=jobs,
            sources=self.sources,
            refresh_interval=config.refresh_interval,
            minute_budget=rate.minute_budget, day_budget=rate.day_budget,
            restored=known, forget=frozenset(changed), key_id=key_id(key.value))

    def reload(self) -> tuple[bool, str]:
        """Reread the configuration file; a bad file keeps the running configuration.

        Builds a new running value and swaps it in: nothing here waits for a request
        in flight (the poller adopts the new value between two requests)."""
        with self._reload_lock:
            now = self.clock.time()
            if self.config_path is None:
                return False, "no configuration file to reload (built-in configuration)"
            try:
                config = load_config(self.config_path)
                key, warnings = load_api_key(config)
                if key is None:
                    raise ConfigError(["no API key: set EXEC_API_KEY or api.api_key_file"])
            except ConfigError as exc:
                self.store.record_reload(False, now)
                for problem in exc.problems:
                    log.error("reload failed, keeping the running configuration: %s", problem)
                return False, "reload failed:\n" + "\n".join(exc.problems)
            for warning in warnings:
                log.warning("%s", warning)
            logs.add_secret(key.value)
            with self._apply_lock:
                client = self.running.client
                if config.api != self.config.api or key.value != self.key.value:
                    self.key = key
                    client = self._client(config)  # the poller closes the old one
                if config.discovery != self.config.discovery:
                    lists = self.discovery.lists if self.discovery else None
                    self.discovery = self._discovery(config, lists, reread=True)
                self._listings(config)
                self.config = config
                self.planner.configure(config.planner, config.api.rate_limit.day_budget,
                                       config.refresh_interval, reread_members=True)
                self.running = self._build(config, client, key)
            self.store.record_reload(True, now)
            self.poller.wake()
            interval = self._interval(config)
            log.info("configuration reloaded: %d targets, effective interval %s",
                     len(self._targets), format_duration(interval))
            return True, "configuration reloaded"

    def _save_state(self, force: bool = False) -> None:
        if self.state is None:
            return
        now = self.clock.time()
        lists = self.discovery.lists if self.discovery else None
        self.state.save(self.store.snapshot(), self.budget.ledger(now), now, force=force,
                        lists=lists, members=self.planner.members())

    def _save_loop(self) -> None:
        # The state file follows the store: every change is saved (coalesced by the
        # state file to one write a second), in this thread, not the poller's.
        version = self.store.version
        while not self._stop_saving.is_set():
            current = self.store.wait_for_change(version, 1.0)
            if current != version and not self._stop_saving.is_set():
                version = current
                self._save_state()

    def start(self, address: tuple[str, int], telemetry_path: str,
              web_config: WebConfig | None) -> None:
        """Start polling, saving and serving."""
        web = Web(self.store, self.exposition, telemetry_path, web_config, self.reload,
                  self.clock.time, source=self.planner.source)
        self.server = serve(address, web)
        self.poller.start()
        if self.state is not None:
            self._saver = threading.Thread(target=self._save_loop, name="state", daemon=True)
            self._saver.start()
        host, port = (str(part) for part in self.server.server_address[:2])
        host = f"[{host}]" if ":" in host else host
        interval = self._interval(self.config)
        log.info("exec-exporter %s listening on %s:%s; %d targets, effective refresh "
                 "interval %s", __version__, host, port, len(self._targets),
                 format_duration(interval))

    def stop(self) -> None:
        """Stop polling (letting an in-flight request finish), save state, stop serving."""
        self.poller.stop(SHUTDOWN_GRACE)
        self._stop_saving.set()
        if self._saver is not None:
            self._saver.join(5.0)
        self._save_state(force=True)
        self.server.shutdown()
        self.server.server_close()
        self.running.client.close()


def prepare_state_dir(path: str) -> None:
    """Make sure the state file can be written: create its directory when that
    directory's parent exists and is writable; otherwise raise ConfigError naming the
    path (starting without a usable state file would silently lose it)."""
    directory = Path(path).absolute().parent
    if not directory.exists():
        parent = directory.parent
        if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
            raise ConfigError([
                f"--state.file: the directory {directory} does not exist and cannot be "
                f"created ({parent} is {'not writable' if parent.is_dir() else 'missing'}); "
                f"create it first, e.g. sudo install -d -m 700 -o \"$USER\" {directory}"])
        try:
            directory.mkdir(mode=0o700)
        except FileExistsError:
            pass
        except OSError as exc:
            raise ConfigError([f"--state.file: cannot create {directory}: "
                               f"{exc.strerror or exc}"]) from None
        log.info("created the state directory %s", directory)
    if not os.access(directory, os.W_OK | os.X_OK):
        raise ConfigError([f"--state.file: the directory {directory} is not writable by "
                           "this user; the state file could not be saved"])


def _print_problems(problems: Sequence[str], stream: TextIO) -> None:
    for problem in problems:
        print(f"error: {problem}", file=stream)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``exec-exporter`` and ``python -m exporter``."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logs.setup(args.log_level, args.log_format)
    if args.mode == "backfill":
        return backfill.main(args)
    demo = args.mode == "demo"
    try:
        address = parse_listen_address(args.listen)
    except ValueError as exc:
        _print_problems([f"--web.listen-address: {exc}"], sys.stderr)
        return 2
    simulated = None
    config_path: str | None = args.config_file
    try:
        if demo:
            from .demo import DEMO_API_KEY, SimulatedExecAPI, demo_config

            simulated = SimulatedExecAPI().start()
            config = parse_config(demo_config(simulated.base_url))
            key: ApiKey | None = ApiKey(DEMO_API_KEY, "built-in demo key")
            warnings: list[str] = []
            config_path = None
        else:
            config = load_config(args.config_file)
            if args.config_check:
                # The check does not need the key (the file may only exist where the
                # exporter will run): a key problem is a warning here.
                try:
                    key, warnings = load_api_key(config)
                except ConfigError as exc:
                    key, warnings = None, [f"{p}" for p in exc.problems]
            else:
                key, warnings = load_api_key(config)
        if key is not None:
            logs.add_secret(key.value)
        if args.config_check:
            print(f"configuration OK: {config_path or 'built-in demo configuration'}")
            print(describe_plan(config, key))
            for warning in warnings:
                print(f"warning: {warning}")
            return 0
        for warning in warnings:
            log.warning("%s", warning)
        if key is None:
            raise ConfigError(["no API key: set the EXEC_API_KEY environment variable or "
                               "api.api_key_file in the configuration"])
        web_config = load_web_config(args.web_config) if args.web_config else None
        if args.state_file:
            prepare_state_dir(args.state_file)
    except ConfigError as exc:
        _print_problems(exc.problems, sys.stderr)
        if simulated is not None:
            simulated.stop()
        return 2

    # The handlers only set plain flags: a handler runs in the main thread between two
    # bytecodes, and one that took a lock (Event.set) could find the main thread
    # holding it (in Event.wait) and deadlock, as a second signal during shutdown did.
    signals = {"stop": False, "reload": False}

    def on_stop(signum: int, frame: FrameType | None) -> None:
        signals["stop"] = True

    def on_hup(signum: int, frame: FrameType | None) -> None:
        signals["reload"] = True

    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(signal.SIGINT, on_stop)
    if hasattr(signal, "SIGHUP"):
        signal.signal(signal.SIGHUP, on_hup)

    try:
        exporter = Exporter(config, key, config_path, args.state_file)
        exporter.start(address, args.telemetry_path, web_config)
    except OSError as exc:
        if simulated is not None:
            simulated.stop()
        code, message = listen_failure(exc, args.listen)
        if code == 2:  # a bad address: said like every other bad flag
            _print_problems([message], sys.stderr)
        else:
            log.error("%s", message)
        return code
    if demo and simulated is not None:
        log.info("demo: simulated Exec API at %s; open http://%s:%s/", simulated.base_url,
                 "localhost" if address[0] in ("0.0.0.0", "::") else address[0],
                 exporter.server.server_address[1])
    try:
        while not signals["stop"]:
            time.sleep(0.1)  # a signal interrupts the sleep; its handler runs at once
            if signals["reload"]:
                signals["reload"] = False
                exporter.reload()
    finally:
        log.info("shutting down")
        exporter.stop()
        if simulated is not None:
            simulated.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
