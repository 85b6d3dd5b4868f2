"""A Schwab Trader API simulator: OAuth (authorize, token), accounts endpoints, an admin API."""

from brokerlink_simulators.schwab_api.scenario import (
    Scenario,
    SimAccount,
    SimApp,
    SimLogin,
    SimPosition,
)
from brokerlink_simulators.schwab_api.server import SchwabApiSimulator
from brokerlink_simulators.schwab_api.state import Fault, SimulatorState

__all__ = [
    "Fault",
    "Scenario",
    "SchwabApiSimulator",
    "SimAccount",
    "SimApp",
    "SimLogin",
    "SimPosition",
    "SimulatorState",
]
