"""Broker set-up: `make_broker` builds the service's FastStream NATS broker with the
dead-letter convention installed (`middleware.DeadLetterMiddleware`) and pull consumers that
fetch without stalling (`pull_fetch`); `bus_connected` and `dead_letter_count` for health
checks."""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from faststream.nats import NatsBroker
from nats.aio.msg import Msg
from nats.js.errors import NotFoundError

from brokerlink_shared.messaging.middleware import DeadLetterMiddleware
from brokerlink_shared.messaging.pull_fetch import use_prompt_fetch
from brokerlink_shared.outage import (
    DEFAULT_OUTAGE_BUDGET_S,
    OutageTracker,
    TransientClassifier,
    is_transient_io_error,
)
from brokerlink_shared.subjects import DEAD_LETTERS, Topology

ParkedHook = Callable[[NatsBroker, Msg, BaseException], Awaitable[None]]

# JetStream API calls the broker makes on its own, chiefly each subscriber's consumer lookup at
# start-up: room for a busy cluster's slow answer (an unanswered one is asked again beforehand,
# `streams.await_consumers`). Publishes keep their own, shorter, explicit timeouts.
JS_API_TIMEOUT_S = 30.0
DEAD_LETTER_ACK_TIMEOUT_S = 5.0


_bus_log = logging.getLogger("brokerlink.bus")


def make_broker(
    nats_url: str,
    topology: Topology,
    service: str,
    *,
    max_deliver: int = 5,
    on_parked: ParkedHook | None = None,
    transient: TransientClassifier = is_transient_io_error,
    outage_budget_s: float = DEFAULT_OUTAGE_BUDGET_S,
    **kwargs: Any,
) -> NatsBroker:
    """Build the service's broker with the dead-letter convention installed; `on_parked` runs
    after a message was parked (e.g. to tell the requester it failed); `transient` tells an
    infrastructure failure (retried for `outage_budget_s`) from a bad message."""
    use_prompt_fetch()
    holder: dict[str, NatsBroker] = {}
    outage = OutageTracker(outage_budget_s)

    async def publish_dead_letter(raw: Msg, exc: BaseException) -> None:
        headers = dict(raw.headers or {})
        headers.update(
            {
                "X-Original-Subject": raw.subject,
                "X-Error": repr(exc)[:500],
                "X-Delivered": str(raw.metadata.num_delivered),
                "Nats-Msg-Id": f"dl-{raw.metadata.stream}-{raw.metadata.sequence.stream}",
            }
        )
        await holder["broker"].publish(
            raw.data,
            topology.dead_letter_subject(service),
            headers=headers,
            stream=topology.stream_name(DEAD_LETTERS),
            timeout=DEAD_LETTER_ACK_TIMEOUT_S,
        )
        if on_parked is not None:
            await on_parked(holder["broker"], raw, exc)

    middleware = functools.partial(
        DeadLetterMiddleware,
        publish_dead_letter=publish_dead_letter,
        max_deliver=max_deliver,
        transient=transient,
        outage=outage,
    )
    broker = NatsBroker(
        [
            url.strip() for url in nats_url.split(",") if url.strip()
        ],  # a cluster: comma-separated
        name=service,
        max_reconnect_attempts=-1,
        reconnect_time_wait=1,
        connect_timeout=5,
        middlewares=[middleware],
        logger=_bus_log,
        log_level=logging.DEBUG,
        graceful_timeout=10.0,
        js_options={"timeout": JS_API_TIMEOUT_S},
        **{"inbox_prefix": inbox_prefix(service), **kwargs},
    )
    holder["broker"] = broker
    return broker


def inbox_prefix(service: str) -> str:
    """Where this service's replies arrive (request replies, JetStream API answers, pull
    batches, KV watches): its own prefix, so its NATS user may subscribe to its own replies
    only (`_INBOX_<service>.>`) and never read another service's."""
    return f"_INBOX_{service}"


async def bus_connected(broker: NatsBroker, timeout_s: float = 0.2) -> bool:
    """Whether the broker's NATS connection is up (FastStream's public `ping`)."""
    return await broker.ping(timeout=timeout_s)


async def dead_letter_count(
    broker: NatsBroker, topology: Topology, service: str
) -> int:
    """How many messages this service has parked."""
    js = broker.connection.jetstream()
    subject = topology.dead_letter_subject(service)
    try:
        info = await js.stream_info(
            topology.stream_name(DEAD_LETTERS), subjects_filter=subject
        )
    except NotFoundError:
        return 0
    return int((info.state.subjects or {}).get(subject, 0))
