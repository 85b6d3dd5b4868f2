"""Capped, jittered exponential backoff for reconnects."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class ReconnectBackoff:
    """Delay before the n-th consecutive reconnect attempt: `initial * 2**n`, capped, with jitter.

    Jitter is "equal jitter": the delay lies in [ceiling/2, ceiling], so sessions dropped together
    (a gateway's daily restart) spread their reconnects instead of arriving at once.
    """

    initial_s: float = 0.5
    cap_s: float = 30.0
    uniform: Callable[[float, float], float] = field(default=random.uniform, repr=False)
    attempts: int = 0

    def ceiling(self, attempt: int) -> float:
        return float(min(self.cap_s, self.initial_s * (2 ** min(attempt, 30))))

    def next_delay(self) -> float:
        """The delay before the next attempt; each call counts as one failed attempt."""
        ceiling = self.ceiling(self.attempts)
        self.attempts += 1
        return self.uniform(ceiling / 2, ceiling)

    def reset(self) -> None:
        """Forget failures (after a successful connect)."""
        self.attempts = 0
