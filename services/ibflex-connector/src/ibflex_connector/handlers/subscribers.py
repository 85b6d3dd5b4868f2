"""Subscribers of the IB Flex connector: the shared command, test and health subscribers
(`brokerlink_shared.connector_subscribers`); IB Flex needs nothing else on the bus."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from brokerlink_shared.connector_subscribers import (
    answer_tests_and_health,
    subscribe_commands,
)
from brokerlink_shared.contracts.events import HealthReply
from brokerlink_shared.subjects import Broker, Topology
from faststream.nats import NatsBroker

from ibflex_connector.config import SERVICE
from ibflex_connector.service import FlexConnector


def register_handlers(
    broker: NatsBroker,
    topology: Topology,
    connector: Callable[[], FlexConnector],
    probe: Callable[[], Awaitable[HealthReply]],
    refresh_workers: int,
) -> None:
    """Declare every subscriber of the connector on `broker`. Refreshes run `refresh_workers`
    at a time so that those of one report can share its statement; config changes run one at a
    time, in order."""
    subscribe_commands(
        broker,
        topology,
        service=SERVICE,
        kind=Broker.IB_FLEX,
        connector=connector,
        refresh_workers=refresh_workers,
        # a refresh waits for IB's throttle and statement generation: minutes, not seconds
        ack_wait_s=300.0,
    )
    answer_tests_and_health(
        broker,
        topology,
        service=SERVICE,
        kind=Broker.IB_FLEX,
        connector=connector,
        probe=probe,
    )
