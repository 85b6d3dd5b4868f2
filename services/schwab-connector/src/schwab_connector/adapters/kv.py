"""Cross-replica coordination in NATS KV: per-login refresh leases (the per-app-key rate budget is
the shared `brokerlink_shared.rate_budget.KvRateBudget`).

- Refresh lease: key `lease.<login>` holds `<replica>:<deadline>`; whoever creates it refreshes the
  login's token, the others wait. A crashed holder's lease lapses at the deadline and can be taken
  over by CAS. The newest token ciphertext is kept under `token.<login>`, so the next holder (or a
  replica that was waiting) adopts it instead of refreshing again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator

from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

log = logging.getLogger(__name__)


class KvLoginCoordinator:
    """Refresh leases and the newest token ciphertext per login, shared by replicas."""

    def __init__(
        self, kv: KeyValue, lease_ttl_s: float, replica_id: str | None = None
    ) -> None:
        self._kv = kv
        self._ttl = lease_ttl_s
        self.replica_id = replica_id or uuid.uuid4().hex[:12]

    @contextlib.asynccontextmanager
    async def lease(self, login_id: str) -> AsyncIterator[None]:
        """Hold the login's refresh lease (waits while another replica holds a live one)."""
        key = f"lease.{login_id}"
        revision = await self._take(key)
        try:
            yield
        finally:
            with contextlib.suppress(Exception):
                await self._kv.delete(key, last=revision)

    async def _take(self, key: str) -> int:
        deadline = time.monotonic() + self._ttl * 2
        while True:
            value = f"{self.replica_id}:{time.time() + self._ttl}".encode()
            try:
                return await self._kv.create(key, value)
            except KeyWrongLastSequenceError:
                pass
            try:
                entry = await self._kv.get(key)
            except KeyNotFoundError:
                continue
            holder_deadline = float(
                (entry.value or b":0").decode().rsplit(":", 1)[1] or 0
            )
            if holder_deadline < time.time():
                log.info("taking over a lapsed refresh lease", extra={"lease": key})
                with contextlib.suppress(KeyWrongLastSequenceError):
                    return await self._kv.update(key, value, last=entry.revision)
            if time.monotonic() > deadline:
                raise TimeoutError("refresh lease busy")
            await asyncio.sleep(0.05)

    async def latest_token(self, login_id: str) -> str | None:
        """The newest token ciphertext any replica stored for the login."""
        try:
            entry = await self._kv.get(f"token.{login_id}")
        except KeyNotFoundError:
            return None
        return entry.value.decode() if entry.value else None

    async def store_token(self, login_id: str, token_enc: str) -> None:
        await self._kv.put(f"token.{login_id}", token_enc.encode())
