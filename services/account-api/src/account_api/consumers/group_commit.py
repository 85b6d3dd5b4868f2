"""`GroupCommit`: many concurrently handled messages recorded in one transaction.

Each handler awaits `submit(item)`; items that arrive while a transaction is committing form
the next batch, so at low rates every item commits alone (no added wait) and under load one
commit (one fsync) serves many. A handler returns only after its item is committed, so each
message is still acknowledged on its own and never before its effect is durable. When a batch
fails, its items are recorded one by one, so a single bad message fails alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")


class GroupCommit(Generic[T]):
    def __init__(
        self,
        record_many: Callable[[Sequence[T]], Awaitable[None]],
        *,
        max_batch: int = 256,
    ) -> None:
        self._record_many = record_many
        self._max_batch = max_batch
        self._queue: list[tuple[T, asyncio.Future[None]]] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def submit(self, item: T) -> None:
        """Return once `item` is committed; raise what recording it alone raised."""
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="group-commit")
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append((item, done))
        self._wake.set()
        await asyncio.shield(done)

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for _, done in self._queue:
            _settle(done, ConnectionAbortedError("shutting down before the commit"))
        self._queue.clear()

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue:
                batch = self._queue[: self._max_batch]
                del self._queue[: len(batch)]
                await self._commit(batch)

    async def _commit(self, batch: list[tuple[T, asyncio.Future[None]]]) -> None:
        try:
            await self._record_many([item for item, _ in batch])
        except Exception as exc:
            if len(batch) == 1:
                _settle(batch[0][1], exc)
                return
            log.debug(
                "group commit failed; recording one by one",
                extra={"items": len(batch), "error": repr(exc)},
            )
            for item, done in batch:
                try:
                    await self._record_many([item])
                except Exception as one:
                    _settle(done, one)
                else:
                    _settle(done, None)
            return
        for _, done in batch:
            _settle(done, None)


def _settle(done: asyncio.Future[None], error: BaseException | None) -> None:
    if done.done():
        return
    if error is None:
        done.set_result(None)
    else:
        done.set_exception(error)
