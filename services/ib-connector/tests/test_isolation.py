"""Users never share a gateway session, and the connector only reaches allowed networks."""

from __future__ import annotations

from typing import Any

from brokerlink_devkit.testing import wait_until
from brokerlink_shared.contracts.values import IntegrationStatus
from brokerlink_simulators.ib_gateway import IBGatewaySimulator

from .conftest import Bus, account, add_gateway

OWNER, OTHER = 501, 502


async def test_a_second_user_never_rides_the_first_users_session(
    sim: IBGatewaySimulator, bus: Bus, connector: Any
) -> None:
    config = await add_gateway(
        sim, "owned", account("U5000001", "5000"), account("U5000002", "5100")
    )
    mine = config.model_copy(update={"account_code": "U5000001"})
    assert (await bus.refreshed(51, mine, user_id=OWNER)).payload.balance == 5000

    # Same gateway, same client id, another user: a session of its own, which the gateway
    # refuses (the client id is taken); the answer names no account and reads like any
    # unreachable address.
    refresh_id = await bus.refresh(52, mine, user_id=OTHER)
    failed = await wait_until(
        lambda: bus.failure_for(refresh_id), message="the other user's refresh fails"
    )
    assert failed.user_id == OTHER and failed.payload.code == "unreachable"
    assert "U500" not in failed.payload.message
    other_status = await wait_until(lambda: bus.last_status(52), message="status")
    assert other_status.payload.status is IntegrationStatus.ERROR
    assert "U500" not in (other_status.payload.message or "")
    reply = await bus.test(mine, timeout_s=3, user_id=OTHER)
    assert not reply.success and "U500" not in reply.message
    # nothing about the other user's account reached the owner's, and vice versa
    assert all(e.user_id == OWNER for e in bus.balances(51))
    assert not bus.balances(52)
    assert (await bus.refreshed(51, mine, user_id=OWNER)).payload.balance == 5000


async def test_no_connection_outside_the_allowed_networks(
    infra: Any, sim: IBGatewaySimulator, bus: Bus, connectors: Any
) -> None:
    await connectors(allowed_networks="10.0.0.0/8")
    config = await add_gateway(sim, "fenced", account("U5300001", "5300"))
    # two connectors now answer test requests; ask until the fenced one has answered
    refused = None
    for _ in range(20):
        reply = await bus.test(config, timeout_s=3, user_id=503)
        if not reply.success:
            refused = reply
            break
    assert refused is not None, "the connector limited to 10.0.0.0/8 never answered"
    assert "U5300001" not in refused.message
    assert sim.gateway("fenced").api_session_count() == 0
