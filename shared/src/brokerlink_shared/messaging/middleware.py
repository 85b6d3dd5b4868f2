"""The consumer half of the convention, as a FastStream middleware (public
`faststream.BaseMiddleware`): retry with backoff, then park in the dead-letter stream.

A transient infrastructure failure (the database or the bus away, see `brokerlink_shared.outage`)
spends no attempt: it is retried for the outage budget while the consumer pauses; only bad
messages are parked. A dead-letter publish that fails is retried later, never in a hot loop."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from faststream import BaseMiddleware
from faststream.exceptions import AckMessage, NackMessage
from faststream.message import StreamMessage
from nats.aio.msg import Msg
from pydantic import ValidationError

from brokerlink_shared.backoff import backoff_delay
from brokerlink_shared.logging import correlation_id
from brokerlink_shared.messaging.publishing import CORRELATION_HEADER, InvalidEventError
from brokerlink_shared.outage import (
    OutageTracker,
    TransientClassifier,
    is_transient_io_error,
)

log = logging.getLogger("brokerlink_shared.messaging")


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
            # Paced by its own attempts: after an outage a bad message still parks in seconds
            # (counting the outage's deliveries put each retry at the 30 s cap).
            delay = backoff_delay(max(1, attempts))
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
