"""Claims on IB account codes, kept in the NATS KV bucket `<ns>_ib_accounts` (ib-connector's own).

One key per account code ever seen through a session: `claim_key(secret, code)`, a keyed hash, so
account codes never appear as keys or subjects on the bus. The hash key is 32 random bytes made
once per deployment and kept in the same bucket (`hash-key`), which only ib-connector's NATS user
may read. The bucket has no TTL and is file-backed with the streams' replica count: claims survive
connector restarts, replica hand-overs and NATS node losses.

Every write is compare-and-set on the entry's revision, so two users' sessions meeting the same
account at once cannot both win it. The decisions are `domain.account_claims`'.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Callable, Iterable

import orjson
from brokerlink_shared.backoff import backoff_delay
from brokerlink_shared.kv import bucket_keys, create_if_absent
from brokerlink_shared.rate_budget import open_bucket
from nats.aio.client import Client as NatsClient
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from ib_connector.domain.account_claims import (
    AccountClaim,
    claim_key,
    claimed,
    is_claim_key,
    released,
)

log = logging.getLogger(__name__)

HASH_KEY = "hash-key"
# Compare-and-set rounds on one key before giving up (the caller retries later). Every session
# of one gateway (one per client id) updates the same keys when integrations attach in a burst:
# conflicting writers back off with jitter (5 ms doubling to 200 ms) so they take turns instead
# of colliding again, about 4 s in all.
_ATTEMPTS = 24
_CONFLICT_BASE_S = 0.005
_CONFLICT_CAP_S = 0.2
_SCAN_BATCH = 64


class ClaimsUnavailable(Exception):
    """The claims could not be read or written (bus trouble, a contended key): nothing was decided."""


class AccountClaims:
    """Claim, check and release IB account codes for users."""

    def __init__(
        self,
        nc: NatsClient,
        namespace: str,
        replicas: int = 1,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._nc = nc
        self._name = f"{namespace}_ib_accounts"
        self._replicas = replicas
        self._clock = (
            clock  # wall clock: transient holders' expiries outlive the process
        )
        self._kv: KeyValue | None = None
        self._secret = b""

    async def start(self) -> None:
        kv = await open_bucket(
            self._nc.jetstream(), self._name, None, replicas=self._replicas
        )
        fresh = secrets.token_bytes(32)
        if await create_if_absent(kv, HASH_KEY, fresh) is not None:
            self._secret = fresh
        else:
            entry = await kv.get(
                HASH_KEY
            )  # made by another replica, or before a restart
            if not entry.value:
                raise RuntimeError(f"{self._name}: the hash key is empty")
            self._secret = entry.value
        self._kv = kv

    async def claim(
        self, user_id: int, codes: Iterable[str], holders: Iterable[str]
    ) -> bool:
        """Hold every account in `codes` for `user_id` by `holders`; False when another user
        owns any of them.

        The first key in one global order is taken alone: two users meeting the same gateway
        both start there, so one of them is refused before writing anything else. The other
        keys are then written together (a gateway may manage hundreds of accounts, and one
        replicated write at a time made a connect cost seconds). A refused call lets go of
        what it took."""
        holding = frozenset(holders)
        if not holding:
            raise ValueError("a claim needs a holder")
        keys = sorted({claim_key(self._secret, code) for code in codes})

        def decide(current: AccountClaim | None) -> AccountClaim | None:
            return claimed(current, user_id, holding, self._now())

        taken: list[str] = []
        refused = False
        batches = [keys[:1]] + [
            keys[i : i + _SCAN_BATCH] for i in range(1, len(keys), _SCAN_BATCH)
        ]
        for batch in batches:
            outcomes = await asyncio.gather(*(self._update(k, decide) for k in batch))
            taken += [k for k, written in zip(batch, outcomes, strict=True) if written]
            if any(o is None for o in outcomes):
                refused = True
                break
        if refused:
            for key_taken in taken:
                for holder in holding:
                    await self._release_key(key_taken, holder)
            return False
        return True

    async def release(self, holder: str, codes: Iterable[str] | None = None) -> int:
        """Let go of `holder`'s claims (those of `codes`, or all of them); returns how many
        claims were deleted because nothing holds them any more."""
        if codes is not None:
            keys = sorted({claim_key(self._secret, code) for code in codes})
        else:
            listed = await bucket_keys(self._nc, self._name)
            keys = [k for k in listed if is_claim_key(k)]
        deleted = 0
        for start in range(0, len(keys), _SCAN_BATCH):
            batch = keys[start : start + _SCAN_BATCH]
            results = await asyncio.gather(
                *(self._release_key(k, holder) for k in batch)
            )
            deleted += sum(results)
        return deleted

    # ---- internals -------------------------------------------------------------------------

    @property
    def _bucket(self) -> KeyValue:
        if self._kv is None:
            raise ClaimsUnavailable("account claims used before start()")
        return self._kv

    def _now(self) -> float:
        return self._clock()

    async def _release_key(self, key: str, holder: str) -> bool:
        """Drop `holder` from one claim; True when that deleted the claim."""
        for attempt in range(1, _ATTEMPTS + 1):
            known = await self._read(key)
            if known is None:
                return False
            claim, revision = known
            if holder not in claim.holders:
                return False
            after = released(claim, holder, self._now())
            try:
                if after is None:
                    await self._bucket.delete(key, last=revision)
                    return True
                await self._bucket.update(key, _encode(after), last=revision)
                return False
            except KeyWrongLastSequenceError:
                await _after_conflict(attempt)
                continue
        raise ClaimsUnavailable("an account claim kept changing during its release")

    async def _update(
        self, key: str, decide: Callable[[AccountClaim | None], AccountClaim | None]
    ) -> bool | None:
        """Apply `decide` to one claim: None when it refuses, else whether anything was written."""
        for attempt in range(1, _ATTEMPTS + 1):
            known = await self._read(key)
            current, revision = known if known is not None else (None, 0)
            after = decide(current)
            if after is None:
                return None
            if after == current:
                return False
            try:
                if known is None:
                    if (
                        await create_if_absent(self._bucket, key, _encode(after))
                        is None
                    ):
                        await _after_conflict(attempt)
                        continue
                else:
                    await self._bucket.update(key, _encode(after), last=revision)
            except KeyWrongLastSequenceError:
                await _after_conflict(attempt)
                continue
            return True
        raise ClaimsUnavailable("an account claim kept changing")

    async def _read(self, key: str) -> tuple[AccountClaim, int] | None:
        try:
            entry = await self._bucket.get(key)
        except KeyNotFoundError:
            return None
        if entry.value is None or entry.operation in ("DEL", "PURGE"):
            return None
        return _decode(entry.value), int(entry.revision or 0)


async def _after_conflict(attempt: int) -> None:
    await asyncio.sleep(backoff_delay(attempt, _CONFLICT_BASE_S, _CONFLICT_CAP_S))


def _encode(claim: AccountClaim) -> bytes:
    return orjson.dumps({"user_id": claim.user_id, "holders": sorted(claim.holders)})


def _decode(raw: bytes) -> AccountClaim:
    data = orjson.loads(raw)
    return AccountClaim(int(data["user_id"]), frozenset(data.get("holders", [])))
