"""Account claims outlive the connector: they live in NATS KV (with the key their names are
hashed with), so a restarted connector still refuses another user the first user's gateway."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from brokerlink_devkit.testing import wait_until
from brokerlink_shared.contracts.values import (
    GATEWAY_OWNED_ELSEWHERE,
    GATEWAY_OWNED_ELSEWHERE_MESSAGE,
    IBConnection,
)
from brokerlink_simulators.ib_gateway import GatewaySpec, IBGatewaySimulator
from ib_connector.main import create_app

from .conftest import Bus, account, connector_settings


async def test_a_restarted_connector_keeps_the_claims(
    infra: Any, all_addresses_sim: IBGatewaySimulator, bus: Bus
) -> None:
    owner, other = 571, 572
    gateway = await all_addresses_sim.add_gateway(
        GatewaySpec(name="restart", accounts=[account("U5700001", "5701.13")])
    )
    mine = IBConnection(host="127.0.0.1", port=gateway.port, client_id=1)
    theirs = IBConnection(host="127.0.0.2", port=gateway.port, client_id=2)

    before = create_app(connector_settings(infra, bus.topology))
    await before.start()
    try:
        read = await bus.refreshed(71, mine, user_id=owner)
        assert read.payload.balance == Decimal("5701.13")
    finally:
        await before.stop()

    after = create_app(connector_settings(infra, bus.topology))
    await after.start()
    try:
        await bus.configure(72, theirs, user_id=other)
        refresh_id = await bus.refresh(72, theirs, user_id=other)
        failed = await wait_until(
            lambda: bus.failure_for(refresh_id), message="the other user's refresh"
        )
        assert (failed.payload.code, failed.payload.message) == (
            GATEWAY_OWNED_ELSEWHERE,
            GATEWAY_OWNED_ELSEWHERE_MESSAGE,
        )
        assert not bus.balances(72)
        read = await bus.refreshed(71, mine, user_id=owner)
        assert read.payload.balance == Decimal("5701.13")
    finally:
        await after.stop()
