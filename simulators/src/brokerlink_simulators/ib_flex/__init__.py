"""An IB Flex Web Service simulator: SendRequest / GetStatement with IB's error codes and throttle,
serving statements assembled from ibflex's test-suite samples."""

from brokerlink_simulators.ib_flex.scenario import (
    FlexAccount,
    FlexLimits,
    FlexPosition,
    FlexQuery,
    FlexToken,
    Scenario,
)
from brokerlink_simulators.ib_flex.server import IbFlexSimulator
from brokerlink_simulators.ib_flex.state import FlexState

__all__ = [
    "FlexAccount",
    "FlexLimits",
    "FlexPosition",
    "FlexQuery",
    "FlexState",
    "FlexToken",
    "IbFlexSimulator",
    "Scenario",
]
