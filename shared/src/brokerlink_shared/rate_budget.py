"""A request budget per API credential that every replica of a connector shares through NATS KV.

A broker's limit ("N requests per window per key") is counted per time slice of `window_s / n`
seconds: a KV counter per key and slice, spent by compare-and-set. The broker may count over any
sliding window; such a window, seen from the client with a little network delay added, overlaps at
most `n + 2` slices, so each slice may spend `limit // (n + 2)`. With Schwab's 120/min and 12
slices that is 8 requests per 5 s (96/min sustained); never above the limit, whatever the alignment.

Some brokers also want requests spaced out (IB's Flex Web Service: about one per second). With
`min_spacing_s`, a request may only start in the first `slice_s - min_spacing_s` seconds of its
slice; with one request per slice, any two requests are then at least `min_spacing_s` apart.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import time
from dataclasses import dataclass

from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, StorageType
from nats.js.errors import (
    BucketNotFoundError,
    KeyNotFoundError,
    KeyWrongLastSequenceError,
)
from nats.js.kv import KeyValue

from brokerlink_shared.kv import create_if_absent


@dataclass(frozen=True, slots=True)
class RatePlan:
    """How a per-window limit is spent slice by slice."""

    limit: int
    slices: int = 12
    window_s: float = 60.0
    min_spacing_s: float = 0.0

    def __post_init__(self) -> None:
        if self.min_spacing_s and (
            self.per_slice > 1 or self.min_spacing_s >= self.slice_s
        ):
            raise ValueError(
                "min_spacing_s needs one request per slice and a longer slice"
            )

    @property
    def slice_s(self) -> float:
        return self.window_s / self.slices

    @property
    def per_slice(self) -> int:
        return max(1, self.limit // (self.slices + 2))

    def slice_index(self, epoch_s: float) -> int:
        return math.floor(epoch_s / self.slice_s)

    def may_start(self, epoch_s: float) -> bool:
        """False in the tail of a slice kept free for `min_spacing_s`."""
        offset = epoch_s - self.slice_index(epoch_s) * self.slice_s
        return offset <= self.slice_s - self.min_spacing_s

    def wait_for_next_slice(self, epoch_s: float) -> float:
        """Seconds from `epoch_s` until the next slice begins."""
        return (self.slice_index(epoch_s) + 1) * self.slice_s - epoch_s

    def worst_case_per_window(self, window_s: float | None = None) -> int:
        """Most requests any `window_s` interval can see (for tests and docs)."""
        span = self.window_s if window_s is None else window_s
        return (math.ceil(span / self.slice_s) + 1) * self.per_slice


def key_token(*parts: object) -> str:
    """A KV-safe, non-revealing key part (credentials and user ids are hashed)."""
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
    """A per-credential request budget shared by every replica through NATS KV."""

    def __init__(self, kv: KeyValue, plan: RatePlan) -> None:
        self._kv = kv
        self._plan = plan
        self._local: dict[str, asyncio.Lock] = {}
        self.waits = 0

    async def acquire(self, credential: str) -> None:
        """Wait until one more request for `credential` fits, then count it."""
        prefix = key_token("rate", credential)
        # one acquirer per credential per process at a time: CAS conflicts only between replicas
        async with self._local.setdefault(prefix, asyncio.Lock()):
            while True:
                now = time.time()
                if self._plan.may_start(now):
                    key = f"{prefix}.{self._plan.slice_index(now)}"
                    try:
                        entry = await self._kv.get(key)
                        spent, revision = int(entry.value or b"0"), entry.revision
                    except KeyNotFoundError:
                        spent, revision = 0, None
                    if spent < self._plan.per_slice:
                        if revision is None:
                            if await create_if_absent(self._kv, key, b"1") is not None:
                                return
                            continue  # another replica spent first: read again
                        try:
                            await self._kv.update(
                                key, str(spent + 1).encode(), last=revision
                            )
                            return
                        except KeyWrongLastSequenceError:
                            continue
                self.waits += 1
                await asyncio.sleep(self._plan.wait_for_next_slice(now) + 0.005)
