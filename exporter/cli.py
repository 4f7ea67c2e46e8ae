"""Command line and wiring: config -> client -> poller -> store -> collector -> server.

Exit codes: 0 clean stop, 2 bad usage or configuration, 1 anything else.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from collections.abc import Sequence
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
from .scheduler import (
    WORKSPACE_REASONS,
    Clock,
    Key,
    Poller,
    Scheduler,
    SystemClock,
    effective_interval,
)
from .server import Web, parse_listen_address, serve
from .state import SavedState, StateFile
from .store import Store, TargetState
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
    interval = effective_interval(len(targets), config.refresh_interval, max(day_budget, 1),
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


# --- the running exporter -----------------------------------------------------------


class Exporter:
    """The long-running daemon: owns every part and their lifecycles."""

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
        self.scheduler = Scheduler(self.budget, config.refresh_interval)
        self.client = self._client(config)
        self._targets: dict[Key, Target] = {}
        self._reload_lock = threading.Lock()
        self.poller = Poller(self.scheduler, self.client, self.store, lambda: self._targets,
                             self.clock, on_change=self._save_state)
        self._saved = saved
        self.discovery: Discovery | None = None
        self._set_discovery(config, saved.lists, reread=False)
        self._apply(config)
        self.store.record_reload(True, now)
        snapshot_collector = SnapshotCollector(self.store, self.clock)
        live = CollectorRegistry(auto_describe=False)
        live.register(LiveCollector(self.budget.remaining, self.clock))
        live.register(ProcessMetrics())
        self.exposition = Exposition(snapshot_collector, live, self.clock)

    def _client(self, config: Config) -> ExecClient:
        return ExecClient(config.api.base_url, self.key.value, config.api.timeout)

    def _set_discovery(self, config: Config, lists: Lists | None, reread: bool) -> None:
        """Start (or restart, after a reload changed it) discovery."""
        settings = config.discovery
        if settings is None or (settings.scenarios is None and settings.group_cohorts is None):
            self.discovery = None
        else:
            self.discovery = Discovery(settings, lists, on_update=self._on_lists)
            if reread:
                self.discovery.reread()
        self.poller.discovery = self.discovery

    def _on_lists(self, lists: Lists) -> None:
        # Called from inside a poller step: new lists, new targets.
        self._apply(self.config)
        self.poller.wake()

    def _apply(self, config: Config) -> None:
        """Make ``config`` (with the current discovery lists) the running target set."""
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
        rate = config.api.rate_limit
        with self.poller.lock:
            self.budget.resize(rate.minute_budget, rate.day_budget)
            self.scheduler.refresh_interval = config.refresh_interval
            self.scheduler.listing_requests_per_day = (
                self.discovery.requests_per_day() if self.discovery else 0.0)
            self._targets = {t.key: t for t in kept}
            self.scheduler.set_targets(
                [t.key for t in kept],
                {k: s.last_success for k, s in restored.items() if s.last_success is not None},
                forget=changed)
            self.store.set_targets(kept, restored, forget=changed)
            self.store.set_max_staleness(config.max_staleness)
            self.store.record_schedule(self.scheduler.interval, {})
        self.config = config

    def reload(self) -> tuple[bool, str]:
        """Reread the configuration file; a bad file keeps the running configuration."""
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
            if config.api != self.config.api or key.value != self.key.value:
                new_key = key.value != self.key.value
                self.key = key
                with self.poller.lock:
                    old = self.client
                    self.client = self._client(config)
                    self.poller.client = self.client
                    old.close()
                    pause = self.scheduler.pause
                    if new_key and pause is not None and pause.reason in WORKSPACE_REASONS:
                        # A new key deserves its probe now, not after the 30 s-5 min wait.
                        pause.until = min(pause.until, now)
            if config.discovery != self.config.discovery:
                lists = self.discovery.lists if self.discovery else None
                with self.poller.lock:
                    self._set_discovery(config, lists, reread=True)
            self._apply(config)
            self.store.record_reload(True, now)
            self.poller.wake()
            log.info("configuration reloaded: %d targets, effective interval %s",
                     len(self._targets), format_duration(self.scheduler.interval))
            return True, "configuration reloaded"

    def _save_state(self, force: bool = False) -> None:
        if self.state is None:
            return
        now = self.clock.time()
        lists = self.discovery.lists if self.discovery else None
        self.state.save(self.store.snapshot(), self.budget.ledger(now), now, force=force,
                        lists=lists)

    def start(self, address: tuple[str, int], telemetry_path: str,
              web_config: WebConfig | None) -> None:
        """Start polling and serving."""
        web = Web(self.store, self.exposition, telemetry_path, web_config, self.reload,
                  self.clock.time)
        self.server = serve(address, web)
        self.poller.start()
        host, port = self.server.server_address[:2]
        log.info("exec-exporter %s listening on %s:%s; %d targets, effective refresh "
                 "interval %s", __version__, host, port, len(self._targets),
                 format_duration(self.scheduler.interval))

    def stop(self) -> None:
        """Stop polling (letting an in-flight request finish), save state, stop serving."""
        self.poller.stop(SHUTDOWN_GRACE)
        self._save_state(force=True)
        self.server.shutdown()
        self.server.server_close()
        self.client.close()


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
    except ConfigError as exc:
        _print_problems(exc.problems, sys.stderr)
        if simulated is not None:
            simulated.stop()
        return 2

    stop = threading.Event()
    reload_requested = threading.Event()

    def on_stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    def on_hup(signum: int, frame: FrameType | None) -> None:
        reload_requested.set()

    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(signal.SIGINT, on_stop)
    if hasattr(signal, "SIGHUP"):
        signal.signal(signal.SIGHUP, on_hup)

    try:
        exporter = Exporter(config, key, config_path, args.state_file)
        exporter.start(address, args.telemetry_path, web_config)
    except OSError as exc:
        log.error("cannot start: %s", exc)
        if simulated is not None:
            simulated.stop()
        return 1
    if demo and simulated is not None:
        log.info("demo: simulated Exec API at %s; open http://%s:%s/", simulated.base_url,
                 "localhost" if address[0] in ("0.0.0.0", "::") else address[0],
                 exporter.server.server_address[1])
    try:
        while not stop.is_set():
            stop.wait(0.5)
            if reload_requested.is_set():
                reload_requested.clear()
                exporter.reload()
    finally:
        log.info("shutting down")
        exporter.stop()
        if simulated is not None:
            simulated.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
