"""`RefreshSweeper`: every refresh ends. A refresh nobody answered within its deadline becomes
`failed` with the reason — the connector is not running, or it did not answer in time — so the
user (and a bulk job's counts) learn it will not happen. A late answer still updates the
account; it only finds the refresh already settled.

Safe with many replicas: rows are claimed with `FOR UPDATE SKIP LOCKED`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from brokerlink_shared.subjects import Broker, Topology
from faststream.nats import NatsBroker

from account_api.db import UnitOfWork
from account_api.integrations.lifecycle import refresh_overdue_reason

log = logging.getLogger(__name__)
BATCH = 500
PROBE_TIMEOUT_S = 2.0


class RefreshSweeper:
    def __init__(
        self,
        new_uow: Callable[[], UnitOfWork],
        broker: NatsBroker,
        topology: Topology,
        deadline_s: float,
        interval_s: float | None = None,
    ) -> None:
        self._new_uow = new_uow
        self._broker = broker
        self._topology = topology
        self.deadline_s = deadline_s
        self._interval = interval_s or min(15.0, max(0.5, deadline_s / 4))
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self.deadline_s > 0:
            self._task = asyncio.create_task(self._loop(), name="refresh-sweeper")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def sweep(self) -> int:
        """End every overdue refresh; returns how many were ended."""
        total = 0
        answers: dict[str | None, bool] = {}
        while True:
            ended = await self._sweep_batch(answers)
            total += ended
            if ended < BATCH:
                return total

    async def _sweep_batch(self, answers: dict[str | None, bool]) -> int:
        now = datetime.now(UTC)
        uow = self._new_uow()
        async with uow:
            refreshes = uow.refreshes
            rows = await refreshes.overdue(
                now - timedelta(seconds=self.deadline_s), BATCH
            )
            if not rows:
                return 0
            for kind in {k for _, k in rows} - answers.keys():
                answers[kind] = await self._connector_answers(kind)
            for refresh, kind in rows:
                reason = refresh_overdue_reason(
                    kind, connector_answers=answers[kind], deadline_s=self.deadline_s
                )
                await refreshes.settle(refresh, "failed", now, message=reason)
            await uow.commit()
        log.warning(
            "overdue refreshes ended",
            extra={"count": len(rows), "deadline_s": self.deadline_s},
        )
        return len(rows)

    async def _connector_answers(self, kind: str | None) -> bool:
        if kind is None or kind not in Broker.__members__:
            return False
        subject = self._topology.health_subject(Broker(kind).connector)
        try:
            await self._broker.connection.request(subject, b"", timeout=PROBE_TIMEOUT_S)
        except Exception:
            return False
        return True

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self.sweep()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("refresh sweep failed", extra={"error": repr(exc)})
