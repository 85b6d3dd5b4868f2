"""The transactional outbox: events are added in the caller's transaction and published later
by `OutboxRelay`. Rows hold validated JSON; the relay never re-validates."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import orjson
import psycopg
from brokerlink_shared.contracts.events import Event
from brokerlink_shared.messaging import EventPublisher
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from account_api.tables import OutboxMessage

# Set in a session's `info` when its transaction wrote outbox rows, so its commit wakes the relay.
STAGED = "outbox_staged"


class OutboxRepository:
    def __init__(self, session: AsyncSession, publisher: EventPublisher) -> None:
        self._session = session
        self._publisher = publisher

    def add(self, event: Event) -> None:
        """Stage `event` for publication; validation errors surface here, before commit."""
        subject, body = self._publisher.encode(event)
        self._session.add(
            OutboxMessage(
                event_id=event.event_id,
                family=event.family,
                subject=subject,
                partition_key=str(event.account_id or ""),
                body=body,
                correlation_id=event.correlation_id,
            )
        )

    async def add_many(self, events: Sequence[Event]) -> None:
        """`add` for many events, written now in one statement (in the caller's transaction),
        in the given order; validation errors surface before anything is written."""
        if not events:
            return
        rows = []
        for n, event in enumerate(events):
            subject, body = self._publisher.encode(event)
            rows.append(
                {
                    "n": n,
                    "event_id": event.event_id,
                    "family": event.family,
                    "subject": subject,
                    "partition_key": str(event.account_id or ""),
                    "body": body.decode(),  # JSON text, carried as a string: bytes unchanged
                    "correlation_id": event.correlation_id,
                }
            )
        await self._session.execute(ADD_MANY, {"rows": orjson.dumps(rows).decode()})
        self._session.info[STAGED] = True


# Rows take `seq` in the order given (the relay publishes in `seq` order).
ADD_MANY = text(
    """INSERT INTO outbox (event_id, family, subject, partition_key, body, correlation_id)
       SELECT event_id, family, subject, partition_key, convert_to(body, 'UTF8'), correlation_id
       FROM jsonb_to_recordset(CAST(:rows AS jsonb)) AS r(n integer, event_id uuid, family text,
           subject text, partition_key text, body text, correlation_id text)
       ORDER BY n"""
)


CLAIM = text(
    """SELECT seq, event_id, family, subject, body, correlation_id FROM outbox
       WHERE published_at IS NULL ORDER BY seq LIMIT :limit"""
)
MARK = text("UPDATE outbox SET published_at = :now WHERE seq = ANY(:seqs)")
PENDING = text("SELECT count(*) FROM outbox WHERE published_at IS NULL")
PING = text("SELECT 1")
PURGE = text(
    "DELETE FROM outbox WHERE published_at IS NOT NULL AND published_at < now() - interval '7 days'"
)


class OutboxQueue:
    """The relay's view of the outbox: unpublished rows in `seq` order."""

    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def claim(self, limit: int) -> list[Any]:
        return list((await self._session.execute(CLAIM, {"limit": limit})).all())

    async def mark_published(self, seqs: list[int]) -> None:
        await self._session.execute(MARK, {"now": datetime.now(UTC), "seqs": seqs})

    async def pending_count(self) -> int:
        return int((await self._session.execute(PENDING)).scalar_one())

    async def purge_published(self) -> None:
        """Forget rows published more than a week ago."""
        await self._session.execute(PURGE)

    async def ping(self) -> None:
        """A trivial round trip, for health checks."""
        await self._session.execute(PING)


async def has_unpublished(conn: psycopg.AsyncConnection[Any]) -> bool:
    """Whether any row waits (the relay's idle probe: one index look-up on a connection it
    already holds, instead of a session and a transaction every poll)."""
    cur = await conn.execute(
        "SELECT EXISTS (SELECT 1 FROM outbox WHERE published_at IS NULL)",
        prepare=True,
    )
    row = await cur.fetchone()
    return bool(row and row[0])
