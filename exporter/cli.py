"""Command line: arguments, subcommands, the plan ``--config.check`` prints; the daemon is
:mod:`exporter.daemon`.

Exit codes: 0 clean stop, 2 bad usage or configuration, 1 anything else.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import time
from collections.abc import Sequence
from types import FrameType
from typing import TextIO

from . import __version__, backfill, logs
from .config import (
    ApiKey,
    Config,
    ConfigError,
    format_duration,
    load_api_key,
    load_config,
    parse_config,
)
from .daemon import Exporter, prepare_state_dir
from .discovery import Discovery
from .listings import DAY_SHARE, Assignments, Skills
from .planner import offline_plan
from .scheduler import effective_interval
from .server import listen_failure, parse_listen_address
from .store import staleness_limit
from .targets import Target, build_targets
from .webconfig import load_web_config

log = logging.getLogger("exporter")

DEFAULT_PORT = 10025


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
    staleness = staleness_limit(config.max_staleness, interval, None, 0.0)  # as the store
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
