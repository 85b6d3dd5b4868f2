"""Subscribers for the IB commands, the test request, forwarded commands and health."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from brokerlink_shared.admission import queued_seconds
from brokerlink_shared.contracts.events import (
    HealthReply,
    IntegrationConfigured,
    IntegrationRemoved,
    IntegrationTestReply,
    IntegrationTestRequest,
    RefreshRequested,
)
from brokerlink_shared.contracts.replicas import FORWARDED_COMMAND, ForwardReply
from brokerlink_shared.messaging import durable_subscriber
from brokerlink_shared.subjects import (
    COMMANDS,
    INTEGRATION_CONFIGURED,
    INTEGRATION_REMOVED,
    INTEGRATION_TEST,
    REFRESH_REQUESTED,
    Broker,
    Topology,
)
from faststream.nats import NatsBroker, NatsMessage
from faststream.nats.subscriber.usecases import LogicSubscriber
from pydantic import ValidationError

from ib_connector.config import SERVICE, Settings
from ib_connector.service import IBConnectorService, forward_subject


def register_handlers(
    broker: NatsBroker,
    topology: Topology,
    settings: Settings,
    service: IBConnectorService,
    health: Callable[[], Awaitable[HealthReply]],
) -> None:
    """Declare every subscriber of the connector on `broker`."""

    def commands(family: str, purpose: str) -> LogicSubscriber[Any]:
        return durable_subscriber(
            broker,
            topology,
            family=family,
            spec=COMMANDS,
            service=SERVICE,
            purpose=purpose,
            brokers=[Broker.IB],
            ack_wait_s=max(
                30.0, settings.request_timeout_s + settings.forward_timeout_s + 5
            ),
            max_workers=settings.max_concurrent_requests,
        )

    @commands(REFRESH_REQUESTED, "refresh")
    async def on_refresh(event: RefreshRequested, msg: NatsMessage) -> None:
        await service.on_refresh(event, queued_seconds(msg))

    @commands(INTEGRATION_CONFIGURED, "configured")
    async def on_configured(event: IntegrationConfigured) -> None:
        await service.on_configured(event)

    @commands(INTEGRATION_REMOVED, "removed")
    async def on_removed(event: IntegrationRemoved) -> None:
        await service.on_removed(event)

    @broker.subscriber(
        topology.subject(INTEGRATION_TEST, Broker.IB), queue=SERVICE, max_workers=32
    )
    async def on_test(request: IntegrationTestRequest) -> IntegrationTestReply:
        return await service.on_test(request)

    @broker.subscriber(
        forward_subject(topology, settings.replica_id),
        max_workers=settings.max_concurrent_requests,
    )
    async def on_forwarded(message: dict[str, Any]) -> bytes:
        try:
            command = FORWARDED_COMMAND.validate_python(message)
        except ValidationError as exc:
            reply = ForwardReply(
                ok=False, error=f"invalid forwarded command: {exc}"[:500]
            )
        else:
            reply = await service.on_forwarded(command)
        return reply.model_dump_json().encode()

    @broker.subscriber(topology.health_subject(SERVICE))
    async def on_health() -> HealthReply:
        return await health()
