"""The scheduler's shared state: one row per job holding when it next runs."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

CLAIM = text(
    """INSERT INTO scheduler_state (name, next_run_at) VALUES (:name, :next)
       ON CONFLICT (name) DO UPDATE SET next_run_at = :next
       WHERE scheduler_state.next_run_at <= :now
       RETURNING name"""
)


class SchedulerRepository:
    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def claim(self, name: str, now: datetime, next_run_at: datetime) -> bool:
        """Move the job's next run to `next_run_at` if it is due; True when this call did."""
        result = await self._session.execute(
            CLAIM, {"name": name, "now": now, "next": next_run_at}
        )
        return result.scalar_one_or_none() is not None


class RetentionRepository:
    """Batched deletes of rows past their retention (conditions from `scheduling.retention`)."""

    BATCH = 5000

    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def purge(self, table: str, condition: str, params: dict[str, int]) -> int:
        """Delete one batch of rows matching `condition`; returns how many went."""
        result = await self._session.execute(
            text(
                f"DELETE FROM {table} WHERE ctid IN "
                f"(SELECT ctid FROM {table} WHERE {condition} LIMIT {self.BATCH})"
            ),
            params,
        )
        return int(result.rowcount or 0)  # type: ignore[attr-defined]
