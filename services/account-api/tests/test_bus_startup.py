"""A start-up attempt that fails part-way through starting the bus consumers leaves none of
them running: the next attempt starts each once, and each handles every message.

FastStream 0.7.8's `broker.start()` starts every subscriber again, and a concurrent pull
subscriber started twice on account-api's stream handles nothing more: without
`stop_started` in `_connect_bus`, this test times out with none of the messages handled.

NATS, JetStream and FastStream are real. The failure is injected where the real one happens,
in a subscriber's start: a consumer lookup the server does not answer in time. The real one
cannot be produced on cue. A missing stream fails a start too, but that needs the second
consumer on a stream of its own, and with the consumers on two streams the double start did
not show in our runs."""

from __future__ import annotations

import asyncio
from typing import Any

import nats
from account_api.main import _connect_bus
from brokerlink_devkit.testing import wait_until
from brokerlink_shared.messaging import durable_subscriber, make_broker
from brokerlink_shared.subjects import (
    BALANCE_UPDATED,
    CONNECTOR_EVENTS,
    REFRESH_FAILED,
    Broker,
    Topology,
)

MESSAGES = 10


async def test_a_start_that_fails_part_way_leaves_every_consumer_working(
    infra,  # type: ignore[no-untyped-def]
) -> None:
    topology = Topology(f"{infra.namespace}busstart")
    broker = make_broker(infra.nats_url, topology, "account-api")
    handled: list[bytes] = []

    balances = durable_subscriber(
        broker,
        topology,
        family=BALANCE_UPDATED,
        spec=CONNECTOR_EVENTS,
        service="account-api",
        purpose="balances",
        max_workers=4,  # concurrent, as account-api's own consumers
    )

    @balances
    async def on_balance(body: bytes) -> None:
        handled.append(body)

    failures = durable_subscriber(
        broker,
        topology,
        family=REFRESH_FAILED,
        spec=CONNECTOR_EVENTS,
        service="account-api",
        purpose="failures",
    )

    @failures
    async def on_failure(body: bytes) -> None:
        return None

    # Started after `balances`: its first start fails, its second is the real one.
    start = failures.start
    attempts: list[int] = []

    async def fails_once(*args: Any, **kwargs: Any) -> None:
        attempts.append(len(attempts) + 1)
        if len(attempts) == 1:
            raise TimeoutError("consumer lookup unanswered")
        await start(*args, **kwargs)

    failures.start = fails_once  # type: ignore[method-assign]
    try:
        await asyncio.wait_for(_connect_bus(broker, topology, replicas=1), 60)
        assert attempts == [
            1,
            2,
        ]  # one failed attempt, then one that started everything
        nc = await nats.connect(infra.nats_url)
        try:
            js = nc.jetstream()
            for i in range(MESSAGES):
                subject = topology.subject(BALANCE_UPDATED, Broker.IB)
                await js.publish(subject, f"m{i}".encode())
        finally:
            await nc.close()
        await wait_until(
            lambda: len(handled) >= MESSAGES,
            timeout_s=30,
            message="every message handled by the consumer the failed attempt had started",
        )
        assert sorted(handled) == sorted(f"m{i}".encode() for i in range(MESSAGES))
    finally:
        await broker.stop()
