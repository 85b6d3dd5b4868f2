"""Fixed-window counters in PostgreSQL (`auth_throttle`), shared by every worker and replica:
sign-in failures, two-factor codes, and the per-account and per-user rate limits."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from account_api.errors import TooManyRequests


class ThrottleRepository:
    _HIT = text(
        "INSERT INTO auth_throttle AS t (key, window_start, count) "
        "VALUES (:key, now(), 1) ON CONFLICT (key) DO UPDATE SET "
        "count = CASE WHEN t.window_start <= now() - make_interval(secs => :w) "
        "THEN 1 ELSE t.count + 1 END, "
        "window_start = CASE WHEN t.window_start <= now() - make_interval(secs => :w) "
        "THEN now() ELSE t.window_start END "
        "RETURNING count, :w - extract(epoch FROM now() - window_start) AS left_s"
    )

    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def blocked_for(self, limits: Sequence[tuple[str, int, int]]) -> float | None:
        """Seconds until every (key, max_count, window_s) is under its limit; None if it is."""
        keys = [k for k, _, _ in limits]
        rows = await self._session.execute(
            text(
                "SELECT key, count, extract(epoch FROM now() - window_start) AS age "
                "FROM auth_throttle WHERE key = ANY(:keys)"
            ),
            {"keys": keys},
        )
        found = {key: (count, float(age)) for key, count, age in rows.all()}
        wait = 0.0
        for key, max_count, window_s in limits:
            count, age = found.get(key, (0, 0.0))
            if count >= max_count and age < window_s:
                wait = max(wait, window_s - age)
        return wait or None

    async def hit(self, key: str, window_s: int) -> tuple[int, float]:
        """Count one event on `key` (a new window when the last one is over); returns the
        count in the window and the seconds left of it."""
        row = (
            await self._session.execute(self._HIT, {"key": key, "w": window_s})
        ).one()
        return int(row[0]), float(row[1])

    async def clear(self, key: str) -> None:
        await self._session.execute(
            text("DELETE FROM auth_throttle WHERE key = :key"), {"key": key}
        )


class Throttle(Protocol):
    """What `rate_limit` needs (`ThrottleRepository`, or a fake in the fast tests)."""

    async def hit(self, key: str, window_s: int) -> tuple[int, float]: ...


async def rate_limit(throttle: Throttle, key: str, per_minute: int, what: str) -> None:
    """Count one use of `key`; past `per_minute` in the current minute, a 429 (nothing done)."""
    count, left_s = await throttle.hit(key, 60)
    if count > per_minute:
        raise TooManyRequests(
            f"at most {per_minute} {what} per minute; try again shortly", left_s
        )
