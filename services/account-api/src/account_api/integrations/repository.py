"""Queries of refreshes, refresh jobs, snapshots and OAuth states."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from account_api.tables import (
    Account,
    CashSnapshot,
    OAuthState,
    PositionSnapshot,
    Refresh,
    RefreshJob,
)


class RefreshRepository:
    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    def add(
        self,
        refresh_id: uuid.UUID,
        account_id: int,
        integration_version: int,
        job_id: uuid.UUID | None = None,
    ) -> None:
        self._session.add(
            Refresh(
                id=refresh_id,
                account_id=account_id,
                job_id=job_id,
                integration_version=integration_version,
            )
        )

    def add_job(
        self, job_id: uuid.UUID, user_id: int | None, total: int, trigger: str
    ) -> None:
        self._session.add(
            RefreshJob(id=job_id, user_id=user_id, total=total, trigger=trigger)
        )

    async def get_for_account(
        self, refresh_id: uuid.UUID, account_id: int
    ) -> Refresh | None:
        return (
            await self._session.execute(
                select(Refresh).where(
                    Refresh.id == refresh_id, Refresh.account_id == account_id
                )
            )
        ).scalar_one_or_none()

    async def job(self, job_id: uuid.UUID, user_id: int) -> RefreshJob | None:
        return (
            await self._session.execute(
                select(RefreshJob).where(
                    RefreshJob.id == job_id, RefreshJob.user_id == user_id
                )
            )
        ).scalar_one_or_none()

    async def overdue(
        self, requested_before: datetime, limit: int
    ) -> list[tuple[Refresh, str | None]]:
        """Pending refreshes asked before `requested_before`, with their account's integration
        type, locked (others' locked rows are skipped: another replica is sweeping them)."""
        rows = await self._session.execute(
            select(Refresh, Account.integration_type)
            .join(Account, Account.id == Refresh.account_id)
            .where(Refresh.status == "pending", Refresh.requested_at < requested_before)
            .order_by(Refresh.requested_at)
            .limit(limit)
            .with_for_update(of=Refresh, skip_locked=True)
        )
        return [(refresh, kind) for refresh, kind in rows.all()]

    async def job_counts(self, job_id: uuid.UUID) -> dict[str, int]:
        rows = await self._session.execute(
            select(Refresh.status, func.count())
            .where(Refresh.job_id == job_id)
            .group_by(Refresh.status)
        )
        return {status: int(count) for status, count in rows.all()}


class SnapshotRepository:
    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def positions(self, account_id: int) -> list[PositionSnapshot]:
        query = (
            select(PositionSnapshot)
            .where(PositionSnapshot.account_id == account_id)
            .order_by(PositionSnapshot.symbol)
        )
        return list((await self._session.execute(query)).scalars())

    async def cash(self, account_id: int) -> list[CashSnapshot]:
        query = (
            select(CashSnapshot)
            .where(CashSnapshot.account_id == account_id)
            .order_by(CashSnapshot.currency)
        )
        return list((await self._session.execute(query)).scalars())


class OAuthStateRepository:
    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    def add(
        self, nonce: str, user_id: int, account_id: int, expires_at: datetime
    ) -> None:
        self._session.add(
            OAuthState(
                nonce=nonce,
                user_id=user_id,
                account_id=account_id,
                expires_at=expires_at,
            )
        )

    async def consume(self, nonce: str, now: datetime) -> OAuthState | None:
        """Mark the state used, once; None when unknown, expired or already used."""
        result = await self._session.execute(
            update(OAuthState)
            .where(
                OAuthState.nonce == nonce,
                OAuthState.used_at.is_(None),
                OAuthState.expires_at > now,
            )
            .values(used_at=now)
            .returning(OAuthState)
        )
        return result.scalar_one_or_none()


async def accounts_sharing_login(
    session: AsyncSession, user_id: int, app_key: str
) -> list[Account]:
    """The user's Schwab accounts on one app key, locked in id order (a fixed lock order keeps
    the OAuth callback and the token consumer from deadlocking or overwriting each other)."""
    query = (
        select(Account)
        .order_by(Account.id)
        .with_for_update()
        .where(
            Account.user_id == user_id,
            Account.integration_type == "SCHWAB",
            Account.integration_config["app_key"].astext == app_key,
        )
    )
    return list((await session.execute(query)).scalars())


def of_login(
    accounts: list[Account],
    login: str | None,
    visible: dict[str, str] | None = None,
) -> list[Account]:
    """The accounts (of one user and app key) that belong to one Schwab login: those already
    bound to it, and those it sees (by number or hash) when it has just signed in. Without a
    login id (a token from before logins were told apart) every account of the app key."""
    if login is None:
        return accounts
    numbers, hashes = set(visible or {}), set((visible or {}).values())

    def belongs(account: Account) -> bool:
        config = account.integration_config or {}
        return (
            config.get("login") == login
            or config.get("account_number") in numbers
            or config.get("account_hash") in hashes
        )

    return [a for a in accounts if belongs(a)]
