"""Two connector replicas in one loop against real NATS: each session has exactly one owner,
and when a replica stops, the other takes its sessions over."""

from __future__ import annotations

from typing import Any

from brokerlink_devkit.testing import wait_until
from brokerlink_shared.contracts.events import HealthReply
from brokerlink_shared.contracts.values import IBConnection, IntegrationStatus
from brokerlink_simulators.ib_gateway import IBGatewaySimulator

from .conftest import Bus, account, add_gateway


def _sessions_open(sim: IBGatewaySimulator) -> int:
    return sum(gw.api_session_count() for gw in sim.gateways.values())


async def test_sessions_have_one_owner_and_move_when_a_replica_stops(
    sim: IBGatewaySimulator, bus: Bus, connectors: Any
) -> None:
    g1 = await add_gateway(
        sim, "r1", account("U2100001", "100"), account("U2100002", "200")
    )
    g2 = await add_gateway(sim, "r2", account("U2200001", "300"))
    first = await connectors(replica_id="replica-a")
    await connectors(replica_id="replica-b")
    configs: dict[int, IBConnection] = {}
    for n in range(8):  # 8 accounts over 6 sessions (accounts 0/1 and 2/3 share one)
        gw = g1 if n < 6 else g2
        code = "U2100001" if n % 2 == 0 else "U2100002"
        configs[100 + n] = gw.model_copy(
            update={
                "client_id": 1 + n // 2 if n < 4 else n,
                "account_code": code if gw is g1 else None,
            }
        )
    for account_id, config in configs.items():
        await bus.configure(account_id, config)
    for account_id in configs:
        await wait_until(
            lambda a=account_id: (
                bus.last_status(a)
                and bus.last_status(a).payload.status is IntegrationStatus.CONNECTED
            ),  # type: ignore[union-attr]
            message=f"account {account_id} connected",
        )
    assert _sessions_open(sim) == 6
    assert (
        sim.gateway("r1").counters.rejected_client_id == 0
    )  # nobody opened a session twice

    for account_id, config in configs.items():
        balance = await bus.refreshed(account_id, config)
        assert balance.payload.broker_account == (config.account_code or "U2200001")

    replies = [await _health(bus) for _ in range(6)]
    owned = {r.detail["replica"]: r.detail["owned_sessions"] for r in replies}
    assert set(owned) <= {"replica-a", "replica-b"}

    await first.stop()
    await wait_until(
        lambda: _sessions_open(sim) == 6,
        timeout_s=15,
        message="sessions re-opened by replica-b",
    )
    for account_id, config in configs.items():
        balance = await bus.refreshed(account_id, config)
        assert balance.account_id == account_id
    health = await _health(bus)
    assert health.detail["replica"] == "replica-b"
    assert health.detail["owned_sessions"] == 6
    assert health.detail["dead_letters"] == 0


async def _health(bus: Bus) -> HealthReply:
    reply = await bus.nc.request(
        bus.topology.health_subject("ib-connector"), b"", timeout=5
    )
    return HealthReply.model_validate_json(reply.data)
