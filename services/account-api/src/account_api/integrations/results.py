"""What connectors report back: balances, failures, statuses and rotated tokens.

Each handler records the event id in `processed_events` in the same transaction as its effect,
so a redelivered event is a no-op; a balance older (by `as_of`) than the stored one never
overwrites it. Refresh waiters are woken with NOTIFY, delivered on commit. The integration's
state changes only through `integrations.lifecycle`."""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime

from brokerlink_shared.contracts.events import (
    BalanceUpdated,
    Event,
    IntegrationStatusChanged,
    RefreshFailed,
    SchwabTokensRotated,
)

from account_api.accounts.repository import AccountRepository
from account_api.db import UnitOfWork
from account_api.history.repository import HistoryRepository
from account_api.integrations import lifecycle
from account_api.integrations.repository import (
    ProcessedEventRepository,
    RefreshRepository,
    SnapshotRepository,
    integration_state,
    of_login,
    store_state,
)
from account_api.tables import Account, Refresh

log = logging.getLogger(__name__)


async def _first_time(uow: UnitOfWork, event: Event, consumer: str) -> bool:
    return await ProcessedEventRepository(uow.session).first_time(
        event.event_id, consumer
    )


async def _account(uow: UnitOfWork, event: Event) -> Account | None:
    if event.account_id is None:
        return None
    return await AccountRepository(uow.session).locked(event.account_id, event.user_id)


async def _refresh(uow: UnitOfWork, refresh_id: uuid.UUID | None) -> Refresh | None:
    if refresh_id is None:
        return None
    return await RefreshRepository(uow.session).get(refresh_id)


def _stale_reason(account: Account, broker: str, refresh: Refresh | None) -> str | None:
    return lifecycle.stale_reason(
        integration_state(account),
        broker,
        refresh.integration_version if refresh is not None else None,
    )


async def record_balance(uow: UnitOfWork, event: BalanceUpdated) -> None:
    p = event.payload
    async with uow:
        if not await _first_time(uow, event, "balances"):
            return
        account = await _account(uow, event)
        if account is None:
            log.info(
                "balance for an unknown or deleted account ignored",
                extra={"account_id": event.account_id},
            )
            await uow.commit()
            return
        now = datetime.now(UTC)
        refreshes = RefreshRepository(uow.session)
        refresh = await _refresh(uow, p.refresh_id)
        if stale := _stale_reason(account, p.broker.value, refresh):
            # Read with a config no longer in force: it must not overwrite the account.
            log.info(
                "stale balance ignored",
                extra={"account_id": account.id, "reason": stale},
            )
            if refresh is not None and refresh.status == "pending":
                await refreshes.settle(refresh, "failed", now, message=stale)
            await uow.commit()
            return
        newer = account.balance_as_of is None or account.balance_as_of <= p.as_of
        if newer:
            account.current_balance = p.balance
            account.balance_as_of = p.as_of
            account.last_updated = p.as_of
            transition = lifecycle.refresh_succeeded(
                integration_state(account), now=now
            )
            store_state(account, transition.state)
            await SnapshotRepository(uow.session).replace(
                account.id,
                p.as_of,
                [pos.model_dump() for pos in p.positions],
                [(cash.currency, cash.amount) for cash in p.cash],
            )
        # The day's history row follows its own as_of rule (an older event can still fill an empty day).
        await HistoryRepository(uow.session).upsert(
            account.id,
            p.as_of.astimezone(UTC).date(),
            p.balance,
            source=p.broker.value,
            as_of=p.as_of,
        )
        if refresh is not None and refresh.status == "pending":
            await refreshes.settle(refresh, "succeeded", now, balance=p.balance)
        await uow.commit()


async def record_failure(uow: UnitOfWork, event: RefreshFailed) -> None:
    p = event.payload
    async with uow:
        if not await _first_time(uow, event, "failures"):
            return
        account = await _account(uow, event)
        refresh = await _refresh(uow, p.refresh_id)
        if account is not None and not _stale_reason(account, p.broker.value, refresh):
            transition = lifecycle.refresh_failed(
                integration_state(account),
                message=p.message,
                code=p.code,
                now=datetime.now(UTC),
            )
            store_state(account, transition.state)
        if refresh is not None and refresh.status == "pending":
            await RefreshRepository(uow.session).settle(
                refresh, "failed", datetime.now(UTC), message=p.message
            )
        await uow.commit()


async def record_status(uow: UnitOfWork, event: IntegrationStatusChanged) -> None:
    p = event.payload
    async with uow:
        if not await _first_time(uow, event, "statuses"):
            return
        account = await _account(uow, event)
        if account is None or account.integration_type != p.broker.value:
            await uow.commit()
            return
        transition = lifecycle.status_reported(
            integration_state(account),
            p.status,
            occurred_at=event.occurred_at,
            message=p.message,
            code=p.code,
            last_connected=p.last_connected,
            access_expires_at=p.access_expires_at,
            refresh_expires_at=p.refresh_expires_at,
            account_hash=p.account_hash,
        )
        store_state(account, transition.state)
        await uow.commit()


async def store_tokens(uow: UnitOfWork, event: SchwabTokensRotated) -> None:
    p = event.payload
    async with uow:
        if not await _first_time(uow, event, "tokens"):
            return
        if event.user_id is None:
            await uow.commit()
            return
        for account in of_login(
            await AccountRepository(uow.session).sharing_login(
                event.user_id, p.app_key
            ),
            p.login,
        ):
            transition = lifecycle.tokens_rotated(
                integration_state(account),
                token_enc=p.token_enc,  # already ciphertext under the shared keys
                access_expires_at=p.access_expires_at,
                refresh_expires_at=p.refresh_expires_at,
            )
            store_state(account, transition.state)
        await uow.commit()
