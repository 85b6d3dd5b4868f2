"""Subscribers of the IB connector: the shared command, test and health subscribers
(`brokerlink_shared.connector_subscribers`) and the commands other replicas forward here."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from brokerlink_shared.connector_subscribers import (
    answer_tests_and_health,
    subscribe_commands,
)
from brokerlink_shared.contracts.events import HealthReply
from brokerlink_shared.contracts.replicas import FORWARDED_COMMAND, ForwardReply
from brokerlink_shared.subjects import Broker, Topology
from faststream.nats import NatsBroker
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

    subscribe_commands(
        broker,
        topology,
        service=SERVICE,
        kind=Broker.IB,
        connector=lambda: service,
        refresh_workers=settings.max_concurrent_requests,
        config_workers=settings.max_concurrent_requests,
        ack_wait_s=max(
            30.0, settings.request_timeout_s + settings.forward_timeout_s + 5
        ),
    )
    answer_tests_and_health(
        broker,
        topology,
        service=SERVICE,
        kind=Broker.IB,
        connector=lambda: service,
        probe=health,
        test_workers=32,
    )

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
