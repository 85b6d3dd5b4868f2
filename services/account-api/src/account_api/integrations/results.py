"""What connectors report back: balances, failures, statuses and rotated tokens.

Each handler records the event id in `processed_events` in the same transaction as its effect,
so a redelivered event is a no-op; a balance older (by `as_of`) than the stored one never
overwrites it. Refresh waiters are woken with NOTIFY, delivered on commit. The integration's
state changes only through `integrations.lifecycle`."""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from decimal import Decimal

from brokerlink_shared.contracts.events import (
    BalanceUpdated,
    Event,
    IntegrationStatusChanged,
    RefreshFailed,
    SchwabTokensRotated,
)

from account_api.integrations import lifecycle
from account_api.integrations.repository import (
    integration_state,
    of_login,
    store_state,
)
from account_api.tables import Account, Refresh
from account_api.unit_of_work import UnitOfWork

log = logging.getLogger(__name__)


async def _first_time(uow: UnitOfWork, event: Event, consumer: str) -> bool:
    return await uow.processed_events.first_time(event.event_id, consumer)


async def _account(uow: UnitOfWork, event: Event) -> Account | None:
    if event.account_id is None:
        return None
    return await uow.accounts.locked(event.account_id, event.user_id)


async def _refresh(uow: UnitOfWork, refresh_id: uuid.UUID | None) -> Refresh | None:
    if refresh_id is None:
        return None
    return await uow.refreshes.get(refresh_id)


def _stale_reason(account: Account, broker: str, refresh: Refresh | None) -> str | None:
    return lifecycle.stale_reason(
        integration_state(account),
        broker,
        refresh.integration_version if refresh is not None else None,
    )


async def record_balance(uow: UnitOfWork, event: BalanceUpdated) -> None:
    await record_balances(uow, [event])


async def record_balances(uow: UnitOfWork, events: Sequence[BalanceUpdated]) -> None:
    """Record many balance events in one transaction (group commit) with a fixed number of
    statements however many there are; the outcome equals recording them one by one in
    `as_of` order."""
    async with uow:
        unique = list({e.event_id: e for e in events}.values())
        fresh_ids = await uow.processed_events.first_times(
            [e.event_id for e in unique], "balances"
        )
        fresh = sorted(
            (e for e in unique if e.event_id in fresh_ids),
            key=lambda e: e.payload.as_of,
        )
        if not fresh:
            await uow.commit()
            return
        accounts = await uow.accounts.locked_many(
            {e.account_id for e in fresh if e.account_id is not None}
        )
        refreshes = uow.refreshes
        pending = {
            r.id: r
            for r in await refreshes.get_many(
                {e.payload.refresh_id for e in fresh if e.payload.refresh_id}
            )
            if r.status == "pending"
        }
        now = datetime.now(UTC)
        snapshots: dict[
            int, BalanceUpdated
        ] = {}  # account -> its newest stored balance
        days: dict[
            tuple[int, dt.date], BalanceUpdated
        ] = {}  # each day's newest balance
        ended: list[tuple[Refresh, str, str | None, Decimal | None]] = []
        for event in fresh:
            p = event.payload
            account = accounts.get(event.account_id or 0)
            if account is None or event.user_id not in (None, account.user_id):
                log.info(
                    "balance for an unknown or deleted account ignored",
                    extra={"account_id": event.account_id},
                )
                continue
            refresh = pending.pop(p.refresh_id, None) if p.refresh_id else None
            if stale := _stale_reason(account, p.broker.value, refresh):
                # Read with a config no longer in force: it must not overwrite the account.
                log.info(
                    "stale balance ignored",
                    extra={"account_id": account.id, "reason": stale},
                )
                if refresh is not None:
                    ended.append((refresh, "failed", stale, None))
                continue
            if account.balance_as_of is None or account.balance_as_of <= p.as_of:
                account.current_balance = p.balance
                account.balance_as_of = p.as_of
                account.last_updated = p.as_of
                transition = lifecycle.refresh_succeeded(
                    integration_state(account), now=now
                )
                store_state(account, transition.state)
                snapshots[account.id] = event
            # The day's history row follows its own as_of rule (an older event can still fill an empty day).
            day = (account.id, p.as_of.astimezone(UTC).date())
            if day not in days or days[day].payload.as_of <= p.as_of:
                days[day] = event
            if refresh is not None:
                ended.append((refresh, "succeeded", None, p.balance))
        await uow.accounts.write_changes(accounts.values())
        await uow.snapshots.replace_many(
            {
                account_id: (
                    e.payload.as_of,
                    [pos.model_dump() for pos in e.payload.positions],
                    [(cash.currency, cash.amount) for cash in e.payload.cash],
                )
                for account_id, e in snapshots.items()
            }
        )
        await uow.history.upsert_broker_days(
            [
                (
                    account_id,
                    day,
                    e.payload.balance,
                    e.payload.broker.value,
                    e.payload.as_of,
                )
                for (account_id, day), e in days.items()
            ]
        )
        await refreshes.settle_many(ended, now)
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
            await uow.refreshes.settle(
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
            await uow.accounts.sharing_login(event.user_id, p.app_key), p.login
        ):
            transition = lifecycle.tokens_rotated(
                integration_state(account),
                token_enc=p.token_enc,  # already ciphertext under the shared keys
                access_expires_at=p.access_expires_at,
                refresh_expires_at=p.refresh_expires_at,
            )
            store_state(account, transition.state)
        await uow.commit()
