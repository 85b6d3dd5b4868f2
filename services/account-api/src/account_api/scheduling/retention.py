"""`RetentionJob`: purges rows nobody needs any more, on one replica per interval (the same
`scheduler_state` claim as the refresh scheduler). Audit entries are kept unless configured.

What goes, and when (settings `retention_*`):
- processed_events: after longer than any stream keeps a message (redeliveries stay deduped)
- refreshes and refresh jobs: finished ones after N days
- oauth_states: a day after they expired or were used
- auth_sessions: N days after they were signed out or expired
- auth_revocations: once no access token they name can still be alive
- auth_throttle: windows over for a day
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from account_api.config import Settings
from account_api.db import UnitOfWork
from account_api.scheduling.repository import RetentionRepository, SchedulerRepository

log = logging.getLogger(__name__)
JOB = "retention"

# table -> condition on a row that may go; `:days` / `:seconds` from the settings
PURGES: dict[str, str] = {
    "processed_events": "processed_at < now() - make_interval(days => :events_days)",
    "refreshes": "status <> 'pending' AND requested_at < now() - make_interval(days => :refresh_days)",
    "refresh_jobs": "created_at < now() - make_interval(days => :refresh_days)",
    "oauth_states": "coalesce(used_at, expires_at) < now() - interval '1 day'",
    "auth_sessions": "coalesce(revoked_at, expires_at) < now() - make_interval(days => :session_days)",
    "auth_revocations": "created_at < now() - make_interval(secs => :token_s)",
    "auth_throttle": "window_start < now() - interval '1 day'",
}
AUDIT = "at < now() - make_interval(days => :audit_days)"


class RetentionJob:
    def __init__(self, new_uow: Callable[[], UnitOfWork], settings: Settings) -> None:
        self._new_uow = new_uow
        self._settings = settings
        self._interval = settings.retention_interval_s
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._interval > 0:
            self._task = asyncio.create_task(self._loop(), name="retention")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def _params(self) -> dict[str, int]:
        s = self._settings
        return {
            "events_days": s.retention_processed_events_days,
            "refresh_days": s.retention_refreshes_days,
            "session_days": s.retention_sessions_days,
            "token_s": s.access_token_minutes * 60 + 3600,
            "audit_days": s.retention_audit_days,
        }

    async def purge(self) -> dict[str, int]:
        """Purge everything due now (in batches, one transaction each); returns counts."""
        purges = dict(PURGES)
        if self._settings.retention_audit_days > 0:
            purges["audit_log"] = AUDIT
        params = self._params()
        removed: dict[str, int] = {}
        for table, condition in purges.items():
            total = 0
            while True:
                uow = self._new_uow()
                async with uow:
                    used = {k: v for k, v in params.items() if f":{k}" in condition}
                    count = await RetentionRepository(uow.session).purge(
                        table, condition, used
                    )
                    await uow.commit()
                total += count
                if count < RetentionRepository.BATCH:
                    break
            removed[table] = total
        return removed

    async def tick(self) -> bool:
        now = datetime.now(UTC)
        uow = self._new_uow()
        async with uow:
            won = await SchedulerRepository(uow.session).claim(
                JOB, now, now + timedelta(seconds=self._interval)
            )
            await uow.commit()
        if not won:
            return False
        removed = await self.purge()
        log.info("retention purge", extra={"removed": removed})
        return True

    async def _loop(self) -> None:
        while True:
            try:
                await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("retention purge failed", extra={"error": repr(exc)})
            await asyncio.sleep(min(self._interval, 60.0))
