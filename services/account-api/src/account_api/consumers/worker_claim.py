"""Which of a replica's uvicorn workers runs the bus consumers.

Balances are group-committed per process, so every consuming worker splits the batches: with two
workers of one replica consuming, `bench/ib_refresh.py` (500/s, 2 cores) measured account-api at
1.76 ms CPU per refresh and p99 1,346 ms; with one of the two consuming, 1.51 ms and 404 ms
(2026-12-03). Every worker still serves HTTP.

`account-api serve` names a claim for its workers (`CLAIM_ENV`, inherited by the processes uvicorn
spawns); a worker holds it by binding an abstract Unix socket of that name. The kernel drops the
name when the worker exits, however it exits. Workers without it try again every
`RETRY_S`, so whichever worker outlives the holder (uvicorn's replacement of a dead worker, the
new generation of a SIGHUP restart, the one left after scaling down) takes over. Without the
variable (another launcher, or one worker) and off Linux, every worker consumes.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import sys
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from brokerlink_shared.backoff import backoff_delay
from faststream.nats import NatsBroker

from account_api.consumers.group_commit import GroupCommit

log = logging.getLogger(__name__)

CLAIM_ENV = "ACCOUNT_API_CONSUMER_CLAIM"
RETRY_S = 1.0


class ConsumerClaim:
    def __init__(self, name: str) -> None:
        self._name = name
        self._socket: socket.socket | None = None

    @staticmethod
    def new_name() -> str:
        """A name no other replica uses, even one sharing this host's network namespace."""
        return f"brokerlink-account-api-consumers-{uuid.uuid4().hex}"

    @classmethod
    def from_environment(cls) -> ConsumerClaim | None:
        name = os.environ.get(CLAIM_ENV)
        return cls(name) if name else None

    @property
    def name(self) -> str:
        return self._name

    def take(self) -> bool:
        """True when this worker runs the consumers (it holds the claim until `release`)."""
        if not sys.platform.startswith("linux"):
            return True
        if self._socket is not None:
            return True
        try:
            claim = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        except OSError as exc:  # out of descriptors, say: try again later
            log.warning("consumer claim not tried", extra={"error": repr(exc)})
            return False
        try:
            claim.bind("\0" + self._name)
        except OSError:
            claim.close()
            return False
        self._socket = claim
        log.info("this worker runs the bus consumers", extra={"claim": self._name})
        return True

    def release(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None


class ClaimedConsumers:
    """Registers the bus consumers (`register`) in this worker while it holds `claim`: before
    the broker starts when it is free then (the broker starts them), else once this worker
    takes it over (started here). Without a claim, always."""

    def __init__(
        self,
        broker: NatsBroker,
        register: Callable[[], GroupCommit[Any]],
        claim: ConsumerClaim | None,
        *,
        prepare: Callable[[NatsBroker], Awaitable[None]],
        retry_s: float = RETRY_S,
    ) -> None:
        self._broker = broker
        self._register = register
        self._claim = claim
        self._prepare = prepare
        self._retry_s = retry_s
        self._task: asyncio.Task[None] | None = None
        self.registered: GroupCommit[Any] | None = None

    def before_start(self) -> None:
        if self._claim is None or self._claim.take():
            self.registered = self._register()

    def start(self, connected: asyncio.Task[None]) -> None:
        """Unless registered already, wait for the claim and `connected` (the broker started)."""
        if self.registered is None and self._claim is not None:
            self._task = asyncio.create_task(
                self._take_over(self._claim, connected), name="consumer-claim"
            )

    async def _take_over(
        self, claim: ConsumerClaim, connected: asyncio.Task[None]
    ) -> None:
        while not claim.take():  # noqa: ASYNC110 - the kernel offers no wake-up
            await asyncio.sleep(self._retry_s)
        await asyncio.shield(connected)
        before = set(self._broker.subscribers)
        self.registered = self._register()
        added = [s for s in self._broker.subscribers if s not in before]
        attempt = 0
        # Holding the claim, this worker must consume: the bus may be away for a while.
        while True:
            try:
                await self._prepare(self._broker)
                for subscriber in added:
                    if not subscriber.running:
                        await subscriber.start()
                break
            except Exception as exc:
                attempt += 1
                await stop_started(self._broker, [s for s in added if not s.running])
                log.warning(
                    "bus consumers not started yet; retrying",
                    extra={"error": repr(exc), "attempt": attempt},
                )
                await asyncio.sleep(backoff_delay(attempt, cap=5.0))
        log.info("bus consumers taken over by this worker")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            except Exception as exc:  # the rest of the shutdown must still run
                log.error("consumer take-over failed", extra={"error": repr(exc)})

    async def aclose(self) -> None:
        """After the broker stopped: settle the group commit's waiters, let the claim go."""
        if self.registered is not None:
            await self.registered.aclose()
        if self._claim is not None:
            self._claim.release()


async def stop_started(
    broker: NatsBroker, subscribers: list[Any] | None = None
) -> None:
    """Stop `subscribers` (the broker's running ones by default), leaving them ready to start
    once more, with none of their tasks left behind; errors are logged, not raised."""
    for subscriber in (
        subscribers
        if subscribers is not None
        else [s for s in broker.subscribers if s.running]
    ):
        try:
            await subscriber.stop()
        except Exception as exc:
            log.warning("stopping a bus consumer failed", extra={"error": repr(exc)})
