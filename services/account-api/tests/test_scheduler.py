"""The scheduled refresh runs once per interval however many replicas tick."""

from __future__ import annotations

import asyncio

from account_api.db import UnitOfWork
from account_api.scheduling.scheduler import RefreshScheduler
from brokerlink_shared.messaging import EventPublisher


async def test_one_replica_wins_each_interval(api) -> None:  # type: ignore[no-untyped-def]
    container = api.app.state.container

    def new_uow() -> UnitOfWork:
        return UnitOfWork(
            container.sessionmaker, EventPublisher(container.broker, container.topology)
        )

    replicas = [
        RefreshScheduler(new_uow, container.integrations.refreshes, interval_s=3600)
        for _ in range(4)
    ]
    first = await asyncio.gather(*(r.tick() for r in replicas))
    again = await asyncio.gather(*(r.tick() for r in replicas))
    assert sum(first) == 1
    assert sum(again) == 0  # the interval has not passed for anyone
