"""The shared request budget (arithmetic, and real NATS KV across two replicas) and the batcher."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import nats
import pytest
from brokerlink_shared.batching import KeyedBatcher
from brokerlink_shared.rate_budget import KvRateBudget, RatePlan, open_bucket
from nats.js.kv import KeyValue


def test_rate_plan_never_exceeds_limit_on_any_window() -> None:
    plan = RatePlan(120, 12)
    assert (plan.slice_s, plan.per_slice) == (5.0, 8)
    assert (
        plan.worst_case_per_window(60.001) <= 120
    )  # a sliding window plus a little latency
    for limit in (1, 7, 60, 120, 1000):
        for slices in (1, 6, 12, 60):
            assert RatePlan(limit, slices).worst_case_per_window(60.001) <= max(
                limit, RatePlan(limit, slices).per_slice * (slices + 2)
            )
    assert plan.wait_for_next_slice(12.5) == pytest.approx(2.5)


def test_min_spacing_keeps_the_tail_of_each_slice_free() -> None:
    plan = RatePlan(10, 8, min_spacing_s=1.5)  # IB Flex: 7.5 s slices, one request each
    assert (plan.slice_s, plan.per_slice) == (7.5, 1)
    assert plan.worst_case_per_window(60.001) <= 10
    assert plan.may_start(7.5) and plan.may_start(13.5)
    assert not plan.may_start(
        14.0
    )  # a request here could be 0.1 s before the next slice's
    with pytest.raises(ValueError, match="min_spacing_s"):
        RatePlan(120, 12, min_spacing_s=1.0)  # several per slice: spacing cannot hold


async def test_batcher_coalesces_one_key_and_keeps_keys_apart() -> None:
    batcher: KeyedBatcher[str, int] = KeyedBatcher(window_s=0.05)
    calls: list[str] = []

    async def fetch(key: str) -> int:
        calls.append(key)
        await asyncio.sleep(0.01)
        return len(calls)

    results = await asyncio.gather(
        *(batcher.run(k, lambda k=k: fetch(k)) for k in ["a"] * 5 + ["b"] * 3)
    )
    assert sorted(calls) == ["a", "b"]
    assert len(set(results[:5])) == 1 and len(set(results[5:])) == 1
    later = await batcher.run("a", lambda: fetch("a"))
    assert later == 3  # a new batch after the first one closed


async def test_batcher_shares_failures() -> None:
    batcher: KeyedBatcher[str, int] = KeyedBatcher(window_s=0.01)

    async def boom() -> int:
        raise RuntimeError("broker down")

    results = await asyncio.gather(
        *(batcher.run("a", boom) for _ in range(3)), return_exceptions=True
    )
    assert all(isinstance(r, RuntimeError) for r in results)


@pytest.fixture
async def kv(infra: Any) -> AsyncIterator[KeyValue]:
    nc = await nats.connect(infra.nats_url)
    name = f"{infra.namespace}ratetest_{time.monotonic_ns()}"
    bucket = await open_bucket(nc.jetstream(), name, ttl_s=120)
    try:
        yield bucket
    finally:
        await nc.jetstream().delete_key_value(name)
        await nc.close()


async def test_two_replicas_share_one_budget(kv: KeyValue) -> None:
    plan = RatePlan(limit=124, slices=60)  # 1-second slices, 2 each
    replicas = [KvRateBudget(kv, plan), KvRateBudget(kv, plan)]
    stamps: list[float] = []

    async def spend(budget: KvRateBudget) -> None:
        await budget.acquire("app-x")
        stamps.append(time.time())

    await asyncio.gather(*(spend(replicas[i % 2]) for i in range(6)))
    per_slice = Counter(plan.slice_index(t) for t in stamps)
    assert max(per_slice.values()) <= plan.per_slice
    assert len(per_slice) >= 3
    other_app = time.monotonic()
    await replicas[0].acquire("app-y")  # another credential has its own budget
    assert time.monotonic() - other_app < 0.5
