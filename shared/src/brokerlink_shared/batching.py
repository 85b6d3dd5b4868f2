"""Coalescing: refreshes of accounts that share one credential cost one broker call per burst."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
R = TypeVar("R")


@dataclass(eq=False)
class _Batch(Generic[R]):
    future: asyncio.Future[R]
    opened_at: float
    last_join_at: float
    size: int = 1
    task: asyncio.Task[None] | None = field(default=None, repr=False)


class KeyedBatcher(Generic[K, R]):
    """Callers asking for the same key share one `fetch`.

    A batch stays open while callers keep joining less than `window_s` apart (a bulk refresh
    arrives as a burst spread over its processing time), but never longer than `max_wait_s`.
    A caller arriving once the fetch has started opens the next batch: it must not get data
    requested before it asked.
    """

    def __init__(self, window_s: float, max_wait_s: float = 1.0) -> None:
        self._window_s = window_s
        self._max_wait_s = max(max_wait_s, window_s)
        self._open: dict[K, _Batch[R]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.fetches = 0

    async def run(self, key: K, fetch: Callable[[], Awaitable[R]]) -> R:
        """Join the open batch for `key` (or open one) and return its result."""
        loop = asyncio.get_running_loop()
        batch = self._open.get(key)
        if batch is None:
            batch = _Batch(loop.create_future(), loop.time(), loop.time())
            self._open[key] = batch
            task = loop.create_task(self._flush(key, batch, fetch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        else:
            batch.last_join_at = loop.time()
            batch.size += 1
        return await asyncio.shield(batch.future)

    async def _flush(
        self, key: K, batch: _Batch[R], fetch: Callable[[], Awaitable[R]]
    ) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._window_s:
                now = loop.time()
                quiet_until = batch.last_join_at + self._window_s
                deadline = batch.opened_at + self._max_wait_s
                if now >= quiet_until or now >= deadline:
                    break
                await asyncio.sleep(min(quiet_until, deadline) - now)
            self._close(
                key, batch
            )  # before fetching: later callers must get fresher data
            self.fetches += 1
            result = await fetch()
        except Exception as exc:
            batch.future.set_exception(exc)
            batch.future.exception()  # mark retrieved: the callers may all have gone
        except BaseException:
            batch.future.cancel()
            raise
        else:
            batch.future.set_result(result)
        finally:
            self._close(key, batch)

    def _close(self, key: K, batch: _Batch[R]) -> None:
        if self._open.get(key) is batch:
            del self._open[key]
