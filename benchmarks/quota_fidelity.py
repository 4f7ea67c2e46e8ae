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

Derived mode (``--derived``, issue 13): the whole Exporter (planner included) on a
fake clock against a simulated workspace whose summaries and participant rows
come from one session log: 3 scenarios of 40, 90 and 250 participants x 8
cohorts (all, 4 groups, an email list, no-staff, last 7 days), new sessions
arriving all along. Each plan (``planner.mode: summary`` and ``auto``) runs a
simulated day and a half; reported: requests per full refresh (every request
counted, member lists and cross-checks included), the effective interval, the
worst data age against the one-request-per-target optimum, and the ratio of
the two plans; then the same with more group cohorts per scenario.

    python benchmarks/quota_fidelity.py --derived
    python benchmarks/quota_fidelity.py --derived --cohorts 8,16,32

Proofs and cross-checks are paired with their pull (issue 18): the simulated
workspace honours ``end_date``. ``--quotas 60/1000,2/100000`` also runs a tight
minute quota with a large day quota (cross-checks are a share of the requests
actually sent, whichever budget is tighter); the table shows the busiest rolling
minute against the minute budget too.
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
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import _workload as w

from exporter.budget import DAY, MINUTE, Budget
from exporter.client import (
    ExecClient,
    Page,
    Summary,
    Timeout,
    UpstreamError,
    parse_list_page,
    parse_member,
    parse_participant,
    parse_summary,
)
from exporter.config import ApiKey, Config, parse_config
from exporter.daemon import Exporter
from exporter.jobs import Running, summary_job
from exporter.scheduler import Poller, Scheduler
from exporter.sim import rank_for, summary_body
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


# --- derived mode (issue 13) -----------------------------------------------------------

DERIVED_SIZES = (40, 90, 250)
WORKSPACE_USERS = 300
HISTORY = 90 * DAY
NEW_SESSION_EVERY = 2 * 3600.0  # per scenario: a new session every two hours on average


@dataclass
class SessionWorld:
    """A workspace: users in groups (some staff) and one session log per scenario,
    growing as the clock moves."""

    groups: int
    rng: random.Random
    users: list[tuple[str, str, frozenset[str]]] = field(default_factory=list)
    logs: dict[str, list[tuple[float, str, float, float]]] = field(default_factory=dict)
    audience: dict[str, list[str]] = field(default_factory=dict)
    grown_to: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for i in range(WORKSPACE_USERS):
            groups = {f"g{i % self.groups}"}
            if i % 6 == 0:
                groups.add(f"g{(i + 1) % self.groups}")
            domain = "exec.com" if i % 25 == 0 else "acme.com"
            self.users.append((f"u{i:04d}", f"user{i}@{domain}", frozenset(groups)))
        for n, size in enumerate(DERIVED_SIZES):
            slug = f"scenario-{size}"
            people = [u[0] for u in self.users[n * 20:n * 20 + size]]
            self.audience[slug] = people
            log = [(START - self.rng.uniform(0, HISTORY), uid, float(self.rng.randint(30, 100)),
                    float(self.rng.randint(120, 900)))
                   for uid in people for _ in range(self.rng.randint(1, 5))]
            self.logs[slug] = sorted(log)
            self.grown_to[slug] = START

    def grow(self, slug: str, now: float) -> None:
        log = self.logs[slug]
        while self.grown_to[slug] < now:
            self.grown_to[slug] += self.rng.expovariate(1 / NEW_SESSION_EVERY)
            if self.grown_to[slug] < now:
                log.append((self.grown_to[slug], self.rng.choice(self.audience[slug]),
                            float(self.rng.randint(30, 100)), float(self.rng.randint(120, 900))))

    def per_user(self, slug: str, params: Mapping[str, str], now: float
                 ) -> dict[str, list[tuple[float, str, float, float]]]:
        self.grow(slug, now)
        start = (w_parse_time(params["start_date"]) if params.get("start_date") else None)
        end = (w_parse_time(params["end_date"]) if params.get("end_date") else None)
        ids = set(filter(None, params.get("user_ids", "").split(",")))
        emails = {e.lower() for e in params.get("user_emails", "").split(",") if e}
        groups = set(filter(None, params.get("group_ids", "").split(",")))
        staffless = params.get("exclude_system_users") == "true"
        by_id = {u[0]: u for u in self.users}
        out: dict[str, list[tuple[float, str, float, float]]] = {}
        for session in self.logs[slug]:
            when, uid = session[0], session[1]
            _, email, member_of = by_id[uid]
            if when > now or (start is not None and when < start):
                continue
            if end is not None and when > end:
                continue
            if (ids or emails) and uid not in ids and email not in emails:
                continue
            if groups and not member_of & groups:
                continue
            if staffless and email.endswith("@exec.com"):
                continue
            out.setdefault(uid, []).append(session)
        return out


def w_parse_time(text: str) -> float:
    return time.mktime(time.strptime(text, "%Y-%m-%dT%H:%M:%SZ")) - time.timezone


@dataclass
class DerivedClient:
    """Stands in for ExecClient: summaries, participants and member lists of the world,
    each answer checked by the real parsers."""

    clock: FakeClock
    world: SessionWorld
    latency: float
    sent: list[tuple[float, str]] = field(default_factory=list)

    def _send(self, kind: str) -> None:
        self.sent.append((self.clock.now, kind))
        self.clock.now += self.latency

    def summary(self, scenario_id: str, params: Mapping[str, str]) -> Summary:
        self._send("summary")
        logs = self.world.per_user(scenario_id, params, self.clock.now).values()
        body = summary_body([max(s[2] for s in log) for log in logs],
                            [log[0][2] for log in logs], sum(len(log) for log in logs),
                            sum(s[3] for log in logs for s in log))
        return parse_summary(body)

    def participants(self, scenario_id: str, params: Mapping[str, str]) -> Page:
        self._send("participants")
        rows = []
        for uid, log in self.world.per_user(scenario_id, params, self.clock.now).items():
            first, best = log[0][2], max(s[2] for s in log)
            email = next(u[1] for u in self.world.users if u[0] == uid)
            rows.append({"user": {"id": uid, "email": email}, "session_count": len(log),
                         "first_score": first, "first_rank": rank_for(first),
                         "best_score": best, "best_rank": rank_for(best),
                         "lift_percentage": best - first,
                         "total_duration_seconds": sum(s[3] for s in log)})
        rows.sort(key=lambda r: (-r["best_score"], r["user"]["id"]))
        return _page(_paginate(rows, params), parse_participant)

    def members(self, params: Mapping[str, str]) -> Page:
        self._send("members")
        wanted = set(params.get("group_ids", "").split(","))
        items = [{"id": uid, "email": email} for uid, email, groups in self.world.users
                 if groups & wanted]
        return _page(_paginate(items, params), parse_member)

    def close(self) -> None:
        pass


def _page(body: dict[str, Any], parse: Callable[[object, str], Any]) -> Page:
    """``body`` read as the client reads a list page: the envelope, then every item."""
    envelope = parse_list_page(body, body["pagination"]["page"])
    return Page(tuple(parse(item, f"data[{i}]") for i, item in enumerate(envelope.items)),
                envelope.page, envelope.total_count, envelope.total_pages, envelope.page_size)


def _paginate(items: list[Any], params: Mapping[str, str]) -> dict[str, Any]:
    page, size = int(params.get("page", "1")), int(params.get("page_size", "50"))
    return {"data": items[(page - 1) * size:page * size],
            "pagination": {"page": page, "page_size": size, "total_count": len(items),
                           "total_pages": -(-len(items) // size)}}


class SimulatedExporter(Exporter):
    """The real Exporter (planner, scheduler, poller, store) with the simulated client."""

    def __init__(self, config: Config, client: DerivedClient, clock: FakeClock) -> None:
        self._sim_client = client
        super().__init__(config, ApiKey("exec_live_" + "x" * 40, "simulation"), None,
                         None, clock)

    def _client(self, config: Config) -> ExecClient:
        return self._sim_client  # type: ignore[return-value]


def derived_config(groups: int, mode: str, per_day: int, refresh: str,
                   membership: str = "1h", per_minute: int = 60) -> Config:
    cohorts: list[dict[str, Any]] = [{"name": "all"}]
    cohorts += [{"name": f"group-{g}", "group_ids": [f"g{g}"]} for g in range(groups)]
    cohorts += [{"name": "emails", "user_emails": [f"user{i}@acme.com" for i in range(1, 60, 4)]},
                {"name": "no-staff", "exclude_system_users": True},
                {"name": "last-7d", "window": "7d"}]
    return parse_config({
        "api": {"base_url": "http://127.0.0.1:9/rest/v1", "timeout": "10s",
                "rate_limit": {"requests_per_minute": per_minute, "requests_per_day": per_day,
                               "reserve": 0.1}},
        "refresh_interval": refresh,
        # Named: no scenario-list read for display names (the table is about the planner).
        "scenarios": [{"id": f"scenario-{n}", "name": f"Scenario {n}"} for n in DERIVED_SIZES],
        "cohorts": cohorts,
        "planner": {"mode": mode, "membership_interval": membership},
    })


def simulate_derived(groups: int, mode: str, seed: int, latency: float, per_day: int,
                     refresh: str, membership: str = "1h", per_minute: int = 60
                     ) -> dict[str, Any]:
    config = derived_config(groups, mode, per_day, refresh, membership, per_minute)
    clock = FakeClock(START)
    world = SessionWorld(groups, random.Random(seed))
    client = DerivedClient(clock, world, latency)
    exporter = SimulatedExporter(config, client, clock)
    poller, store, planner = exporter.poller, exporter.store, exporter.planner
    keys = [t.key for t in exporter._targets.values()]
    optimum = len(keys) * DAY / config.api.rate_limit.day_budget
    fill_done: float | None = None
    end = START + 10 * DAY
    steady_from = end
    next_sample = START
    ages: list[float] = []
    worst = 0.0
    started = time.monotonic()
    for _ in range(2_000_000):
        if clock.now >= end:
            break
        before = len(client.sent)
        wake = poller.step()
        if len(client.sent) == before and wake <= clock.now:
            wake = clock.now + 0.001
        if fill_done is None and all((s := store.get(k)) is not None and s.last_success
                                     for k in keys):
            fill_done = clock.now
            # Past the fill's own day (the ledger's burst), then a day of steady state.
            steady_from = START + DAY + 2 * optimum
            end = steady_from + DAY
        while next_sample <= min(wake, end):
            if next_sample >= steady_from:
                for k in keys:
                    state = store.get(k)
                    last = state.last_success if state and state.last_success else START
                    ages.append(next_sample - last)
                    worst = max(worst, next_sample - last)
            next_sample += SAMPLE_EVERY
        clock.now = max(clock.now, min(wake, end))
    times = [t for t, _ in client.sent]
    lo, hi = bisect.bisect_left(times, steady_from), bisect.bisect_left(times, end)
    kinds: dict[str, int] = {}
    for _, kind in client.sent[lo:hi]:
        kinds[kind] = kinds.get(kind, 0) + 1
    interval = exporter.scheduler.interval
    per_day_steady = (hi - lo) / ((end - steady_from) / DAY)
    counters = store.cross_checks()
    return {
        "mode": mode if mode == "summary" else f"auto, lists {membership}",
        "quota": f"{per_minute}/min, {per_day}/day",
        "max_rolling_minute": max_in_window([t for t, _ in client.sent], MINUTE),
        "minute_budget": config.api.rate_limit.minute_budget,
        "cohorts": len(config.cohorts), "targets": len(keys),
        "interval_s": interval, "optimum_s": optimum,
        "steady_per_day": per_day_steady, "by_kind_per_day": kinds,
        "requests_per_cycle": per_day_steady * interval / DAY,
        "plan_requests_per_cycle": planner.requests_per_cycle(interval),
        "worst_age_s": worst, "median_age_s": statistics.median(ages) if ages else None,
        "derived_targets": sum(1 for _, source in planner.sources() if source == "participants"),
        "matches": sum(v for (_, r), v in counters.items() if r == "match"),
        "mismatches": sum(v for (_, r), v in counters.items() if r == "mismatch"),
        "max_rolling_day": max_in_window(times, DAY),
        "day_budget": config.api.rate_limit.day_budget,
        "sim_seconds": time.monotonic() - started,
    }


def report_derived(results: list[dict[str, Any]]) -> str:
    rows = []
    by = {(r["quota"], r["cohorts"], r["mode"]): r for r in results}
    for (quota, cohorts, mode), r in sorted(by.items()):
        base = by.get((quota, cohorts, "summary")) if mode != "summary" else r
        ratio = (base["requests_per_cycle"] / r["requests_per_cycle"]) if base else None
        age_ratio = (base["worst_age_s"] / r["worst_age_s"]) if base else None
        kinds = ", ".join(f"{k} {v / (r['steady_per_day'] or 1):.0%}"
                          for k, v in sorted(r["by_kind_per_day"].items()))
        rows.append([
            quota, cohorts, r["targets"], mode, f"{r['requests_per_cycle']:.1f}",
            f"{r['interval_s'] / 60:.1f} min", f"{r['worst_age_s'] / 60:.1f} min",
            f"{r['worst_age_s'] / r['optimum_s']:.2f}",
            "-" if ratio is None else f"{ratio:.2f}x",
            "-" if age_ratio is None else f"{age_ratio:.2f}x",
            f"{r['derived_targets']}/{r['targets']}", f"{r['matches']}/{r['mismatches']}",
            f"{r['max_rolling_day']}/{r['day_budget']}",
            f"{r['max_rolling_minute']}/{r['minute_budget']}", kinds])
    header = ["quota", "cohorts/scenario", "targets", "plan", "requests per cycle", "interval",
              "worst age", "worst age / optimum", "fewer requests per cycle",
              "fresher (worst age)", "derived", "cross-checks match/mismatch",
              "max / rolling 24 h", "max / rolling 60 s", "steady requests by kind"]
    notes = ("3 scenarios of 40, 90 and 250 participants; optimum = one request per target "
             "(targets x 86400 / day budget). Requests per cycle = every request of the "
             "steady day x interval / 86400\n(member lists and cross-checks included). "
             "Goal (issue 13): >= 2.5x fewer requests per cycle with 8 cohorts.")
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
    parser.add_argument("--derived", action="store_true",
                        help="derived cohorts (issue 13): summary plan against auto plan")
    parser.add_argument("--membership-intervals", default="1h",
                        help="--derived: planner.membership_interval values to try "
                             "(default: %(default)s)")
    parser.add_argument("--quotas", default="60/1000",
                        help="--derived: requests per minute/per day pairs to try, e.g. "
                             "60/1000,2/100000 (a tight minute quota, a large day quota)")
    parser.add_argument("--cohorts", default="8,16,32",
                        help="--derived: cohorts per scenario to try (all, groups, an email "
                             "list, no-staff, last-7d; default: %(default)s)")
    args = parser.parse_args()
    logging.disable(logging.CRITICAL)  # the poller logs every simulated failure
    if args.derived:
        derived = []
        quotas = [tuple(int(n) for n in q.split("/")) for q in args.quotas.split(",") if q]
        for (per_minute, per_day), k in ((q, int(x)) for q in quotas
                                         for x in args.cohorts.split(",") if x):
            runs = [("summary", "1h")] + [("auto", m) for m in
                                          args.membership_intervals.split(",") if m]
            for mode, membership in runs:
                print(f"simulating {k} cohorts x 3 scenarios, {per_minute}/min {per_day}/day, "
                      f"planner.mode {mode} ...", file=sys.stderr, flush=True)
                derived.append(simulate_derived(k - 4, mode, args.seed, args.latency,
                                                per_day, args.refresh_interval, membership,
                                                per_minute))
        print(report_derived(derived))
        if args.json:
            args.json.write_text(json.dumps(derived, indent=1))
        return 0
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
