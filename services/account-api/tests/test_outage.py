"""A connector result that arrives while PostgreSQL is unavailable is stored once it is back —
never parked in dead letters — on a real server whose database refuses connections for a while."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from datetime import UTC, datetime

import httpx
import nats
import psycopg
from account_api.migrate import upgrade
from brokerlink_devkit.testing import wait_until
from brokerlink_shared.contracts.events import BalanceUpdated
from brokerlink_shared.messaging import EventPublisher, dead_letter_count, make_broker
from brokerlink_shared.subjects import CONNECTOR_EVENTS, Topology
from psycopg.conninfo import conninfo_to_dict

from .conftest import register_user

IB = {
    "type": "IB",
    "config": {
        "host": "127.0.0.1",
        "port": 4001,
        "client_id": 7,
        "account_code": "U1234567",
    },
}


@contextlib.contextmanager
def database_unavailable(admin_uri: str, name: str) -> Iterator[None]:
    """Refuse new connections to `name` and drop the open ones, until the block ends."""
    with psycopg.connect(admin_uri, autocommit=True) as admin:
        admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = %s AND pid <> pg_backend_pid()",
            (name,),
        )
        try:
            yield
        finally:
            admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')


async def _deliveries(nats_url: str, topology: Topology) -> int:
    nc = await nats.connect(nats_url)
    try:
        info = await nc.jetstream().consumer_info(
            topology.stream_name(CONNECTOR_EVENTS), "account-api-balances"
        )
        return int(info.delivered.consumer_seq or 0)  # every delivery, redeliveries too
    finally:
        await nc.close()


async def test_a_balance_during_a_database_outage_is_stored_not_parked(
    infra, api_factory
) -> None:  # type: ignore[no-untyped-def]
    database = infra.new_database("outage")
    upgrade(database)
    name = conninfo_to_dict(
        database.replace("postgresql+psycopg://", "postgresql://", 1)
    )["dbname"]
    settings = api_factory.settings(database, f"{infra.namespace}outage", max_deliver=2)
    topology = Topology(settings.namespace)
    async with (
        api_factory.run(settings) as api,
        httpx.AsyncClient(base_url=api.base_url, timeout=30) as client,
    ):
        h = await register_user(client)
        aid = (
            await client.post(
                "/api/accounts", headers=h, json={"name": "A", "currency": "USD"}
            )
        ).json()["id"]
        assert (
            await client.put(f"/api/accounts/{aid}/integration", headers=h, json=IB)
        ).status_code == 200
        refresh_id = (
            await client.post(
                f"/api/accounts/{aid}/integration/refresh?wait=0", headers=h
            )
        ).json()["refresh_id"]
        user_id = (await client.get("/api/auth/me", headers=h)).json()["id"]
        broker = make_broker(infra.nats_url, topology, "fake-connector")
        await broker.connect()
        try:
            with database_unavailable(infra.admin_database_url, name):
                await EventPublisher(broker, topology).publish(
                    BalanceUpdated(
                        user_id=user_id,
                        account_id=aid,
                        payload={
                            "broker": "IB",
                            "refresh_id": refresh_id,
                            "as_of": datetime.now(UTC),
                            "currency": "USD",
                            "balance": "4242.42",
                        },
                    )
                )
                # More failed deliveries than max_deliver allows for a bad message.
                await wait_until(
                    lambda: _at_least(_deliveries(infra.nats_url, topology), 3),
                    timeout_s=60,
                    interval_s=0.2,
                    message="the consumer to retry through the outage",
                )
                assert await dead_letter_count(broker, topology, "account-api") == 0

            async def stored() -> bool:
                r = await client.get(
                    f"/api/accounts/{aid}/integration/refresh/{refresh_id}", headers=h
                )
                assert r.status_code in (200, 503), r.text
                return r.status_code == 200 and r.json()["status"] == "succeeded"

            await wait_until(stored, timeout_s=60, message="the balance stored")
            account = await wait_until(
                lambda: _account(client, h, aid), timeout_s=30, message="the account"
            )
            assert float(account["current_balance"]) == 4242.42
            assert await dead_letter_count(broker, topology, "account-api") == 0
        finally:
            await broker.stop()


async def _at_least(value, n: int) -> bool:  # type: ignore[no-untyped-def]
    return await value >= n


async def _account(client, h, aid):  # type: ignore[no-untyped-def]
    # A request may meet a connection the restart broke: that one answers 503, never 500.
    r = await client.get(f"/api/accounts/{aid}", headers=h)
    assert r.status_code in (200, 503), r.text
    return r.json() if r.status_code == 200 else None
