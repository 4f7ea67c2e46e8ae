"""Quota fidelity: how much of the budget the real scheduler uses, and how fresh it keeps data.

A simulated run on a fake clock (no sleeping): the real ``Scheduler``,
``Budget``, ``Poller`` and ``Store`` against a fake client that answers every
summary request (after a simulated latency), or fails a share of them with a
5xx. Default quota: 60/min and 1,000/day less the 10% reserve, so a budget of
54/min and 900/day; refresh_interval 15m, so demand exceeds the budget from 10
targets on.

Reported per target count and failure rate:

* requests in steady state against the day budget (goal: >= 95% when demand
  exceeds it), and the most requests in any rolling 24 h and any rolling 60 s
  over the whole run, first fill included (goal: never over either limit);
* worst and median data age in steady state against the optimum
  ``targets x 86400 / day budget`` (the ages of an ideal round-robin spread
  evenly over [0, optimum]: worst = optimum, median = optimum / 2; goal: worst
  within 5%).

Steady state starts two effective intervals after the first fill completed (the
first refresh round after a fill still carries the fill's order: when targets
outnumber the day budget the fill itself spans a day) and no earlier than one
interval past the first 24 h (the fill's burst leaves the rolling day then, and
the scheduler may have to wait for it), and lasts three intervals or a day,
whichever is longer. The worst age from the end of the first fill on, those
transients included, is reported too.

Hanging targets (``--broken-share``) answer during the first 12 h, then every
request for them times out; the ages are those of the healthy targets.

    python benchmarks/quota_fidelity.py
    python benchmarks/quota_fidelity.py --targets 20,100 --failure-rates 0,0.05,0.2
"""

from __future__ import annotations

import argparse
import bisect
import json
import logging
import random
import statistics
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import _workload as w

from exporter.budget import DAY, MINUTE, Budget
from exporter.client import Summary, Timeout, UpstreamError
from exporter.config import parse_config
from exporter.jobs import Running, summary_job
from exporter.scheduler import Poller, Scheduler
from exporter.store import Store

START = 1_790_000_000.0
SAMPLE_EVERY = 300.0  # seconds between data-age samples
HANG = 10.0  # seconds a broken target's request takes before timing out
BREAK_AFTER = 43200.0  # broken targets answer for the first 12 h


class FakeClock:
    def __init__(self, now: float) -> None:
        self.now = now

    def time(self) -> float:
        return self.now


@dataclass
class FakeClient:
    """Stands in for ExecClient: answers after ``latency`` simulated seconds, or fails.

    A share of requests fail at random with a 503; requests for the ``broken``
    targets always hang until the client's timeout.
    """

    clock: FakeClock
    failure_rate: float
    latency: float
    rng: random.Random
    broken: frozenset[tuple[str, str]] = frozenset()
    sent: list[float] = field(default_factory=list)
    failures: int = 0

    def summary(self, scenario_id: str, params: Mapping[str, str]) -> Summary:
        self.sent.append(self.clock.now)
        if (self.clock.now >= START + BREAK_AFTER
                and (scenario_id, params.get("group_ids", "")) in self.broken):
            self.clock.now += HANG
            self.failures += 1
            raise Timeout("read timed out (simulated)")
        self.clock.now += self.latency
        if self.rng.random() < self.failure_rate:
            self.failures += 1
            raise UpstreamError("HTTP 503 (simulated)", 503)
        return w.summary_for(len(self.sent))

    def close(self) -> None:
        pass


def max_in_window(times: list[float], window: float) -> int:
    """The most requests in any window (t - window, t] (the Budget's own convention)."""
    best, lo = 0, 0
    for hi, t in enumerate(times):
        while times[lo] <= t - window:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


def simulate(targets: int, failure_rate: float, seed: int, latency: float,
             per_minute: int, per_day: int, reserve: float,
             refresh_interval: str, broken_share: float = 0.0) -> dict[str, Any]:
    raw = w.config_dict(targets, "http://127.0.0.1:9/rest/v1", refresh_interval)
    raw["api"]["rate_limit"] = {"requests_per_minute": per_minute,
                                "requests_per_day": per_day, "reserve": reserve}
    for cohort in raw["cohorts"]:  # a filter per cohort, so the fake client tells them apart
        cohort["group_ids"] = [f"g-{cohort['name']}"]
    config = parse_config(raw)
    rate = config.api.rate_limit
    clock = FakeClock(START)
    budget = Budget(rate.minute_budget, rate.day_budget)
    scheduler = Scheduler(budget, config.refresh_interval, rng=random.Random(seed))
    kept = w.targets_of(config)
    by_key = {t.key: t for t in kept}
    every = round(1 / broken_share) if broken_share > 0 else 0
    broken = {t.key for i, t in enumerate(kept) if every and i % every == every // 2}
    client = FakeClient(clock, failure_rate, latency, random.Random(seed + 1),
                        frozenset((t.scenario, f"g-{t.cohort.name}") for t in kept
                                  if t.key in broken))
    store = Store()
    store.set_targets(kept)
    running = Running(client=client,  # type: ignore[arg-type]
                      jobs=tuple(summary_job(t, store) for t in kept),
                      refresh_interval=config.refresh_interval,
                      minute_budget=rate.minute_budget, day_budget=rate.day_budget)
    poller = Poller(scheduler, lambda: running, store, clock)
    scheduler.adopt(running, clock.now)

    interval = scheduler.interval
    optimum = targets * DAY / rate.day_budget
    keys = [k for k in by_key if k not in broken]  # ages of the healthy targets only
    fill_done: float | None = None
    end = START + 30 * DAY  # replaced once the first fill is done
    ages: list[float] = []
    worst = worst_after_fill = 0.0
    steady_from = end
    next_sample = START
    steps = 0
    started = time.monotonic()
    while clock.now < end:
        steps += 1
        if steps > 5_000_000:
            raise RuntimeError("simulation does not converge")
        before = len(client.sent)
        wake = poller.step()
        if len(client.sent) == before and wake <= clock.now:
            wake = clock.now + 0.001  # nothing to do now: never spin on the same instant
        if fill_done is None and len(client.sent) > before and all(
                scheduler.times(k).last_success is not None for k in keys):
            fill_done = clock.now
            steady_from = max(fill_done + 2 * interval, START + DAY + interval)
            end = steady_from + max(3 * interval, DAY)
        # Sample data ages on a fixed grid up to the next event (nothing changes between).
        while next_sample <= min(wake, end):
            if fill_done is not None and next_sample >= fill_done:
                oldest = min(scheduler.times(k).last_success or START for k in keys)
                worst_after_fill = max(worst_after_fill, next_sample - oldest)
            if next_sample >= steady_from:
                for k in keys:
                    last = scheduler.times(k).last_success
                    age = next_sample - last if last is not None else next_sample - START
                    ages.append(age)
                    worst = max(worst, age)
            next_sample += SAMPLE_EVERY
        clock.now = max(clock.now, min(wake, end))

    sent = client.sent
    lo = bisect.bisect_left(sent, steady_from)
    hi = bisect.bisect_left(sent, end)
    window_days = (end - steady_from) / DAY
    demand = targets * DAY / config.refresh_interval
    return {
        "targets": targets,
        "failure_rate": failure_rate,
        "broken": len(broken),
        "day_budget": rate.day_budget,
        "minute_budget": rate.minute_budget,
        "demand_per_day": demand,
        "interval_s": interval,
        "optimum_s": optimum if demand > rate.day_budget else config.refresh_interval,
        "fill_s": None if fill_done is None else fill_done - START,
        "steady_from_h": (steady_from - START) / 3600,
        "steady_hours": (end - steady_from) / 3600,
        "requests": len(sent),
        "failures": client.failures,
        "steady_per_day": (hi - lo) / window_days,
        "max_rolling_day": max_in_window(sent, DAY),
        "max_rolling_minute": max_in_window(sent, MINUTE),
        "worst_age_s": worst,
        "median_age_s": statistics.median(ages) if ages else float("nan"),
        "worst_after_fill_s": worst_after_fill,
        "sim_seconds": time.monotonic() - started,
    }


def report(results: list[dict[str, Any]]) -> str:
    rows = []
    for r in results:
        bound = r["demand_per_day"] > r["day_budget"]
        use = r["steady_per_day"] / r["day_budget"]
        worst = r["worst_age_s"] / r["optimum_s"]
        overrun = (r["max_rolling_day"] > r["day_budget"]
                   or r["max_rolling_minute"] > r["minute_budget"])
        rows.append([
            r["targets"], f"{r['failure_rate']:.0%}", r["broken"],
            f"{use:.1%}{' (!)' if bound and use < 0.95 else ''}",
            f"{r['max_rolling_day']}/{r['day_budget']}{' (!)' if overrun else ''}",
            f"{r['max_rolling_minute']}/{r['minute_budget']}",
            f"{worst:.3f}{' (!)' if bound and r['failures'] == 0 and worst > 1.05 else ''}",
            f"{r['median_age_s'] / r['optimum_s']:.3f}",
            f"{r['worst_after_fill_s'] / r['optimum_s']:.2f}",
            f"{r['optimum_s'] / 60:.0f} min",
            "-" if r["fill_s"] is None else f"{r['fill_s'] / 60:.1f} min",
            f"{r['steady_from_h']:.0f}-{r['steady_from_h'] + r['steady_hours']:.0f} h",
        ])
    header = ["targets", "5xx", "hanging", "budget used (steady)", "max / rolling 24 h",
              "max / rolling 60 s", "worst age / optimum", "median age / optimum",
              "worst after fill / optimum",
              "optimum", "first fill", "steady window"]
    notes = ("Goals: budget used >= 95% when demand exceeds it; max per rolling window never "
             "over the budget;\nworst age within 5% of the optimum (targets x 86400 / day "
             "budget) without failures; (!) marks a miss.\nAn ideal round-robin has worst = "
             "1.000 and median = 0.500.")
    return notes + "\n" + w.table(rows, header)


def main() -> int:
    parser = argparse.ArgumentParser(description="Quota fidelity of the real scheduler.")
    parser.add_argument("--targets", default="20,100,1000")
    parser.add_argument("--failure-rates", default="0,0.05")
    parser.add_argument("--broken-share", type=float, default=0.05,
                        help="share of targets that always hang, in one more run per size "
                             "(0: none; default: %(default)s)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--latency", type=float, default=0.3,
                        help="simulated seconds per API request (default: %(default)s)")
    parser.add_argument("--requests-per-minute", type=int, default=60)
    parser.add_argument("--requests-per-day", type=int, default=1000)
    parser.add_argument("--reserve", type=float, default=0.1)
    parser.add_argument("--refresh-interval", default="15m")
    parser.add_argument("--json", type=Path, help="also write the raw results here")
    args = parser.parse_args()
    logging.disable(logging.CRITICAL)  # the poller logs every simulated failure
    results = []
    for n in (int(x) for x in args.targets.split(",") if x):
        for rate in (float(x) for x in args.failure_rates.split(",") if x):
            print(f"simulating {n} targets, {rate:.0%} failures ...", file=sys.stderr, flush=True)
            result = simulate(n, rate, args.seed, args.latency, args.requests_per_minute,
                              args.requests_per_day, args.reserve, args.refresh_interval)
            print(f"  {result['requests']} requests, {result['sim_seconds']:.1f}s",
                  file=sys.stderr, flush=True)
            results.append(result)
        if args.broken_share > 0:
            print(f"simulating {n} targets, {args.broken_share:.0%} of them hanging ...",
                  file=sys.stderr, flush=True)
            results.append(simulate(n, 0.0, args.seed, args.latency, args.requests_per_minute,
                                    args.requests_per_day, args.reserve,
                                    args.refresh_interval, args.broken_share))
    print(report(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
