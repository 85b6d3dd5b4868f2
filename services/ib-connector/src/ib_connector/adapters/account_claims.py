"""Claims on IB account codes, kept in the NATS KV bucket `<ns>_ib_accounts` (ib-connector's own).

One key per account code ever seen through a session: `claim_key(secret, code)`, a keyed hash, so
account codes never appear as keys or subjects on the bus. The hash key is 32 random bytes made
once per deployment and kept in the same bucket (`hash-key`), which only ib-connector's NATS user
may read. The bucket has no TTL and is file-backed with the streams' replica count: claims survive
connector restarts, replica hand-overs and NATS node losses.

Every write is compare-and-set on the entry's revision, so two users' sessions meeting the same
account at once cannot both win it. The decisions are `domain.account_claims`'.

Integrations hold a gateway's accounts through a gateway hold, a key of its own in the same
bucket (`hold_key(secret, user, codes)`, listing claim keys and integration holders, never a code).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import replace

import orjson
from brokerlink_shared.backoff import backoff_delay
from brokerlink_shared.kv import (
    bucket_keys,
    create_if_absent,
    delete_if_unchanged,
    live_entry,
)
from brokerlink_shared.rate_budget import open_bucket
from nats.aio.client import Client as NatsClient
from nats.js.errors import KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from ib_connector.domain.account_claims import (
    AccountClaim,
    GatewayHold,
    HoldState,
    claim_key,
    claimed,
    hold_holder,
    hold_key,
    is_hold_key,
    joined,
    left,
    refused,
    released,
    settled,
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
        await self.finish_releases()

    async def hold(
        self, user_id: int, codes: Iterable[str], integrations: Iterable[str]
    ) -> bool:
        """Hold every account in `codes` for `user_id` on behalf of `integrations` (through the
        user's gateway hold on that set of accounts); False when another user owns any of them.

        Once the hold is held, adding integrations is one write. Otherwise this round claims every
        account for the hold's generation (`claim`), marks it held and clears the claims of the
        generations it retired. A refused round takes its integrations off the hold again (with
        none left, the hold lets go of its claims: `domain.account_claims.refused`)."""
        codes = list(codes)
        holding = frozenset(integrations)
        if not holding:
            raise ValueError("a gateway hold needs an integration")
        claims = sorted({claim_key(self._secret, code) for code in codes})
        key = hold_key(self._secret, user_id, codes)
        # generations this call put on claims: if a release deletes the hold meanwhile, the
        # next one written retires them, so no holder outlives every record of it
        wrote: list[str] = []
        for attempt in range(1, _ATTEMPTS + 1):
            known = await self._read_hold(key)
            current, revision = known if known is not None else (None, 0)
            after = joined(current, user_id, claims, holding, secrets.token_hex(6))
            untraced = [g for g in wrote if g not in after.generations]
            if untraced:
                after = replace(after, retired=(*after.retired, *untraced))
            if after != current:
                written = await self._write_hold(key, after, known)
                if written is None:
                    await _after_conflict(attempt)
                    continue
                revision = written
            if after.state is HoldState.HELD and not after.retired:
                return True
            if after.state is not HoldState.HELD:
                wrote.append(after.generation)
                holder = hold_holder(key, after.generation)
                if not await self.claim(user_id, codes, [holder], undo=False):
                    await self._leave(key, holding, refused_round=after.generation)
                    return False
            for generation in after.retired:
                await self._release_keys(after.claims, hold_holder(key, generation))
            if await self._write_hold(key, settled(after), (after, revision)) is None:
                await _after_conflict(attempt)  # another round changed it: look again
                continue
            return True
        raise ClaimsUnavailable("a gateway hold kept changing")

    async def claim(
        self,
        user_id: int,
        codes: Iterable[str],
        holders: Iterable[str],
        *,
        undo: bool = True,
    ) -> bool:
        """Hold every account in `codes` for `user_id` by `holders`; False when another user
        owns any of them.

        The first key in one global order is taken alone: two users meeting the same gateway
        both start there, so one of them is refused before writing anything else. The other
        keys are then written together (a gateway may manage hundreds of accounts, and one
        replicated write at a time made a connect cost seconds). A refused call lets go of
        what it took, unless `undo` is False: a gateway hold's holder is shared by every session
        of its user claiming at once, so what one of them took is not its own to let go (the
        hold lets go of all of it if its round is refused)."""
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
        if refused and undo:
            for key_taken in taken:
                for holder in holding:
                    await self._release_key(key_taken, holder)
        return not refused

    async def release(self, holder: str, codes: Iterable[str]) -> int:
        """Let go of a short-lived `holder`'s claims on `codes`; returns how many claims that
        deleted because nothing holds them any more."""
        return await self._release_keys(
            sorted({claim_key(self._secret, code) for code in codes}), holder
        )

    async def leave(self, integration: str, *, owner_deleted: bool = False) -> int:
        """Take an integration off every gateway hold it reads through. Its accounts stay
        claimed for their user unless the user is deleted with it
        (`domain.account_claims.left`); a claim that names the integration itself (written
        before gateway holds existed) keeps it. Also finishes any gateway hold release found
        cut short; returns how many claims that deleted."""
        listed = await bucket_keys(self._nc, self._name)
        return await self._leave_all(
            [k for k in listed if is_hold_key(k)],
            frozenset({integration}),
            owner_deleted=owner_deleted,
        )

    async def finish_releases(self) -> int:
        """Finish every gateway hold release cut short (a process killed, the bus gone midway):
        until then a refused round's, or a deleted user's, accounts stay claimed."""
        listed = await bucket_keys(self._nc, self._name)
        return await self._leave_all([k for k in listed if is_hold_key(k)], frozenset())

    # ---- internals -------------------------------------------------------------------------

    @property
    def _bucket(self) -> KeyValue:
        if self._kv is None:
            raise ClaimsUnavailable("account claims used before start()")
        return self._kv

    def _now(self) -> float:
        return self._clock()

    async def _release_keys(self, keys: Sequence[str], holder: str) -> int:
        return await _in_batches(keys, lambda k: self._release_key(k, holder))

    async def _leave_all(
        self,
        keys: Sequence[str],
        integrations: frozenset[str],
        *,
        owner_deleted: bool = False,
    ) -> int:
        return await _in_batches(
            keys, lambda k: self._leave(k, integrations, owner_deleted=owner_deleted)
        )

    async def _leave(
        self,
        key: str,
        integrations: frozenset[str],
        *,
        owner_deleted: bool = False,
        refused_round: str | None = None,
    ) -> int:
        """Take `integrations` off a gateway hold; the last going releases its claims when
        their user is deleted, or after a refused round (`domain.account_claims`), as does
        finding a release unfinished. Returns how many claims that deleted."""
        for attempt in range(1, _ATTEMPTS + 1):
            known = await self._read_hold(key)
            if known is None:
                return 0
            current, revision = known
            after = current
            if refused_round is not None:
                after = refused(current, integrations, refused_round)
            else:
                for integration in integrations & current.integrations:
                    after = left(after, integration, owner_deleted=owner_deleted)
            if after != current:
                written = await self._write_hold(key, after, known)
                if written is None:
                    await _after_conflict(attempt)
                    continue
                revision = written
            if after.state is not HoldState.RELEASING:
                return 0
            deleted = 0
            for generation in after.generations:
                deleted += await self._release_keys(
                    after.claims, hold_holder(key, generation)
                )
            # a new round may have taken the hold over meanwhile: it is then that round's
            await delete_if_unchanged(self._bucket, key, revision)
            return deleted
        raise ClaimsUnavailable("a gateway hold kept changing during its release")

    async def _read_hold(self, key: str) -> tuple[GatewayHold, int] | None:
        found = await live_entry(self._bucket, key)
        return (_decode_hold(found[0]), found[1]) if found is not None else None

    async def _write_hold(
        self,
        key: str,
        hold: GatewayHold,
        known: tuple[GatewayHold, int] | None,
    ) -> int | None:
        """Write a hold over what was read (compare-and-set): its revision, or None when
        another writer changed it first."""
        if known is None:
            return await create_if_absent(self._bucket, key, _encode_hold(hold))
        try:
            return await self._bucket.update(key, _encode_hold(hold), last=known[1])
        except KeyWrongLastSequenceError:
            return None

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
            if after is None:
                if await delete_if_unchanged(self._bucket, key, revision):
                    return True
                await _after_conflict(attempt)
                continue
            try:
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
        found = await live_entry(self._bucket, key)
        return (_decode(found[0]), found[1]) if found is not None else None


async def _in_batches(
    keys: Sequence[str], each: Callable[[str], Awaitable[int | bool]]
) -> int:
    """Run `each` over the keys, `_SCAN_BATCH` at a time; the sum of what they return."""
    total = 0
    for start in range(0, len(keys), _SCAN_BATCH):
        results = await asyncio.gather(
            *(each(k) for k in keys[start : start + _SCAN_BATCH])
        )
        total += sum(results)
    return total


async def _after_conflict(attempt: int) -> None:
    await asyncio.sleep(backoff_delay(attempt, _CONFLICT_BASE_S, _CONFLICT_CAP_S))


def _encode(claim: AccountClaim) -> bytes:
    return orjson.dumps({"user_id": claim.user_id, "holders": sorted(claim.holders)})


def _encode_hold(hold: GatewayHold) -> bytes:
    return orjson.dumps(
        {
            "user_id": hold.user_id,
            "generation": hold.generation,
            "state": hold.state.value,
            "claims": list(hold.claims),
            "integrations": sorted(hold.integrations),
            "retired": list(hold.retired),
        }
    )


def _decode_hold(raw: bytes) -> GatewayHold:
    data = orjson.loads(raw)
    return GatewayHold(
        int(data["user_id"]),
        str(data["generation"]),
        HoldState(data["state"]),
        tuple(data["claims"]),
        frozenset(data["integrations"]),
        tuple(data.get("retired", ())),
    )


def _decode(raw: bytes) -> AccountClaim:
    data = orjson.loads(raw)
    return AccountClaim(int(data["user_id"]), frozenset(data.get("holders", [])))
