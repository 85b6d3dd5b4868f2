"""Cross-replica coordination in NATS KV: the per-app-key rate budget and per-login refresh leases.

- Rate budget: key `<app>.<slice>` in a bucket with a 2-minute TTL holds how many requests replicas
  have spent in that slice; spending is a compare-and-set on the key's revision (see domain.rate).
- Refresh lease: key `lease.<login>` holds `<replica>:<deadline>`; whoever creates it refreshes the
  login's token, the others wait. A crashed holder's lease lapses at the deadline and can be taken
  over by CAS. The newest token ciphertext is kept under `token.<login>`, so the next holder (or a
  replica that was waiting) adopts it instead of refreshing again.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
import uuid
from collections.abc import AsyncIterator

from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, StorageType
from nats.js.errors import (
    BucketNotFoundError,
    KeyNotFoundError,
    KeyWrongLastSequenceError,
)
from nats.js.kv import KeyValue

from schwab_connector.domain.rate import RatePlan

log = logging.getLogger(__name__)


def key_token(*parts: object) -> str:
    """A KV-safe, non-revealing key part (app keys and user ids are hashed)."""
    return hashlib.sha256(":".join(str(p) for p in parts).encode()).hexdigest()[:32]


async def open_bucket(
    js: JetStreamContext, name: str, ttl_s: float | None, replicas: int = 1
) -> KeyValue:
    """Bind to a KV bucket, creating it on first use (idempotent across replicas)."""
    try:
        return await js.key_value(name)
    except BucketNotFoundError:
        return await js.create_key_value(
            KeyValueConfig(
                bucket=name,
                history=1,
                ttl=ttl_s,
                storage=StorageType.FILE,
                replicas=replicas,
            )
        )


class KvRateBudget:
    """A per-app-key request budget shared by every replica through NATS KV."""

    def __init__(self, kv: KeyValue, plan: RatePlan) -> None:
        self._kv = kv
        self._plan = plan
        self._local: dict[str, asyncio.Lock] = {}
        self.waits = 0

    async def acquire(self, app_key: str) -> None:
        """Wait until one more request for `app_key` fits, then count it."""
        prefix = key_token("rate", app_key)
        # one acquirer per app key per process at a time: CAS conflicts only between replicas
        async with self._local.setdefault(app_key, asyncio.Lock()):
            while True:
                now = time.time()
                key = f"{prefix}.{self._plan.slice_index(now)}"
                try:
                    entry = await self._kv.get(key)
                    spent, revision = int(entry.value or b"0"), entry.revision
                except KeyNotFoundError:
                    spent, revision = 0, None
                if spent < self._plan.per_slice:
                    try:
                        if revision is None:
                            await self._kv.create(key, b"1")
                        else:
                            await self._kv.update(
                                key, str(spent + 1).encode(), last=revision
                            )
                        return
                    except KeyWrongLastSequenceError:
                        continue  # another replica spent first: read again
                self.waits += 1
                await asyncio.sleep(self._plan.wait_for_next_slice(now) + 0.005)


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
