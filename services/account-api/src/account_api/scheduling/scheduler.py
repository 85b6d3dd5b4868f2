"""`RefreshScheduler`: refreshes every integrated account at a fixed interval. Safe with many
replicas: each tick, a replica runs the job only if its UPDATE moved the shared `next_run_at`
forward — one row, one winner, no lock held between ticks."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from account_api.db import UnitOfWork
from account_api.integrations.refreshes import RefreshService
from account_api.scheduling.repository import SchedulerRepository

log = logging.getLogger(__name__)
JOB = "refresh-all"


class RefreshScheduler:
    def __init__(
        self,
        new_uow: Callable[[], UnitOfWork],
        refreshes: RefreshService,
        interval_s: float,
    ) -> None:
        self._new_uow = new_uow
        self._refreshes = refreshes
        self._interval = interval_s
        self._task: asyncio.Task[None] | None = None
        self.runs = 0

    def start(self) -> None:
        if self._interval > 0:
            self._task = asyncio.create_task(self._loop(), name="refresh-scheduler")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def tick(self) -> bool:
        """Run the job if this replica wins the current interval; returns whether it ran."""
        now = datetime.now(UTC)
        uow = self._new_uow()
        async with uow:
            won = await SchedulerRepository(uow.session).claim(
                JOB, now, now + timedelta(seconds=self._interval)
            )
            await uow.commit()
        if not won:
            return False
        job = await self._refreshes.refresh_all(
            self._new_uow(), None, trigger="schedule"
        )
        self.runs += 1
        log.info(
            "scheduled refresh queued",
            extra={"job_id": str(job.job_id), "accounts": job.total},
        )
        return True

    async def _loop(self) -> None:
        while True:
            try:
                await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("scheduled refresh failed", extra={"error": repr(exc)})
            await asyncio.sleep(min(self._interval, 30.0))
