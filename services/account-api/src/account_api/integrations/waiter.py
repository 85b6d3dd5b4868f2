"""`RefreshWaiter`: lets a request wait for its refresh to finish, whichever replica consumed the
result. Consumers NOTIFY `brokerlink_refresh` with the refresh id in their transaction; every
replica LISTENs and wakes the matching waiters."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator

import psycopg

log = logging.getLogger(__name__)
CHANNEL = "brokerlink_refresh"


class RefreshWaiter:
    def __init__(self, libpq_url: str) -> None:
        self._url = libpq_url
        self._waiters: dict[uuid.UUID, list[asyncio.Event]] = {}
        self._task: asyncio.Task[None] | None = None
        self.listening = asyncio.Event()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="refresh-waiter")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(
                    self._url, autocommit=True
                ) as conn:
                    await conn.execute(f"LISTEN {CHANNEL}")
                    self.listening.set()
                    async for note in conn.notifies():
                        with contextlib.suppress(ValueError):
                            for event in self._waiters.get(uuid.UUID(note.payload), []):
                                event.set()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.listening.clear()
                log.warning(
                    "refresh listener lost its connection", extra={"error": repr(exc)}
                )
                # Wake everyone so they re-read the state instead of waiting out a lost notify.
                for events in self._waiters.values():
                    for event in events:
                        event.set()
                await asyncio.sleep(1.0)

    @contextlib.asynccontextmanager
    async def watch(self, refresh_id: uuid.UUID) -> AsyncIterator[asyncio.Event]:
        """Register interest before the refresh is requested, so no notification is missed."""
        event = asyncio.Event()
        self._waiters.setdefault(refresh_id, []).append(event)
        try:
            yield event
        finally:
            events = self._waiters.get(refresh_id, [])
            if event in events:
                events.remove(event)
            if not events:
                self._waiters.pop(refresh_id, None)
