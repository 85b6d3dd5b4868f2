"""Admission by age: a refresh that waited in the command stream longer than anyone waits for
its answer is answered `busy` at once instead of being worked on. The wait is measured on the
real delivery (JetStream's store time), through the shared command subscribers."""

from __future__ import annotations

from typing import Any

from brokerlink_devkit.testing import wait_until
from brokerlink_shared.admission import BUSY_CODE
from brokerlink_shared.contracts.events import RefreshFailed
from brokerlink_simulators.ib_gateway import IBGatewaySimulator

from .conftest import Bus, account, add_gateway


async def test_a_refresh_queued_past_its_deadline_is_answered_busy(
    sim: IBGatewaySimulator, bus: Bus, connectors: Any
) -> None:
    config = await add_gateway(sim, "admission", account("U2500001", "2500"))
    # Stored in the stream before any connector consumes it: starting the connector below (NATS
    # connect, stream and bucket declarations, the durable consumer) takes tens of milliseconds
    # at the very least (33 ms on a quiet machine), so the request has waited past 1 ms.
    stale = await bus.refresh(25, config)
    await connectors(replica_id="admission", max_queued_s=0.001)

    answer = await wait_until(
        lambda: bus.balance_for(stale) or bus.failure_for(stale),
        message="an answer to the stale refresh",
    )
    assert isinstance(answer, RefreshFailed), answer
    assert answer.payload.code == BUSY_CODE
    assert sim.gateway("admission").api_session_count() == 0  # nothing was read for it
