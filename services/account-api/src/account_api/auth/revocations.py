"""`RevocationList`: which sessions and users' tokens every worker must refuse.

Each worker polls `auth_revocations` every few seconds — the whole token lifetime at start,
then the last minute (re-reading a minute, rather than "rows after the last id", cannot miss a
row whose transaction committed late) — and keeps what it read for as long as an access token
can live. A revocation made on this worker applies at once; on the others within one poll."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from typing import Protocol

from account_api.auth.tokens import AccessClaims

log = logging.getLogger(__name__)


class RevocationSource(Protocol):
    async def since(
        self, window_s: float
    ) -> list[tuple[int, uuid.UUID | None, float | None]]: ...


class RevocationList:
    def __init__(
        self, source: RevocationSource, interval_s: float, horizon_s: float
    ) -> None:
        self._source = source
        self._interval_s = interval_s
        self._horizon_s = horizon_s
        self._sessions: dict[uuid.UUID, float] = {}
        self._users: dict[
            int, float
        ] = {}  # user -> tokens issued at or before are void
        self._polled = False
        self._task: asyncio.Task[None] | None = None

    def revoked(self, claims: AccessClaims) -> bool:
        if claims.session_id in self._sessions:
            return True
        not_before = self._users.get(claims.user_id)
        return not_before is not None and claims.issued_at <= not_before

    def note_session(self, session_id: uuid.UUID) -> None:
        """Apply a revocation made by this worker at once."""
        self._sessions[session_id] = time.time()

    async def poll_once(self) -> None:
        window = (
            self._horizon_s if not self._polled else max(60.0, 3 * self._interval_s)
        )
        rows = await self._source.since(window)
        self._polled = True
        now = time.time()
        for user_id, session_id, not_before in rows:
            if session_id is not None:
                self._sessions[session_id] = now
            if not_before is not None:
                self._users[user_id] = max(self._users.get(user_id, 0.0), not_before)
        cutoff = now - self._horizon_s
        for sid in [s for s, at in self._sessions.items() if at < cutoff]:
            del self._sessions[sid]
        for uid in [u for u, nb in self._users.items() if nb < cutoff]:
            del self._users[uid]

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="token-revocations")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            try:
                await self.poll_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("revocation poll failed", extra={"error": repr(exc)})
            await asyncio.sleep(self._interval_s)
