"""Cross-replica coordination in NATS KV: per-login refresh leases (the per-app-key rate budget is
the shared `brokerlink_shared.rate_budget.KvRateBudget`).

- Refresh lease: key `lease.<login>` holds `<replica>:<deadline>`; whoever creates it refreshes the
  login's token, the others wait. A crashed holder's lease lapses at the deadline and can be taken
  over by CAS; the holder renews it while its work runs (one refresh can take a minute of
  retries). The newest token ciphertext is kept under `token.<login>` with its expiry times, so the
  next holder (or a replica that was waiting) adopts it instead of refreshing again. Writing it is
  a compare-and-set on the key's revision that never replaces a newer token (the one ordering
  rule, `domain.tokens.is_newer`): a refresh of an old token that finishes after a new consent
  loses to the consent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import orjson
from brokerlink_shared.kv import create_if_absent
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from schwab_connector.domain.tokens import LoginTokenTimes, is_newer

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
        """Hold the login's lease (waits while another replica holds a live one), renewed
        every third of its time-to-live until the block ends."""
        key = f"lease.{login_id}"
        held = {"revision": await self._take(key)}
        renewal = asyncio.get_running_loop().create_task(self._renew(key, held))
        try:
            yield
        finally:
            renewal.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewal
            with contextlib.suppress(Exception):
                await self._kv.delete(key, last=held["revision"])

    async def _renew(self, key: str, held: dict[str, int]) -> None:
        while True:
            await asyncio.sleep(self._ttl / 3)
            value = f"{self.replica_id}:{time.time() + self._ttl}".encode()
            try:
                held["revision"] = await self._kv.update(
                    key, value, last=held["revision"]
                )
            except KeyWrongLastSequenceError:
                # Taken over (we stalled past the deadline): token writes stay safe (CAS).
                log.warning("lost a login lease while working", extra={"lease": key})
                return
            except Exception as exc:
                log.warning(
                    "could not renew a login lease",
                    extra={"lease": key, "error": repr(exc)},
                )

    async def _take(self, key: str) -> int:
        deadline = time.monotonic() + self._ttl * 2
        while True:
            value = f"{self.replica_id}:{time.time() + self._ttl}".encode()
            created = await create_if_absent(self._kv, key, value)
            if created is not None:
                return created
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
        stored = await self._read(f"token.{login_id}")
        return stored[0] if stored else None

    async def store_token(
        self,
        login_id: str,
        token_enc: str,
        times: LoginTokenTimes,
        *,
        consent: bool = False,
    ) -> str:
        """Store the token unless a newer one is there (a `consent` also wins a tie); returns
        the token now stored."""
        key = f"token.{login_id}"
        value = orjson.dumps(
            {
                "token_enc": token_enc,
                "refresh_expires_at": times.refresh_expires_at.timestamp(),
                "access_expires_at": times.access_expires_at.timestamp(),
            }
        )
        while True:
            stored = await self._read(key)
            try:
                if stored is None:
                    if await create_if_absent(self._kv, key, value) is None:
                        continue  # another replica stored one first: compare with it
                    return token_enc
                stored_enc, stored_times, revision = stored
                if stored_times is not None and not (
                    is_newer(times, stored_times)
                    or (consent and times.sort_key() >= stored_times.sort_key())
                ):
                    if stored_enc != token_enc:
                        log.info(
                            "kept a newer stored token", extra={"login": login_id[:8]}
                        )
                    return stored_enc
                await self._kv.update(key, value, last=revision)
                return token_enc
            except KeyWrongLastSequenceError:
                continue  # another replica wrote meanwhile: compare again

    async def _read(self, key: str) -> tuple[str, LoginTokenTimes | None, int] | None:
        try:
            entry = await self._kv.get(key)
        except KeyNotFoundError:
            return None
        if not entry.value:
            return None
        if entry.revision is None:  # typed optional by nats-py; a stored entry has one
            raise RuntimeError("a stored KV entry has a revision")
        if not entry.value.startswith(b"{"):  # written before expiry times were kept
            return entry.value.decode(), None, entry.revision
        data = orjson.loads(entry.value)
        times = LoginTokenTimes(
            access_expires_at=datetime.fromtimestamp(data["access_expires_at"], UTC),
            refresh_expires_at=datetime.fromtimestamp(data["refresh_expires_at"], UTC),
        )
        return str(data["token_enc"]), times, entry.revision
