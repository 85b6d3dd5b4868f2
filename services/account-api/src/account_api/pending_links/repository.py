"""Queries of pending links (rows the migrator writes to `pending_links`)."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from account_api.tables import PendingLink


class PendingLinkRepository:
    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def for_user(self, user_id: int) -> list[PendingLink]:
        query = (
            select(PendingLink)
            .where(PendingLink.user_id == user_id)
            .order_by(PendingLink.id)
        )
        return list((await self._session.execute(query)).scalars())

    async def owned(
        self, user_id: int, link_id: int, *, for_update: bool = False
    ) -> PendingLink | None:
        """The item if it belongs to `user_id` (another user's is indistinguishable from none)."""
        query = select(PendingLink).where(
            PendingLink.id == link_id, PendingLink.user_id == user_id
        )
        if for_update:
            query = query.with_for_update()
        return (await self._session.execute(query)).scalar_one_or_none()

    async def delete(self, item: PendingLink) -> None:
        await self._session.delete(item)
        await self._session.flush()
