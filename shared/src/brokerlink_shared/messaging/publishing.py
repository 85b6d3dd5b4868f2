"""Publishing: `EventPublisher` validates an event against its contract before it reaches the
bus and sets `Nats-Msg-Id` so JetStream de-duplicates retries; `request_model` is core NATS
request/reply with pydantic models on both ends."""

from __future__ import annotations

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
