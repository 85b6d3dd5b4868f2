"""`OutboxRelay`: publishes outbox rows to JetStream in commit order.

Exactly one relay runs at a time across replicas (a session-level advisory lock), which keeps
per-account order without per-key bookkeeping. It is woken at once by commits in its own process
(`wake_on_commit`) and probes every `poll_interval_s` for rows other processes staged (one index
look-up on the lock's own connection; a session per poll cost ~10 % of a core at idle); there is
no NOTIFY per insert, because PostgreSQL serialises the commits of transactions that NOTIFY.
When NATS is down it keeps the rows and retries with capped backoff; a row is marked published
only after JetStream acknowledged it, and `Nats-Msg-Id = event id` makes a re-send a no-op.

A batch goes out in commit order on one connection with all its acks in flight together
(waiting for each ack before the next send capped the relay at ~50 messages/s end to end);
only the unbroken prefix of acknowledged rows is marked, the rest is sent again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import psycopg
from brokerlink_shared.backoff import backoff_delay
from brokerlink_shared.messaging import EncodedEvent, EventPublisher, PartialPublish
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import Session

from account_api.outbox.repository import STAGED as _STAGED
from account_api.outbox.repository import OutboxQueue, has_unpublished
from account_api.tables import OutboxMessage

log = logging.getLogger(__name__)
RELAY_LOCK_ID = 727275


class OutboxRelay:
    def __init__(
        self,
        libpq_url: str,
        sessionmaker: async_sessionmaker[AsyncSession],
        publisher: EventPublisher,
        batch_size: int = 500,
        poll_interval_s: float = 0.02,
        purge_every_s: float = 3600.0,
    ) -> None:
        self._url = libpq_url
        self._sessionmaker = sessionmaker
        self._publisher = publisher
        self._batch = batch_size
        self._poll_interval_s = poll_interval_s
        self._purge_every_s = purge_every_s
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.is_leader = False
        self.published_total = 0
        self._listening_commits = False

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="outbox-relay")

    def wake_on_commit(self) -> None:
        """Wake this relay when a session of this process commits staged outbox rows (until
        `stop`); rows staged by other processes are found by polling."""
        session_class = self._sessionmaker.class_.sync_session_class
        if not event.contains(session_class, "after_flush", _mark_staged):
            event.listen(session_class, "after_flush", _mark_staged)  # shared, kept
        event.listen(session_class, "after_commit", self._after_commit)
        self._listening_commits = True

    def _after_commit(self, session: Session) -> None:
        if session.info.pop(_STAGED, False):
            self._wake.set()

    async def stop(self) -> None:
        if self._listening_commits:
            session_class = self._sessionmaker.class_.sync_session_class
            event.remove(session_class, "after_commit", self._after_commit)
            self._listening_commits = False
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
        try:
            await self._drain_forever(conn)
        finally:
            self.is_leader = False

    @staticmethod
    async def _try_lock(conn: psycopg.AsyncConnection) -> bool:
        row = await (
            await conn.execute("SELECT pg_try_advisory_lock(%s)", (RELAY_LOCK_ID,))
        ).fetchone()
        return bool(row and row[0])

    async def _drain_forever(self, conn: psycopg.AsyncConnection) -> None:
        failures = 0
        purged_at = time.monotonic()
        while True:
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
            if time.monotonic() - purged_at > self._purge_every_s:
                purged_at = time.monotonic()
                async with self._sessionmaker() as session:
                    await OutboxQueue(session).purge_published()
                    await session.commit()
            await self._idle(conn)

    async def _idle(self, conn: psycopg.AsyncConnection) -> None:
        """Until a commit in this process wakes the relay, or the probe finds rows another
        process staged. The probe runs on the lock's own connection, so a lost lock ends
        leading within one poll (its error reaches `_run`, which reconnects)."""
        while not self._wake.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._poll_interval_s)
            if self._wake.is_set() or await has_unpublished(conn):
                return

    async def _drain_once(self) -> int:
        """Publish one batch in order; returns how many rows were published."""
        async with self._sessionmaker() as session:
            queue = OutboxQueue(session)
            rows = await queue.claim(self._batch)
            if not rows:
                return 0
            failure: PartialPublish | None = None
            try:
                published = await self._publisher.publish_encoded_batch(
                    [
                        EncodedEvent(
                            row.family,
                            row.subject,
                            bytes(row.body),
                            str(row.event_id),
                            row.correlation_id,
                        )
                        for row in rows
                    ]
                )
            except PartialPublish as exc:
                published, failure = exc.published, exc
            if published:
                await queue.mark_published([row.seq for row in rows[:published]])
                await session.commit()
                self.published_total += published
            if failure is not None:
                raise failure
            return published

    def wake(self) -> None:
        self._wake.set()


def _mark_staged(session: Session, _context: object) -> None:
    # `session.new` still lists what this flush inserted.
    if any(isinstance(obj, OutboxMessage) for obj in session.new):
        session.info[_STAGED] = True
