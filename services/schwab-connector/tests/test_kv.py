"""Cross-replica coordination in real NATS KV: the refresh lease."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import nats
import pytest
from brokerlink_shared.rate_budget import open_bucket
from nats.js.kv import KeyValue
from schwab_connector.adapters.kv import KvLoginCoordinator
from schwab_connector.domain.tokens import LoginTokenTimes


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
    assert await first.store_token("login1", "gAAAAA-ciphertext", _times(0)) == (
        "gAAAAA-ciphertext"
    )
    assert await second.latest_token("login1") == "gAAAAA-ciphertext"


def _times(login_at_h: float, access_h: float = 0.5) -> LoginTokenTimes:
    login = datetime(2026, 12, 1, tzinfo=UTC) + timedelta(hours=login_at_h)
    return LoginTokenTimes(login + timedelta(hours=access_h), login + timedelta(days=7))


async def test_a_token_write_never_replaces_a_newer_token(kv: KeyValue) -> None:
    replica_a, replica_b = KvLoginCoordinator(kv, 1.0), KvLoginCoordinator(kv, 1.0)
    # B stores the new consent (logged in at 5 h); A then finishes refreshing the old login.
    assert (
        await replica_b.store_token("login3", "new-consent", _times(5)) == "new-consent"
    )
    assert await replica_a.store_token("login3", "old-refreshed", _times(0, 6)) == (
        "new-consent"
    )
    assert await replica_a.latest_token("login3") == "new-consent"
    # Within one login, the later access token wins.
    assert await replica_a.store_token("login3", "new-refreshed", _times(5, 1)) == (
        "new-refreshed"
    )


async def test_a_new_consent_wins_a_tie_to_the_second(kv: KeyValue) -> None:
    """Signing in again within the second of the last sign-in gives equal expiry times: the
    consent must still replace the (revoked) token it follows; a refresh must not."""
    coordinator = KvLoginCoordinator(kv, 1.0)
    await coordinator.store_token("login4", "revoked", _times(2))
    assert await coordinator.store_token("login4", "refreshed", _times(2)) == "revoked"
    assert (
        await coordinator.store_token("login4", "signed-in", _times(2), consent=True)
        == "signed-in"
    )
    assert (
        await coordinator.store_token("login4", "older", _times(1), consent=True)
        == "signed-in"
    )


async def test_the_lease_is_renewed_while_its_holder_works(kv: KeyValue) -> None:
    # A 1 s lease, renewed every third of it: with 0.3 s, a renewal 0.2 s late on a loaded
    # machine (make test's other processes) let the contender in once.
    holder, other = KvLoginCoordinator(kv, 1.0), KvLoginCoordinator(kv, 1.0)
    took_over = asyncio.Event()

    async def contender() -> None:
        async with other.lease("login4"):
            took_over.set()

    async with holder.lease("login4"):
        task = asyncio.create_task(contender())
        # Well past the TTL (and past the contender's own 2 x TTL patience).
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(took_over.wait(), 4.0)
        assert not took_over.is_set()
    with contextlib.suppress(TimeoutError):
        await task  # it gave up waiting: the lease was never free
