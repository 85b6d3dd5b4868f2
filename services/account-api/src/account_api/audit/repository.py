"""Audit log writes and reads."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from account_api.tables import AuditEntry


class AuditRepository:
    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def record(
        self,
        *,
        actor: str,
        user_id: int | None,
        account_id: int | None,
        action: str,
        changed_fields: list[str] | None = None,
        request_id: str | None = None,
        detail: dict[str, Any] | None = None,
    ) -> None:
        """Append one entry; `changed_fields` holds names only, never values."""
        self._session.add(
            AuditEntry(
                actor=actor,
                user_id=user_id,
                account_id=account_id,
                action=action,
                changed_fields=changed_fields or [],
                request_id=request_id,
                detail=detail,
            )
        )

    async def for_account(self, account_id: int, limit: int = 200) -> list[AuditEntry]:
        query = (
            select(AuditEntry)
            .where(AuditEntry.account_id == account_id)
            .order_by(AuditEntry.id.desc())
            .limit(limit)
        )
        return list((await self._session.execute(query)).scalars())
