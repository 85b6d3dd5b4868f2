"""What connectors report back: balances, failures, statuses and rotated tokens.

Each handler records the event id in `processed_events` in the same transaction as its effect,
so a redelivered event is a no-op; a balance older (by `as_of`) than the stored one never
overwrites it. Refresh waiters are woken with NOTIFY, delivered on commit."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from brokerlink_shared.contracts.events import (
    BalanceUpdated,
    Event,
    IntegrationStatusChanged,
    RefreshFailed,
    SchwabTokensRotated,
)
from brokerlink_shared.contracts.values import IntegrationStatus
from sqlalchemy import delete, select, text
from sqlalchemy.dialects.postgresql import insert

from account_api.db import UnitOfWork
from account_api.history.repository import HistoryRepository
from account_api.integrations.repository import accounts_sharing_login, of_login
from account_api.integrations.waiter import CHANNEL as REFRESH_CHANNEL
from account_api.tables import (
    Account,
    CashSnapshot,
    PositionSnapshot,
    ProcessedEvent,
    Refresh,
)

log = logging.getLogger(__name__)


async def _first_time(uow: UnitOfWork, event: Event, consumer: str) -> bool:
    result = await uow.session.execute(
        insert(ProcessedEvent)
        .values(event_id=event.event_id, consumer=consumer)
        .on_conflict_do_nothing()
        .returning(ProcessedEvent.event_id)
    )
    return result.scalar_one_or_none() is not None


async def _account(uow: UnitOfWork, event: Event) -> Account | None:
    if event.account_id is None:
        return None
    query = select(Account).where(Account.id == event.account_id).with_for_update()
    if event.user_id is not None:
        query = query.where(Account.user_id == event.user_id)
    return (await uow.session.execute(query)).scalar_one_or_none()


async def _notify_refresh(uow: UnitOfWork, refresh_id: object) -> None:
    await uow.session.execute(
        text("SELECT pg_notify(:ch, :id)"),
        {"ch": REFRESH_CHANNEL, "id": str(refresh_id)},
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
        refresh = await uow.session.get(Refresh, p.refresh_id) if p.refresh_id else None
        if stale := _stale_reason(account, p.broker.value, refresh):
            # Read with a config no longer in force: it must not overwrite the account.
            log.info(
                "stale balance ignored",
                extra={"account_id": account.id, "reason": stale},
            )
            if refresh is not None and refresh.status == "pending":
                refresh.status, refresh.message, refresh.completed_at = (
                    "failed",
                    stale,
                    now,
                )
                await _notify_refresh(uow, refresh.id)
            await uow.commit()
            return
        newer = account.balance_as_of is None or account.balance_as_of <= p.as_of
        if newer:
            account.current_balance = p.balance
            account.balance_as_of = p.as_of
            account.last_updated = p.as_of
            account.last_success_at = now
            if account.integration_type and account.integration_status in (
                IntegrationStatus.PENDING.value,
                IntegrationStatus.ERROR.value,
                IntegrationStatus.DISCONNECTED.value,
            ):
                account.integration_status = IntegrationStatus.CONNECTED.value
                account.integration_status_at = now
            account.last_error = account.last_error_code = None
            await uow.session.execute(
                delete(PositionSnapshot).where(
                    PositionSnapshot.account_id == account.id
                )
            )
            await uow.session.execute(
                delete(CashSnapshot).where(CashSnapshot.account_id == account.id)
            )
            for pos in p.positions:
                uow.session.add(
                    PositionSnapshot(
                        account_id=account.id, as_of=p.as_of, **pos.model_dump()
                    )
                )
            for cash in p.cash:
                uow.session.add(
                    CashSnapshot(
                        account_id=account.id,
                        currency=cash.currency,
                        amount=cash.amount,
                        as_of=p.as_of,
                    )
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
            refresh.status, refresh.balance, refresh.completed_at = (
                "succeeded",
                p.balance,
                now,
            )
            await _notify_refresh(uow, refresh.id)
        await uow.commit()


def _stale_reason(account: Account, broker: str, refresh: Refresh | None) -> str | None:
    """Why a connector's result must not touch the account, if it must not."""
    if account.integration_type != broker:
        return "the integration was removed or replaced while this refresh ran"
    if refresh is not None and refresh.integration_version not in (
        None,
        account.integration_version,
    ):
        return "the integration was changed while this refresh ran"
    return None


async def record_failure(uow: UnitOfWork, event: RefreshFailed) -> None:
    p = event.payload
    async with uow:
        if not await _first_time(uow, event, "failures"):
            return
        account = await _account(uow, event)
        refresh = await uow.session.get(Refresh, p.refresh_id) if p.refresh_id else None
        if account is not None and not _stale_reason(account, p.broker.value, refresh):
            account.last_error, account.last_error_code = p.message, p.code
        if refresh is not None and refresh.status == "pending":
            refresh.status, refresh.message, refresh.completed_at = (
                "failed",
                p.message,
                datetime.now(UTC),
            )
            await _notify_refresh(uow, refresh.id)
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
        if (
            account.integration_status_at is None
            or account.integration_status_at <= event.occurred_at
        ):
            account.integration_status = p.status.value
            account.integration_status_at = event.occurred_at
            if p.status in (
                IntegrationStatus.ERROR,
                IntegrationStatus.REAUTH_REQUIRED,
                IntegrationStatus.DISCONNECTED,
            ):
                account.last_error, account.last_error_code = p.message, p.code
            elif p.status == IntegrationStatus.CONNECTED:
                account.last_error = account.last_error_code = None
        if p.last_connected:
            account.last_connected_at = max(
                filter(None, [account.last_connected_at, p.last_connected])
            )
        if p.access_expires_at:
            account.token_access_expires_at = p.access_expires_at
        if p.refresh_expires_at:
            account.token_refresh_expires_at = p.refresh_expires_at
        if p.account_hash and account.integration_config is not None:
            config = dict(account.integration_config)
            if config.get("account_hash") != p.account_hash:
                config["account_hash"] = p.account_hash
                config.pop("unverified", None)
                account.integration_config = config
        await uow.commit()


def token_is_newer(
    candidate: tuple[datetime | None, datetime | None],
    stored: tuple[datetime | None, datetime | None],
) -> bool:
    """The one ordering rule for Schwab tokens (the connector's too): the later refresh expiry
    (a later login) wins; within one login, the later access expiry wins. Unknown is oldest."""
    oldest = datetime.min.replace(tzinfo=UTC)

    def key(
        times: tuple[datetime | None, datetime | None],
    ) -> tuple[datetime, datetime]:
        return (times[0] or oldest, times[1] or oldest)

    return key(candidate) > key(stored)


async def store_tokens(uow: UnitOfWork, event: SchwabTokensRotated) -> None:
    p = event.payload
    async with uow:
        if not await _first_time(uow, event, "tokens"):
            return
        if event.user_id is None:
            await uow.commit()
            return
        for account in of_login(
            await accounts_sharing_login(uow.session, event.user_id, p.app_key),
            p.login,
        ):
            if not token_is_newer(
                (p.refresh_expires_at, p.access_expires_at),
                (account.token_refresh_expires_at, account.token_access_expires_at),
            ):
                continue  # a newer token (say, a new consent) is already stored
            config = dict(account.integration_config or {})
            config["token_enc"] = (
                p.token_enc
            )  # already ciphertext under the shared keys
            account.integration_config = config
            account.token_access_expires_at = p.access_expires_at
            account.token_refresh_expires_at = p.refresh_expires_at
        await uow.commit()
