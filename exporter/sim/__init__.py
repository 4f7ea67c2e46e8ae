"""The simulated Exec API: the demo's, and the one the tests use.

It is the oracle the exporter is tested against, so its semantics come from the
API's documentation alone and it shares no code with :mod:`exporter.aggregate`:
:mod:`.world` (users, groups, scenarios, the session log and the summary's filters),
:mod:`.analytics` (participant rows and summaries), :mod:`.protocol` (envelopes,
paging, rate limits), :mod:`.endpoints` (:class:`ExecAPI`), :mod:`.loopback` (the
HTTP server) and :mod:`.demo` (what ``exec-exporter demo`` serves).
"""

from .analytics import RANKS, rank_for, summary_body
from .demo import (
    DEMO_API_KEY,
    DEMO_GROUPS,
    DEMO_SCENARIOS,
    DROP_SCENARIO_SLUG,
    SALES_TEAM_GROUP_ID,
    SimulatedExecAPI,
    demo_config,
)
from .endpoints import ExecAPI
from .loopback import APIRequest, APIResponse, HeaderDict
from .world import Regrade, Session, User, World

__all__ = [
    "DEMO_API_KEY", "DEMO_GROUPS", "DEMO_SCENARIOS", "DROP_SCENARIO_SLUG", "RANKS",
    "SALES_TEAM_GROUP_ID", "APIRequest", "APIResponse", "ExecAPI", "HeaderDict", "Regrade",
    "Session", "SimulatedExecAPI", "User", "World", "demo_config", "rank_for", "summary_body",
]  # fmt: skip
