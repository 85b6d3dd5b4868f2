"""Per-account ordering: a connector applies a command only if its integration version is not
older than what it already applied, so configure→remove delivered in reverse order leaves no
session behind, and a refresh asked with a replaced config is answered stale."""

from __future__ import annotations

import logging
import uuid
from typing import Any

import nats
import pytest
from brokerlink_devkit.testing import wait_until
from brokerlink_shared.contracts.events import (
    IntegrationConfigured,
    IntegrationRemoved,
    RefreshRequested,
)
from brokerlink_shared.contracts.values import IBConnection, IntegrationStatus
from brokerlink_shared.subjects import COMMANDS, Broker
from brokerlink_simulators.ib_gateway import IBGatewaySimulator

from .conftest import Bus, account, add_gateway


def _configured(
    account_id: int, config: IBConnection, version: int
) -> IntegrationConfigured:
    return IntegrationConfigured(
        user_id=1,
        account_id=account_id,
        payload={"broker": Broker.IB, "config": config, "version": version},
    )


def _removed(account_id: int, config: IBConnection, version: int) -> IntegrationRemoved:
    return IntegrationRemoved(
        user_id=1,
        account_id=account_id,
        payload={"broker": Broker.IB, "config": config, "version": version},
    )


async def _all_handled(bus: Bus, infra: Any) -> bool:
    """Every command the connector's consumers were given has been acknowledged."""
    nc = await nats.connect(infra.nats_url)
    try:
        js = nc.jetstream()
        stream = bus.topology.stream_name(COMMANDS)
        for purpose in ("configured", "removed", "refresh"):
            info = await js.consumer_info(stream, f"ib-connector-{purpose}")
            if info.num_pending or info.num_ack_pending:
                return False
        return True
    finally:
        await nc.close()


async def test_configure_then_remove_delivered_in_reverse_order_leaves_no_session(
    sim: IBGatewaySimulator,
    bus: Bus,
    connector: Any,
    infra: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    config = await add_gateway(sim, "ordering", account("U2100001", "2100"))
    config = config.model_copy(update={"account_code": "U2100001"})
    caplog.set_level(logging.DEBUG, logger="brokerlink_shared.ordering")

    # The user configured (v2) then removed (v3); the bus delivers the removal first.
    await bus.publisher.publish(_removed(21, config, 3))
    await wait_until(lambda: _all_handled(bus, infra), message="removal handled")
    await bus.publisher.publish(_configured(21, config, 2))
    await wait_until(lambda: _all_handled(bus, infra), message="configure handled")
    assert any(
        r.getMessage() == "older command dropped" and r.__dict__.get("version") == 2
        for r in caplog.records
    )
    assert sim.gateway("ordering").api_session_count() == 0
    assert bus.statuses(21) == []

    # A refresh asked with the removed config is answered, as stale.
    refresh_id = uuid.uuid4()
    await bus.publisher.publish(
        RefreshRequested(
            user_id=1,
            account_id=21,
            payload={
                "broker": Broker.IB,
                "refresh_id": refresh_id,
                "config": config,
                "version": 2,
            },
        )
    )
    failed = await wait_until(lambda: bus.failure_for(refresh_id), message="stale")
    assert failed.payload.code == "stale"

    # The next change (v4) is newer: it applies, and the session opens.
    await bus.publisher.publish(_configured(21, config, 4))
    status = await wait_until(lambda: bus.last_status(21), message="connected")
    assert status.payload.status == IntegrationStatus.CONNECTED
    assert sim.gateway("ordering").api_session_count() == 1
