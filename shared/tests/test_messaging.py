"""The shared messaging convention against a real NATS server."""

from __future__ import annotations

import uuid

import pytest
from brokerlink_devkit.testing import wait_until
from brokerlink_shared.contracts.events import BalanceUpdated, IntegrationConfigured
from brokerlink_shared.messaging import (
    EncodedEvent,
    EventPublisher,
    InvalidEventError,
    PartialPublish,
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


def _balance(account_id: int, balance: str = "100.50") -> BalanceUpdated:
    return BalanceUpdated(
        user_id=1,
        account_id=account_id,
        payload={
            "broker": "IB",
            "as_of": "2026-11-24T10:00:00Z",
            "currency": "USD",
            "balance": balance,
        },
    )


async def test_invalid_payload_is_rejected_before_the_bus(infra) -> None:
    broker = make_broker(infra.nats_url, Topology(infra.namespace), "t")
    publisher = EventPublisher(broker, Topology(infra.namespace))
    with pytest.raises(InvalidEventError, match=r"payload\.config\.IB\.port"):
        publisher.build(
            "integration.configured",
            {
                "payload": {
                    "broker": "IB",
                    "version": 1,
                    "config": {
                        "type": "IB",
                        "host": "gw",
                        "port": 70000,
                        "client_id": 1,
                    },
                }
            },
        )
    bad = IntegrationConfigured.model_construct(
        event_id=uuid.uuid4(),
        type="integration.configured",
        schema_version=1,
        payload={"broker": "IB"},
    )
    with pytest.raises(InvalidEventError, match="payload"):
        await publisher.publish(bad)


async def test_failing_handler_is_retried_then_parked(infra) -> None:
    topology = Topology(f"{infra.namespace}m")
    broker = make_broker(infra.nats_url, topology, "svc", max_deliver=3)
    attempts: dict[int, int] = {}
    handled: list[int] = []

    @durable_subscriber(
        broker,
        topology,
        family=BALANCE_UPDATED,
        spec=CONNECTOR_EVENTS,
        service="svc",
        purpose="balances",
        brokers=[Broker.IB],
    )
    async def on_balance(event: BalanceUpdated) -> None:
        assert event.account_id is not None
        attempts[event.account_id] = attempts.get(event.account_id, 0) + 1
        if event.account_id == 666:
            raise RuntimeError("boom")
        if event.account_id == 7 and attempts[7] < 2:
            raise RuntimeError("transient")
        handled.append(event.account_id)

    await broker.connect()
    await ensure_streams(broker, topology)
    await broker.start()
    try:
        publisher = EventPublisher(broker, topology)
        for account in (1, 7, 666):
            await publisher.publish(_balance(account))
        # a duplicate publish with the same msg id is stored once
        dup = _balance(2)
        await publisher.publish(dup)
        await publisher.publish(dup)
        await wait_until(
            lambda: sorted(handled) == [1, 2, 7], timeout_s=20, message="handled"
        )
        await wait_until(
            lambda: dead_letter_count(broker, topology, "svc"),
            timeout_s=20,
            message="parked",
        )
        assert attempts[666] == 3
        assert attempts[7] == 2
        assert await dead_letter_count(broker, topology, "svc") == 1
    finally:
        await broker.stop()


async def test_batch_publish_keeps_order_and_reports_the_acknowledged_prefix(
    infra,
) -> None:  # type: ignore[no-untyped-def]
    topology = Topology(f"{infra.namespace}bp")
    broker = make_broker(infra.nats_url, topology, "t")
    await broker.connect()
    try:
        await ensure_streams(broker, topology)
        publisher = EventPublisher(broker, topology)

        def encoded(event: BalanceUpdated) -> EncodedEvent:
            subject, body = publisher.encode(event)
            return EncodedEvent(event.family, subject, body, str(event.event_id))

        first = [_balance(i) for i in range(1, 4)]
        assert await publisher.publish_encoded_batch([encoded(e) for e in first]) == 3
        later = [_balance(i) for i in range(4, 8)]
        batch = [encoded(e) for e in later]
        # the second goes where no stream listens: JetStream cannot acknowledge it
        lost = batch[1]
        batch[1] = EncodedEvent(
            lost.family, f"{topology.namespace}.nowhere", lost.body, lost.msg_id
        )
        with pytest.raises(PartialPublish) as caught:
            await publisher.publish_encoded_batch(batch)
        assert caught.value.published == 1
        # Sending the rest again (as the relay does) stores each event exactly once.
        assert (
            await publisher.publish_encoded_batch([encoded(e) for e in later[1:]]) == 3
        )
        js = broker.connection.jetstream()
        stream = topology.stream_for(BALANCE_UPDATED)
        info = await js.stream_info(stream)
        stored = [
            BalanceUpdated.model_validate_json(
                (await js.get_msg(stream, seq)).data or b""
            ).account_id
            for seq in range(info.state.first_seq, info.state.last_seq + 1)
        ]
        assert stored[:4] == [1, 2, 3, 4]  # in order while nothing fails
        assert sorted(stored) == [1, 2, 3, 4, 5, 6, 7]
    finally:
        await broker.stop()
