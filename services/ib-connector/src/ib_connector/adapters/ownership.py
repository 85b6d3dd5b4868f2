"""Which replica owns which gateway session, kept in two NATS KV buckets.

- `<ns>_ib_replicas`: one key per live replica, re-put every `lease_ttl/10`; the bucket's max
  age is the lease TTL, so a replica that stops renewing disappears by itself.
- `<ns>_ib_sessions`: one key per session (hash of host/port/client id) holding the owner and
  what a new owner needs to re-open it (the IB config and the accounts attached). Claims are
  compare-and-set on the entry's revision, so exactly one replica wins each session.

Every replica watches the sessions bucket, so routing a message to a session's owner is a
dictionary lookup; a takeover loop claims sessions whose owner is no longer live.

A replica that cannot renew its lease (the bus unreachable, a stalled process) gives its
sessions up before the lease can lapse — at `LOSS_MARGIN` of the TTL after its last renewal —
so the replica that takes over never meets the old connection's client id at the gateway. Once
it renews again it re-opens the sessions nobody took in the meantime.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from brokerlink_shared.contracts.values import IBConnection
from brokerlink_shared.kv import bucket_keys, create_if_absent, live_entry
from brokerlink_shared.messaging import RetryLater
from nats.aio.client import Client as NatsClient
from nats.js.api import KeyValueConfig, StorageType
from nats.js.errors import (
    BucketNotFoundError,
    KeyWrongLastSequenceError,
    NotFoundError,
)
from nats.js.kv import KeyValue

from ib_connector.domain.endpoints import SessionKey, session_key

log = logging.getLogger(__name__)

# Give sessions up when this share of the lease TTL has passed without a renewal: the others
# may take over only once the whole TTL has passed, so a quarter of it is left for closing.
LOSS_MARGIN = 0.75
# A lost NATS node takes its streams' leadership with it, and the followers wait 4-9 s before they
# campaign (nats-server's raft election timeout): no renewal can succeed meanwhile. Renewals go
# out every tenth of the TTL, every thirtieth once one is late, each waiting up to a sixth for its
# answer without holding the next one back. With the default 20 s TTL (config.py) the lease is
# renewed within about a second of a new leader: at worst 2 s since the last renewal + 9 s
# without a leader + 1 s < 15 s (LOSS_MARGIN).
RENEW_EVERY = 0.1
RENEW_RETRY = 1 / 30


def session_kv_key(key: SessionKey) -> str:
    """A KV-safe, stable name for a session key."""
    digest = hashlib.sha256("|".join(map(str, key)).encode()).hexdigest()[:24]
    return f"s{digest}"


@dataclass
class SessionRecord:
    """What the sessions bucket holds for one session."""

    owner: str
    config: dict[str, Any]
    accounts: dict[str, dict[str, Any]] = field(
        default_factory=dict
    )  # account_id -> {user_id, account_code}
    user_id: int = 0

    def encode(self) -> bytes:
        return orjson.dumps(
            {
                "owner": self.owner,
                "config": self.config,
                "accounts": self.accounts,
                "user_id": self.user_id,
            }
        )

    @classmethod
    def decode(cls, raw: bytes) -> SessionRecord:
        data = orjson.loads(raw)
        return cls(
            owner=data["owner"],
            config=data["config"],
            accounts=data.get("accounts", {}),
            user_id=int(data.get("user_id") or 0),
        )

    @property
    def ib_config(self) -> IBConnection:
        return IBConnection.model_validate(self.config)

    @property
    def session_key(self) -> SessionKey:
        return session_key(self.ib_config, self.user_id)


AdoptSession = Callable[[SessionRecord], Awaitable[None]]
ReleaseSession = Callable[[SessionKey], Awaitable[None]]
LoseSessions = Callable[[list[SessionKey]], Awaitable[None]]


class SessionOwnership:
    """Leases on sessions for one replica."""

    def __init__(
        self,
        nc: NatsClient,
        namespace: str,
        replica_id: str,
        lease_ttl_s: float,
        adopt: AdoptSession,
        release: ReleaseSession,
        replicas: int = 1,
        lose: LoseSessions | None = None,
    ) -> None:
        self.replica_id = replica_id
        self._kv_replicas = replicas
        self._nc = nc
        self._namespace = namespace
        self._ttl = lease_ttl_s
        self._adopt = adopt
        self._release = release
        self._replicas: KeyValue | None = None
        self._sessions: KeyValue | None = None
        self._records: dict[
            str, tuple[SessionRecord, int]
        ] = {}  # kv key -> (record, revision)
        self._owned: set[str] = set()
        self._live: set[str] = {replica_id}
        self._tasks: list[asyncio.Task[None]] = []
        self._watcher: Any = None
        self._claim_lock: dict[str, asyncio.Lock] = {}
        self._lose = lose
        self._last_renewed = time.monotonic()
        self.lease_lost = False

    async def start(self) -> None:
        js = self._nc.jetstream()
        self._replicas = await _bucket(
            js,
            f"{self._namespace}_ib_replicas",
            ttl=self._ttl,
            replicas=self._kv_replicas,
        )
        await _lapse_no_sooner_than(js, self._replicas, self._ttl)
        self._sessions = await _bucket(
            js, f"{self._namespace}_ib_sessions", ttl=None, replicas=self._kv_replicas
        )
        await self._renew_lease()
        await self._see_live_replicas()
        self._watcher = await self._sessions.watchall()
        self._tasks = [
            asyncio.create_task(self._watch(), name="ib-ownership-watch"),
            asyncio.create_task(self._renew(), name="ib-ownership-renew"),
            asyncio.create_task(self._take_over(), name="ib-ownership-takeover"),
            asyncio.create_task(self._guard(), name="ib-ownership-guard"),
        ]

    async def stop(self, *, release: bool = True) -> None:
        """Stop renewing; with `release`, give up every session at once (graceful shutdown)."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._watcher is not None:
            with contextlib.suppress(Exception):
                await self._watcher.stop()
        if release and self._replicas is not None:
            with contextlib.suppress(Exception):
                await self._replicas.delete(self.replica_id)
            for kv_key in list(self._owned):
                record, revision = self._records.get(kv_key, (None, 0))
                if record is not None and record.owner == self.replica_id:
                    # leave the record for the others to claim, marked as owned by nobody
                    record.owner = ""
                    with contextlib.suppress(Exception):
                        await self._kv.update(kv_key, record.encode(), last=revision)
        self._owned.clear()

    def owns(self, key: SessionKey) -> bool:
        return session_kv_key(key) in self._owned

    def owned_count(self) -> int:
        return len(self._owned)

    def live_replicas(self) -> set[str]:
        return set(self._live)

    async def claim(
        self,
        key: SessionKey,
        config: IBConnection,
        account_id: int | None,
        user_id: int | None,
    ) -> str:
        """The owner of `key` after making sure it has one (this replica when it was free)."""
        if self.lease_lost:
            # Presumed dead by the others: opening a session now would fight the new owner.
            raise RetryLater(self._ttl, "this replica lost its ownership lease")
        kv_key = session_kv_key(key)
        async with self._claim_lock.setdefault(kv_key, asyncio.Lock()):
            for _ in range(5):
                known = self._records.get(kv_key)
                if known is None:
                    known = await self._read(kv_key)
                if known is None:
                    record = SessionRecord(
                        self.replica_id, _config_dict(config), user_id=key.user_id
                    )
                    _add_account(record, account_id, user_id, config)
                    revision = await create_if_absent(self._kv, kv_key, record.encode())
                    if revision is None:
                        self._records.pop(kv_key, None)
                        continue
                    self._remember(kv_key, record, revision)
                    return self.replica_id
                record, revision = known
                if record.owner == self.replica_id:
                    self._owned.add(kv_key)
                    if _add_account(
                        record, account_id, user_id, config
                    ) and not await self._write(kv_key, record, revision):
                        continue
                    return self.replica_id
                if record.owner and await self._is_live(record.owner):
                    return record.owner
                # free or owned by a replica that is gone: take it over
                taken = SessionRecord(
                    self.replica_id,
                    _config_dict(config),
                    dict(record.accounts),
                    key.user_id,
                )
                _add_account(taken, account_id, user_id, config)
                if await self._write(kv_key, taken, revision):
                    log.info(
                        "claimed gateway session",
                        extra={
                            "previous_owner": record.owner or None,
                            "session_key": kv_key,
                        },
                    )
                    return self.replica_id
            raise RuntimeError(f"could not settle the owner of session {kv_key}")

    async def owner_if_known(self, key: SessionKey) -> str | None:
        """The live owner of a session, if any replica holds it."""
        kv_key = session_kv_key(key)
        known = self._records.get(kv_key) or await self._read(kv_key)
        if known is None or not await self._is_live(known[0].owner):
            return None
        return known[0].owner

    async def forget_account(
        self, key: SessionKey, account_id: int, *, session_closed: bool
    ) -> None:
        """Drop an account from a session record; delete the record when the session closed."""
        kv_key = session_kv_key(key)
        known = self._records.get(kv_key)
        if known is None:
            return
        record, revision = known
        record.accounts.pop(str(account_id), None)
        if session_closed or not record.accounts:
            with contextlib.suppress(Exception):
                await self._kv.delete(kv_key, last=revision)
            self._owned.discard(kv_key)
            self._records.pop(kv_key, None)
        else:
            await self._write(kv_key, record, revision)

    async def release(self, key: SessionKey) -> None:
        """Give a session up (closed for idleness): delete its record."""
        kv_key = session_kv_key(key)
        known = self._records.get(kv_key)
        self._owned.discard(kv_key)
        if known is not None:
            with contextlib.suppress(Exception):
                await self._kv.delete(kv_key, last=known[1])
            self._records.pop(kv_key, None)

    # ---- internals -------------------------------------------------------------------------

    @property
    def _kv(self) -> KeyValue:
        if self._sessions is None:
            raise RuntimeError("session ownership used before start()")
        return self._sessions

    async def _read(self, kv_key: str) -> tuple[SessionRecord, int] | None:
        found = await live_entry(self._kv, kv_key)
        if found is None:
            return None
        known = (SessionRecord.decode(found[0]), found[1])
        self._records[kv_key] = known
        return known

    async def _write(self, kv_key: str, record: SessionRecord, revision: int) -> bool:
        try:
            new_revision = await self._kv.update(kv_key, record.encode(), last=revision)
        except KeyWrongLastSequenceError:
            await self._read(kv_key)
            return False
        self._remember(kv_key, record, new_revision)
        return True

    def _remember(self, kv_key: str, record: SessionRecord, revision: int) -> None:
        current = self._records.get(kv_key)
        if current is None or current[1] <= revision:
            self._records[kv_key] = (record, revision)
        if record.owner == self.replica_id:
            self._owned.add(kv_key)

    async def _watch(self) -> None:
        if self._watcher is None:
            raise RuntimeError("session ownership used before start()")
        while True:
            try:
                entry = await self._watcher.updates(timeout=max(1.0, self._ttl))
            except (TimeoutError, NotFoundError):
                continue
            if entry is None:
                continue  # end of the initial values
            kv_key, revision = entry.key, int(entry.revision or 0)
            if entry.operation in ("DEL", "PURGE") or entry.value is None:
                self._records.pop(kv_key, None)
                continue
            record = SessionRecord.decode(entry.value)
            current = self._records.get(kv_key)
            if current is not None and current[1] > revision:
                continue
            self._records[kv_key] = (record, revision)
            if kv_key in self._owned and record.owner != self.replica_id:
                # another replica took this session over (we were presumed dead): let it go
                self._owned.discard(kv_key)
                log.warning(
                    "gateway session taken over by another replica",
                    extra={"owner": record.owner},
                )
                await self._release(record.session_key)

    async def _is_live(self, replica: str) -> bool:
        """Whether a replica holds its lease; asks the bucket when the cached view says no
        (a replica that started since our last renewal is not in the cache yet)."""
        if not replica:
            return False
        if replica in self._live:
            return True
        if not await self._holds_lease(replica):
            return False
        self._live.add(replica)
        return True

    async def _holds_lease(self, replica: str) -> bool:
        if self._replicas is None:
            raise RuntimeError("session ownership used before start()")
        return await live_entry(self._replicas, replica) is not None

    async def _renew_lease(self) -> None:
        if self._replicas is None:
            raise RuntimeError("session ownership used before start()")
        started = time.monotonic()
        await asyncio.wait_for(
            self._replicas.put(self.replica_id, b"1"), timeout=self._ttl / 6
        )
        # the lease runs from when the put was sent, at worst; renewals may answer out of order
        self._last_renewed = max(self._last_renewed, started)
        if self.lease_lost:
            self.lease_lost = False
            log.warning("ownership lease renewed again; re-opening unclaimed sessions")
            await self._readopt_own()

    async def _see_live_replicas(self) -> None:
        """Refresh the cached view of which replicas hold their lease."""
        listed = await bucket_keys(
            self._nc, f"{self._namespace}_ib_replicas", timeout_s=self._ttl / 3
        )
        others = [k for k in listed if k != self.replica_id]
        alive = await asyncio.wait_for(
            asyncio.gather(*(self._holds_lease(k) for k in others)),
            timeout=self._ttl / 3,
        )
        self._live = {k for k, live in zip(others, alive, strict=True) if live}
        self._live.add(self.replica_id)

    async def _renew(self) -> None:
        """Renew the lease and nothing else: a slow listing or takeover during a bus failover
        must not delay the next renewal past the point where the guard gives every session up.
        A renewal waiting for its answer does not hold the next one back either."""
        pending: set[asyncio.Task[None]] = set()
        try:
            while True:
                late = (
                    time.monotonic() - self._last_renewed
                    > 1.5 * RENEW_EVERY * self._ttl
                )
                await asyncio.sleep((RENEW_RETRY if late else RENEW_EVERY) * self._ttl)
                task = asyncio.create_task(self._renew_once())
                pending.add(task)
                task.add_done_callback(pending.discard)
        finally:
            for task in pending:
                task.cancel()

    async def _renew_once(self) -> None:
        try:
            await self._renew_lease()
        except Exception as exc:
            log.warning("ownership renewal failed", extra={"error": repr(exc)})

    async def _take_over(self) -> None:
        """See which replicas are live and take over the sessions of those that are not."""
        while True:
            await asyncio.sleep(RENEW_EVERY * self._ttl)
            try:
                await self._see_live_replicas()
                await self._take_over_orphans()
            except Exception as exc:
                log.warning("session takeover round failed", extra={"error": repr(exc)})

    async def _guard(self) -> None:
        """Give every session up before the lease can lapse (see the module docstring)."""
        while True:
            await asyncio.sleep(self._ttl / 20)
            overdue = time.monotonic() - self._last_renewed > self._ttl * LOSS_MARGIN
            if overdue and not self.lease_lost:
                await self.give_up_all("ownership lease not renewed in time")

    async def give_up_all(self, reason: str) -> None:
        """Stop owning every session at once (this replica may be presumed dead)."""
        self.lease_lost = True
        keys = [
            self._records[k][0].session_key for k in self._owned if k in self._records
        ]
        self._owned.clear()
        log.warning(
            "gave up every gateway session",
            extra={"reason": reason, "count": len(keys)},
        )
        if self._lose is not None and keys:
            await self._lose(keys)

    async def _readopt_own(self) -> None:
        """Sessions still recorded as ours (nobody took them over): open them again."""
        for kv_key, (record, _revision) in list(self._records.items()):
            if record.owner == self.replica_id and kv_key not in self._owned:
                self._owned.add(kv_key)
                await self._adopt(record)

    async def _take_over_orphans(self) -> None:
        orphans = [
            (k, rec, rev)
            for k, (rec, rev) in self._records.items()
            if rec.owner != self.replica_id and not await self._is_live(rec.owner)
        ]
        if not orphans:
            return
        random.shuffle(orphans)
        # share the orphans among the survivors instead of the fastest taking all
        share = -(-len(orphans) // max(1, len(self._live)))
        for kv_key, record, revision in orphans[:share]:
            taken = SessionRecord(
                self.replica_id, record.config, dict(record.accounts), record.user_id
            )
            if await self._write(kv_key, taken, revision):
                log.info(
                    "took over gateway session",
                    extra={
                        "previous_owner": record.owner or None,
                        "session_key": kv_key,
                    },
                )
                await self._adopt(taken)


def _config_dict(config: IBConnection) -> dict[str, Any]:
    return config.model_dump(mode="json", exclude={"account_code"})


def _add_account(
    record: SessionRecord,
    account_id: int | None,
    user_id: int | None,
    config: IBConnection,
) -> bool:
    """Record an account on a session; True when that changed the record."""
    if account_id is None or account_id < 0:
        return False
    entry = {"user_id": user_id, "account_code": config.account_code}
    if record.accounts.get(str(account_id)) == entry:
        return False
    record.accounts[str(account_id)] = entry
    return True


async def _bucket(js: Any, name: str, ttl: float | None, replicas: int = 1) -> KeyValue:
    try:
        kv: KeyValue = await js.key_value(name)
        return kv
    except (BucketNotFoundError, NotFoundError):
        pass
    with contextlib.suppress(Exception):
        created: KeyValue = await js.create_key_value(
            KeyValueConfig(
                bucket=name,
                history=1,
                ttl=ttl,
                storage=StorageType.FILE,
                replicas=replicas,
            )
        )
        return created
    existing: KeyValue = await js.key_value(
        name
    )  # created by another replica meanwhile
    return existing


async def _lapse_no_sooner_than(js: Any, kv: KeyValue, ttl: float) -> None:
    """A replicas bucket made with a shorter TTL (by an older version, or another setting) would
    let the others take over before this replica gives its sessions up: raise its max age to
    ours. Never lower it: a replica with a shorter TTL gives up sooner still, which is safe."""
    info = (await kv.status()).stream_info
    if info.config.max_age and info.config.max_age < ttl:
        await js.update_stream(config=info.config, max_age=ttl)
        log.warning(
            "raised the replicas bucket's max age to the lease TTL",
            extra={"from_s": info.config.max_age, "to_s": ttl},
        )
