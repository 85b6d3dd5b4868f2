"""IB Gateway simulator: speaks the TWS API wire protocol so that unmodified ib_async talks to it."""

from brokerlink_simulators.ib_gateway.scenario import (
    AccountSpec,
    AccountValuesPatch,
    FaultPatch,
    FaultSpec,
    GatewaySpec,
    PositionSpec,
    Scenario,
)
from brokerlink_simulators.ib_gateway.server import SimulatedGateway
from brokerlink_simulators.ib_gateway.simulator import IBGatewaySimulator

__all__ = [
    "AccountSpec",
    "AccountValuesPatch",
    "FaultPatch",
    "FaultSpec",
    "GatewaySpec",
    "IBGatewaySimulator",
    "PositionSpec",
    "Scenario",
    "SimulatedGateway",
]
