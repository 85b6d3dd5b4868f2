"""Per-user quotas (accounts, integrations). Each check locks the user's row, so concurrent
creations of one user queue and the quota holds exactly."""

from __future__ import annotations

from typing import Protocol

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from account_api.errors import Conflict
from account_api.tables import Account, User


class LimitReached(Conflict):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.code = "limit_reached"


class Quotas(Protocol):
    """What the quota checks read (`QuotaRepository`, or a fake in the fast tests)."""

    async def lock_user(self, user_id: int) -> None: ...

    async def accounts(self, user_id: int) -> int: ...

    async def integrations(self, user_id: int) -> int: ...


class QuotaRepository:
    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def lock_user(self, user_id: int) -> None:
        await self._session.execute(
            select(User.id).where(User.id == user_id).with_for_update()
        )

    async def accounts(self, user_id: int) -> int:
        query = (
            select(func.count()).select_from(Account).where(Account.user_id == user_id)
        )
        return int((await self._session.execute(query)).scalar_one())

    async def integrations(self, user_id: int) -> int:
        query = (
            select(func.count())
            .select_from(Account)
            .where(Account.user_id == user_id, Account.integration_type.is_not(None))
        )
        return int((await self._session.execute(query)).scalar_one())


async def ensure_account_quota(quotas: Quotas, user_id: int, limit: int) -> None:
    await quotas.lock_user(user_id)
    if await quotas.accounts(user_id) >= limit:
        raise LimitReached(f"at most {limit} accounts per user")


async def ensure_integration_quota(quotas: Quotas, user_id: int, limit: int) -> None:
    await quotas.lock_user(user_id)
    if await quotas.integrations(user_id) >= limit:
        raise LimitReached(f"at most {limit} integrated accounts per user")
