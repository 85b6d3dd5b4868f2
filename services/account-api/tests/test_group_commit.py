"""Balances recorded many at a time (group commit) end exactly as if recorded one by one —
real PostgreSQL, the same recording code the consumer runs."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import psycopg
import pytest
from account_api.consumers.group_commit import GroupCommit
from account_api.db import UnitOfWork
from account_api.integrations import results
from account_api.integrations.waiter import CHANNEL as WAITERS
from account_api.migrate import upgrade
from brokerlink_shared.contracts.events import BalanceUpdated
from brokerlink_shared.messaging import EventPublisher
from brokerlink_shared.subjects import Topology
from faststream.nats import NatsBroker
from sqlalchemy import event as sa_event
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


def _uow(sessionmaker: async_sessionmaker) -> UnitOfWork:  # type: ignore[type-arg]
    # Balances write no outbox rows; the publisher would only encode them (no connection).
    return UnitOfWork(sessionmaker, EventPublisher(NatsBroker(), Topology("unused")))


def _balance(
    user_id: int,
    account_id: int,
    balance: str,
    as_of: datetime,
    refresh_id: uuid.UUID | None = None,
    symbol: str = "AAPL",
) -> BalanceUpdated:
    return BalanceUpdated(
        user_id=user_id,
        account_id=account_id,
        payload={
            "broker": "IB",
            "refresh_id": refresh_id,
            "as_of": as_of,
            "currency": "USD",
            "balance": balance,
            "cash": [{"currency": "USD", "amount": balance}],
            "positions": [
                {"symbol": symbol, "quantity": "1", "market_value": balance},
                {
                    "symbol": "VT",
                    "sec_type": "ETF",
                    "currency": "EUR",
                    "quantity": "0.12345678",
                    "average_cost": "101.5",
                    "market_price": "99.25",
                    "unrealized_pnl": "-0.2778",
                },
            ],
        },
    )


@pytest.fixture
async def database(infra):  # type: ignore[no-untyped-def]
    url = infra.new_database("gc")
    upgrade(url)
    engine = create_async_engine(url)
    yield (
        url.replace("postgresql+psycopg://", "postgresql://"),
        async_sessionmaker(engine, expire_on_commit=False),
    )
    await engine.dispose()


async def _seed(libpq: str, accounts: int) -> tuple[int, list[int], list[uuid.UUID]]:
    """One user, `accounts` IB accounts (integration version 2) with a pending refresh each."""
    async with await psycopg.AsyncConnection.connect(libpq) as conn:
        user_id = (
            await (
                await conn.execute(
                    "INSERT INTO users (email, name, password_hash) VALUES "
                    "('gc@example.com', 'GC', 'x') RETURNING id"
                )
            ).fetchone()
        )[0]  # type: ignore[index]
        ids, refreshes = [], []
        for i in range(accounts):
            aid = (
                await (
                    await conn.execute(
                        "INSERT INTO accounts (user_id, name, currency, integration_type, "
                        "integration_config, integration_version, integration_status) VALUES "
                        "(%s, %s, 'USD', 'IB', '{}', 2, 'error') RETURNING id",
                        (user_id, f"A{i}"),
                    )
                ).fetchone()
            )[0]  # type: ignore[index]
            rid = uuid.uuid4()
            await conn.execute(
                "INSERT INTO refreshes (id, account_id, integration_version) VALUES (%s, %s, %s)",
                (
                    rid,
                    aid,
                    1 if i == 0 else 2,
                ),  # the first was asked with an old config
            )
            ids.append(aid)
            refreshes.append(rid)
    return user_id, ids, refreshes


async def _state(libpq: str) -> dict[str, list[tuple[object, ...]]]:
    async with await psycopg.AsyncConnection.connect(libpq) as conn:

        async def rows(sql: str) -> list[tuple[object, ...]]:
            return list(await (await conn.execute(sql)).fetchall())

        return {
            "accounts": await rows(
                "SELECT name, current_balance, balance_as_of, integration_status, last_error "
                "FROM accounts ORDER BY name"
            ),
            "history": await rows(
                "SELECT a.name, h.date, h.balance, h.as_of FROM account_balance_history h "
                "JOIN accounts a ON a.id = h.account_id ORDER BY a.name, h.date"
            ),
            "positions": await rows(
                "SELECT a.name, p.symbol, p.sec_type, p.currency, p.quantity, p.average_cost, "
                "p.market_price, p.market_value, p.unrealized_pnl, p.as_of FROM positions p "
                "JOIN accounts a ON a.id = p.account_id ORDER BY a.name, p.symbol"
            ),
            "cash": await rows(
                "SELECT a.name, c.amount FROM cash_balances c "
                "JOIN accounts a ON a.id = c.account_id ORDER BY a.name"
            ),
            "refreshes": await rows(
                "SELECT a.name, r.status, r.balance, r.message IS NOT NULL "
                "FROM refreshes r JOIN accounts a ON a.id = r.account_id ORDER BY a.name"
            ),
        }


def _events(
    user_id: int, ids: list[int], refreshes: list[uuid.UUID]
) -> list[BalanceUpdated]:
    events = []
    for i, (aid, rid) in enumerate(zip(ids, refreshes, strict=True)):
        events.append(_balance(user_id, aid, f"{100 + i}", NOW, rid, symbol="NEW"))
        # an older reading of the same account arriving later: fills nothing newer
        events.append(
            _balance(user_id, aid, "1", NOW - timedelta(hours=1), symbol="OLD")
        )
        # yesterday's reading: its own history day
        events.append(_balance(user_id, aid, f"{50 + i}", NOW - timedelta(days=1)))
    events.append(events[0])  # a redelivery of the very same event
    events.append(_balance(user_id + 999, ids[1], "666", NOW + timedelta(hours=1)))
    events.append(_balance(user_id, 10**9, "7", NOW))  # an unknown account
    return events


async def test_one_batch_equals_one_by_one(database, infra) -> None:  # type: ignore[no-untyped-def]
    libpq, sessionmaker = database
    user_id, ids, refreshes = await _seed(libpq, 12)
    events = _events(user_id, ids, refreshes)

    for event in events:
        await results.record_balances(_uow(sessionmaker), [event])
    one_by_one = await _state(libpq)

    other = infra.new_database("gc")
    upgrade(other)
    engine = create_async_engine(other)
    other_libpq = other.replace("postgresql+psycopg://", "postgresql://")
    try:
        user2, ids2, refreshes2 = await _seed(other_libpq, 12)
        assert (user2, ids2) == (user_id, ids)
        remap = dict(zip(refreshes, refreshes2, strict=True))
        batch = [
            e.model_copy(
                update={
                    "payload": e.payload.model_copy(
                        update={"refresh_id": remap.get(e.payload.refresh_id)}
                    )
                }
            )
            for e in events
        ]
        statements: list[str] = []

        @sa_event.listens_for(engine.sync_engine, "before_cursor_execute")
        def seen(_conn, _cursor, statement, _params, _context, _many) -> None:  # type: ignore[no-untyped-def]
            statements.append(statement)

        await results.record_balances(
            _uow(async_sessionmaker(engine, expire_on_commit=False)), batch
        )
        together = await _state(other_libpq)
    finally:
        await engine.dispose()

    assert together == one_by_one
    accounts = {row[0]: row for row in together["accounts"]}
    assert accounts["A3"][1] == Decimal("103") and accounts["A3"][3] == "connected"
    # asked with an old config: not applied (the hour-old reading without a refresh is)
    assert accounts["A0"][1] == Decimal("1")
    assert together["refreshes"][0][1] == "failed"
    assert {r[1] for r in together["refreshes"][1:]} == {"succeeded"}
    assert len(together["history"]) == 2 * 12  # today and yesterday for each
    # every column of a position lands exactly, absent ones as NULL
    assert [p for p in together["positions"] if p[0] == "A3"] == [
        (
            "A3",
            "NEW",
            "STK",
            "USD",
            Decimal("1"),
            None,
            None,
            Decimal("103"),
            None,
            NOW,
        ),
        (
            "A3",
            "VT",
            "ETF",
            "EUR",
            Decimal("0.12345678"),
            Decimal("101.5"),
            Decimal("99.25"),
            None,
            Decimal("-0.2778"),
            NOW,
        ),
    ]
    assert [c for c in together["cash"] if c[0] == "A3"] == [("A3", Decimal("103"))]
    # set-based: the twelve accounts in one UPDATE, not an ORM flush per row
    updates = [s for s in statements if "UPDATE accounts" in s]
    assert len(updates) == 1 and "jsonb_to_recordset" in updates[0], updates


async def test_group_commit_answers_each_submitter(database) -> None:  # type: ignore[no-untyped-def]
    libpq, sessionmaker = database
    user_id, ids, refreshes = await _seed(libpq, 30)
    batches: list[int] = []

    async def record(events):  # type: ignore[no-untyped-def]
        batches.append(len(events))
        if any(e.account_id == ids[5] for e in events):
            raise RuntimeError("a poison message")
        await results.record_balances(_uow(sessionmaker), events)

    group = GroupCommit(record)
    outcomes = await asyncio.gather(
        *(
            group.submit(_balance(user_id, aid, "10", NOW, rid))
            for aid, rid in zip(ids, refreshes, strict=True)
        ),
        return_exceptions=True,
    )
    await group.aclose()
    failed = [i for i, o in enumerate(outcomes) if isinstance(o, Exception)]
    assert failed == [5]  # only the poison message fails; the rest were committed
    assert max(batches) > 1  # they were committed together, not one transaction each
    state = await _state(libpq)
    assert sum(1 for r in state["refreshes"] if r[1] == "succeeded") == 28


async def test_settled_refreshes_wake_their_waiters(database) -> None:  # type: ignore[no-untyped-def]
    """Each refresh a batch settles is announced on the waiters' channel (the API's `?wait=`
    answers from that, not from polling), in the batch's own statement."""
    libpq, sessionmaker = database
    user_id, ids, refreshes = await _seed(libpq, 4)
    async with await psycopg.AsyncConnection.connect(
        libpq, autocommit=True
    ) as listener:
        await listener.execute(f"LISTEN {WAITERS}")
        await results.record_balances(
            _uow(sessionmaker),
            [
                _balance(user_id, aid, "10", NOW, rid)
                for aid, rid in zip(ids, refreshes, strict=True)
            ],
        )
        heard = [n.payload async for n in listener.notifies(timeout=10, stop_after=4)]
    assert sorted(heard) == sorted(str(r) for r in refreshes)
