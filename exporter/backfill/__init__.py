"""``exec-exporter backfill``: past values of every target, as OpenMetrics for promtool
(docs/backfill.md). Its requests are jobs of the daemon's scheduler (:mod:`.sender`);
:mod:`.run` wires the time range, plan, journal, file and progress modules."""

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
