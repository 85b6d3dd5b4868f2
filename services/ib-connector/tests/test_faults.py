"""Faults: daily restart, client-id conflict, refused port, failover, test requests."""

from __future__ import annotations

import asyncio
import time
from decimal import Decimal
from typing import Any

import pytest
from brokerlink_devkit.testing import wait_until
from brokerlink_shared.contracts.values import GatewayAddress, IntegrationStatus
from brokerlink_simulators.ib_gateway import FaultPatch, IBGatewaySimulator
from ib_async import IB
from ib_connector.adapters.ib_gateway import GatewayError, IBGatewayClient

from .conftest import Bus, account, add_gateway

CONNECTED = IntegrationStatus.CONNECTED
DISCONNECTED = IntegrationStatus.DISCONNECTED
ERROR = IntegrationStatus.ERROR


async def test_daily_restart_reconnects_without_a_request(
    sim: IBGatewaySimulator, bus: Bus, connector: Any
) -> None:
    config = await add_gateway(sim, "restart", account("U1100001", "100"))
    await bus.configure(11, config)
    await wait_until(
        lambda: bus.status_trail(11) == [(CONNECTED, None)], message="connected"
    )

    await sim.gateway("restart").restart(down_for_s=0.5)

    await wait_until(
        lambda: (
            [s for s, _ in bus.status_trail(11)] == [CONNECTED, DISCONNECTED, CONNECTED]
        ),
        timeout_s=15,
        message="disconnected then connected again",
    )
    assert sim.gateway("restart").api_session_count() == 1
    balance = await bus.refreshed(11, config)
    assert balance.payload.balance == 100


async def test_conflict_and_refused_port_do_not_stop_other_accounts(
    sim: IBGatewaySimulator, bus: Bus, connector: Any
) -> None:
    healthy = await add_gateway(sim, "healthy", account("U1200001", "1200"))
    busy = await add_gateway(sim, "busy", account("U1300001", "1300"))
    down = await add_gateway(sim, "down", account("U1400001", "1400"))
    await sim.gateway("down").apply_faults(FaultPatch(refuse_connections=True))
    # this user has reached the busy gateway before (with another client id), so its
    # failures there are told apart; the down one was never reached, so its failure is uniform
    await bus.refreshed(131, busy)
    squatter = IB()  # someone else holds client id 9 on the busy gateway
    await squatter.connectAsync("127.0.0.1", busy.port, 9, readonly=True)
    try:
        conflict = busy.model_copy(update={"client_id": 9})
        await bus.configure(13, conflict)
        await bus.configure(14, down)
        await bus.configure(12, healthy)

        conflict_status = await wait_until(
            lambda: bus.last_status(13), message="conflict status"
        )
        assert (conflict_status.payload.status, conflict_status.payload.code) == (
            ERROR,
            "326",
        )
        assert "client id is already in use" in (conflict_status.payload.message or "")
        refused_status = await wait_until(
            lambda: bus.last_status(14), message="refused status"
        )
        assert (refused_status.payload.status, refused_status.payload.code) == (
            ERROR,
            "unreachable",
        )
        assert refused_status.payload.message == (
            f"no IB Gateway answered at 127.0.0.1:{down.port}; "
            "check the host, port and API settings"
        )

        refresh_id = await bus.refresh(13, conflict)
        failed = await wait_until(
            lambda: bus.failure_for(refresh_id),
            message="refresh.failed for the conflict",
        )
        assert failed.payload.code == "326"

        started = time.monotonic()
        for _ in range(
            5
        ):  # the broken accounts keep retrying meanwhile; this one is not held up
            balance = await bus.refreshed(12, healthy, timeout_s=3)
            assert balance.payload.balance == 1200
        assert time.monotonic() - started < 3
        assert (
            len(bus.statuses(13)) == 1
        )  # retries with the same reason emit nothing new
    finally:
        squatter.disconnect()
    # once the client id is free the session connects on its own
    await wait_until(
        lambda: bus.status_trail(13)[-1] == (CONNECTED, None),
        timeout_s=10,
        message="conflict resolved",
    )


async def test_slow_gateway_does_not_delay_others(
    sim: IBGatewaySimulator, bus: Bus, connector: Any
) -> None:
    slow = await add_gateway(sim, "slow", account("U1500001", "1500"))
    fast = await add_gateway(sim, "fast", account("U1600001", "1600"))
    await bus.refreshed(15, slow)
    await sim.gateway("slow").apply_faults(FaultPatch(delay_ms=2500))
    slow_refresh = await bus.refresh(15, slow)
    await asyncio.sleep(0)  # let the slow request go out first
    started = time.monotonic()
    await bus.refreshed(16, fast, timeout_s=2)
    assert time.monotonic() - started < 1.0
    await wait_until(
        lambda: bus.balance_for(slow_refresh), timeout_s=8, message="slow refresh"
    )
    await sim.gateway("slow").apply_faults(FaultPatch(delay_ms=0))


async def test_a_late_answer_for_another_account_does_not_end_this_read(
    sim: IBGatewaySimulator,
) -> None:
    """IB ends an account download without naming whose it is (ib_async keys the request by
    name): the end of a read that timed out, arriving during the next read of another account on
    the same session, must not end that read before its own values are in."""
    config = await add_gateway(
        sim, "late", account("U2100001", "2101"), account("U2100002", "2102")
    )
    client = IBGatewayClient(on_notice=lambda _c, _m: None, on_closed=lambda _r: None)
    await client.connect(config.host, config.port, 21, timeout_s=5)
    try:
        await sim.gateway("late").apply_faults(FaultPatch(delay_ms=800))
        with pytest.raises(GatewayError) as timed_out:
            await client.read_account("U2100001", timeout_s=0.3, max_age_s=0)
        assert timed_out.value.code == "timeout"
        # the first read's answer (and its end) arrives while this one waits for its own
        rows, _ = await client.read_account("U2100002", timeout_s=5, max_age_s=0)
        net = {r.currency: r.value for r in rows if r.tag == "NetLiquidation"}
        assert net and Decimal(net["USD"]) == Decimal("2102")
    finally:
        await sim.gateway("late").apply_faults(FaultPatch(delay_ms=0))
        await client.close()


async def test_failover_to_backup_and_back(
    sim: IBGatewaySimulator, bus: Bus, connector: Any
) -> None:
    primary = await add_gateway(sim, "primary", account("U1700001", "1700"))
    backup = await add_gateway(sim, "backup", account("U1700001", "1701"))
    config = primary.model_copy(
        update={"backups": [GatewayAddress(host="127.0.0.1", port=backup.port)]}
    )
    assert (await bus.refreshed(17, config)).payload.balance == 1700

    await sim.gateway("primary").apply_faults(FaultPatch(refuse_connections=True))
    sim.gateway("primary").drop_sessions()
    await wait_until(
        lambda: (
            "backup" in (bus.last_status(17).payload.message or "")
            if bus.last_status(17)
            else False
        ),
        timeout_s=10,
        message="failed over to the backup",
    )
    assert bus.last_status(17).payload.status is CONNECTED  # type: ignore[union-attr]
    assert (await bus.refreshed(17, config)).payload.balance == 1701

    await sim.gateway("primary").apply_faults(FaultPatch(refuse_connections=False))
    await wait_until(
        lambda: (
            bus.last_status(17).payload.message
            == f"connected to 127.0.0.1:{primary.port}"
        ),  # type: ignore[union-attr]
        timeout_s=10,
        message="back on the primary",
    )
    assert (await bus.refreshed(17, config)).payload.balance == 1700
    await wait_until(
        lambda: sim.gateway("backup").api_session_count() == 0,
        message="backup session closed",
    )


async def test_integration_test_request(
    sim: IBGatewaySimulator, bus: Bus, connector: Any
) -> None:
    config = await add_gateway(sim, "probe", account("U1800001", "1800"))
    reply = await bus.test(config.model_copy(update={"client_id": 30}))
    assert reply.success, reply.message
    assert "U1800001" in reply.message and "1800" in reply.message
    await sim.gateway("probe").apply_faults(FaultPatch(refuse_connections=True))
    reply = await bus.test(config.model_copy(update={"client_id": 31}), timeout_s=3)
    assert not reply.success
    assert "connection refused" in reply.message
    assert reply.code == "502" and "(code" not in reply.message  # clients word the code


async def test_removed_integration_closes_its_session(
    sim: IBGatewaySimulator, bus: Bus, connector: Any
) -> None:
    config = await add_gateway(sim, "removal", account("U1900001", "1900"))
    await bus.refreshed(19, config)
    assert sim.gateway("removal").api_session_count() == 1
    await bus.remove(19, config)
    await wait_until(
        lambda: sim.gateway("removal").api_session_count() == 0,
        message="session closed",
    )


async def test_gateway_notices_1100_and_1102(
    sim: IBGatewaySimulator, bus: Bus, connector: Any
) -> None:
    config = await add_gateway(sim, "notices", account("U2000001", "2000"))
    await bus.configure(20, config)
    await wait_until(
        lambda: bus.status_trail(20) == [(CONNECTED, None)], message="connected"
    )
    sim.gateway("notices").broadcast_error(
        1100, "Connectivity between IB and Trader Workstation has been lost."
    )
    await wait_until(
        lambda: bus.status_trail(20)[-1] == (DISCONNECTED, "1100"), message="1100 lost"
    )
    refresh_id = await bus.refresh(20, config)
    failed = await wait_until(
        lambda: bus.failure_for(refresh_id), message="refresh refused while lost"
    )
    assert failed.payload.code == "1100"
    sim.gateway("notices").broadcast_error(
        1102,
        "Connectivity between IB and Trader Workstation has been restored - data maintained.",
    )
    await wait_until(
        lambda: bus.status_trail(20)[-1] == (CONNECTED, "1102"), message="1102 restored"
    )
    assert (await bus.refreshed(20, config)).payload.balance == 2000
