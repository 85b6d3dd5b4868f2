"""Durable JetStream consumers of account-api's commands (Schwab only)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from brokerlink_shared.admission import queued_seconds
from brokerlink_shared.contracts.events import (
    IntegrationConfigured,
    IntegrationRemoved,
    RefreshRequested,
)
from brokerlink_shared.messaging import durable_subscriber
from brokerlink_shared.subjects import (
    COMMANDS,
    INTEGRATION_CONFIGURED,
    INTEGRATION_REMOVED,
    REFRESH_REQUESTED,
    Broker,
    Topology,
)
from faststream.nats import NatsBroker, NatsMessage
from faststream.nats.subscriber.usecases import LogicSubscriber

from schwab_connector.config import SERVICE
from schwab_connector.service import SchwabConnector

log = logging.getLogger(__name__)


def register_command_handlers(
    broker: NatsBroker,
    topology: Topology,
    connector: Callable[[], SchwabConnector],
    refresh_workers: int,
) -> None:
    """Subscribe to integration.configured/removed and refresh.requested for Schwab.

    Refreshes run `refresh_workers` at a time so that requests for one login can coalesce;
    config changes run one at a time, in order."""

    def subscriber(family: str, purpose: str, workers: int = 1) -> LogicSubscriber[Any]:
        return durable_subscriber(
            broker,
            topology,
            family=family,
            spec=COMMANDS,
            service=SERVICE,
            purpose=purpose,
            brokers=[Broker.SCHWAB],
            max_workers=workers,
        )

    @subscriber(INTEGRATION_CONFIGURED, "configured")
    async def on_configured(event: IntegrationConfigured) -> None:
        log.debug("integration.configured", extra={"account": event.account_id})
        await connector().on_configured(event)

    @subscriber(INTEGRATION_REMOVED, "removed")
    async def on_removed(event: IntegrationRemoved) -> None:
        log.debug("integration.removed", extra={"account": event.account_id})
        await connector().on_removed(event)

    @subscriber(REFRESH_REQUESTED, "refresh", refresh_workers)
    async def on_refresh(event: RefreshRequested, msg: NatsMessage) -> None:
        log.debug(
            "refresh.requested",
            extra={
                "account": event.account_id,
                "refresh_id": str(event.payload.refresh_id),
            },
        )
        await connector().on_refresh(event, queued_seconds(msg))
