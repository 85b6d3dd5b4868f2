"""Publishing: `EventPublisher` validates an event against its contract before it reaches the
bus and sets `Nats-Msg-Id` so JetStream de-duplicates retries; `request_model` is core NATS
request/reply with pydantic models on both ends."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import orjson
from faststream.nats import NatsBroker
from pydantic import BaseModel, ValidationError

from brokerlink_shared.contracts.events import EVENT_TYPES, Event
from brokerlink_shared.subjects import Topology

CORRELATION_HEADER = "X-Correlation-Id"
ModelT = TypeVar("ModelT", bound=BaseModel)


class InvalidEventError(ValueError):
    """An event did not match its contract; nothing was published."""

    def __init__(self, event_type: str, error: ValidationError) -> None:
        fields = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '<root>'}: {e['msg']}"
            for e in error.errors()
        )
        super().__init__(f"invalid {event_type} event: {fields}")
        self.event_type = event_type


class PartialPublish(Exception):
    """Only the first `published` events of a batch were acknowledged by JetStream."""

    def __init__(self, published: int, cause: BaseException | None) -> None:
        super().__init__(f"{published} published before: {cause!r}")
        self.published = published
        self.cause = cause


@dataclass(frozen=True, slots=True)
class EncodedEvent:
    """An already validated event as the outbox stores it."""

    family: str
    subject: str
    body: bytes
    msg_id: str
    correlation_id: str | None = None


class EventPublisher:
    """Validates and publishes events to JetStream with broker-side de-duplication."""

    def __init__(
        self, broker: NatsBroker, topology: Topology, timeout_s: float = 5.0
    ) -> None:
        self._broker = broker
        self._topology = topology
        self._timeout = timeout_s
        self._js: Any = None
        self._js_connection: Any = None

    def _jetstream(self) -> Any:
        connection = self._broker.connection
        if self._js is None or self._js_connection is not connection:
            # One context per connection: it owns the inbox where async acks arrive.
            self._js, self._js_connection = connection.jetstream(), connection
        return self._js

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

    async def publish_encoded_batch(self, events: Sequence[EncodedEvent]) -> int:
        """Publish many validated events with their acks in flight together, in order.

        Messages go out on one connection in the given order, so JetStream stores them in that
        order. Returns how many of the first events were acknowledged without a gap; when that
        is fewer than all, `PartialPublish` is raised after every ack has settled (a re-send of
        the rest is a no-op for those already stored, thanks to `Nats-Msg-Id`)."""
        if not events:
            return 0
        js = self._jetstream()
        acks: list[asyncio.Future[Any]] = []
        failure: BaseException | None = None
        try:
            for event in events:
                headers = {"Nats-Msg-Id": event.msg_id}
                if event.correlation_id:
                    headers[CORRELATION_HEADER] = event.correlation_id
                acks.append(
                    await js.publish_async(
                        event.subject,
                        event.body,
                        wait_stall=self._timeout,
                        stream=self._topology.stream_for(event.family),
                        headers=headers,
                    )
                )
        except Exception as exc:
            failure = exc
        done = 0
        if acks:
            _, late = await asyncio.wait(acks, timeout=self._timeout)
            for ack in late:
                ack.cancel()  # frees its slot in nats-py's pending window
            for ack in acks:
                error = (
                    TimeoutError("no JetStream ack in time")
                    if ack in late
                    else ack.exception()
                )
                if error is not None:
                    failure = failure or error
                    break
                done += 1
        if done < len(events):
            raise PartialPublish(done, failure)
        return done

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
