"""`OutboxRelay`: publishes outbox rows to JetStream in commit order.

Exactly one relay runs at a time across replicas (a session-level advisory lock), which keeps
per-account order without per-key bookkeeping. It wakes on NOTIFY from the outbox trigger, and
when NATS is down it keeps the rows and retries with capped backoff; a row is marked published
only after JetStream acknowledged it, and `Nats-Msg-Id = event id` makes a re-send a no-op.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import psycopg
from brokerlink_shared.backoff import backoff_delay
from brokerlink_shared.messaging import EventPublisher
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from account_api.outbox.repository import OutboxQueue

log = logging.getLogger(__name__)
RELAY_LOCK_ID = 727275
CHANNEL = "brokerlink_outbox"


class OutboxRelay:
    def __init__(
        self,
        libpq_url: str,
        sessionmaker: async_sessionmaker[AsyncSession],
        publisher: EventPublisher,
        batch_size: int = 200,
        idle_poll_s: float = 5.0,
    ) -> None:
        self._url = libpq_url
        self._sessionmaker = sessionmaker
        self._publisher = publisher
        self._batch = batch_size
        self._idle_poll_s = idle_poll_s
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.is_leader = False
        self.published_total = 0

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="outbox-relay")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        failures = 0
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(
                    self._url, autocommit=True
                ) as conn:
                    await self._lead(conn)
                failures = 0
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                failures += 1
                self.is_leader = False
                log.warning(
                    "outbox relay connection failed", extra={"error": repr(exc)}
                )
                await asyncio.sleep(backoff_delay(failures, cap=10))

    async def _lead(self, conn: psycopg.AsyncConnection) -> None:
        while not await self._try_lock(conn):  # noqa: ASYNC110
            await asyncio.sleep(
                2.0
            )  # another replica relays; poll to take over if it goes away
        self.is_leader = True
        log.info("outbox relay is the leader")
        await conn.execute(f"LISTEN {CHANNEL}")
        listener = asyncio.create_task(self._listen(conn))
        try:
            await self._drain_forever(listener)
        finally:
            listener.cancel()
            self.is_leader = False

    @staticmethod
    async def _try_lock(conn: psycopg.AsyncConnection) -> bool:
        row = await (
            await conn.execute("SELECT pg_try_advisory_lock(%s)", (RELAY_LOCK_ID,))
        ).fetchone()
        return bool(row and row[0])

    async def _listen(self, conn: psycopg.AsyncConnection) -> None:
        try:
            async for _ in conn.notifies():
                self._wake.set()
        finally:
            self._wake.set()  # let the drain loop notice a lost connection at once

    async def _drain_forever(self, listener: asyncio.Task[None]) -> None:
        failures = 0
        rounds = 0
        while True:
            if listener.done():
                # The lock's connection is gone, so another replica may lead now: stop relaying.
                raise ConnectionError("outbox relay lost its lock connection")
            self._wake.clear()
            try:
                moved = await self._drain_once()
                failures = 0
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                failures += 1
                delay = backoff_delay(failures, cap=5)
                log.warning(
                    "outbox publish failed; will retry",
                    extra={"error": repr(exc), "retry_in_s": round(delay, 2)},
                )
                await asyncio.sleep(delay)
                continue
            if moved:
                continue
            rounds += 1
            if rounds % 720 == 0:
                async with self._sessionmaker() as session:
                    await OutboxQueue(session).purge_published()
                    await session.commit()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._idle_poll_s)

    async def _drain_once(self) -> int:
        """Publish one batch in order; returns how many rows were published."""
        async with self._sessionmaker() as session:
            queue = OutboxQueue(session)
            rows = await queue.claim(self._batch)
            if not rows:
                return 0
            done: list[int] = []
            try:
                for row in rows:
                    await self._publisher.publish_encoded(
                        row.family,
                        row.subject,
                        bytes(row.body),
                        str(row.event_id),
                        row.correlation_id,
                    )
                    done.append(row.seq)
            finally:
                if done:
                    await queue.mark_published(done)
                    await session.commit()
                    self.published_total += len(done)
            return len(done)

    def wake(self) -> None:
        self._wake.set()
