"""The subscribers every broker connector declares, written once.

A connector consumes account-api's three commands for its broker (`integration.configured`,
`integration.removed`, `refresh.requested`) from durable JetStream consumers shared by its
replicas, and answers the integration test and its health check over core NATS request/reply in
a queue group. What differs between connectors is the object that handles them (see the
protocols below), how many refreshes run at once and how long one may take before JetStream
redelivers it; a connector adds its own extra subscribers (forwarded commands, OAuth exchange)
beside these.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from faststream.nats import NatsBroker
from faststream.nats.subscriber.usecases import LogicSubscriber

from brokerlink_shared.admission import queued_seconds
from brokerlink_shared.contracts.events import (
    HealthReply,
    IntegrationConfigured,
    IntegrationRemoved,
    IntegrationTestReply,
    IntegrationTestRequest,
    RefreshRequested,
)
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

log = logging.getLogger(__name__)


class CommandHandling(Protocol):
    """What a connector does with account-api's commands."""

    async def on_configured(self, event: IntegrationConfigured) -> None: ...

    async def on_removed(self, event: IntegrationRemoved) -> None: ...

    async def on_refresh(self, event: RefreshRequested, queued_s: float) -> None:
        """`queued_s`: how long the request waited in the stream (for admission)."""


class IntegrationTesting(Protocol):
    async def test_integration(
        self, request: IntegrationTestRequest
    ) -> IntegrationTestReply: ...


def subscribe_commands(
    broker: NatsBroker,
    topology: Topology,
    *,
    service: str,
    kind: Broker,
    connector: Callable[[], CommandHandling],
    refresh_workers: int,
    config_workers: int = 1,
    ack_wait_s: float = 30.0,
) -> None:
    """Durable consumers of the three commands for `kind`. Refreshes run `refresh_workers` at a
    time; config changes `config_workers` at a time (1: one at a time, in order)."""

    def subscriber(family: str, purpose: str, workers: int) -> LogicSubscriber[Any]:
        return durable_subscriber(
            broker,
            topology,
            family=family,
            spec=COMMANDS,
            service=service,
            purpose=purpose,
            brokers=[kind],
            max_workers=workers,
            ack_wait_s=ack_wait_s,
        )

    @subscriber(INTEGRATION_CONFIGURED, "configured", config_workers)
    async def on_configured(event: IntegrationConfigured) -> None:
        log.debug("integration.configured", extra={"account": event.account_id})
        await connector().on_configured(event)

    @subscriber(INTEGRATION_REMOVED, "removed", config_workers)
    async def on_removed(event: IntegrationRemoved) -> None:
        log.debug("integration.removed", extra={"account": event.account_id})
        await connector().on_removed(event)

    @subscriber(REFRESH_REQUESTED, "refresh", refresh_workers)
    async def on_refresh(event: RefreshRequested) -> None:
        # The delivery is read from the broker's context rather than injected as a parameter:
        # fast_depends resolves an injected message as a synchronous field in a worker thread,
        # which cost a fifth of the connector's CPU per refresh.
        queued_s = queued_seconds(broker.context.get_local("message"))
        log.debug(
            "refresh.requested",
            extra={
                "account": event.account_id,
                "refresh_id": str(event.payload.refresh_id),
            },
        )
        await connector().on_refresh(event, queued_s)


def answer_tests_and_health(
    broker: NatsBroker,
    topology: Topology,
    *,
    service: str,
    kind: Broker,
    connector: Callable[[], IntegrationTesting],
    probe: Callable[[], Awaitable[HealthReply]],
    test_workers: int = 1,
) -> None:
    """Answer integration tests for `kind` and the service's health check (replicas share a
    queue group). An unexpected error in a test is an answer, never silence."""

    @broker.subscriber(
        topology.subject(INTEGRATION_TEST, kind),
        queue=service,
        max_workers=test_workers,
    )
    async def on_test(request: IntegrationTestRequest) -> IntegrationTestReply:
        log.debug("integration.test", extra={"account": request.account_id})
        try:
            return await connector().test_integration(request)
        except Exception as exc:
            log.exception("integration test failed unexpectedly")
            return IntegrationTestReply(
                success=False, message=f"internal error ({type(exc).__name__})"
            )

    @broker.subscriber(topology.health_subject(service), queue=service)
    async def on_health() -> HealthReply:
        return await probe()
