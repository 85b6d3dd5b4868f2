"""One statement per (token, query) across replicas: a lease while one replica fetches it, and
the result (encrypted) for the others, in NATS KV.

A bulk refresh reaches every replica; the local batcher makes each replica ask once, and this makes
the replicas ask once between them: the first takes the lease `lease.<key>` (renewed while the
fetch lasts, so a crashed holder's lapses within `lease_ttl_s`), fetches, stores the outcome under
`result.<key>` and releases; the others wait for the lease and read that outcome. Outcomes live for
the bucket's TTL (`reuse_s`): a Flex statement reports the last business day, so a refresh shortly
after another one gets the same statement without spending IB's budget again. Failures are shared
too: an expired token is not asked about twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

from brokerlink_shared.crypto import SecretBox, SecretDecryptionError
from brokerlink_shared.kv import create_if_absent
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue
from pydantic import BaseModel, ValidationError

from ibflex_connector.adapters.flex_http import FlexCallError
from ibflex_connector.domain.answers import Verdict
from ibflex_connector.domain.statement import AccountStatement, Report

log = logging.getLogger(__name__)

# failures that another try minutes later would meet again
_LASTING = frozenset({Verdict.REAUTH, Verdict.QUERY})
# NATS' default max payload is 1 MiB; a larger outcome is not shared (the others fetch their own).
MAX_SHARED_BYTES = 900_000


class FetchOutcome(BaseModel):
    """A statement fetch's result as replicas share it."""

    statements: dict[str, AccountStatement | str] | None = None
    expires_in_days: int | None = None
    error_verdict: Verdict | None = None
    error_message: str | None = None
    error_code: str | None = None

    def result(self) -> tuple[Report, int | None]:
        if self.statements is None:
            raise FlexCallError(
                self.error_verdict or Verdict.FAILED,
                self.error_message or "IB Flex call failed",
                self.error_code,
                self.expires_in_days,
            )
        return Report(self.statements), self.expires_in_days

    @classmethod
    def of_error(cls, exc: FlexCallError) -> FetchOutcome:
        return cls(
            expires_in_days=exc.expires_in_days,
            error_verdict=exc.verdict,
            error_message=exc.message,
            error_code=exc.code,
        )


class KvStatementShare:
    """Fetch a statement at most once across replicas (see module docstring)."""

    def __init__(
        self,
        kv: KeyValue,
        box: SecretBox,
        lease_ttl_s: float = 30.0,
        replica_id: str | None = None,
    ) -> None:
        self._kv = kv
        self._box = box
        self._ttl = lease_ttl_s
        self.replica_id = replica_id or uuid.uuid4().hex[:12]
        self.fetched = 0  # outcomes this replica fetched itself
        self.adopted = 0  # outcomes another replica fetched

    async def run(
        self, key: str, fetch: Callable[[], Awaitable[FetchOutcome]]
    ) -> FetchOutcome:
        """The shared outcome for `key`, fetching it here only if no replica has it or is on it."""
        shared = await self._read(key)
        if shared is None:
            async with self._lease(key):
                shared = await self._read(key)  # the previous holder may have stored it
                if shared is None:
                    outcome = await fetch()
                    self.fetched += 1
                    await self._write(key, outcome)
                    return outcome
        self.adopted += 1
        return shared

    async def _read(self, key: str) -> FetchOutcome | None:
        try:
            entry = await self._kv.get(f"result.{key}")
        except KeyNotFoundError:
            return None
        if not entry.value:
            return None
        try:
            return FetchOutcome.model_validate_json(
                self._box.decrypt(entry.value.decode())
            )
        except (SecretDecryptionError, ValidationError):
            log.warning("ignoring an unreadable shared flex outcome")
            return None

    async def _write(self, key: str, outcome: FetchOutcome) -> None:
        if outcome.statements is None and outcome.error_verdict not in _LASTING:
            return  # a passing failure: the next replica should try for itself
        sealed = self._box.encrypt(outcome.model_dump_json()).encode()
        if len(sealed) > MAX_SHARED_BYTES:
            log.warning("flex outcome too large to share", extra={"bytes": len(sealed)})
            return
        await self._kv.put(f"result.{key}", sealed)

    @contextlib.asynccontextmanager
    async def _lease(self, key: str) -> AsyncIterator[None]:
        """Hold the fetch lease for `key` (waiting while a live holder has it), renewed until the
        block ends."""
        name = f"lease.{key}"
        revision = await self._take(name)
        renewal = asyncio.create_task(self._renew(name, revision))
        try:
            yield
        finally:
            renewal.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewal
            with contextlib.suppress(Exception):
                await self._kv.delete(name)

    def _value(self) -> bytes:
        return f"{self.replica_id}:{time.time() + self._ttl}".encode()

    async def _take(self, name: str) -> int:
        while True:
            revision = await create_if_absent(self._kv, name, self._value())
            if revision is not None:
                return revision
            try:
                entry = await self._kv.get(name)
            except KeyNotFoundError:
                continue  # released just now: try again
            deadline = float((entry.value or b":0").decode().rsplit(":", 1)[1] or 0)
            if deadline < time.time():
                log.info("taking over a lapsed flex fetch lease")
                with contextlib.suppress(KeyWrongLastSequenceError):
                    taken: int = await self._kv.update(
                        name, self._value(), last=entry.revision
                    )
                    return taken
            await asyncio.sleep(0.1)  # polling the holder's lease; it ends or lapses

    async def _renew(self, name: str, revision: int) -> None:
        while True:
            await asyncio.sleep(self._ttl / 3)
            try:
                revision = await self._kv.update(name, self._value(), last=revision)
            except KeyWrongLastSequenceError:
                log.warning("lost a flex fetch lease to another replica")
                return
