"""Thin FastStream subscribers for what connectors publish; the logic is in
`integrations.results`. Balances, the high-volume stream, are handled many at a time and
group-committed (see `GroupCommit`)."""

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

from account_api.consumers.group_commit import GroupCommit
from account_api.integrations import results
from account_api.unit_of_work import UnitOfWork

SERVICE = "account-api"
UowFactory = Callable[[], UnitOfWork]
# Balances handled at once per process; together they form the group-committed batches.
BALANCE_WORKERS = 256


def register_consumers(
    broker: NatsBroker, topology: Topology, new_uow: UowFactory
) -> GroupCommit[BalanceUpdated]:
    """Declare the four durable consumers of connector events on `broker`; returns the
    balances' group commit (closed by the app on shutdown)."""

    def sub(family: str, purpose: str, **options: int):  # type: ignore[no-untyped-def]
        return durable_subscriber(
            broker,
            topology,
            family=family,
            spec=CONNECTOR_EVENTS,
            service=SERVICE,
            purpose=purpose,
            **options,
        )

    balances = GroupCommit[BalanceUpdated](
        lambda events: results.record_balances(new_uow(), events),
        max_batch=BALANCE_WORKERS,
    )

    @sub(
        BALANCE_UPDATED,
        "balances",
        batch_size=BALANCE_WORKERS,
        max_workers=BALANCE_WORKERS,
    )
    async def on_balance(event: BalanceUpdated) -> None:
        await balances.submit(event)

    @sub(REFRESH_FAILED, "failures")
    async def on_failure(event: RefreshFailed) -> None:
        await results.record_failure(new_uow(), event)

    @sub(INTEGRATION_STATUS, "statuses")
    async def on_status(event: IntegrationStatusChanged) -> None:
        await results.record_status(new_uow(), event)

    @sub(SCHWAB_TOKENS_ROTATED, "tokens")
    async def on_tokens(event: SchwabTokensRotated) -> None:
        await results.store_tokens(new_uow(), event)

    return balances
