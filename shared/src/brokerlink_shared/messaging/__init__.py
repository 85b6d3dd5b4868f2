"""The one messaging convention every service uses, on FastStream's public API.

- `broker`: `make_broker` builds the service's NATS broker with the dead-letter convention;
  `bus_connected`, `dead_letter_count` for health.
- `middleware`: `DeadLetterMiddleware` — handlers that raise are NACKed with backoff; on the last
  allowed delivery (or for a message that can never succeed) the message is parked in the
  dead-letter stream and acknowledged. Nothing is dropped silently.
- `streams`: `ensure_streams` (declared by their owners), `await_consumers` and `durable_subscriber` (pull
  consumers bound, never declared, to a stream).
- `pull_fetch`: the fetch those consumers use (installed by `make_broker`), which hands a message
  over as soon as the server has it.
- `publishing`: `EventPublisher` validates an event against its model before it reaches the bus
  and sets `Nats-Msg-Id` so JetStream de-duplicates retries; `request_model` for request/reply.

Refresh-specific helpers (the result publisher, the parked-refresh hook) live in
`brokerlink_shared.refreshes`; the backoff in `brokerlink_shared.backoff`.
"""

from brokerlink_shared.messaging.broker import (
    ParkedHook,
    bus_connected,
    dead_letter_count,
    make_broker,
)
from brokerlink_shared.messaging.middleware import (
    RETRY_LATER_CEILING,
    DeadLetterMiddleware,
    PermanentFailure,
    RetryLater,
)
from brokerlink_shared.messaging.publishing import (
    CORRELATION_HEADER,
    EncodedEvent,
    EventPublisher,
    InvalidEventError,
    PartialPublish,
    request_model,
)
from brokerlink_shared.messaging.streams import (
    await_consumers,
    durable_subscriber,
    ensure_streams,
)

__all__ = [
    "CORRELATION_HEADER",
    "RETRY_LATER_CEILING",
    "DeadLetterMiddleware",
    "EncodedEvent",
    "EventPublisher",
    "InvalidEventError",
    "ParkedHook",
    "PartialPublish",
    "PermanentFailure",
    "RetryLater",
    "await_consumers",
    "bus_connected",
    "dead_letter_count",
    "durable_subscriber",
    "ensure_streams",
    "make_broker",
    "request_model",
]
