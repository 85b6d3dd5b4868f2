"""Overload: past its in-flight bound a connector answers refreshes `busy` at once — every
refresh gets an answer, none is left waiting."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from brokerlink_devkit.testing import wait_until
from brokerlink_shared.admission import BUSY_CODE
from brokerlink_shared.contracts.events import BalanceUpdated, RefreshFailed
from brokerlink_simulators.ib_gateway import FaultPatch, IBGatewaySimulator

from .conftest import Bus, account, add_gateway

REFRESHES = 40


async def test_overload_answers_every_refresh(
    sim: IBGatewaySimulator, bus: Bus, connectors: Any
) -> None:
    await connectors(
        replica_id="overload", max_in_flight_refreshes=2, max_concurrent_requests=16
    )
    config = await add_gateway(sim, "overload", account("U2400001", "2400"))
    await bus.refreshed(24, config)  # the session is up
    await sim.gateway("overload").apply_faults(FaultPatch(delay_ms=1500))
    try:
        started = time.monotonic()
        ids = await asyncio.gather(*(bus.refresh(24, config) for _ in range(REFRESHES)))

        def answered() -> list[BalanceUpdated | RefreshFailed] | None:
            outcomes = [bus.balance_for(r) or bus.failure_for(r) for r in ids]
            return outcomes if all(outcomes) else None  # type: ignore[return-value]

        outcomes = await wait_until(answered, timeout_s=20, message="every refresh")
        elapsed = time.monotonic() - started
    finally:
        await sim.gateway("overload").apply_faults(FaultPatch(delay_ms=0))
    busy = [o for o in outcomes if isinstance(o, RefreshFailed)]
    done = [o for o in outcomes if isinstance(o, BalanceUpdated)]
    assert busy and all(f.payload.code == BUSY_CODE for f in busy)
    assert done and all(b.payload.balance == 2400 for b in done)
    assert len(busy) + len(done) == REFRESHES
    # Far sooner than working through 40 slow reads one by one (40 x 1.5 s).
    assert elapsed < 15, elapsed
