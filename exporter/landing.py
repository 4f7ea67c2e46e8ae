"""The status page at ``/``: version, links, a workspace pause, and one row per target.

Rendered from a store snapshot on each request (people read it, Prometheus does not);
nothing here calls the API.
"""

from __future__ import annotations

import datetime as dt
import html
import math
from typing import TYPE_CHECKING

from . import __version__
from .config import format_duration

if TYPE_CHECKING:
    from .server import Web


def _when(ts: float | None, now: float) -> str:
    """A time for people: the UTC stamp and how far from now, durations as in the logs
    (``17m36s``). Never fails, whatever the scheduler's state: a target of the first
    fill is due at minus infinity, one with nothing planned at infinity."""
    if ts is None:
        return "never"
    if ts == -math.inf:
        return "now"
    if not math.isfinite(ts):
        return "not planned"
    try:
        stamp = dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")
    except (OverflowError, OSError, ValueError):
        return "not planned" if ts > now else "long ago"
    delta = round(ts - now)
    if delta == 0:
        return f"{stamp} (now)"
    rel = f"in {format_duration(delta)}" if delta > 0 else f"{format_duration(-delta)} ago"
    return f"{stamp} ({rel})"


def landing_page(web: Web) -> str:
    """A small HTML page: version, link to metrics, one row per target."""
    snapshot = web.store.snapshot()
    now = web.clock()
    e = html.escape
    rows = []
    paused = snapshot.pause_reason
    for state in snapshot.targets:
        target = state.target
        error = "" if state.last_error is None else (
            f"{e(state.last_error)}: {e(state.last_error_message or '')} "
            f"({_when(state.last_error_time, now)})")
        # A target never tried yet is waiting, not down.
        css = "up" if state.up else "waiting" if state.last_error is None else "down"
        if paused is not None:
            # As on /metrics: down with the pause's reason while it lasts; the target's
            # own last error, if any, stays visible after it.
            css = "down"
            error = f"{e(paused)} (workspace-wide pause)" + (f"; before: {error}"
                                                              if error else "")
        rows.append(
            "<tr>"
            f"<td>{e(target.scenario)}</td><td>{e(target.display_name or '')}</td>"
            f"<td>{e(target.cohort.name)}</td>"
            + (f"<td>{e(web.source(target.key))}</td>" if web.source else "")
            + f"<td class={css}>{css}</td>"
            f"<td>{_when(state.last_success, now)}</td><td>{error}</td>"
            f"<td>{_when(state.next_due, now)}</td></tr>")
    discovery = ""
    if snapshot.discovery_success or snapshot.discovery_error:
        items = []
        for kind in sorted(set(snapshot.discovery_success) | set(snapshot.discovery_error)):
            err = snapshot.discovery_error.get(kind)
            last = _when(snapshot.discovery_success.get(kind), now)
            items.append(f"<li>{e(kind)}: last read {last}"
                         + (f"; last error: {e(err)}" if err else "") + "</li>")
        discovery = "<h2>Workspace lists</h2><ul>" + "".join(items) + "</ul>"
    notice = ""
    if paused is not None and snapshot.pause_until is not None and snapshot.pause_until > now:
        why = {"rate_limited": "the API answered 429 (rate limited)",
               "unauthorized": "the API refused the key (401)",
               "forbidden": "the API refused the workspace (403)"}.get(paused, e(paused))
        then = ("the next request is sent" if paused == "rate_limited"
                else "a probe request is sent")
        notice = (f'<p class="notice">All requests are paused: {why}; {then} '
                  f"{_when(snapshot.pause_until, now)}.</p>")
    failed = ", ".join(f"{e(reason)} {count}" for reason, count in sorted(
        snapshot.errors.items()) if count)
    requests = sum(snapshot.api_requests.values())
    errors = (f"<p>{requests} requests sent since start; failed: {failed or 'none'}.</p>"
              if requests else "")
    if snapshot.targets:
        source = "<th>Source</th>" if web.source else ""
        table = f"""<table><thead><tr><th>Scenario</th><th>Name</th><th>Cohort</th>{source}
<th>State</th><th>Last success</th><th>Last error</th><th>Next refresh</th></tr></thead>
<tbody>
{''.join(rows)}
</tbody></table>"""
    elif "scenarios" in snapshot.discovery_success:
        table = ("<p>No targets: discovery read the workspace's scenario list and found "
                 "no scenario to poll (check <code>discovery.scenarios</code> filters and "
                 "<code>exclude</code>).</p>")
    else:
        table = "<p>No targets yet: waiting for discovery to read the scenario list.</p>"
    path = e(web.telemetry_path)
    interval = format_duration(snapshot.interval) if snapshot.interval > 0 else "not set"
    stretched = " (stretched to fit the budget)" if snapshot.stretched else ""
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Exec Exporter</title>
<style>
body{{font-family:system-ui,sans-serif;margin:2em;color:#222}}
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left}}
th{{background:#f4f4f4}}.up{{color:#1a7f37}}.down{{color:#cf222e;font-weight:bold}}
.waiting{{color:#6e7781}}.notice{{background:#fff8c5;border:1px solid #d4a72c;padding:8px}}
</style></head><body>
<h1>Exec Exporter</h1>
<p>Version {e(__version__)}. <a href="{path}">Metrics</a> &middot;
<a href="/-/healthy">Health</a> &middot; <a href="/-/ready">Readiness</a></p>
{notice}
{errors}
<p>{len(snapshot.targets)} targets; effective refresh interval {interval}{stretched};
{snapshot.targets_dropped} dropped by max_targets.
Configuration last loaded {_when(snapshot.reload_time, now)}
({'ok' if snapshot.reload_ok else 'last reload FAILED'}).</p>
{discovery}
<h2>Targets</h2>
{table}
</body></html>
"""
