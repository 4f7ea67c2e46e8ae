"""The daemon: config -> client -> poller -> store -> collector -> server, wired by
:class:`Exporter` with their lifecycles; :mod:`exporter.cli` starts it."""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

from . import __version__, logs
from .budget import open_budget
from .client import ExecClient
from .collector import LiveCollector, ProcessMetrics, SnapshotCollector
from .config import ApiKey, Config, ConfigError, format_duration, load_api_key, load_config
from .discovery import Discovery, Lists, names_wanted
from .exposition import Exposition
from .jobs import Job, Running, key_id, summary_job
from .listings import Assignments, ListingsCollector, Skills
from .planner import Planner
from .scheduler import (
    Clock,
    Poller,
    Scheduler,
    ScheduleView,
    SystemClock,
    interval_and_limit,
    polling_day_budget,
    round_cost,
)
from .server import Web, serve
from .state import SavedState, StateFile
from .store import Key, Store, TargetState
from .targets import Target, select_targets
from .webconfig import WebConfig

log = logging.getLogger("exporter")

SHUTDOWN_GRACE = 6.0  # in-flight request allowance on SIGTERM; the whole stop stays under 10 s


class Exporter:
    """The long-running daemon. The poller works from :attr:`running`, rebuilt whole
    and swapped in one assignment by start, reloads, discovery and the planner."""

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
        self.budget = open_budget(rate.minute_budget, rate.day_budget, state_file,
                                  saved.ledger, now)
        self.scheduler = Scheduler(self.budget, config.refresh_interval,
                                   on_view=self._on_view)
        self._saved = saved
        self._targets: dict[Key, Target] = {}
        self._polled: tuple[tuple[str, str | None], ...] = ()
        # Serialises building the running value; never held across a request.
        self._apply_lock = threading.RLock()
        self._reload_lock = threading.Lock()
        self.discovery: Discovery | None = self._discovery(config, saved.lists, reread=False)
        self.skills: Skills | None = None
        self.assignments: Assignments | None = None
        self._listings(config)
        self.planner = Planner(config.planner, self.store, saved.planner,
                               on_change=self._on_plan, now=now)
        self.running = self._build(config, self._client(config), key)
        self.poller = Poller(self.scheduler, lambda: self.running, self.store, self.clock)
        self.store.record_reload(True, now)
        snapshot_collector = SnapshotCollector(self.store, self.clock)
        live = [LiveCollector(self.budget.remaining, self.clock), ProcessMetrics()]
        # The listings change only with the store: rendered with the cached page.
        self.exposition = Exposition(snapshot_collector, live, self.clock,
                                     ListingsCollector(lambda: (self.skills, self.assignments)))
        self._stop_saving = threading.Event()
        self._saving = threading.Lock()  # held by a save; stop() waits for one, not for idle
        self._saver: threading.Thread | None = None
        self._logged_interval = -1.0  # the interval the last start or 'plan:' line gave

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
                                   view.stretched, at=view.at)

    def _on_plan(self) -> None:
        # The planner changed the recurring jobs (in the poller thread).
        with self._apply_lock:
            self.running = self._build(self.config, self.running.client, self.key)
            self.poller.wake()
            # Said once the plan settles (no proof awaited), not at every proof.
            interval = self._interval_and_limit(self.config)[0]
            if not self.planner.awaiting_proof() and interval != self._logged_interval:
                self._logged_interval = interval
                derived = sum(source == "participants" for _, source in self.planner.sources())
                log.info("plan: %d of %d targets derived; effective refresh interval %s",
                         derived, len(self._targets), self._describe_interval())

    def _configure_planner(self, config: Config, reread_members: bool = False) -> None:
        """The planner's settings, its cross-checks capped by the day budget left once
        the listings are paid for (as ``--config.check`` computes it)."""
        rate = config.api.rate_limit
        self.planner.configure(config.planner, rate.day_budget, config.refresh_interval,
                               reread_members=reread_members, minute_budget=rate.minute_budget,
                               listings=[s.requests_per_day() for s in self.sources
                                         if s is not self.planner])

    def _interval_and_limit(self, config: Config, jobs: tuple[Job, ...] | None = None
                            ) -> tuple[float, str]:
        """The scheduler's effective interval (and what set it) of the running jobs or
        of ``jobs``, on the same numbers."""
        rate = config.api.rate_limit
        day = polling_day_budget(rate.day_budget,
                                 [sum(source.requests_per_day() for source in self.sources)])
        return interval_and_limit(round_cost(self.running.jobs if jobs is None else jobs),
                                  config.refresh_interval, day, rate.minute_budget)

    def _describe_interval(self) -> str:
        """``48m13s (stretched from refresh_interval 5m by the day budget)``."""
        interval, limit = self._interval_and_limit(self.config)
        if limit == "refresh_interval":
            return f"{format_duration(interval)} (as configured)"
        return (f"{format_duration(interval)} (stretched from refresh_interval "
                f"{format_duration(self.config.refresh_interval)} by the {limit})")

    def _discovery(self, config: Config, lists: Lists | None, reread: bool) -> Discovery | None:
        """Discovery for ``config`` (None when it reads no list)."""
        settings, names = config.discovery, names_wanted(config)
        if not names and (settings is None or (settings.scenarios is None
                                               and settings.group_cohorts is None)):
            return None
        discovery = Discovery(settings, lists, on_update=self._on_lists,
                              report=self.store.record_discovery, names=names)
        if reread:
            discovery.reread()
        return discovery

    def _listings(self, config: Config) -> None:
        """Start, reconfigure or stop the skills and assignments listings."""
        day = config.api.rate_limit.day_budget
        report = self.store.record_discovery
        if config.skills is None or not config.skills.enabled:
            self.skills = None
        elif self.skills is None:
            self.skills = Skills(config.skills, day, report)
            self.skills.restore(self._saved.listings.pop("skills", None), self.clock.time())
        else:
            self.skills.configure(config.skills, day)
        if config.assignments is None or not config.assignments.enabled:
            self.assignments = None
        elif self.assignments is None:
            self.assignments = Assignments(config.assignments, day, self._polled_scenarios,
                                           report)
            self.assignments.restore(self._saved.listings.pop("assignments", None),
                                     self.clock.time())
        else:
            self.assignments.configure(config.assignments, day)

    def _polled_scenarios(self) -> tuple[tuple[str, str | None], ...]:
        """The scenarios of the current targets: (label, id when known)."""
        return self._polled

    @property
    def sources(self) -> tuple[Discovery | Skills | Assignments | Planner, ...]:
        """The job sources: discovery (it decides the scenarios), the listings, then the
        planner's member lists and cross-checks (auto mode)."""
        planner = self.planner if self.config.planner.mode == "auto" else None
        return tuple(s for s in (self.discovery, self.skills, self.assignments, planner)
                     if s is not None)

    def _on_lists(self, lists: Lists) -> None:
        # Runs in the poller thread, inside a listing job's handler: new lists, new targets.
        with self._apply_lock:
            self.running = self._build(self.config, self.running.client, self.key)
            self.poller.wake()
        log.info("discovery: %d targets; effective refresh interval %s",
                 len(self._targets), self._describe_interval())

    def _build(self, config: Config, client: ExecClient, key: ApiKey) -> Running:
        """Make ``config`` (with the discovery lists) the target set: update the store and
        return the running value to swap in."""
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
                restored[t.key] = s.state(t)
        self.store.set_targets(kept, restored, forget=changed)
        self.store.set_max_staleness(config.max_staleness)
        self._targets = {t.key: t for t in kept}
        self._polled = tuple({t.scenario: t.scenario_uuid for t in kept}.items())
        self._configure_planner(config)  # the listings priced for these scenarios
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
        self.store.set_plan_cost(self.planner.requests_per_cycle(
            self._interval_and_limit(config, jobs)[0]))
        return Running(
            client=client,
            jobs=jobs,
            sources=self.sources,
            refresh_interval=config.refresh_interval,
            minute_budget=rate.minute_budget, day_budget=rate.day_budget,
            restored=known, forget=frozenset(changed), key_id=key_id(key.value))

    def reload(self) -> tuple[bool, str]:
        """Reread the configuration file into a new running value (a bad file keeps the
        running one); nothing waits for a request in flight."""
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
                if (config.discovery != self.config.discovery
                        or names_wanted(config) != names_wanted(self.config)):
                    lists = self.discovery.lists if self.discovery else None
                    self.discovery = self._discovery(config, lists, reread=True)
                self._listings(config)
                self.config = config
                self._configure_planner(config, reread_members=True)
                self.running = self._build(config, client, key)
            self.store.record_reload(True, now)
            self.poller.wake()
            log.info("configuration reloaded: %d targets, effective interval %s",
                     len(self._targets), self._describe_interval())
            return True, "configuration reloaded"

    def _save_state(self, force: bool = False) -> None:
        if self.state is None:
            return
        now = self.clock.time()
        lists = self.discovery.lists if self.discovery else None
        reads = {listing.kind: listing.state() for listing in (self.skills, self.assignments)
                 if listing is not None}
        listings = {kind: read for kind, read in reads.items() if read is not None}
        self.state.save(self.store.snapshot(), now, force=force, lists=lists,
                        planner=self.planner.state(), listings=listings)

    def _save_loop(self) -> None:
        # Every change of the store is saved (coalesced to one write a second).
        version = self.store.version
        while not self._stop_saving.is_set():
            current = self.store.wait_for_change(version, 1.0)
            with self._saving:
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
        waiting = self.planner.awaiting_proof()
        self._logged_interval = self._interval_and_limit(self.config)[0]
        log.info("exec-exporter %s listening on %s:%s; %d targets, effective refresh "
                 "interval %s%s", __version__, host, port, len(self._targets),
                 self._describe_interval(),
                 f" until {waiting} derived cohort{'s are' if waiting != 1 else ' is'} proven "
                 "(a 'plan:' line gives the interval then)" if waiting else "")

    def stop(self) -> None:
        """Stop polling (letting an in-flight request finish), save state, stop serving."""
        self.poller.stop(SHUTDOWN_GRACE)
        # The saver is not joined (it may sit a second in the store's wait): under the
        # lock a save in progress finishes, and once the flag is set it never writes.
        with self._saving:
            self._stop_saving.set()
            self._save_state(force=True)
        self.server.shutdown()
        self.server.server_close()
        self.running.client.close()
        self.budget.close()


def prepare_state_dir(path: str) -> None:
    """Make sure the state file can be written: create its directory when its parent is
    writable, else raise ConfigError naming the path."""
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
