"""``exec-exporter backfill``: past values of every target, as OpenMetrics for promtool.

The summary endpoint answers "as of" any past instant, so one request per target and
instant fills Prometheus with history (docs/backfill.md). The backfill-specific parts
are small: the time range (:mod:`.window`), the plan (:mod:`.plan`, :mod:`.derive`),
the journal that lets a stopped run resume (:mod:`.journal`), the OpenMetrics file
(:mod:`.openmetrics`) and the progress line; its requests are jobs of the daemon's
scheduler and budget (:mod:`.sender`); :mod:`.run` wires them.
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
