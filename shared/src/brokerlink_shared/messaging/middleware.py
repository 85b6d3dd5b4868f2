"""The consumer half of the convention, as a FastStream middleware (public
`faststream.BaseMiddleware`): retry with backoff, then park in the dead-letter stream."""

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
    ) -> None:
        super().__init__(msg, context=context)
        self._publish_dead_letter = publish_dead_letter
        self._max_deliver = max_deliver

    async def consume_scope(self, call_next: Any, msg: StreamMessage[Any]) -> Any:
        raw = msg.raw_message
        token = None
        if (
            isinstance(raw, Msg)
            and raw.headers
            and (cid := raw.headers.get(CORRELATION_HEADER))
        ):
            token = correlation_id.set(cid)
        try:
            return await call_next(msg)
        except (AckMessage, NackMessage):
            raise
        except Exception as exc:
            if (
                not isinstance(raw, Msg)
                or not raw.reply
                or not raw.reply.startswith("$JS.ACK")
            ):
                raise  # core NATS request: nothing to redeliver
            delivered = raw.metadata.num_delivered
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
            if permanent or delivered >= self._max_deliver:
                log.error(
                    "message parked in dead letters",
                    extra={
                        "subject": raw.subject,
                        "delivered": delivered,
                        "error": repr(exc),
                    },
                )
                await self._publish_dead_letter(raw, exc)
                raise AckMessage() from exc
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
