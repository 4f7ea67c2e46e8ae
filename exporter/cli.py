"""Command line: arguments, subcommands, the plan ``--config.check`` prints; the daemon is
:mod:`exporter.daemon`.

Exit codes: 0 clean stop, 2 bad usage or configuration, 1 anything else.
"""

from __future__ import annotations

import argparse
import logging
import re
import signal
import sys
import time
from collections.abc import Sequence
from contextlib import ExitStack
from typing import Any, NoReturn, TextIO

from . import __version__, backfill, logs
from .config import (
    ApiKey,
    Config,
    ConfigError,
    InvalidApiKey,
    format_duration,
    load_api_key,
    load_config,
    parse_config,
)
from .daemon import Exporter, prepare_state_dir
from .discovery import Discovery
from .listings import DAY_SHARE, Assignments, Skills
from .plan import derived_per_day, describe_dates, offline_plan
from .scheduler import effective_interval, interval_and_limit, polling_day_budget
from .server import listen_failure, parse_listen_address
from .store import Snapshot
from .targets import Target, build_targets
from .webconfig import load_web_config

log = logging.getLogger("exporter")

DEFAULT_PORT = 10025
_SIGHUP = getattr(signal, "SIGHUP", None)  # not on Windows


KEY_HELP = ("The API key comes from the file named by api.api_key_file in the configuration, "
            "else from the EXEC_API_KEY environment variable (never a flag, so it stays out "
            "of process listings).")


class _Parser(argparse.ArgumentParser):
    """argparse, with hints for the two slips argparse words badly: a subcommand's flag
    given without its subcommand, and a value starting with '-' given apart."""

    subcommand_flags: dict[str, str] = {}  # flag -> the only subcommand that has it

    def error(self, message: str) -> NoReturn:
        missing_value = re.match(r"argument (--[\w.-]+): expected one argument$", message)
        if missing_value:
            # `--since -5m`: argparse takes a value starting with '-' for another flag.
            message += f" (a value starting with '-' goes after '=': {missing_value[1]}=VALUE)"
        if message.startswith("unrecognized arguments"):
            for flag, command in self.subcommand_flags.items():
                if re.search(rf"(^|\s){re.escape(flag)}(=|\s|$)", message.split(":", 1)[1]):
                    message += (f" ({flag} belongs to a subcommand: exec-exporter {command} "
                                f"{flag}=...; see exec-exporter {command} --help)")
                    break
        super().error(message)


# The daemon's flags, which subcommands may share: dest, default, and add_argument's rest.
_SHARED: dict[str, tuple[str, object, dict[str, Any]]] = {
    "--config.file": ("config_file", "config.yaml",
                      {"metavar": "PATH", "help": "configuration file (default: config.yaml)"}),
    "--web.listen-address": ("listen", f":{DEFAULT_PORT}", {
        "metavar": "[HOST]:PORT", "help": f"address to listen on (default: :{DEFAULT_PORT})"}),
    "--web.telemetry-path": ("telemetry_path", "/metrics", {
        "metavar": "PATH", "help": "path of the metrics endpoint (default: /metrics)"}),
    "--web.config.file": ("web_config", None, {
        "metavar": "PATH",
        "help": "exporter-toolkit web configuration (TLS, basic auth, headers)"}),
    "--state.file": ("state_file", None, {
        "metavar": "PATH", "help": "where to keep data and the quota ledger across restarts"}),
    "--log.level": ("log_level", "info", {"choices": ["debug", "info", "warn", "error"],
                                          "help": "(default: info)"}),
    "--log.format": ("log_format", "logfmt", {"choices": ["logfmt", "json"],
                                              "help": "(default: logfmt)"}),
}

# Each subcommand: add_parser's texts, the daemon flags it has too (any other given
# before it is refused) and its own help for the --state.file it shares.
_COMMANDS: dict[str, tuple[dict[str, Any], list[str], str]] = {
    "demo": ({"help": "run against a simulated Exec API inside the process",
              "description": "Start a simulated Exec API inside the process and the exporter "
                             "against it with a built-in configuration: no account, key or "
                             "file needed."},
             [flag for flag in _SHARED if flag != "--config.file"],
             "where to keep data across restarts"),
    "backfill": ({"help": "write past values as OpenMetrics for promtool (docs/backfill.md)",
                  "description": "Write past values of the exec_scenario_* families as "
                                 "OpenMetrics for 'promtool tsdb create-blocks-from openmetrics' "
                                 "(see docs/backfill.md).",
                  "epilog": KEY_HELP},
                 ["--config.file", "--state.file", "--log.level", "--log.format"],
                 "the daemon's state file: share its quota ledger both ways"),
}


def _add_shared(parser: argparse.ArgumentParser, flags: list[str], top: bool,
                state_help: str | None = None) -> None:
    """Add shared flags. A subcommand's copy defaults to SUPPRESS, so a value given
    before the subcommand (``exec-exporter --log.level=debug demo``) is not reset."""
    for flag in flags:
        dest, default, rest = _SHARED[flag]
        if dest == "state_file" and state_help:
            rest = {**rest, "help": state_help}
        parser.add_argument(flag, dest=dest, default=default if top else argparse.SUPPRESS,
                            **rest)


def build_parser() -> argparse.ArgumentParser:
    """The command line: the daemon's flags, and the ``demo`` and ``backfill``
    subcommands, each with its own flags (``exec-exporter backfill --help``)."""
    parser = _Parser(
        prog="exec-exporter", allow_abbrev=False,
        description="Prometheus exporter for Exec scenario analytics. "
                    "Run 'exec-exporter demo' to try it without an account.",
        epilog=KEY_HELP + " SIGHUP or POST /-/reload rereads the configuration; SIGTERM "
               "stops cleanly. Each subcommand has its own --help.")
    parser.set_defaults(mode=None, config_check=False)
    _add_shared(parser, ["--config.file"], top=True)
    parser.add_argument("--config.check", dest="config_check", action="store_true",
                        help="validate the configuration, print the polling plan and exit")
    _add_shared(parser, [f for f in _SHARED if f != "--config.file"], top=True)
    parser.add_argument("--version", action="version",
                        version=f"exec-exporter {__version__} (python {sys.version.split()[0]})")
    commands = parser.add_subparsers(title="subcommands", dest="mode", metavar="{demo,backfill}",
                                     parser_class=_Parser)
    for name, (texts, flags, state_help) in _COMMANDS.items():
        _add_shared(commands.add_parser(name, allow_abbrev=False, **texts), flags, top=False,
                    state_help=state_help)
    backfill.add_arguments(commands.choices["backfill"])
    parser.subcommand_flags = {
        flag: name for name, sub in commands.choices.items() for action in sub._actions
        for flag in action.option_strings if flag.startswith("--") and flag not in _SHARED
        and flag != "--help"}
    return parser


def _usage_problems(args: argparse.Namespace) -> list[str]:
    """Daemon flags given before a subcommand that does not use them, refused rather
    than ignored (``exec-exporter --config.file=x demo`` would not read x), and every
    required backfill flag left out, reported together in one run."""
    if args.mode is None:
        return []
    problems = [f"{flag}: does not apply to '{args.mode}' (see exec-exporter {args.mode} --help)"
                for flag, (dest, default, _) in _SHARED.items()
                if flag not in _COMMANDS[args.mode][1] and getattr(args, dest) != default]
    if args.mode == "backfill" and args.config_check:
        problems.append("--config.check checks the daemon's configuration: run "
                        "exec-exporter --config.check --config.file=PATH")
    if args.mode == "backfill" and not problems:
        problems = [message for dest, message in _REQUIRED_BACKFILL.items()
                    if getattr(args, dest) is None]
    return problems


_REQUIRED_BACKFILL = {
    "since": "--since: required (how far back, e.g. --since=30d)",
    "output": "--output: required (the OpenMetrics file to write, e.g. --output=backfill.om)"}


# --- the plan ---------------------------------------------------------------------


def describe_plan(config: Config, key: ApiKey | None = None) -> str:
    """The polling plan that ``--config.check`` prints (``key`` is unused: the line
    about the key is printed by :func:`main`, which knows why a key is missing)."""
    targets = build_targets(config)
    rate, planner, refresh = config.api.rate_limit, config.planner, config.refresh_interval
    discovery = config.discovery
    discovered = discovery.scenarios if discovery is not None else None
    lines = []
    if discovered is not None:
        lines.append("discovery: on; the workspace's scenario list decides the targets at run "
                     "time (the counts below are the explicit targets only)")
    if discovery is not None and discovery.group_cohorts is not None:
        lines.append("discovery: one cohort per workspace group is added at run time")
    if discovered is not None and discovered.cohorts is not None:
        lines.append("discovery: discovered scenarios get the cohorts "
                     f"{', '.join(discovered.cohorts)} (patterns are matched against the group "
                     "cohorts too, at run time)")
    lines.append(f"targets: {len(targets)}")
    cohorts: dict[str, list[str]] = {}
    for target in targets:
        cohorts.setdefault(target.scenario, []).append(target.cohort.name)
    lines += [f"  {scenario.id}{f' ({scenario.name})' if scenario.name else ''}: "
              f"{', '.join(cohorts[scenario.id])}" for scenario in config.scenarios]
    lines.append(f"requests/day needed at refresh_interval {format_duration(refresh)}: "
                 f"{len(targets) * 86400 / refresh:.0f}")
    lines.append(f"daily budget: {rate.day_budget} requests ({rate.requests_per_day}/day less "
                 f"{rate.reserve:.0%} reserve); minute budget: {rate.minute_budget}")
    # Offline, page counts are unknown: one page per list, the least discovery costs.
    listing = Discovery(discovery).requests_per_day() if discovery is not None else 0.0
    if discovery is not None and listing:
        lines.append(f"discovery listings: about {listing:.0f} requests/day (at least one page "
                     f"per list every {format_duration(discovery.interval)})")
    paid_first = [listing]  # requests a day paid before the targets', in order
    for line, cost in _listing_plan(config, targets):
        lines.append(line)
        paid_first.append(cost)
    day_budget = polling_day_budget(rate.day_budget, paid_first)
    if any(paid_first):
        lines.append(f"left for the targets: about {day_budget:.0f} requests/day "
                     "(listings are paid for first)")
    plan = offline_plan(targets, planner, refresh)  # summary mode: one request per target
    if planner.mode == "auto":
        lines.append("planner: auto (each scenario and date range uses one participants pull "
                     "when that costs fewer requests than a summary per cohort, member lists "
                     "and cross-checks included; offline, a pull and a member list are "
                     "assumed to be one page: 100 participants)")
        for group in plan.groups:
            parts = _parts(group.pages, group.summaries, group.lists, group.checks)
            lines.append(f"  {group.scenario} ({describe_dates(group.dates)}): "
                         f"{_plural(len(group.cohorts), 'cohort')}; summary "
                         f"{_plural(group.summary_cost, 'request')}/cycle; participants "
                         f"{group.participants_cost:.2f} = {parts} -> {group.source}")
        chosen = plan.pulled
        lists, checks = derived_per_day(plan, {}, planner, refresh, day_budget,
                                        rate.minute_budget, checked=bool(chosen))
        summary_interval = effective_interval(len(targets), refresh, day_budget,
                                              rate.minute_budget)
        paid_first.append(lists + checks)
        pages = sum(g.pages for g in chosen)
        parts = _parts(pages, plan.recurring - pages, sum(g.lists for g in chosen),
                       sum(g.checks for g in chosen))
        lines.append(f"requests per cycle, everything included: summary plan "
                     f"{plan.summary_cost} = {_plural(plan.summary_cost, 'summary')} (every "
                     f"{format_duration(summary_interval)}); chosen plan "
                     f"{plan.chosen_cost:.2f} = {parts}")
        lines.append(f"  member lists: {_plural(len(plan.member_groups), 'group')} every "
                     f"{format_duration(planner.membership_interval)}, about {lists:.0f} "
                     f"requests/day; cross-checks: {planner.cross_check_share:.0%} of the "
                     f"requests sent, about {checks:.0f}/day")
        derived_targets = sum(len(g.derived) for g in chosen)
        if checks > 0:
            lines.append(f"  each of the {derived_targets} derived targets is cross-checked "
                         f"about every {format_duration(derived_targets * 86400 / checks)} "
                         "(a drift is caught at its check; raise cross_check_share to check "
                         "more often)")
        lines.append("  (every target starts on summary requests and moves to the participants "
                     "source once a pull reproduced its summary; the state file keeps that)")
    else:
        lines.append("planner: summary (one summary request per target)")
    day_budget = polling_day_budget(rate.day_budget, paid_first)
    interval, limit = interval_and_limit(plan.recurring, refresh, day_budget, rate.minute_budget)
    why = ("as configured (refresh_interval)" if limit == "refresh_interval"
           else f"stretched from refresh_interval {format_duration(refresh)} by the {limit}")
    if limit == "day budget" and any(paid_first):
        why += (f" (about {day_budget:.0f} requests/day left once listings, member "
                "lists and cross-checks are paid for)")
    lines.append(f"effective refresh interval: {format_duration(interval)} ({interval:.0f}s), "
                 f"{why}")
    if limit != "refresh_interval" and any(paid_first):
        # Offline the sizes of lists and pulls are guesses; running, the same function
        # takes the real ones (the start-up log, the 'plan:' line, the page, the metric).
        lines.append("  (offline: every list and pull counted as one page; running, the "
                     "exporter computes it the same way from the real sizes and logs it)")
    staleness = Snapshot(interval=interval, max_staleness=config.max_staleness).staleness_limit(0)
    lines.append(f"max staleness: {format_duration(staleness)}")
    return "\n".join(lines)


def _key_line(key: ApiKey | None, problems: Sequence[str]) -> str:
    """The check's one line about the key: found, unreadable (why), or not set."""
    if key is not None:
        return f"api key: found ({key.source})"
    if problems:
        return f"warning: api key: {'; '.join(problems)} (running needs it)"
    return "warning: no API key found: set EXEC_API_KEY or api.api_key_file before running"


def _plural(count: float, word: str) -> str:
    """``1 request``, ``2 requests``, ``1 summary``, ``3 summaries``."""
    many = word[:-1] + "ies" if word.endswith("y") else word + "s"
    return f"{count:g} {word if count == 1 else many}"


def _parts(pages: int, summaries: int, lists: float, checks: float) -> str:
    """A participants cost's parts, for the check."""
    return (f"{_plural(pages, 'page')} + {_plural(summaries, 'summary')} + {lists:.2f} "
            f"member-list pages + {checks:.2f} cross-checks")


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


def _configuration(args: argparse.Namespace, cleanup: ExitStack
                   ) -> tuple[Config, ApiKey | None, list[str], list[str]]:
    """The configuration, its key (or None), warnings and, for the check only, why the
    key could not be read; the demo's simulated API stops with ``cleanup``."""
    if args.mode == "demo":
        from .sim import DEMO_API_KEY, SimulatedExecAPI, demo_config

        simulated = SimulatedExecAPI().start()
        cleanup.callback(simulated.stop)
        return (parse_config(demo_config(simulated.base_url)),
                ApiKey(DEMO_API_KEY, "built-in demo key"), [], [])
    config = load_config(args.config_file)
    try:
        return (config, *load_api_key(config), [])
    except InvalidApiKey:
        raise  # a key found but that cannot be sent is an error everywhere
    except ConfigError as exc:
        if not args.config_check:
            raise
        # The check does not need the key (the file may only exist where the exporter
        # will run): a key it cannot find is a warning there.
        return config, None, [], exc.problems


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``exec-exporter`` and ``python -m exporter``."""
    args = build_parser().parse_args(argv)
    logs.setup(args.log_level, args.log_format)
    problems = _usage_problems(args)
    if problems:
        _print_problems(problems, sys.stderr)
        return 2
    if args.mode == "backfill":
        return backfill.main(args)
    try:
        address = parse_listen_address(args.listen)
    except ValueError as exc:
        _print_problems([f"--web.listen-address: {exc}"], sys.stderr)
        return 2
    config_path = None if args.mode == "demo" else args.config_file
    with ExitStack() as cleanup:
        try:
            config, key, warnings, key_problems = _configuration(args, cleanup)
            if key is not None:
                logs.add_secret(key.value)
            if args.config_check:
                print(f"configuration OK: {config_path or 'built-in demo configuration'}")
                print(describe_plan(config, key))
                print(_key_line(key, key_problems))
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
            return 2

        # The handlers only record the signal: a handler runs in the main thread between
        # two bytecodes, and one that took a lock (Event.set) could find the main thread
        # holding it (in Event.wait) and deadlock, as a second signal during shutdown did.
        received: set[int] = set()
        for signum in (signal.SIGTERM, signal.SIGINT, _SIGHUP):
            if signum is not None:
                signal.signal(signum, lambda number, frame: received.add(number))
        try:
            exporter = Exporter(config, key, config_path, args.state_file)
            exporter.start(address, args.telemetry_path, web_config)
        except OSError as exc:
            code, message = listen_failure(exc, args.listen)
            if code == 2:  # a bad address: said like every other bad flag
                _print_problems([message], sys.stderr)
            else:
                log.error("%s", message)
            return code
        if args.mode == "demo":
            log.info("demo: simulated Exec API at %s; open http://%s:%s/", config.api.base_url,
                     "localhost" if address[0] in ("0.0.0.0", "::") else address[0],
                     exporter.server.server_address[1])
        try:
            while not received & {signal.SIGTERM, signal.SIGINT}:
                time.sleep(0.1)  # a signal interrupts the sleep; its handler runs at once
                if _SIGHUP in received:
                    received.discard(_SIGHUP)
                    exporter.reload()
        finally:
            log.info("shutting down")
            exporter.stop()
    return 0
