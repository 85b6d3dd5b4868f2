"""The one messaging convention every service uses.

- `make_broker` builds the FastStream NATS broker with our ack policy: handlers that raise are
  NACKed with exponential backoff; on the last allowed delivery (or for a message that can never
  succeed, such as one that fails validation) the message is parked in the dead-letter stream
  and acknowledged. Nothing is dropped silently. A transient infrastructure failure (database or
  bus away, see `outage`) spends no attempt: it is retried for the outage budget while the
  consumer pauses.
- `durable_subscriber` declares a JetStream pull consumer bound (never declared) to a stream.
- `EventPublisher` validates an event against its model before it reaches the bus and sets
  `Nats-Msg-Id` so JetStream de-duplicates retries.
"""

from __future__ import annotations

import functools
import logging
import random
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TypeVar

import orjson
from faststream import AckPolicy
from faststream._internal.middlewares import BaseMiddleware
from faststream.exceptions import AckMessage, NackMessage
from faststream.message import StreamMessage
from faststream.nats import ConsumerConfig, JStream, NatsBroker, PullSub
from nats.aio.msg import Msg
from nats.js.api import StorageType, StreamConfig
from nats.js.errors import NotFoundError
from pydantic import BaseModel, ValidationError

from brokerlink_shared.contracts.events import (
    EVENT_TYPES,
    Event,
    RefreshFailed,
    RefreshRequested,
)
from brokerlink_shared.logging import correlation_id
from brokerlink_shared.outage import (
    DEFAULT_OUTAGE_BUDGET_S,
    OutageTracker,
    TransientClassifier,
    is_transient_io_error,
)
from brokerlink_shared.subjects import (
    DEAD_LETTERS,
    STREAMS,
    Broker,
    StreamSpec,
    Topology,
)

log = logging.getLogger(__name__)

CORRELATION_HEADER = "X-Correlation-Id"
ModelT = TypeVar("ModelT", bound=BaseModel)
ParkedHook = Callable[[NatsBroker, Msg, BaseException], Awaitable[None]]


class InvalidEventError(ValueError):
    """An event did not match its contract; nothing was published."""

    def __init__(self, event_type: str, error: ValidationError) -> None:
        fields = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '<root>'}: {e['msg']}"
            for e in error.errors()
        )
        super().__init__(f"invalid {event_type} event: {fields}")
        self.event_type = event_type


class PermanentFailure(Exception):
    """Raised by a handler when retrying cannot help; the message goes straight to dead letters."""


class RetryLater(Exception):
    """Raised by a handler for a condition it knows will clear (e.g. a dead owner's lease
    expiring): redeliver after `delay_s` without spending one of the bounded attempts."""

    def __init__(self, delay_s: float, reason: str) -> None:
        super().__init__(reason)
        self.delay_s = delay_s


# Even "retry later" ends somewhere: past this many deliveries the message is parked.
RETRY_LATER_CEILING = 50


def backoff_delay(delivery: int, base: float = 0.5, cap: float = 30.0) -> float:
    """Capped exponential backoff with full jitter for the n-th failed delivery (1-based)."""
    ceiling = min(cap, base * (2 ** max(0, delivery - 1)))
    return random.uniform(ceiling / 2, ceiling)


class DeadLetterMiddleware(BaseMiddleware):
    """Retry with backoff, then park: the consumer half of the convention."""

    def __init__(
        self,
        msg: Any,
        /,
        *,
        context: Any,
        publish_dead_letter: Callable[[Msg, BaseException], Awaitable[None]],
        max_deliver: int,
        transient: TransientClassifier = is_transient_io_error,
        outage: OutageTracker | None = None,
    ) -> None:
        super().__init__(msg, context=context)
        self._publish_dead_letter = publish_dead_letter
        self._max_deliver = max_deliver
        self._transient = transient
        self._outage = outage or OutageTracker()

    async def consume_scope(self, call_next: Any, msg: StreamMessage[Any]) -> Any:
        raw = msg.raw_message
        token = None
        if (
            isinstance(raw, Msg)
            and raw.headers
            and (cid := raw.headers.get(CORRELATION_HEADER))
        ):
            token = correlation_id.set(cid)
        jetstream = (
            isinstance(raw, Msg) and bool(raw.reply) and raw.reply.startswith("$JS.ACK")
        )
        key = (raw.metadata.stream, raw.metadata.sequence.stream) if jetstream else None
        try:
            if jetstream:
                await self._outage.wait(raw.in_progress)  # an outage: pause, don't spin
            result = await call_next(msg)
            if key is not None:
                self._outage.settled(key, success=True)
            return result
        except (AckMessage, NackMessage):
            raise
        except Exception as exc:
            if key is None:
                raise  # core NATS request: nothing to redeliver
            delivered = raw.metadata.num_delivered
            if self._transient(exc) and not isinstance(exc, PermanentFailure):
                if self._outage.transient_failure(key):
                    delay = backoff_delay(delivered, cap=10.0)
                    log.warning(
                        "infrastructure unavailable, will retry",
                        extra={
                            "subject": raw.subject,
                            "delivered": delivered,
                            "delay_s": round(delay, 2),
                            "error": repr(exc)[:300],
                        },
                    )
                    raise NackMessage(delay=delay) from exc
                log.error(
                    "outage budget spent",
                    extra={"subject": raw.subject, "budget_s": self._outage.budget_s},
                )
                await self._park(raw, exc, delivered)
            if isinstance(exc, RetryLater) and delivered < RETRY_LATER_CEILING:
                log.info(
                    "handler asked to retry later",
                    extra={
                        "subject": raw.subject,
                        "delivered": delivered,
                        "delay_s": exc.delay_s,
                        "reason": str(exc),
                    },
                )
                raise NackMessage(delay=exc.delay_s) from exc
            permanent = isinstance(
                exc, ValidationError | PermanentFailure | InvalidEventError
            )
            # Deliveries that met an outage are not attempts at this message.
            attempts = delivered - self._outage.transient_failures(key)
            if permanent or attempts >= self._max_deliver:
                await self._park(raw, exc, delivered)
            delay = backoff_delay(delivered)
            log.warning(
                "handler failed, redelivering",
                extra={
                    "subject": raw.subject,
                    "delivered": delivered,
                    "delay_s": round(delay, 2),
                    "error": repr(exc),
                },
            )
            raise NackMessage(delay=delay) from exc
        finally:
            if token is not None:
                correlation_id.reset(token)

    async def _park(self, raw: Msg, exc: BaseException, delivered: int) -> None:
        """Publish to dead letters and ack; if even that fails, redeliver later (never spin)."""
        try:
            await self._publish_dead_letter(raw, exc)
        except Exception as publish_exc:
            delay = backoff_delay(delivered)
            log.error(
                "could not park the message in dead letters; redelivering",
                extra={
                    "subject": raw.subject,
                    "delay_s": round(delay, 2),
                    "error": repr(publish_exc)[:300],
                },
            )
            raise NackMessage(delay=delay) from exc
        self._outage.settled(
            (raw.metadata.stream, raw.metadata.sequence.stream), success=False
        )
        log.error(
            "message parked in dead letters",
            extra={"subject": raw.subject, "delivered": delivered, "error": repr(exc)},
        )
        raise AckMessage() from exc


class _EmptyFetchFilter(logging.Filter):
    """Drop FastStream's 'raised an exception, retrying' for an empty JetStream fetch.

    nats-py 2.16 can raise the builtin `TimeoutError` from an empty `fetch()`, while FastStream
    0.7.8 only suppresses nats' own subclass, so its supervisor logs an ERROR and restarts the
    (healthy) pull loop. Nothing is lost; the record is noise."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not (type(exc) is TimeoutError and "retrying" in record.getMessage())


_bus_log = logging.getLogger("brokerlink.bus")
_bus_log.addFilter(_EmptyFetchFilter())


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
        **kwargs,
    )
    holder["broker"] = broker
    return broker


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
) -> Any:
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
    )


async def ensure_streams(
    broker: NatsBroker,
    topology: Topology,
    specs: Iterable[StreamSpec] = STREAMS,
    *,
    replicas: int = 1,
    sync_always: bool = False,
) -> None:
    """Create or update streams idempotently (called by their owners at start-up)."""
    js = broker.connection.jetstream()
    for spec in specs:
        config = StreamConfig(
            name=topology.stream_name(spec),
            subjects=topology.stream_subjects(spec),
            storage=StorageType.FILE,
            duplicate_window=spec.duplicate_window_s,
            max_age=spec.max_age_s,
            num_replicas=replicas,
        )
        try:
            await js.stream_info(topology.stream_name(spec))
            await js.update_stream(config)
        except NotFoundError:
            await js.add_stream(config)


class EventPublisher:
    """Validates and publishes events to JetStream with broker-side de-duplication."""

    def __init__(
        self, broker: NatsBroker, topology: Topology, timeout_s: float = 5.0
    ) -> None:
        self._broker = broker
        self._topology = topology
        self._timeout = timeout_s

    @staticmethod
    def build(event_type: str, data: dict[str, Any]) -> Event:
        """Validate raw data as an event of `event_type`; raise `InvalidEventError` if it is not."""
        model = EVENT_TYPES.get(event_type)
        if model is None:
            raise ValueError(f"unknown event type: {event_type!r}")
        try:
            return model.model_validate({**data, "type": event_type})
        except ValidationError as exc:
            raise InvalidEventError(event_type, exc) from None

    def encode(self, event: Event) -> tuple[str, bytes]:
        """Re-validate an event (guards against `model_construct`) and return (subject, body)."""
        body = event.model_dump(mode="json", warnings=False)  # re-validated just below
        checked = self.build(event.type, body)
        return self._topology.subject(
            checked.family, checked.subject_broker()
        ), orjson.dumps(body)

    async def publish(self, event: Event, *, msg_id: str | None = None) -> None:
        """Publish one event; `msg_id` defaults to the event id."""
        subject, body = self.encode(event)
        await self.publish_encoded(
            event.family,
            subject,
            body,
            msg_id or str(event.event_id),
            event.correlation_id,
        )

    async def publish_encoded(
        self,
        family: str,
        subject: str,
        body: bytes,
        msg_id: str,
        correlation: str | None = None,
    ) -> None:
        """Publish already validated bytes (the outbox relay stores them that way)."""
        headers = {"Nats-Msg-Id": msg_id}
        if correlation:
            headers[CORRELATION_HEADER] = correlation
        await self._broker.publish(
            body,
            subject,
            headers=headers,
            timeout=self._timeout,
            stream=self._topology.stream_for(family),
        )


def fail_parked_refreshes(topology: Topology, service: str) -> ParkedHook:
    """A `make_broker(on_parked=...)` hook: a parked `refresh.requested` becomes `refresh.failed`,
    so whoever waits on the refresh (a user, a bulk job) learns it will not happen."""

    async def hook(broker: NatsBroker, raw: Msg, exc: BaseException) -> None:
        publisher = EventPublisher(broker, topology)
        try:
            event = RefreshRequested.model_validate_json(raw.data)
        except ValidationError:
            return
        await publisher.publish(
            RefreshFailed(
                user_id=event.user_id,
                account_id=event.account_id,
                correlation_id=event.correlation_id,
                payload={
                    "broker": event.payload.broker,
                    "refresh_id": event.payload.refresh_id,
                    "job_id": event.payload.job_id,
                    "code": "parked",
                    "message": f"{service} could not process the refresh ({type(exc).__name__}); "
                    "it was parked for inspection",
                },
            ),
            msg_id=f"parked:{event.event_id}",
        )

    return hook


async def request_model(
    broker: NatsBroker,
    subject: str,
    request: BaseModel,
    reply_model: type[ModelT],
    timeout_s: float,
) -> ModelT:
    """Core NATS request/reply with pydantic models on both ends."""
    reply = await broker.request(
        request.model_dump_json().encode(), subject, timeout=timeout_s
    )
    return reply_model.model_validate_json(reply.body)


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
