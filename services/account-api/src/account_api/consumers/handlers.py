"""Thin FastStream subscribers for what connectors publish; the logic is in
`integrations.results`."""

from __future__ import annotations

from collections.abc import Callable

from brokerlink_shared.contracts.events import (
    BalanceUpdated,
    IntegrationStatusChanged,
    RefreshFailed,
    SchwabTokensRotated,
)
from brokerlink_shared.messaging import durable_subscriber
from brokerlink_shared.subjects import (
    BALANCE_UPDATED,
    CONNECTOR_EVENTS,
    INTEGRATION_STATUS,
    REFRESH_FAILED,
    SCHWAB_TOKENS_ROTATED,
    Topology,
)
from faststream.nats import NatsBroker

from account_api.integrations import results
from account_api.unit_of_work import UnitOfWork

SERVICE = "account-api"
UowFactory = Callable[[], UnitOfWork]


def register_consumers(
    broker: NatsBroker, topology: Topology, new_uow: UowFactory
) -> None:
    """Declare the four durable consumers of connector events on `broker`."""

    def sub(family: str, purpose: str):  # type: ignore[no-untyped-def]
        return durable_subscriber(
            broker,
            topology,
            family=family,
            spec=CONNECTOR_EVENTS,
            service=SERVICE,
            purpose=purpose,
        )

    @sub(BALANCE_UPDATED, "balances")
    async def on_balance(event: BalanceUpdated) -> None:
        await results.record_balance(new_uow(), event)

    @sub(REFRESH_FAILED, "failures")
    async def on_failure(event: RefreshFailed) -> None:
        await results.record_failure(new_uow(), event)

    @sub(INTEGRATION_STATUS, "statuses")
    async def on_status(event: IntegrationStatusChanged) -> None:
        await results.record_status(new_uow(), event)

    @sub(SCHWAB_TOKENS_ROTATED, "tokens")
    async def on_tokens(event: SchwabTokensRotated) -> None:
        await results.store_tokens(new_uow(), event)
