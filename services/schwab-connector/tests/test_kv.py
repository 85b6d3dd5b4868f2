"""Cross-replica coordination in real NATS KV: the refresh lease."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import nats
import pytest
from brokerlink_shared.rate_budget import open_bucket
from nats.js.kv import KeyValue
from schwab_connector.adapters.kv import KvLoginCoordinator


@pytest.fixture
async def kv(infra: Any) -> AsyncIterator[KeyValue]:
    nc = await nats.connect(infra.nats_url)
    name = f"{infra.namespace}kvtest_{time.monotonic_ns()}"
    bucket = await open_bucket(nc.jetstream(), name, ttl_s=120)
    try:
        yield bucket
    finally:
        await nc.jetstream().delete_key_value(name)
        await nc.close()


async def test_lease_is_exclusive_and_lapses(kv: KeyValue) -> None:
    first, second = (
        KvLoginCoordinator(kv, lease_ttl_s=0.5),
        KvLoginCoordinator(kv, lease_ttl_s=0.5),
    )
    order: list[str] = []

    async def hold(coordinator: KvLoginCoordinator, name: str) -> None:
        async with coordinator.lease("login1"):
            order.append(f"{name}+")
            await asyncio.sleep(0.1)
            order.append(f"{name}-")

    await asyncio.gather(hold(first, "a"), hold(second, "b"))
    assert order in (["a+", "a-", "b+", "b-"], ["b+", "b-", "a+", "a-"])

    # a holder that never releases (crashed) loses the lease at its deadline
    await kv.create("lease.login2", f"dead:{time.time() + 0.3}".encode())
    started = time.monotonic()
    async with second.lease("login2"):
        assert time.monotonic() - started >= 0.2
    await first.store_token("login1", "gAAAAA-ciphertext")
    assert await second.latest_token("login1") == "gAAAAA-ciphertext"
