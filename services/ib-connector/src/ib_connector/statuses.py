"""Publishes `integration.status` events in the order sessions produce them."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from brokerlink_shared.backoff import backoff_delay
from brokerlink_shared.contracts.events import (
    IntegrationStatusChanged,
    IntegrationStatusPayload,
)
from brokerlink_shared.messaging import EventPublisher
from brokerlink_shared.subjects import Broker

from ib_connector.domain.session_state import StatusView
from ib_connector.pool import AccountBinding

log = logging.getLogger(__name__)


class StatusPublisher:
    """Sessions report status changes synchronously (from ib_async callbacks); one task publishes
    them in order, so a badge never shows `connected` before the `disconnected` that preceded it."""

    def __init__(self, publisher: EventPublisher) -> None:
        self._publisher = publisher
        self._queue: asyncio.Queue[IntegrationStatusChanged] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self.published = 0

    def submit(self, binding: AccountBinding, view: StatusView) -> None:
        """Queue one status event for an account (test-only bindings have no account)."""
        if binding.account_id < 0:
            return
        event = IntegrationStatusChanged(
            user_id=binding.user_id,
            account_id=binding.account_id,
            payload=IntegrationStatusPayload(
                broker=Broker.IB,
                status=view.status,
                code=view.code,
                message=(view.message or "")[:2000] or None,
                last_connected=view.last_connected,
            ),
        )
        log.info(
            "integration status",
            extra={
                "account_id": binding.account_id,
                "status": view.status.value,
                "ib_code": view.code,
                "reason": view.message,
            },
        )
        self._queue.put_nowait(event)

    def start(self) -> None:
        self._task = asyncio.create_task(self._drain(), name="ib-status-publisher")

    async def stop(self, drain_timeout_s: float = 5.0) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(drain_timeout_s):
                await self._queue.join()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _drain(self) -> None:
        while True:
            event = await self._queue.get()
            try:
                for attempt in range(5):
                    try:
                        await self._publisher.publish(event)
                        self.published += 1
                        break
                    except Exception:
                        log.warning(
                            "status publish failed, retrying",
                            extra={"attempt": attempt + 1},
                            exc_info=True,
                        )
                        await asyncio.sleep(
                            backoff_delay(attempt + 1, base=0.2, cap=2.0)
                        )
            finally:
                self._queue.task_done()
