"""Streams and consumers: `ensure_streams` creates or updates the streams (their owners call it
at start-up); `durable_subscriber` declares a JetStream pull consumer bound to one."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from faststream import AckPolicy
from faststream.nats import ConsumerConfig, JStream, NatsBroker, PullSub
from faststream.nats.subscriber.usecases import LogicSubscriber
from nats.js import JetStreamContext
from nats.js.api import StorageType, StreamConfig
from nats.js.errors import NotFoundError

from brokerlink_shared.messaging.broker import inbox_prefix
from brokerlink_shared.subjects import STREAMS, Broker, StreamSpec, Topology


def durable_subscriber(
    broker: NatsBroker,
    topology: Topology,
    *,
    family: str,
    spec: StreamSpec,
    service: str,
    purpose: str,
    brokers: Iterable[Broker] | None = None,
    batch_size: int = 64,
    ack_wait_s: float = 30.0,
    max_ack_pending: int = 1000,
    max_workers: int = 1,
) -> LogicSubscriber[Any]:
    """A durable pull consumer on `family` (optionally for some brokers), shared by replicas.

    `max_workers` > 1 handles that many messages at once, so one slow message does not hold
    back the next fetch (with 1, a fetched batch is awaited as a whole).
    """
    tokens = [b.token for b in brokers] if brokers else [">"]
    subjects = [topology.subject(family, t) for t in tokens]
    return broker.subscriber(
        subjects[0] if len(subjects) == 1 else "",
        stream=JStream(topology.stream_name(spec), declare=False),
        durable=topology.durable(service, purpose),
        pull_sub=PullSub(batch_size=batch_size, timeout=5.0),
        config=ConsumerConfig(
            filter_subjects=subjects if len(subjects) > 1 else None,
            ack_wait=ack_wait_s,
            max_ack_pending=max_ack_pending,
            max_deliver=-1,
        ),
        ack_policy=AckPolicy.NACK_ON_ERROR,
        max_workers=max_workers,
        # FastStream's default is the shared `_INBOX.`: fetch batches arrive in the service's own
        inbox_prefix=f"{inbox_prefix(service)}.".encode(),
    )


DECLARE_TIMEOUT_S = 30.0
# One JetStream API request's wait within that. A fresh 3-node cluster sometimes never answers a
# stream's create (two account-api replicas declaring at once, nats-server 2.15): one 30 s wait
# per stream made start-up take a minute in the fault tests, where asking again answered at once.
DECLARE_ATTEMPT_S = 5.0

log = logging.getLogger(__name__)


async def ensure_streams(
    broker: NatsBroker,
    topology: Topology,
    specs: Iterable[StreamSpec] = STREAMS,
    *,
    replicas: int = 1,
) -> None:
    """Create or update streams idempotently (called by their owners at start-up).

    A replicated stream is created by a quorum of NATS nodes, which on a busy cluster can take
    longer than nats-py's default 5 s: each stream gets up to `DECLARE_TIMEOUT_S`, asked again
    every `DECLARE_ATTEMPT_S` (asking again is harmless: the calls are idempotent)."""
    js = broker.connection.jetstream(timeout=DECLARE_ATTEMPT_S)
    for spec in specs:
        config = StreamConfig(
            name=topology.stream_name(spec),
            subjects=topology.stream_subjects(spec),
            storage=StorageType.FILE,
            duplicate_window=spec.duplicate_window_s,
            max_age=spec.max_age_s,
            num_replicas=replicas,
        )
        await _asking_again(
            functools.partial(_declare, js, config),
            "stream declaration",
            stream=config.name,
        )


async def await_consumers(broker: NatsBroker) -> None:
    """Before the broker starts its subscribers: every durable consumer they bind to answers a
    lookup, or is known not to exist yet (the subscriber creates it).

    A consumer another replica has just created answers nothing until its leader is elected,
    and the subscriber's own lookup waits once, then fails the start (and the process): two
    ib-connectors starting together lost one of them that way in the node-loss fault test. Here
    the lookup is asked again every `DECLARE_ATTEMPT_S`, up to `DECLARE_TIMEOUT_S` a consumer."""
    js = broker.connection.jetstream(timeout=DECLARE_ATTEMPT_S)
    for subscriber in broker.subscribers:
        stream = getattr(getattr(subscriber, "stream", None), "name", None)
        durable = getattr(getattr(subscriber, "config", None), "durable_name", None)
        if not stream or not durable:
            continue  # a core subscription: nothing to look up
        await _asking_again(
            functools.partial(_look_up, js, stream, durable),
            "consumer lookup",
            stream=stream,
            consumer=durable,
        )


async def _asking_again(
    call: Callable[[], Awaitable[None]], what: str, **context: str | None
) -> None:
    """Run `call`, asked again after every unanswered `DECLARE_ATTEMPT_S` for up to
    `DECLARE_TIMEOUT_S` in all."""
    deadline = asyncio.get_running_loop().time() + DECLARE_TIMEOUT_S
    while True:
        try:
            await call()
            return
        except TimeoutError:
            if asyncio.get_running_loop().time() + DECLARE_ATTEMPT_S > deadline:
                raise
            log.info(f"{what} unanswered; asking again", extra=context)


async def _look_up(js: JetStreamContext, stream: str, durable: str) -> None:
    with contextlib.suppress(NotFoundError):  # the subscriber creates it
        await js.consumer_info(stream, durable)


async def _declare(js: JetStreamContext, config: StreamConfig) -> None:
    try:
        await js.stream_info(config.name or "")
        await js.update_stream(config)
    except NotFoundError:
        await js.add_stream(config)
