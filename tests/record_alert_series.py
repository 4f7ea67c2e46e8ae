"""Record the exporter's real output in each state the alerts are about, as promtool input.

The promtool tests of the exporter's own alerts (``prometheus/exporter_alerts_test.yml``)
must feed the rules what the exporter really exports, not what someone thinks it
does. This script runs the exporter (in process, its poller stepped on a fake clock
that starts at 0, promtool's epoch) against the fake Exec API over real HTTP on
127.0.0.1, with the planner on and both listings on, in each state:

* ``healthy``: every request answered, for an hour;
* ``unauthorized``: the key is revoked at minute 10 (every request 401s, whatever
  its kind), replaced at minute 50;
* ``forbidden``: the workspace is inactive (403) from minute 10 to minute 50;
* ``rate_limited``: every request gets 429 (retry_after 60 s) from minute 10 to
  minute 50, as when another integration spends the workspace's quota;
* ``hanging``: from minute 10 on, the API accepts connections and never answers in
  time (every request times out); max_staleness is 35 minutes.

Each minute it renders /metrics and keeps the series the alerts read; the expected
alerts of each state are written below, beside the states. ``tests/test_rules.py``
runs this again and fails when the committed file differs from what the exporter
produces now (so the input cannot drift from the exporter), and runs promtool on it.

    .venv/bin/python tests/record_alert_series.py          # rewrite the file
    .venv/bin/python tests/record_alert_series.py --check  # exit 1 if it would change
"""

from __future__ import annotations

import argparse
import random
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
for path in (str(ROOT), str(TESTS)):
    if path not in sys.path:
        sys.path.insert(0, path)

from conftest import FakeClock  # noqa: E402
from e2e_helpers import alert_config, populate_alert_world  # noqa: E402
from fakeapi import FakeExecAPI  # noqa: E402
from harness import make_key, parse_metrics  # noqa: E402

from exporter.config import ApiKey, parse_config  # noqa: E402
from exporter.daemon import Exporter  # noqa: E402

OUTPUT = ROOT / "prometheus" / "exporter_alerts_test.yml"
LABELS = {"job": "exec-exporter", "instance": "exporter:10025"}
# What the exporter's alerts read, and the 429 counts of
# exec_exporter_api_requests_total (ExecExporterRateLimited). Counters that move with
# every request, and build_info (its version changes with each release), are left out.
RECORDED = (
    "exec_exporter_api_paused",
    "exec_exporter_target_up",
    "exec_exporter_target_last_error",
    "exec_exporter_target_last_success_timestamp_seconds",
    "exec_exporter_max_staleness_seconds",
)
RUNBOOK = "https://github.com/exec-exporter/exec-exporter/blob/main/docs/monitoring.md#"
EVERYTHING = ("scenarios", "groups", "members", "skills", "assignments")


def fault_everything(api: FakeExecAPI, fault: str | None, **kw: Any) -> None:
    """Put ``fault`` (None: clear) on every endpoint: summaries, pulls and every list."""
    api.set_fault(None, fault, **kw)
    for which in EVERYTHING:
        api.set_list_fault(which, fault, **kw)


Key = tuple[str, tuple[tuple[str, str], ...]]
Recorded = dict[Key, list[float | None]]  # one value a minute from minute 0, None: absent


@dataclass(frozen=True)
class State:
    """One recorded run: events at given minutes, and the alerts expected of it (built
    from the recording where a value must be quoted, e.g. the age of the data)."""

    name: str
    minutes: int
    events: dict[int, Callable[[FakeExecAPI], None]]
    expected: Callable[[Recorded], list[dict[str, Any]]]
    config: dict[str, Any] = field(default_factory=dict)
    timeout: str = "1s"  # the client's; the hanging state waits it out in real time


ALERTS = ("ExecExporterUnauthorized", "ExecExporterTargetFailing", "ExecExporterRateLimited",
          "ExecExporterDataStale")
SUMMARIES = {
    "ExecExporterUnauthorized": "The Exec API rejects exec-exporter's API key.",
    "ExecExporterTargetFailing": "An Exec target keeps failing to refresh.",
    "ExecExporterRateLimited":
        "The Exec API keeps rejecting exec-exporter with 429 Too Many Requests.",
    "ExecExporterDataStale": "Exec data is older than the exporter's max_staleness.",
}
TARGETS = [(s, c) for s in ("discovery-call", "pricing-objection") for c in ("all", "sales")]


def _alert(name: str, severity: str, description: str, **labels: str) -> dict[str, Any]:
    return {"exp_labels": {"severity": severity, **LABELS, **labels},
            "exp_annotations": {"summary": SUMMARIES[name], "description": description,
                                "runbook_url": RUNBOOK + name.lower()}}


def _checks(minute: int, firing: dict[str, list[dict[str, Any]]] | None = None
            ) -> list[dict[str, Any]]:
    """One check per exporter alert at ``minute``: those in ``firing`` with their
    alerts, every other one quiet."""
    firing = firing or {}
    return [{"eval_time": f"{minute}m", "alertname": name,
             "exp_alerts": firing.get(name, [])} for name in ALERTS]


def _refused(reason: str) -> dict[str, Any]:
    code, why = {"unauthorized": ("401", "the API key is invalid or revoked"),
                 "forbidden": ("403", "the workspace is inactive")}[reason]
    return _alert("ExecExporterUnauthorized", "critical",
                  f"exporter:10025 gets {reason} answers from the Exec API (HTTP {code}: "
                  f"{why}); all polling is paused and every target is down.", reason=reason)


def _refused_checks(reason: str) -> Callable[[Recorded], list[dict[str, Any]]]:
    # Refused from minute 10 to 50. The first refusal comes with the next request due
    # (minute 15, refresh_interval 15m); the pause is pending at once (for: 2m) and the
    # alert fires from minute 17 until the first probe after minute 50 gets through
    # (probes every 30 s growing to 5 min). Every target is down all along, yet
    # TargetFailing stays quiet: the pause says it once.
    def expected(recorded: Recorded) -> list[dict[str, Any]]:
        firing = {"ExecExporterUnauthorized": [_refused(reason)]}
        return [*_checks(14), *_checks(18, firing), *_checks(49, firing), *_checks(58)]
    return expected


def _at(recorded: Recorded, name: str, minute: int, **labels: str) -> list[tuple[Key, float]]:
    """The series of ``name`` with ``labels`` present at ``minute``, with their values."""
    return [(key, values[minute]) for key, values in recorded.items()
            if key[0] == name and set(labels.items()) <= set(key[1])
            and values[minute] is not None]


def _rate_limited_checks(recorded: Recorded) -> list[dict[str, Any]]:
    # 429s on every request from minute 10 to 50: from the next request due (minute
    # 15) one request a minute (retry_after 60 s) meets the next 429, more than 2 an
    # hour from minute 17, firing 15 minutes later. The counters start at 0 at minute 0,
    # so promtool's increase() over the last hour is exactly the count at 49m.
    by_kind = {dict(key[1])["kind"]: value for key, value in
               _at(recorded, "exec_exporter_api_requests_total", 49, code="429")}
    top = max(sorted(by_kind), key=lambda kind: by_kind[kind])
    total = sum(by_kind.values())
    alert = _alert("ExecExporterRateLimited", "warning",
                   f"exporter:10025 received {total:.0f} HTTP 429 responses from the Exec "
                   "API in the last hour; all requests are paused after each one, so data "
                   f"gets older. Most of them on {top} requests.")
    return [*_checks(20), *_checks(49, {"ExecExporterRateLimited": [alert]})]


def _humanize(seconds: float) -> str:
    """Prometheus' humanizeDuration for whole minutes and seconds under a day."""
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return (f"{hours}h {minutes}m {secs}s" if hours else f"{minutes}m {secs}s")


def _hanging_checks(recorded: Recorded) -> list[dict[str, Any]]:
    # The API hangs from minute 10: each target is down with reason timeout from its
    # first try after that (minute 15 or 16), and TargetFailing fires 30 minutes later.
    # The data last fetched at minute 0 or 1 gets older than max_staleness (35 m) at
    # minute 35 or 36; DataStale fires 15 minutes after that. No pause: Unauthorized
    # and RateLimited stay quiet.
    minute = 59
    failing = [_alert("ExecExporterTargetFailing", "warning",
                      f"Every refresh of scenario {s}, cohort {c} on exporter:10025 has failed "
                      "for 30 minutes; its series keep their last good values until they go "
                      "stale. Last error: timeout.", scenario=s, cohort=c) for s, c in TARGETS]
    [(_, limit)] = _at(recorded, "exec_exporter_max_staleness_seconds", minute)
    stale = []
    for s, c in TARGETS:
        [(_, last)] = _at(recorded, "exec_exporter_target_last_success_timestamp_seconds",
                          minute, scenario=s, cohort=c)
        stale.append(_alert(
            "ExecExporterDataStale", "warning",
            f"The data of scenario {s}, cohort {c} on exporter:10025 was last fetched "
            f"{_humanize(minute * 60 - last)} ago, more than max_staleness "
            f"({_humanize(limit)}); its data series are no longer exported.",
            scenario=s, cohort=c))
    return [*_checks(25),
            *_checks(minute, {"ExecExporterTargetFailing": failing,
                              "ExecExporterDataStale": stale})]


STATES = [
    State("healthy", 60, {}, lambda recorded: [*_checks(5), *_checks(30), *_checks(59)]),
    State("unauthorized", 60,
          {10: lambda api: setattr(api, "api_key", make_key("revoked")),
           50: lambda api: setattr(api, "api_key", make_key())},
          _refused_checks("unauthorized")),
    State("forbidden", 60,
          {10: lambda api: fault_everything(api, "403"),
           50: lambda api: fault_everything(api, None)},
          _refused_checks("forbidden")),
    State("rate_limited", 60,
          {10: lambda api: fault_everything(api, "429_header", retry_after=60),
           50: lambda api: fault_everything(api, None)},
          _rate_limited_checks),
    State("hanging", 60, {10: lambda api: fault_everything(api, "hang", seconds=3)},
          _hanging_checks, config={"max_staleness": "35m"}, timeout="200ms"),
]


def record(state: State) -> Recorded:
    """Run the exporter through ``state``; every recorded series, one value a minute
    (None where the series was absent)."""
    clock = FakeClock(0.0)
    key = make_key()
    api = FakeExecAPI(key, clock=clock.time).start()
    try:
        populate_alert_world(api, clock.now)
        config = parse_config(alert_config(
            api.base_url, api={"base_url": api.base_url, "timeout": state.timeout},
            **state.config))
        exporter = Exporter(config, ApiKey(key, "test"), None, None, clock)
        exporter.scheduler.rng = random.Random(20)  # backoff jitter, reproducible
        samples: list[dict[Key, float]] = []
        for minute in range(state.minutes + 1):
            if minute in state.events:
                state.events[minute](api)
            _run_until(exporter, clock, minute * 60.0)
            values = parse_metrics(exporter.exposition.render().decode())
            samples.append({k: v for k, v in values.items() if k[0] in RECORDED
                            or (k[0] == "exec_exporter_api_requests_total"
                                and ("code", "429") in k[1])})
        exporter.poller.stop()
    finally:
        api.stop()
    keys = sorted({k for minute in samples for k in minute})
    return {k: [minute.get(k) for minute in samples] for k in keys}


def _run_until(exporter: Exporter, clock: FakeClock, until: float) -> None:
    """Step the poller, moving the clock to each wake-up, up to ``until``."""
    for _ in range(10_000):
        wake = exporter.poller.step()
        if wake <= clock.now:
            continue  # a job ran: ask again
        if wake > until:
            break
        clock.now = wake
    clock.now = until


def _values(values: list[float | None]) -> str:
    """promtool's expanding notation: runs of one value as ``v`` or ``vxN``, gaps ``_``."""
    out: list[str] = []
    i = 0
    while i < len(values):
        j = i
        while j + 1 < len(values) and values[j + 1] == values[i]:
            j += 1
        text = "_" if values[i] is None else _number(values[i])
        out.append(text if j == i else f"{text}x{j - i}")
        i = j + 1
    return " ".join(out)


def _number(value: float | None) -> str:
    assert value is not None
    return str(int(value)) if value == int(value) else repr(value)


def _series(name: str, labels: tuple[tuple[str, str], ...]) -> str:
    pairs = ",".join(f'{k}="{v}"' for k, v in (*LABELS.items(), *labels))
    return f"{name}{{{pairs}}}"


def build() -> str:
    """The whole promtool test file, as text."""
    tests = []
    for state in STATES:
        recorded = record(state)
        expected = state.expected(recorded)
        tests.append({
            "name": f"recorded: {state.name}",
            "interval": "1m",
            "input_series": [{"series": _series(name, labels), "values": _values(values)}
                             for (name, labels), values in recorded.items()],
            "alert_rule_test": expected,
        })
    header = ("# GENERATED by tests/record_alert_series.py from the exporter's real /metrics\n"
              "# against the fake Exec API: do not edit; run the script again.\n"
              "# tests/test_rules.py fails when this file differs from what the exporter\n"
              "# exports now, and runs promtool on it.\n")
    body = yaml.safe_dump({"rule_files": ["alerts.yml"], "evaluation_interval": "1m",
                           "tests": tests}, sort_keys=False, width=1000, allow_unicode=True)
    return header + body


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="exit 1 if the committed file differs from a new recording")
    args = parser.parse_args(argv)
    text = build()
    if args.check:
        same = OUTPUT.exists() and OUTPUT.read_text() == text
        print(f"{OUTPUT.relative_to(ROOT)}: {'up to date' if same else 'differs'}")
        return 0 if same else 1
    OUTPUT.write_text(text)
    print(f"wrote {OUTPUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
