"""Account queries: ORM for writes, one prepared psycopg query for the hot reads."""

from __future__ import annotations

import functools
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import orjson
from psycopg.adapt import Loader
from sqlalchemy import TextClause, inspect, select, text
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm.attributes import set_committed_value

from account_api.json_values import dumps
from account_api.tables import Account

if TYPE_CHECKING:  # db builds the repositories: a runtime import would be circular
    from account_api.db import ReadPool

_COLUMNS = """id, name, currency, account_type, account_number, original_capital, current_balance,
    last_updated, integration_type, integration_config, integration_status, last_error,
    last_refresh_at, last_success_at, last_failure_at, last_error_code, created_at, updated_at"""


# Each account with its newest history rows, built as JSON by PostgreSQL (one query per list).
# S608 here and below: the only interpolation is the constant `_COLUMNS`.
_WITH_HISTORY = f"""SELECT {_COLUMNS}, COALESCE(
        (SELECT json_agg(h ORDER BY h.date DESC) FROM (
            SELECT id, account_id, date, balance::text AS balance, note, source, updated_at
            FROM account_balance_history WHERE account_id = a.id
            ORDER BY date DESC LIMIT %s) h),
        '[]'::json) AS history
    FROM accounts a WHERE a.user_id = %s ORDER BY a.id"""  # noqa: S608


class _JSONFragmentLoader(Loader):
    """Keeps PostgreSQL's JSON as bytes that orjson embeds as is (no parse and re-dump)."""

    def load(self, data: Any) -> orjson.Fragment:
        return orjson.Fragment(bytes(data))


_POSTGRESQL = postgresql.dialect()  # type: ignore[no-untyped-call]


@functools.cache
def _write_columns(keys: tuple[str, ...]) -> TextClause:
    """One UPDATE of `keys` for many accounts, the rows as one JSON document: the same SQL for
    any number of rows."""
    columns = Account.__table__.c
    sets = ", ".join(f"{k} = r.{k}" for k in keys)
    types = ", ".join(
        f"{k} {columns[k].type.compile(dialect=_POSTGRESQL)}" for k in keys
    )
    return text(
        f"UPDATE accounts a SET {sets}"  # noqa: S608 - column names of the mapped table only
        f" FROM jsonb_to_recordset(CAST(:rows AS jsonb)) AS r(id bigint, {types})"
        " WHERE a.id = r.id"
    )


class AccountRepository:
    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def owned(
        self, user_id: int, account_id: int, *, for_update: bool = False
    ) -> Account | None:
        """The account if it belongs to `user_id` (another user's is indistinguishable from none)."""
        query = select(Account).where(
            Account.id == account_id, Account.user_id == user_id
        )
        if for_update:
            query = query.with_for_update()
        return (await self._session.execute(query)).scalar_one_or_none()

    async def locked(
        self, account_id: int, user_id: int | None = None
    ) -> Account | None:
        """The account, locked for update; when `user_id` is given, only if it is theirs."""
        query = select(Account).where(Account.id == account_id).with_for_update()
        if user_id is not None:
            query = query.where(Account.user_id == user_id)
        return (await self._session.execute(query)).scalar_one_or_none()

    async def locked_many(self, account_ids: Iterable[int]) -> dict[int, Account]:
        """The accounts, locked in id order (concurrent batches cannot deadlock)."""
        ids = sorted(account_ids)
        if not ids:
            return {}
        query = (
            select(Account)
            .where(Account.id.in_(ids))
            .order_by(Account.id)
            .with_for_update()
        )
        return {a.id: a for a in (await self._session.execute(query)).scalars()}

    async def sharing_login(self, user_id: int, app_key: str) -> list[Account]:
        """The user's Schwab accounts on one app key, locked in id order (a fixed lock order
        keeps the OAuth callback and the token consumer from deadlocking or overwriting each
        other)."""
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
        return list((await self._session.execute(query)).scalars())

    async def integrated(
        self, user_id: int | None = None, *, lock: bool = False
    ) -> list[Account]:
        """Integrated accounts (of one user, or all); `lock` holds them against concurrent edits."""
        query = (
            select(Account)
            .where(Account.integration_type.is_not(None))
            .order_by(Account.id)
        )
        if lock:
            query = query.with_for_update()
        if user_id is not None:
            query = query.where(Account.user_id == user_id)
        return list((await self._session.execute(query)).scalars())

    async def write_changes(self, accounts: Iterable[Account]) -> None:
        """Write what changed on many loaded (and locked) accounts in one UPDATE of the changed
        columns, whatever their number, instead of an ORM flush per row; afterwards the rows
        hold nothing left for a flush to write."""
        columns = Account.__table__.c
        changed = [a for a in accounts if inspect(a).committed_state]
        # Columns only: anything else left modified is the ORM flush's to write.
        keys = tuple(
            sorted(
                {k for a in changed for k in inspect(a).committed_state if k in columns}
            )
        )
        if not keys:
            return
        rows = [{"id": a.id, **{k: getattr(a, k) for k in keys}} for a in changed]
        # Marked as written first: the statement autoflushes, which would write them again.
        identity = self._session.sync_session.identity_map
        for account in changed:
            state = inspect(account)
            if state.committed_state.keys() <= set(keys):
                # What SQLAlchemy does after its own flush: the row is clean, so later flushes
                # in this transaction skip it instead of diffing every column again (that
                # check cost a bulk refresh of 20 accounts ~3 ms of CPU, a third of it).
                state._commit_all(state.dict, identity)
            else:
                for key in keys:
                    set_committed_value(account, key, getattr(account, key))
        await self._session.execute(
            _write_columns(keys), {"rows": dumps(rows).decode()}
        )

    async def add(self, account: Account) -> Account:
        self._session.add(account)
        await self._session.flush()
        await self._session.refresh(account)
        return account

    async def delete(self, account: Account) -> None:
        await self._session.delete(account)
        await self._session.flush()


class AccountReadModel:
    """Hot read paths straight from psycopg: rows as dicts, no ORM session."""

    def __init__(self, pool: ReadPool) -> None:
        self._pool = pool

    async def list_for_user(self, user_id: int) -> list[dict[str, Any]]:
        async with self._pool.connection() as conn:
            cur = await conn.execute(
                f"SELECT {_COLUMNS} FROM accounts WHERE user_id = %s ORDER BY id",  # noqa: S608
                (user_id,),
                prepare=True,
            )
            return await cur.fetchall()

    async def list_with_history(
        self, user_id: int, history_limit: int
    ) -> list[dict[str, Any]]:
        async with self._pool.connection() as conn:
            cur = conn.cursor()
            cur.adapters.register_loader("json", _JSONFragmentLoader)
            await cur.execute(_WITH_HISTORY, (history_limit, user_id), prepare=True)
            return await cur.fetchall()

    async def one_for_user(
        self, user_id: int, account_id: int
    ) -> dict[str, Any] | None:
        async with self._pool.connection() as conn:
            cur = await conn.execute(
                f"SELECT {_COLUMNS} FROM accounts WHERE id = %s AND user_id = %s",  # noqa: S608
                (account_id, user_id),
                prepare=True,
            )
            return await cur.fetchone()

    async def totals_for_user(self, user_id: int) -> tuple[str, list[dict[str, Any]]]:
        """The user's base currency and, per account currency, the sum of balances."""
        async with self._pool.connection() as conn:
            cur = await conn.execute(
                "SELECT currency, sum(current_balance) AS total, count(*) AS accounts "
                "FROM accounts WHERE user_id = %s GROUP BY currency ORDER BY currency",
                (user_id,),
                prepare=True,
            )
            rows: list[dict[str, Any]] = await cur.fetchall()
            cur = await conn.execute(
                "SELECT base_currency FROM users WHERE id = %s",
                (user_id,),
                prepare=True,
            )
            user: dict[str, Any] | None = await cur.fetchone()
        return (user or {}).get("base_currency") or "USD", rows
