"""Overload: a connector bounds the refreshes it works on and answers the rest at once.

Past the bound — too many refreshes in flight, or a request that already waited in the command
stream longer than anyone waits for it — a refresh is answered `refresh.failed` with code
`busy` right away, so the user (or a bulk job) hears "busy, retry" in milliseconds instead of
nothing at all.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

BUSY_CODE = "busy"
BUSY_MESSAGE = "the connector is busy; retry in a moment"


class RefreshAdmission:
    """How many refreshes a connector works on at once, and how stale a request may be."""

    def __init__(self, max_in_flight: int, max_queued_s: float) -> None:
        self.max_in_flight = max_in_flight
        self.max_queued_s = max_queued_s
        self.in_flight = 0
        self.shed = 0

    def too_old(self, queued_s: float) -> bool:
        """A request that waited this long in the stream is answered busy (0: never)."""
        if self.max_queued_s and queued_s > self.max_queued_s:
            self.shed += 1
            return True
        return False

    @contextlib.contextmanager
    def slot(self) -> Iterator[bool]:
        """`with admission.slot() as admitted:` — False when the bound is reached."""
        if self.in_flight >= self.max_in_flight:
            self.shed += 1
            yield False
            return
        self.in_flight += 1
        try:
            yield True
        finally:
            self.in_flight -= 1


def queued_seconds(message: Any) -> float:
    """How long a JetStream message waited in its stream before this delivery (0 if unknown)."""
    raw = getattr(message, "raw_message", message)
    try:
        stored: datetime = raw.metadata.timestamp
    except Exception:
        return 0.0
    return max(0.0, (datetime.now(UTC) - stored).total_seconds())
