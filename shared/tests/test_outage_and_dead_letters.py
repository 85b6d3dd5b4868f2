"""Transient failures pause instead of parking; poison messages are parked, and an operator
replays them through the normal handler with `brokerlink-admin` — against a real NATS server."""

from __future__ import annotations

import asyncio
import itertools
import os
import subprocess
import sys
import time
from pathlib import Path

from brokerlink_devkit.testing import wait_until
from brokerlink_shared.contracts.events import BalanceUpdated
from brokerlink_shared.messaging import (
    EventPublisher,
    PermanentFailure,
    dead_letter_count,
    durable_subscriber,
    ensure_streams,
    make_broker,
)
from brokerlink_shared.subjects import (
    BALANCE_UPDATED,
    CONNECTOR_EVENTS,
    Broker,
    Topology,
)

ADMIN = str(Path(sys.executable).parent / "brokerlink-admin")


def _balance(account_id: int) -> BalanceUpdated:
    return BalanceUpdated(
        user_id=1,
        account_id=account_id,
        payload={
            "broker": "IB",
            "as_of": "2026-11-24T10:00:00Z",
            "currency": "USD",
            "balance": "1",
        },
    )


def _subscribe(broker, topology, handler):  # type: ignore[no-untyped-def]
    return durable_subscriber(
        broker,
        topology,
        family=BALANCE_UPDATED,
        spec=CONNECTOR_EVENTS,
        service="svc",
        purpose="balances",
        brokers=[Broker.IB],
        max_workers=4,
    )(handler)


async def test_transient_failures_spend_no_attempt_and_are_not_parked(infra) -> None:
    topology = Topology(f"{infra.namespace}o1")
    broker = make_broker(infra.nats_url, topology, "svc", max_deliver=2)
    attempts: dict[int, int] = {}
    handled: list[int] = []

    async def on_balance(event: BalanceUpdated) -> None:
        assert event.account_id is not None
        n = attempts[event.account_id] = attempts.get(event.account_id, 0) + 1
        if n <= 4:  # twice max_deliver: "the database is restarting"
            raise ConnectionRefusedError("database unavailable")
        handled.append(event.account_id)

    _subscribe(broker, topology, on_balance)
    await broker.connect()
    await ensure_streams(broker, topology)
    await broker.start()
    try:
        await EventPublisher(broker, topology).publish(_balance(1))
        await wait_until(lambda: handled == [1], timeout_s=30, message="handled")
        assert attempts[1] == 5
        assert await dead_letter_count(broker, topology, "svc") == 0
    finally:
        await broker.stop()


async def test_a_bad_message_met_by_an_outage_still_parks_within_seconds(infra) -> None:
    """Deliveries that met the outage are not attempts, so they do not slow the retries of a
    message that then fails on its own: with the outage's four deliveries counted, its two
    retries would wait at least 4 + 8 s before it parks; on its own attempts, under 1.5 s."""
    topology = Topology(f"{infra.namespace}o5")
    broker = make_broker(infra.nats_url, topology, "svc", max_deliver=3)
    deliveries = 0
    first_bad_at: list[float] = []

    async def on_balance(event: BalanceUpdated) -> None:
        nonlocal deliveries
        deliveries += 1
        if deliveries <= 4:
            raise ConnectionRefusedError("database unavailable")
        if not first_bad_at:
            first_bad_at.append(time.monotonic())
        raise RuntimeError("this version cannot store it")

    _subscribe(broker, topology, on_balance)
    await broker.connect()
    await ensure_streams(broker, topology)
    await broker.start()
    try:
        await EventPublisher(broker, topology).publish(_balance(1))
        await wait_until(lambda: bool(first_bad_at), timeout_s=30, message="bad once")

        async def parked() -> bool:
            return await dead_letter_count(broker, topology, "svc") == 1

        await wait_until(parked, timeout_s=30, message="parked")
        assert deliveries == 4 + 3
        assert time.monotonic() - first_bad_at[0] < 8, "retries paced by the outage"
    finally:
        await broker.stop()


async def test_an_outage_longer_than_the_budget_parks(infra) -> None:
    topology = Topology(f"{infra.namespace}o2")
    broker = make_broker(
        infra.nats_url, topology, "svc", max_deliver=50, outage_budget_s=0.5
    )
    attempts: list[float] = []

    async def on_balance(event: BalanceUpdated) -> None:
        attempts.append(time.monotonic())
        raise ConnectionRefusedError("database unavailable")

    _subscribe(broker, topology, on_balance)
    await broker.connect()
    await ensure_streams(broker, topology)
    await broker.start()
    try:
        await EventPublisher(broker, topology).publish(_balance(1))
        await wait_until(
            lambda: dead_letter_count(broker, topology, "svc"),
            timeout_s=30,
            message="parked after the budget",
        )
        assert attempts[-1] - attempts[0] >= 0.5
        assert len(attempts) < 50  # the budget parked it, not the attempt count
    finally:
        await broker.stop()


async def test_a_failed_dead_letter_publish_backs_off(infra) -> None:
    topology = Topology(f"{infra.namespace}o3")
    broker = make_broker(infra.nats_url, topology, "svc", max_deliver=1)
    deliveries: list[float] = []

    async def on_balance(event: BalanceUpdated) -> None:
        deliveries.append(time.monotonic())
        raise PermanentFailure("poison")

    _subscribe(broker, topology, on_balance)
    await broker.connect()
    # No dead-letter stream: parking fails every time.
    await ensure_streams(broker, topology, [CONNECTOR_EVENTS])
    await broker.start()
    try:
        await EventPublisher(broker, topology).publish(_balance(1))
        await wait_until(
            lambda: len(deliveries) >= 3, timeout_s=30, message="redeliveries"
        )
        gaps = [b - a for a, b in itertools.pairwise(deliveries)]
        assert min(gaps) >= 0.2, gaps  # backoff_delay(1) >= 0.25 s: no hot loop
    finally:
        await broker.stop()


def _admin(infra, namespace: str, *args: str) -> subprocess.CompletedProcess[str]:  # type: ignore[no-untyped-def]
    return subprocess.run(
        [ADMIN, "dead-letters", *args],
        env={
            **os.environ,
            "NATS_URL": infra.nats_url,
            "BROKERLINK_NAMESPACE": namespace,
        },
        capture_output=True,
        text=True,
        timeout=60,
    )


async def test_replay_applies_each_parked_message_once(infra) -> None:
    namespace = f"{infra.namespace}o4"
    topology = Topology(namespace)
    broker = make_broker(infra.nats_url, topology, "svc", max_deliver=1)
    broken = {"yes": True}
    handled: list[str] = []

    async def on_balance(event: BalanceUpdated) -> None:
        if broken["yes"] and event.account_id in (2, 3):
            raise PermanentFailure("a bug in this version")
        if str(event.event_id) not in handled:  # the real consumers de-duplicate by id
            handled.append(str(event.event_id))

    _subscribe(broker, topology, on_balance)
    await broker.connect()
    await ensure_streams(broker, topology)
    await broker.start()
    try:
        publisher = EventPublisher(broker, topology)
        events = [_balance(n) for n in (1, 2, 3)]
        for event in events:
            await publisher.publish(event)
        await wait_until(
            lambda: _parked(broker, topology, 2), timeout_s=30, message="two parked"
        )
        assert handled == [str(events[0].event_id)]

        listed = await asyncio.to_thread(_admin, infra, namespace, "list")
        assert listed.returncode == 0, listed.stderr
        lines = listed.stdout.splitlines()
        assert len(lines) == 2 and all("svc" in line for line in lines)
        seqs = [line.split("\t")[0] for line in lines]
        shown = await asyncio.to_thread(_admin, infra, namespace, "show", seqs[0])
        assert shown.returncode == 0 and "a bug in this version" in shown.stdout

        broken["yes"] = False  # the fix is deployed
        replay = await asyncio.to_thread(_admin, infra, namespace, "replay", "--all")
        assert replay.returncode == 0, replay.stderr
        await wait_until(lambda: len(handled) == 3, timeout_s=30, message="replayed")
        assert sorted(handled) == sorted(str(e.event_id) for e in events)
        assert await dead_letter_count(broker, topology, "svc") == 0

        again = await asyncio.to_thread(_admin, infra, namespace, "replay", seqs[0])
        assert again.returncode == 1
        assert (
            again.stderr.strip()
            == f"brokerlink-admin: no dead letter with sequence {seqs[0]}"
        )
        usage = await asyncio.to_thread(_admin, infra, namespace, "purge")
        assert usage.returncode == 2 and len(usage.stderr.splitlines()) == 1
        assert len(handled) == 3
    finally:
        await broker.stop()


async def _parked(broker, topology, n: int) -> bool:  # type: ignore[no-untyped-def]
    return await dead_letter_count(broker, topology, "svc") >= n


async def test_a_stream_that_answers_nobody_is_the_bus_away_not_a_bad_message(
    infra,  # type: ignore[no-untyped-def]
) -> None:
    """What nats-py raises while a replicated stream has no leader (after its node died): no
    response to a publish, no responders to its API — also when a handler wrapped it. Both are
    retried through the outage, never spent as attempts and parked."""
    import nats
    import pytest
    from brokerlink_shared.outage import is_transient_io_error
    from nats.errors import NoRespondersError
    from nats.js.errors import NoStreamResponseError

    nc = await nats.connect(infra.nats_url)
    try:
        with pytest.raises(NoStreamResponseError) as published:
            await nc.jetstream(timeout=2).publish(f"{infra.namespace}.leaderless", b"x")
        with pytest.raises(NoRespondersError) as requested:
            await nc.request(f"{infra.namespace}.nobody.listens", b"", timeout=2)
    finally:
        await nc.close()
    wrapped = RuntimeError("the handler's own words")
    wrapped.__cause__ = requested.value
    assert is_transient_io_error(published.value)
    assert is_transient_io_error(requested.value)
    assert is_transient_io_error(wrapped)
    assert not is_transient_io_error(RuntimeError("a bad message"))
