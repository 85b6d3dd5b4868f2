"""What connectors report back: balances, failures, statuses and rotated tokens.

Each handler records the event id in `processed_events` in the same transaction as its effect,
so a redelivered event is a no-op; a balance older (by `as_of`) than the stored one never
overwrites it. Refresh waiters are woken with NOTIFY, delivered on commit."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Sequence
from datetime import UTC, datetime

from brokerlink_shared.contracts.events import (
    BalanceUpdated,
    Event,
    IntegrationStatusChanged,
    RefreshFailed,
    SchwabTokensRotated,
)
from brokerlink_shared.contracts.values import IntegrationStatus
from sqlalchemy import bindparam, case, delete, or_, select, text, update
from sqlalchemy.dialects.postgresql import insert

from account_api.db import UnitOfWork
from account_api.history.repository import HistoryRepository
from account_api.integrations.repository import accounts_sharing_login
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
    await record_balances(uow, [event])


_CONNECTABLE = (
    IntegrationStatus.PENDING.value,
    IntegrationStatus.ERROR.value,
    IntegrationStatus.DISCONNECTED.value,
)


async def record_balances(uow: UnitOfWork, events: Sequence[BalanceUpdated]) -> None:
    """Record many balance events in one transaction (group commit), with a fixed number of
    statements however many there are; the outcome equals recording them one by one in
    `as_of` order."""
    async with uow:
        session = uow.session
        fresh_ids = set(
            (
                await session.execute(
                    insert(ProcessedEvent)
                    .values(
                        [
                            {"event_id": e.event_id, "consumer": "balances"}
                            for e in {e.event_id: e for e in events}.values()
                        ]
                    )
                    .on_conflict_do_nothing()
                    .returning(ProcessedEvent.event_id)
                )
            ).scalars()
        )
        fresh = sorted(
            (
                e
                for e in {e.event_id: e for e in events}.values()
                if e.event_id in fresh_ids
            ),
            key=lambda e: e.payload.as_of,
        )
        if not fresh:
            await uow.commit()
            return
        # Locked in id order, so concurrent batches cannot deadlock on each other.
        accounts = {
            a.id: a
            for a in (
                await session.execute(
                    select(
                        Account.id,
                        Account.user_id,
                        Account.integration_type,
                        Account.integration_version,
                        Account.integration_status,
                        Account.balance_as_of,
                    )
                    .where(
                        Account.id.in_({e.account_id for e in fresh if e.account_id})
                    )
                    .order_by(Account.id)
                    .with_for_update()
                )
            ).all()
        }
        refresh_ids = {e.payload.refresh_id for e in fresh if e.payload.refresh_id}
        refreshes = (
            {
                r.id: r
                for r in (
                    await session.execute(
                        select(
                            Refresh.id, Refresh.status, Refresh.integration_version
                        ).where(Refresh.id.in_(refresh_ids))
                    )
                ).all()
            }
            if refresh_ids
            else {}
        )
        now = datetime.now(UTC)
        balance_as_of = {aid: a.balance_as_of for aid, a in accounts.items()}
        latest: dict[int, BalanceUpdated] = {}  # account -> the newest balance to store
        history: dict[tuple[int, dt.date], BalanceUpdated] = {}
        outcomes: dict[object, dict[str, object]] = {}  # refresh id -> its end
        for event in fresh:
            p = event.payload
            account = accounts.get(event.account_id or 0)
            if account is None or (
                event.user_id is not None and account.user_id != event.user_id
            ):
                log.info(
                    "balance for an unknown or deleted account ignored",
                    extra={"account_id": event.account_id},
                )
                continue
            refresh = refreshes.get(p.refresh_id) if p.refresh_id else None
            pending = (
                refresh is not None
                and refresh.status == "pending"
                and refresh.id not in outcomes
            )
            if stale := _stale_reason(
                account.integration_type,
                account.integration_version,
                p.broker.value,
                refresh.integration_version if refresh is not None else None,
            ):
                # Read with a config no longer in force: it must not overwrite the account.
                log.info(
                    "stale balance ignored",
                    extra={"account_id": account.id, "reason": stale},
                )
                if pending:
                    outcomes[p.refresh_id] = {
                        "status": "failed",
                        "message": stale,
                        "balance": None,
                    }
                continue
            stored = balance_as_of[account.id]
            if stored is None or stored <= p.as_of:
                balance_as_of[account.id] = p.as_of
                latest[account.id] = event
            # The day's history row follows its own as_of rule (an older event can still fill an empty day).
            day = (account.id, p.as_of.astimezone(UTC).date())
            if day not in history or history[day].payload.as_of <= p.as_of:
                history[day] = event
            if pending:
                outcomes[p.refresh_id] = {
                    "status": "succeeded",
                    "message": None,
                    "balance": p.balance,
                }
        await _store_balances(uow, latest, now)
        if history:
            await HistoryRepository(session).upsert_broker_days(
                [
                    (
                        aid,
                        day,
                        e.payload.balance,
                        e.payload.broker.value,
                        e.payload.as_of,
                    )
                    for (aid, day), e in history.items()
                ]
            )
        if outcomes:
            refreshes_table = Refresh.__table__
            await session.execute(
                update(refreshes_table)
                .where(
                    refreshes_table.c.id == bindparam("rid"),
                    refreshes_table.c.status == "pending",
                )
                .values(
                    status=bindparam("new_status"),
                    message=bindparam("new_message"),
                    balance=bindparam("new_balance"),
                    completed_at=now,
                ),
                [
                    {
                        "rid": rid,
                        "new_status": o["status"],
                        "new_message": o["message"],
                        "new_balance": o["balance"],
                    }
                    for rid, o in outcomes.items()
                ],
            )
            await session.execute(
                text("SELECT pg_notify(:ch, id) FROM unnest(CAST(:ids AS text[])) id"),
                {"ch": REFRESH_CHANNEL, "ids": [str(r) for r in outcomes]},
            )
        await uow.commit()


async def _store_balances(
    uow: UnitOfWork,
    latest: dict[int, BalanceUpdated],
    now: datetime,
) -> None:
    """Each account's newest balance, positions and cash (snapshots are replaced whole)."""
    if not latest:
        return
    session = uow.session
    table = Account.__table__
    # Evaluated on the row as it was: a stored balance proves the link works.
    # (not `in_`: an expanding IN cannot be used with executemany).
    _connectable = table.c.integration_type.is_not(None) & or_(
        *(table.c.integration_status == status for status in _CONNECTABLE)
    )
    await session.execute(
        update(table)
        .where(table.c.id == bindparam("aid"))
        .values(
            current_balance=bindparam("balance"),
            balance_as_of=bindparam("as_of"),
            last_updated=bindparam("as_of"),
            last_success_at=now,
            integration_status=case(
                (_connectable, IntegrationStatus.CONNECTED.value),
                else_=table.c.integration_status,
            ),
            integration_status_at=case(
                (_connectable, now), else_=table.c.integration_status_at
            ),
            last_error=None,
            last_error_code=None,
        ),
        [
            {
                "aid": aid,
                "balance": e.payload.balance,
                "as_of": e.payload.as_of,
            }
            for aid, e in latest.items()
        ],
    )
    ids = list(latest)
    await session.execute(
        delete(PositionSnapshot).where(PositionSnapshot.account_id.in_(ids))
    )
    await session.execute(delete(CashSnapshot).where(CashSnapshot.account_id.in_(ids)))
    positions = [
        {"account_id": aid, "as_of": e.payload.as_of, **pos.model_dump()}
        for aid, e in latest.items()
        for pos in e.payload.positions
    ]
    if positions:
        await session.execute(insert(PositionSnapshot.__table__), positions)
    cash = [
        {
            "account_id": aid,
            "currency": c.currency,
            "amount": c.amount,
            "as_of": e.payload.as_of,
        }
        for aid, e in latest.items()
        for c in e.payload.cash
    ]
    if cash:
        await session.execute(insert(CashSnapshot.__table__), cash)


def _stale_reason(
    integration_type: str | None,
    integration_version: int,
    broker: str,
    refresh_version: int | None,
) -> str | None:
    """Why a connector's result must not touch the account, if it must not."""
    if integration_type != broker:
        return "the integration was removed or replaced while this refresh ran"
    if refresh_version not in (None, integration_version):
        return "the integration was changed while this refresh ran"
    return None


async def record_failure(uow: UnitOfWork, event: RefreshFailed) -> None:
    p = event.payload
    async with uow:
        if not await _first_time(uow, event, "failures"):
            return
        account = await _account(uow, event)
        refresh = await uow.session.get(Refresh, p.refresh_id) if p.refresh_id else None
        if account is not None and not _stale_reason(
            account.integration_type,
            account.integration_version,
            p.broker.value,
            refresh.integration_version if refresh is not None else None,
        ):
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


async def store_tokens(uow: UnitOfWork, event: SchwabTokensRotated) -> None:
    p = event.payload
    async with uow:
        if not await _first_time(uow, event, "tokens"):
            return
        if event.user_id is None:
            await uow.commit()
            return
        for account in await accounts_sharing_login(
            uow.session, event.user_id, p.app_key
        ):
            if (
                account.token_access_expires_at
                and account.token_access_expires_at > p.access_expires_at
            ):
                continue  # a newer token is already stored
            config = dict(account.integration_config or {})
            config["token_enc"] = (
                p.token_enc
            )  # already ciphertext under the shared keys
            account.integration_config = config
            account.token_access_expires_at = p.access_expires_at
            account.token_refresh_expires_at = p.refresh_expires_at
        await uow.commit()
