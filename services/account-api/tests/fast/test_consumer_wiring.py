"""Consumer wiring over FastStream's `TestNatsBroker`: each event a connector publishes, encoded
and addressed as `EventPublisher` does it, reaches its account-api consumer, is parsed into its
contract model and lands in the use case (here over the in-memory fakes)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from account_api.consumers.handlers import register_consumers
from brokerlink_shared.contracts.events import (
    BalanceUpdated,
    IntegrationStatusChanged,
    RefreshFailed,
    SchwabTokensRotated,
)
from faststream.nats import TestNatsBroker

pytestmark = pytest.mark.fast

AS_OF = datetime(2026, 12, 1, 15, 30, tzinfo=UTC)


@pytest.fixture
async def wired(broker, topology, uow):  # type: ignore[no-untyped-def]
    balances = register_consumers(broker, topology, lambda: uow)
    yield broker
    await balances.aclose()


async def test_a_balance_reaches_the_balance_consumer(wired, publisher, uow) -> None:  # type: ignore[no-untyped-def]
    account = uow.accounts.put(7, integration_type="IB", integration_config={})
    event = BalanceUpdated(
        user_id=7,
        account_id=account.id,
        payload={
            "broker": "IB",
            "as_of": AS_OF,
            "currency": "USD",
            "balance": "1234.56",
            "cash": [{"currency": "USD", "amount": "100.00"}],
        },
    )
    async with TestNatsBroker(wired):
        await publisher.publish(event)
    assert account.current_balance == Decimal("1234.56")
    assert account.balance_as_of == AS_OF
    assert (event.event_id, "balances") in uow.processed_events.seen
    assert uow.commits == 1


async def test_a_redelivered_balance_is_applied_once(wired, publisher, uow) -> None:  # type: ignore[no-untyped-def]
    account = uow.accounts.put(7, integration_type="IB", integration_config={})
    event = BalanceUpdated(
        user_id=7,
        account_id=account.id,
        payload={"broker": "IB", "as_of": AS_OF, "currency": "USD", "balance": "1"},
    )
    async with TestNatsBroker(wired):
        await publisher.publish(event)
        account.current_balance = Decimal(
            "5"
        )  # changed since; a replay must not undo it
        await publisher.publish(event)
    assert account.current_balance == Decimal("5")


async def test_a_failure_reaches_the_failure_consumer_and_settles_its_refresh(
    wired, publisher, uow
) -> None:  # type: ignore[no-untyped-def]
    account = uow.accounts.put(
        7, integration_type="IB", integration_config={}, integration_version=2
    )
    refresh_id = uuid.uuid4()
    uow.refreshes.add(refresh_id, account.id, 2)
    event = RefreshFailed(
        user_id=7,
        account_id=account.id,
        payload={
            "broker": "IB",
            "refresh_id": refresh_id,
            "code": "502",
            "message": "gateway unreachable",
        },
    )
    async with TestNatsBroker(wired):
        await publisher.publish(event)
    assert uow.refreshes.rows[refresh_id].status == "failed"
    assert uow.refreshes.notified == [refresh_id]
    assert (account.last_error, account.last_error_code) == (
        "gateway unreachable",
        "502",
    )


async def test_a_status_reaches_the_status_consumer(wired, publisher, uow) -> None:  # type: ignore[no-untyped-def]
    account = uow.accounts.put(
        7, integration_type="IB", integration_config={}, integration_status="pending"
    )
    event = IntegrationStatusChanged(
        user_id=7,
        account_id=account.id,
        payload={"broker": "IB", "status": "connected", "last_connected": AS_OF},
    )
    async with TestNatsBroker(wired):
        await publisher.publish(event)
    assert account.integration_status == "connected"
    assert account.last_connected_at == AS_OF


async def test_rotated_tokens_reach_every_account_of_the_login(
    wired, publisher, uow
) -> None:  # type: ignore[no-untyped-def]
    config = {"app_key": "key-1234567", "app_secret_enc": "enc"}
    first = uow.accounts.put(
        7, integration_type="SCHWAB", integration_config=dict(config)
    )
    second = uow.accounts.put(
        7, integration_type="SCHWAB", integration_config=dict(config)
    )
    event = SchwabTokensRotated(
        user_id=7,
        account_id=first.id,
        payload={
            "app_key": "key-1234567",
            "account_ids": [first.id, second.id],
            "token_enc": "enc-token-2",
            "access_expires_at": AS_OF,
            "refresh_expires_at": AS_OF,
        },
    )
    async with TestNatsBroker(wired):
        await publisher.publish(event)
    assert [a.integration_config["token_enc"] for a in (first, second)] == [
        "enc-token-2",
        "enc-token-2",
    ]
