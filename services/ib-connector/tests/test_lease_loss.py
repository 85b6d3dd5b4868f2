"""A replica that loses its ownership lease (cut off from NATS) closes its gateway sessions at
once and says so; the replica that takes over connects without a client-id fight."""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import urlsplit

from brokerlink_devkit.testing import wait_until
from brokerlink_devkit.testing.proxy import TcpProxy
from brokerlink_shared.contracts.values import IntegrationStatus
from brokerlink_shared.rate_budget import open_bucket
from brokerlink_simulators.ib_gateway import IBGatewaySimulator
from ib_connector.adapters.ownership import SessionOwnership
from nats import connect as nats_connect

from .conftest import Bus, account, add_gateway


async def test_lease_loss_closes_sessions_and_the_new_owner_connects_cleanly(
    sim: IBGatewaySimulator, bus: Bus, connectors: Any, infra: Any
) -> None:
    nats = urlsplit(infra.nats_url)
    link = await TcpProxy(nats.hostname or "127.0.0.1", nats.port or 4222).start()
    try:
        config = await add_gateway(sim, "lease", account("U2300001", "2300"))
        gateway = sim.gateway("lease")
        # replica A reaches NATS through the proxy, so the test can cut it off
        replica_a = await connectors(
            replica_id="lease-a", nats_url=f"nats://127.0.0.1:{link.port}"
        )
        await bus.configure(23, config)
        await wait_until(
            lambda: _status(bus, 23) is IntegrationStatus.CONNECTED,
            message="connected on replica A",
        )
        await connectors(replica_id="lease-b")
        assert gateway.api_session_count() == 1

        link.cut()  # A can no longer renew its lease
        await wait_until(
            lambda: gateway.api_session_count() == 0,
            timeout_s=10,
            message="replica A closed its session",
        )
        await wait_until(
            lambda: (
                gateway.api_session_count() == 1
                and _status(bus, 23) is IntegrationStatus.CONNECTED
            ),
            timeout_s=15,
            message="replica B took the session over",
        )
        assert gateway.counters.rejected_client_id == 0  # no client-id fight
        link.restore()  # A is back: B keeps the session

        balance = await bus.refreshed(23, config, timeout_s=20)
        assert balance.payload.balance == 2300
        assert gateway.api_session_count() == 1
        assert gateway.counters.rejected_client_id == 0
        codes = [code for _, code in bus.status_trail(23)]
        assert "326" not in codes
        await (
            replica_a.stop()
        )  # while its link is up (the fixture stops it again: a no-op)
    finally:
        await link.stop()


def _status(bus: Bus, account_id: int) -> IntegrationStatus | None:
    last = bus.last_status(account_id)
    return last.payload.status if last else None


async def test_a_replicas_bucket_with_a_shorter_ttl_is_raised_to_the_lease_never_lowered(
    infra: Any,
) -> None:
    """Leases lapse by the bucket's max age: one shorter than a replica's TTL would let the others
    take over before that replica gives its sessions up (a bucket made by an older version)."""
    namespace = f"{infra.namespace}lease{time.monotonic_ns()}"
    nc = await nats_connect(infra.nats_url)
    js = nc.jetstream()
    await open_bucket(js, f"{namespace}_ib_replicas", ttl_s=2.0)

    async def nothing(*_: Any) -> None:
        return None

    owners = []
    try:
        for ttl in (6.0, 3.0):
            owner = SessionOwnership(nc, namespace, f"r{ttl:g}", ttl, nothing, nothing)
            await owner.start()
            owners.append(owner)
            status = await (await js.key_value(f"{namespace}_ib_replicas")).status()
            assert status.ttl == 6.0
    finally:
        for owner in owners:
            await owner.stop()
        for bucket in ("ib_replicas", "ib_sessions"):
            await js.delete_key_value(f"{namespace}_{bucket}")
        await nc.close()
