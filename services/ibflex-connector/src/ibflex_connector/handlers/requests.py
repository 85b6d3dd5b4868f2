"""Core NATS request/reply: integration test and health."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from brokerlink_shared.contracts.events import (
    HealthReply,
    IntegrationTestReply,
    IntegrationTestRequest,
)
from brokerlink_shared.subjects import INTEGRATION_TEST, Broker, Topology
from faststream.nats import NatsBroker

from ibflex_connector.config import SERVICE
from ibflex_connector.service import FlexConnector

log = logging.getLogger(__name__)


def register_request_handlers(
    broker: NatsBroker,
    topology: Topology,
    connector: Callable[[], FlexConnector],
    probe: Callable[[], Awaitable[HealthReply]],
) -> None:
    """Answer integration tests and health checks (replicas share a queue group)."""

    @broker.subscriber(
        topology.subject(INTEGRATION_TEST, Broker.IB_FLEX), queue=SERVICE
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

    @broker.subscriber(topology.health_subject(SERVICE), queue=SERVICE)
    async def on_health() -> HealthReply:
        return await probe()
