"""The one backoff: capped exponential delays with "equal jitter" (a delay lies in
[ceiling/2, ceiling]), so clients that failed together spread their retries instead of
arriving at once. `backoff_delay` for the n-th failure; `Backoff` counts failures itself."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

T = TypeVar("T")

Uniform = Callable[[float, float], float]


def backoff_ceiling(attempt: int, base: float, cap: float) -> float:
    """The longest delay after the `attempt`-th failure (1-based): `base * 2**(attempt-1)`, capped."""
    return float(min(cap, base * (2 ** min(max(0, attempt - 1), 30))))


def backoff_delay(
    attempt: int,
    base: float = 0.5,
    cap: float = 30.0,
    uniform: Uniform = random.uniform,
) -> float:
    """The delay after the `attempt`-th consecutive failure (1-based)."""
    ceiling = backoff_ceiling(attempt, base, cap)
    return uniform(ceiling / 2, ceiling)


@dataclass
class Backoff:
    """A failure counter with its delays: `next_delay()` after each failure, `reset()` after a
    success (e.g. reconnects: `initial_s`, then twice that, … up to `cap_s`)."""

    initial_s: float = 0.5
    cap_s: float = 30.0
    uniform: Uniform = field(default=random.uniform, repr=False)
    attempts: int = 0

    def next_delay(self) -> float:
        """The delay before the next attempt; each call counts as one failed attempt."""
        self.attempts += 1
        return backoff_delay(self.attempts, self.initial_s, self.cap_s, self.uniform)

    def reset(self) -> None:
        """Forget failures (after a success)."""
        self.attempts = 0


async def retry_until_done(
    step: Callable[[], Awaitable[T]],
    *,
    what: str,
    log: logging.Logger,
    backoff: Backoff | None = None,
) -> T:
    """Run `step` until it succeeds, waiting a backoff delay after each failure: a service's
    start-up steps against NATS, so a slow or unreachable NATS delays the start (the process
    stays live, not ready) instead of crashing it into a restart loop."""
    backoff = backoff or Backoff(initial_s=1.0, cap_s=15.0)
    while True:
        try:
            return await step()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            delay = backoff.next_delay()
            log.warning(
                f"{what} failed; retrying",
                extra={
                    "error": repr(exc)[:300],
                    "attempt": backoff.attempts,
                    "retry_in_s": round(delay, 1),
                },
            )
            await asyncio.sleep(delay)
