"""Transient infrastructure failures versus bad messages.

A handler that fails because the database or the bus is briefly away (a failover, a restart, a
serialization failure, a lock timeout) has not met a bad message: retrying it later will work.
Such a message is retried with backoff for as long as the service's outage budget allows, and
the consumer slows down while the outage lasts, instead of spending the message's attempts and
parking it. Only messages that fail for any other reason count attempts towards the dead-letter
stream.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from nats.errors import (
    ConnectionClosedError,
    ConnectionReconnectingError,
    NoRespondersError,
    NoServersError,
    OutboundBufferLimitError,
    StaleConnectionError,
)
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.errors import NoStreamResponseError, ServiceUnavailableError

TransientClassifier = Callable[[BaseException], bool]

DEFAULT_OUTAGE_BUDGET_S = 600.0
# Longest pause before a consumer tries again while an outage lasts: short enough to notice the
# end of a 20 s restart quickly, long enough not to spin.
MAX_PAUSE_S = 5.0

# A replicated stream or bucket whose leader died answers nobody until the survivors elect a
# new one (seconds): no responders to its API, no response to a publish. That is the bus away
# for a moment, not a bad message.
_TRANSIENT_IO = (
    ConnectionError,
    TimeoutError,
    ConnectionClosedError,
    ConnectionReconnectingError,
    StaleConnectionError,
    NoServersError,
    NoRespondersError,
    NoStreamResponseError,
    OutboundBufferLimitError,
    NatsTimeoutError,
    ServiceUnavailableError,
)


def causes(exc: BaseException) -> Iterator[BaseException]:
    """The exception and what it was raised from or during, unless that was suppressed
    (`raise ... from None` says "this is a different failure"); cycle-safe."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or (
            None if current.__suppress_context__ else current.__context__
        )


def is_transient_io_error(exc: BaseException) -> bool:
    """Network and bus failures: a peer that is away now and will be back."""
    return any(isinstance(e, _TRANSIENT_IO) for e in causes(exc))


@dataclass
class _Failing:
    first_at: float
    transient_failures: int = 0


class OutageTracker:
    """Remembers when each message first failed transiently, and paces the consumer.

    Per process: another replica (or a restart) starts the message's budget afresh, which only
    makes it more patient. Bounded, so a long outage over many messages cannot grow it without end.
    """

    def __init__(
        self,
        budget_s: float = DEFAULT_OUTAGE_BUDGET_S,
        *,
        max_tracked: int = 50_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.budget_s = budget_s
        self._max_tracked = max_tracked
        self._clock = clock
        self._failing: OrderedDict[tuple[str, int], _Failing] = OrderedDict()
        self._pause_until = 0.0
        self._consecutive = 0

    def transient_failure(self, key: tuple[str, int]) -> bool:
        """Record a transient failure of message `key`; True while its budget lasts."""
        now = self._clock()
        entry = self._failing.get(key)
        if entry is None:
            entry = self._failing[key] = _Failing(now)
            while len(self._failing) > self._max_tracked:
                self._failing.popitem(last=False)
        entry.transient_failures += 1
        self._consecutive += 1
        self._pause_until = now + min(MAX_PAUSE_S, 0.1 * 2 ** min(self._consecutive, 6))
        return now - entry.first_at < self.budget_s

    def transient_failures(self, key: tuple[str, int]) -> int:
        entry = self._failing.get(key)
        return entry.transient_failures if entry else 0

    def settled(self, key: tuple[str, int], *, success: bool) -> None:
        """The message was handled (or parked): forget it; a success ends the outage."""
        self._failing.pop(key, None)
        if success:
            self._consecutive = 0
            self._pause_until = 0.0

    def pause_s(self) -> float:
        """How long a consumer should wait before its next attempt (0 outside an outage)."""
        return max(0.0, self._pause_until - self._clock())

    @property
    def in_outage(self) -> bool:
        return self._consecutive > 0

    async def wait(self, keep_alive: Callable[[], object] | None = None) -> None:
        """Sleep out the current pause (the consumer pauses rather than failing fast)."""
        while (delay := self.pause_s()) > 0:
            await asyncio.sleep(delay)
            if keep_alive is not None:
                result = keep_alive()
                if asyncio.iscoroutine(result):
                    await result
