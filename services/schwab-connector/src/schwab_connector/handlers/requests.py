"""Core NATS request/reply: integration test, OAuth code exchange, account numbers (for the
migrator) and health."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from brokerlink_shared.contracts.events import (
    HealthReply,
    IntegrationTestReply,
    IntegrationTestRequest,
    SchwabAccountNumbersReply,
    SchwabAccountNumbersRequest,
    SchwabOAuthExchangeReply,
    SchwabOAuthExchangeRequest,
)
from brokerlink_shared.subjects import (
    INTEGRATION_TEST,
    SCHWAB_ACCOUNT_NUMBERS,
    SCHWAB_OAUTH_EXCHANGE,
    Broker,
    Topology,
)
from faststream.nats import NatsBroker

from schwab_connector.config import SERVICE
from schwab_connector.service import SchwabConnector

log = logging.getLogger(__name__)


def register_request_handlers(
    broker: NatsBroker,
    topology: Topology,
    connector: Callable[[], SchwabConnector],
    probe: Callable[[], Awaitable[HealthReply]],
) -> None:
    """Answer integration tests, code exchanges and health checks (replicas share a queue group)."""

    @broker.subscriber(topology.subject(INTEGRATION_TEST, Broker.SCHWAB), queue=SERVICE)
    async def on_test(request: IntegrationTestRequest) -> IntegrationTestReply:
        log.debug("integration.test", extra={"account": request.account_id})
        try:
            return await connector().test_integration(request)
        except Exception as exc:
            log.exception("integration test failed unexpectedly")
            return IntegrationTestReply(
                success=False, message=f"internal error ({type(exc).__name__})"
            )

    @broker.subscriber(topology.subject(SCHWAB_OAUTH_EXCHANGE), queue=SERVICE)
    async def on_exchange(
        request: SchwabOAuthExchangeRequest,
    ) -> SchwabOAuthExchangeReply:
        log.debug("schwab.oauth.exchange", extra={"account": request.account_id})
        try:
            return await connector().exchange_code(request)
        except Exception as exc:
            log.exception("code exchange failed unexpectedly")
            return SchwabOAuthExchangeReply(
                success=False, message=f"internal error ({type(exc).__name__})"
            )

    @broker.subscriber(topology.subject(SCHWAB_ACCOUNT_NUMBERS), queue=SERVICE)
    async def on_account_numbers(
        request: SchwabAccountNumbersRequest,
    ) -> SchwabAccountNumbersReply:
        log.debug("schwab.account.numbers")
        try:
            return await connector().account_numbers(request)
        except Exception as exc:
            log.exception("account-number lookup failed unexpectedly")
            return SchwabAccountNumbersReply(
                success=False, message=f"internal error ({type(exc).__name__})"
            )

    @broker.subscriber(topology.health_subject(SERVICE), queue=SERVICE)
    async def on_health() -> HealthReply:
        return await probe()
