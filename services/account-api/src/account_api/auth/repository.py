"""Queries of users, sign-in sessions, revocations and recovery codes."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from sqlalchemy import delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from account_api.tables import AuthSession, RecoveryCode, User

if TYPE_CHECKING:  # db builds the repositories: a runtime import would be circular
    from account_api.db import ReadPool


class UserRepository:
    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def by_email(self, email: str) -> User | None:
        return (
            await self._session.execute(
                select(User).where(func.lower(User.email) == email.lower())
            )
        ).scalar_one_or_none()

    async def get(self, user_id: int, *, for_update: bool = False) -> User | None:
        if for_update:
            return (
                await self._session.execute(
                    select(User).where(User.id == user_id).with_for_update()
                )
            ).scalar_one_or_none()
        return await self._session.get(User, user_id)

    async def add(self, user: User) -> User:
        self._session.add(user)
        await self._session.flush()
        return user


class SessionRepository:
    """Sign-in sessions: one row per refresh-token family."""

    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    def add(
        self, session_id: uuid.UUID, user_id: int, token_hash: bytes, ttl_s: int
    ) -> None:
        self._session.add(
            AuthSession(
                id=session_id,
                user_id=user_id,
                token_hash=token_hash,
                expires_at=datetime.now(UTC) + timedelta(seconds=ttl_s),
            )
        )

    async def locked(self, session_id: uuid.UUID) -> AuthSession | None:
        return (
            await self._session.execute(
                select(AuthSession)
                .where(AuthSession.id == session_id)
                .with_for_update()
            )
        ).scalar_one_or_none()

    async def revoke(self, session_id: uuid.UUID, reason: str) -> None:
        await self._session.execute(
            update(AuthSession)
            .where(AuthSession.id == session_id, AuthSession.revoked_at.is_(None))
            .values(revoked_at=func.now(), revoked_reason=reason)
        )

    async def revoke_all(
        self, user_id: int, reason: str, *, keep: uuid.UUID | None = None
    ) -> None:
        query = update(AuthSession).where(
            AuthSession.user_id == user_id, AuthSession.revoked_at.is_(None)
        )
        if keep is not None:
            query = query.where(AuthSession.id != keep)
        await self._session.execute(
            query.values(revoked_at=func.now(), revoked_reason=reason)
        )

    async def active(self, session_id: uuid.UUID) -> bool:
        found = await self._session.execute(
            select(AuthSession.id).where(
                AuthSession.id == session_id,
                AuthSession.revoked_at.is_(None),
                AuthSession.expires_at > func.now(),
            )
        )
        return found.first() is not None


class RecoveryCodeRepository:
    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def replace(self, user_id: int, hashes: Sequence[str]) -> None:
        await self._session.execute(
            delete(RecoveryCode).where(RecoveryCode.user_id == user_id)
        )
        self._session.add_all(
            [RecoveryCode(user_id=user_id, code_hash=h) for h in hashes]
        )

    async def use(self, user_id: int, code_hash: str) -> bool:
        """Spend an unused code; False when there is none with that hash."""
        spent = await self._session.execute(
            update(RecoveryCode)
            .where(
                RecoveryCode.user_id == user_id,
                RecoveryCode.code_hash == code_hash,
                RecoveryCode.used_at.is_(None),
            )
            .values(used_at=func.now())
            .returning(RecoveryCode.id)
        )
        return spent.first() is not None

    async def remaining(self, user_id: int) -> int:
        found = await self._session.execute(
            select(func.count())
            .select_from(RecoveryCode)
            .where(RecoveryCode.user_id == user_id, RecoveryCode.used_at.is_(None))
        )
        return int(found.scalar_one())

    async def clear(self, user_id: int) -> None:
        await self._session.execute(
            delete(RecoveryCode).where(RecoveryCode.user_id == user_id)
        )


class RevocationFeed:
    """New rows of `auth_revocations`, read through the psycopg pool (no ORM session)."""

    def __init__(self, pool: ReadPool) -> None:
        self._pool = pool

    async def since(
        self, window_s: float
    ) -> list[tuple[int, uuid.UUID | None, float | None]]:
        """Revocations made in the last `window_s` seconds: (user, session, not_before)."""
        async with self._pool.connection() as conn:
            cursor = await conn.execute(
                "SELECT user_id, session_id, extract(epoch FROM not_before) AS nb "
                "FROM auth_revocations WHERE created_at > now() - make_interval(secs => %s)",
                (window_s,),
            )
            rows = await cursor.fetchall()
        return [
            (
                int(r["user_id"]),
                r["session_id"],
                float(r["nb"]) if r["nb"] is not None else None,
            )
            for r in rows
        ]
