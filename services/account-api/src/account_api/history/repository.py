"""Balance history queries: one row per account per calendar day."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

from sqlalchemy import func, select, text
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from account_api.json_values import dumps
from account_api.tables import BalanceHistory


class HistoryRepository:
    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def for_account(
        self, account_id: int, limit: int = 3660
    ) -> list[BalanceHistory]:
        query = (
            select(BalanceHistory)
            .where(BalanceHistory.account_id == account_id)
            .order_by(BalanceHistory.date.desc())
            .limit(limit)
        )
        return list((await self._session.execute(query)).scalars())

    async def get(self, account_id: int, history_id: int) -> BalanceHistory | None:
        query = select(BalanceHistory).where(
            BalanceHistory.id == history_id, BalanceHistory.account_id == account_id
        )
        return (await self._session.execute(query)).scalar_one_or_none()

    async def upsert(
        self,
        account_id: int,
        day: dt.date,
        balance: Decimal,
        *,
        note: str | None = None,
        source: str = "MANUAL",
        as_of: dt.datetime | None = None,
    ) -> BalanceHistory:
        """Insert or replace the day's row; a broker update never replaces a newer one."""
        stmt = insert(BalanceHistory).values(
            account_id=account_id,
            date=day,
            balance=balance,
            note=note,
            source=source,
            as_of=as_of,
        )
        newer_only = (
            BalanceHistory.as_of.is_(None)
            | (BalanceHistory.as_of <= stmt.excluded.as_of)
            if as_of is not None
            else None
        )
        upsert_stmt = stmt.on_conflict_do_update(
            constraint="uq_history_account_day",
            set_={
                "balance": stmt.excluded.balance,
                "note": func.coalesce(stmt.excluded.note, BalanceHistory.note),
                "source": stmt.excluded.source,
                "as_of": stmt.excluded.as_of,
                "updated_at": func.now(),
            },
            where=newer_only,
        ).returning(BalanceHistory)
        row = (await self._session.execute(upsert_stmt)).scalar_one_or_none()
        if row is None:  # an older broker update: keep the stored row
            row = (
                await self._session.execute(
                    select(BalanceHistory).where(
                        BalanceHistory.account_id == account_id,
                        BalanceHistory.date == day,
                    )
                )
            ).scalar_one()
        return row

    async def upsert_broker_days(
        self, rows: list[tuple[int, dt.date, Decimal, str, dt.datetime]]
    ) -> None:
        """Many `upsert`s of broker balances (account, day, balance, source, as_of) in one
        statement, keeping the same rule: never replace a newer row. One row per (account, day).
        Rows go in as one JSON document, so the SQL is the same whatever their number."""
        if not rows:
            return
        ordered = sorted(rows, key=lambda r: (r[0], r[1]))
        await self._session.execute(
            text(
                "INSERT INTO account_balance_history (account_id, date, balance, source, as_of)"
                " SELECT a, d, b, s, t FROM jsonb_to_recordset(CAST(:rows AS jsonb))"
                " AS r(a bigint, d date, b numeric, s text, t timestamptz)"
                " ON CONFLICT ON CONSTRAINT uq_history_account_day DO UPDATE SET"
                " balance = excluded.balance, source = excluded.source,"
                " as_of = excluded.as_of, updated_at = now()"
                " WHERE account_balance_history.as_of IS NULL"
                " OR account_balance_history.as_of <= excluded.as_of"
            ),
            {
                "rows": dumps(
                    [
                        {"a": account, "d": day, "b": balance, "s": source, "t": as_of}
                        for account, day, balance, source, as_of in ordered
                    ]
                ).decode()
            },
        )

    async def delete(self, row: BalanceHistory) -> None:
        await self._session.delete(row)
