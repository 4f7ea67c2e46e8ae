"""The simulated Exec API: the demo's, and the one the tests use.

It is the oracle the exporter is tested against, so its semantics come from the
API's documentation alone and it shares no code with :mod:`exporter.aggregate`.

* :mod:`.world`: users, groups, scenarios, the session log, skills, assignments,
  and the summary's filters;
* :mod:`.analytics`: participant rows and the summary computed from them;
* :mod:`.protocol`: the error envelope, bearer key, pagination, rate limits;
* :mod:`.endpoints`: :class:`ExecAPI`, the endpoints answering from a world;
* :mod:`.loopback`: the HTTP server plumbing on loopback;
* :mod:`.demo_workspace` and :mod:`.demo`: what ``exec-exporter demo`` serves.
"""

from .analytics import RANKS, ParticipantRow, rank_for, summary_body
from .demo import DEMO_API_KEY, DemoWorld, SimulatedExecAPI, demo_config
from .demo_workspace import (
    DEMO_GROUPS,
    DEMO_SCENARIOS,
    DROP_SCENARIO_SLUG,
    SALES_TEAM_GROUP_ID,
    DemoGroup,
    DemoScenario,
)
from .endpoints import ExecAPI
from .loopback import API_PREFIX, APIRequest, APIResponse, HeaderDict, LoopbackAPIServer
from .world import Regrade, ScenarioListing, Session, SessionFilter, SessionLog, User, World

__all__ = [
    "API_PREFIX", "DEMO_API_KEY", "DEMO_GROUPS", "DEMO_SCENARIOS", "DROP_SCENARIO_SLUG",
    "RANKS", "SALES_TEAM_GROUP_ID", "APIRequest", "APIResponse", "DemoGroup", "DemoScenario",
    "DemoWorld", "ExecAPI", "HeaderDict", "LoopbackAPIServer", "ParticipantRow", "Regrade",
    "ScenarioListing", "Session", "SessionFilter", "SessionLog", "SimulatedExecAPI", "User",
    "World", "demo_config", "rank_for", "summary_body",
]  # fmt: skip
