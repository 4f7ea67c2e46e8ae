"""``exec-exporter backfill``: past values of every target, as OpenMetrics for promtool.

The summary endpoint answers "as of" any past instant: ``end_date`` = the
instant (and ``start_date`` = instant - window for a rolling-window cohort)
gives the value the exporter would have exported then. So one summary request
per target and instant, from ``until - since`` to ``until`` every ``step``,
fills Prometheus with history before the first scrape::

    exec-exporter backfill --config.file=config.yaml --since=30d --output=history.om
    promtool tsdb create-blocks-from openmetrics history.om ./blocks

Flow (:mod:`.run`): validate everything (bad input: exit 2, nothing sent), decide
the targets (discovery included), plan the requests (:mod:`.plan`: one per distinct
query; a fixed-end cohort asks once for every instant past its end), print the plan,
send what the journal does not already hold (:mod:`.sender`, through the daemon's
:class:`~exporter.budget.Budget`: with ``--state.file`` the workspace's shared ledger,
leaving a running daemon its polling share), then write the file
(:mod:`.openmetrics`). The journal (:mod:`.journal`, ``OUTPUT.journal``) records each
finished request under a fingerprint of what decides the file's content, so a stopped
run resumes where it was and an output of another configuration is never overwritten.

With ``planner.mode: auto`` (the default) the cohorts that one participants pull per
instant serves for fewer requests are derived from it (:mod:`.derive`), each first
proven at the newest instant against its own summary; member lists are read once per
run and cost their pages in the plan.
"""

from .journal import Outcome, request_key
from .openmetrics import render
from .plan import Plan, as_of_query, make_plan
from .progress import Progress
from .run import add_arguments, main
from .sender import TRANSIENT_TRIES, Sender, StopFlag, Stopped, WorkspaceError
from .window import UsageError, parse_window

__all__ = ["TRANSIENT_TRIES", "Outcome", "Plan", "Progress", "Sender", "StopFlag", "Stopped",
           "UsageError", "WorkspaceError", "add_arguments", "as_of_query", "main", "make_plan",
           "parse_window", "render", "request_key"]
