"""Listing a NATS KV bucket's keys (real NATS): complete while other writers are busy."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import nats
from brokerlink_shared.kv import bucket_keys, delete_if_unchanged
from brokerlink_shared.rate_budget import open_bucket
from nats.aio.client import Client as NatsClient


async def _bucket(nats_client: NatsClient, infra: Any) -> str:
    name = f"{infra.namespace}kvlist_{time.monotonic_ns()}"
    await open_bucket(nats_client.jetstream(), name, ttl_s=None)
    return name


async def test_a_listing_names_live_and_deleted_keys_and_nothing_else(
    nats_client: NatsClient, infra: Any
) -> None:
    name = await _bucket(nats_client, infra)
    other = await _bucket(nats_client, infra)
    try:
        assert await bucket_keys(nats_client, name) == []
        kv = await nats_client.jetstream().key_value(name)
        await kv.put("a", b"1")
        await kv.put("b.c", b"2")
        await kv.put("a", b"3")  # one key, however often written
        await kv.put("gone", b"4")
        await kv.delete("gone")  # its marker stays: the caller reads each key
        await (await nats_client.jetstream().key_value(other)).put("elsewhere", b"5")
        assert sorted(await bucket_keys(nats_client, name)) == ["a", "b.c", "gone"]
    finally:
        for bucket in (name, other):
            await nats_client.jetstream().delete_key_value(bucket)


async def test_a_listing_is_complete_while_another_client_writes(
    nats_client: NatsClient, infra: Any
) -> None:
    """nats-py's own `keys()` answers some of these listings with part of the keys."""
    name = await _bucket(nats_client, infra)
    writer = await nats.connect(infra.nats_url)
    try:
        kv = await nats_client.jetstream().key_value(name)
        standing = {f"k{i}" for i in range(40)}
        for key in standing:
            await kv.put(key, b"x")
        busy = await writer.jetstream().key_value(name)
        stop = asyncio.Event()

        async def write() -> None:
            n = 0
            while not stop.is_set():
                await busy.put(f"k{n % 40}", str(n).encode())
                n += 1

        task = asyncio.create_task(write())
        try:
            for _ in range(100):
                assert standing <= set(await bucket_keys(nats_client, name))
        finally:
            stop.set()
            await task
    finally:
        await writer.close()
        await nats_client.jetstream().delete_key_value(name)


async def test_a_delete_at_a_revision_is_refused_once_the_key_changed(
    nats_client: NatsClient, infra: Any
) -> None:
    name = await _bucket(nats_client, infra)
    try:
        kv = await nats_client.jetstream().key_value(name)
        first = await kv.put("k", b"1")
        await kv.put("k", b"2")
        assert await delete_if_unchanged(kv, "k", first) is False
        assert (await kv.get("k")).value == b"2"
        assert await delete_if_unchanged(kv, "k", first + 1) is True
    finally:
        await nats_client.jetstream().delete_key_value(name)
