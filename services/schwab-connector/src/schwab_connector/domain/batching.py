"""Coalescing: refreshes of accounts that share one login within a short window cost one call."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
R = TypeVar("R")


class LoginBatcher(Generic[K, R]):
    """Callers asking for the same key within `window_s` share one `fetch`.

    A caller arriving while a fetch is already in flight starts the next batch: it asked after the
    data was requested, so it must not get an older answer.
    """

    def __init__(self, window_s: float) -> None:
        self._window_s = window_s
        self._open: dict[K, asyncio.Future[R]] = {}
        self.fetches = 0
        self._tasks: set[asyncio.Task[None]] = set()

    async def run(self, key: K, fetch: Callable[[], Awaitable[R]]) -> R:
        """Join the open batch for `key` (or open one) and return its result."""
        future = self._open.get(key)
        if future is None:
            future = asyncio.get_running_loop().create_future()
            self._open[key] = future
            task = asyncio.get_running_loop().create_task(
                self._flush(key, future, fetch)
            )
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return await asyncio.shield(future)

    async def _flush(
        self, key: K, future: asyncio.Future[R], fetch: Callable[[], Awaitable[R]]
    ) -> None:
        try:
            if self._window_s:
                await asyncio.sleep(self._window_s)
            self._close(
                key, future
            )  # before fetching: later callers must get fresher data
            self.fetches += 1
            result = await fetch()
        except Exception as exc:
            future.set_exception(exc)
            future.exception()  # mark retrieved: the callers may all have gone
        except BaseException:
            future.cancel()
            raise
        else:
            future.set_result(result)
        finally:
            self._close(key, future)

    def _close(self, key: K, future: asyncio.Future[R]) -> None:
        if self._open.get(key) is future:
            del self._open[key]
