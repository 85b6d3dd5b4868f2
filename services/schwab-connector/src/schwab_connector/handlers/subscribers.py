"""Subscribers of the Schwab connector: the shared command, test and health subscribers
(`brokerlink_shared.connector_subscribers`), the OAuth code exchange and the account numbers
the migrator asks for (core NATS request/reply; replicas share a queue group)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from brokerlink_shared.connector_subscribers import (
    answer_tests_and_health,
    subscribe_commands,
)
from brokerlink_shared.contracts.events import (
    HealthReply,
    SchwabAccountNumbersReply,
    SchwabAccountNumbersRequest,
    SchwabOAuthExchangeReply,
    SchwabOAuthExchangeRequest,
)
from brokerlink_shared.subjects import (
    SCHWAB_ACCOUNT_NUMBERS,
    SCHWAB_OAUTH_EXCHANGE,
    Broker,
    Topology,
)
from faststream.nats import NatsBroker

from schwab_connector.config import SERVICE
from schwab_connector.service import SchwabConnector

log = logging.getLogger(__name__)


def register_handlers(
    broker: NatsBroker,
    topology: Topology,
    connector: Callable[[], SchwabConnector],
    probe: Callable[[], Awaitable[HealthReply]],
    refresh_workers: int,
) -> None:
    """Declare every subscriber of the connector on `broker`. Refreshes run `refresh_workers`
    at a time so that requests for one login can coalesce; config changes one at a time."""
    subscribe_commands(
        broker,
        topology,
        service=SERVICE,
        kind=Broker.SCHWAB,
        connector=connector,
        refresh_workers=refresh_workers,
    )
    answer_tests_and_health(
        broker,
        topology,
        service=SERVICE,
        kind=Broker.SCHWAB,
        connector=connector,
        probe=probe,
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
