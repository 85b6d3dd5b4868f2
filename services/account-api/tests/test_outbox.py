"""The outbox survives a NATS outage: changes are accepted while NATS is down (the API stays
live and ready) and arrive once, in per-account order, when it returns."""

from __future__ import annotations

from collections import defaultdict

import httpx
import nats
import orjson
import psycopg
from account_api.migrate import upgrade
from account_api.outbox.relay import RELAY_LOCK_ID
from brokerlink_devkit.devstack.embedded import EmbeddedNats
from brokerlink_devkit.testing import wait_until
from brokerlink_shared.subjects import COMMANDS, Topology


async def test_hundred_changes_during_nats_outage_arrive_once_in_order(
    infra, tmp_path, new_user, api_factory
) -> None:  # type: ignore[no-untyped-def]
    private_nats = EmbeddedNats(tmp_path / "nats")
    private_nats.start()
    db = infra.new_database("outbox")
    upgrade(db)
    settings = api_factory.settings(
        db, f"{infra.namespace}ob", nats_url=private_nats.url
    )
    try:
        async with (
            api_factory.run(settings) as running,
            httpx.AsyncClient(base_url=running.base_url, timeout=30) as client,
        ):
            await wait_until(
                lambda: _bus_up(client), timeout_s=20, message="API connected to NATS"
            )
            h = await new_user(client)
            ids = []
            for i in range(5):
                r = await client.post(
                    "/api/accounts",
                    headers=h,
                    json={"name": f"A{i}", "currency": "USD"},
                )
                ids.append(r.json()["id"])
            private_nats.stop()
            await wait_until(
                lambda: _bus_down(client), timeout_s=20, message="API sees NATS down"
            )
            # the outage fails neither liveness nor readiness: the API keeps taking writes
            assert (await client.get("/livez")).status_code == 200
            ready = await client.get("/readyz")
            assert ready.status_code == 200 and ready.json()["bus"] == "disconnected"
            assert (await client.get("/healthz")).status_code == 503
            for n in range(20):
                for aid in ids:
                    body = {
                        "type": "IB",
                        "config": {
                            "host": "127.0.0.1",
                            "port": 4000 + n + 1,
                            "client_id": 1,
                        },
                    }
                    r = await client.put(
                        f"/api/accounts/{aid}/integration", headers=h, json=body
                    )
                    assert r.status_code == 200, r.text
            private_nats.start()
            await wait_until(
                lambda: _outbox_drained(client), timeout_s=60, message="outbox drained"
            )
        topology = Topology(settings.namespace)
        nc = await nats.connect(private_nats.url)
        try:
            js = nc.jetstream()
            info = await js.stream_info(topology.stream_name(COMMANDS))
            # each save is an integration.configured and the first refresh it starts
            assert info.state.messages == 200
            sub = await js.pull_subscribe(
                f"{settings.namespace}.>", stream=topology.stream_name(COMMANDS)
            )
            events = []
            while len(events) < 200:
                for msg in await sub.fetch(200, timeout=5):
                    events.append(orjson.loads(msg.data))
                    await msg.ack()
        finally:
            await nc.close()
        assert len({e["event_id"] for e in events}) == 200
        versions: dict[int, list[int]] = defaultdict(list)
        for e in events:
            if e["type"] == "integration.configured":
                versions[e["account_id"]].append(e["payload"]["version"])
        for aid in ids:
            assert versions[aid] == list(range(1, 21)), versions[aid]
    finally:
        private_nats.stop()


async def _bus_up(client: httpx.AsyncClient) -> bool:
    return (await client.get("/healthz")).json().get("bus") == "connected"


async def _bus_down(client: httpx.AsyncClient) -> bool:
    return (await client.get("/healthz")).json().get("bus") == "disconnected"


async def _outbox_drained(client: httpx.AsyncClient) -> bool:
    body = (await client.get("/healthz")).json()
    return body.get("bus") == "connected" and body.get("outbox_pending") == 0


async def test_relay_that_loses_its_lock_connection_leads_again_and_publishes(
    infra, new_user, api_factory
) -> None:  # type: ignore[no-untyped-def]
    """The idle probe runs on the connection holding the leader's lock: when PostgreSQL drops
    that connection, the relay reconnects, takes the lock again and publishes what was staged."""
    db = infra.new_database("relaylock")
    upgrade(db)
    libpq = db.replace("postgresql+psycopg://", "postgresql://")
    settings = api_factory.settings(db, f"{infra.namespace}rl")
    lock_holder = "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND objid = %s AND granted"
    async with (
        api_factory.run(settings) as running,
        httpx.AsyncClient(base_url=running.base_url, timeout=30) as client,
        await psycopg.AsyncConnection.connect(libpq, autocommit=True) as admin,
    ):

        async def holder() -> int | None:
            row = await (await admin.execute(lock_holder, (RELAY_LOCK_ID,))).fetchone()
            return int(row[0]) if row else None

        await wait_until(holder, timeout_s=20, message="a relay holds the lock")
        first = await holder()
        await admin.execute("SELECT pg_terminate_backend(%s)", (first,))

        async def new_leader() -> bool:
            return (await holder()) not in (None, first)

        await wait_until(new_leader, timeout_s=30, message="the relay leads again")
        h = await new_user(client)
        r = await client.post(
            "/api/accounts", headers=h, json={"name": "A", "currency": "USD"}
        )
        body = {
            "type": "IB",
            "config": {"host": "127.0.0.1", "port": 4001, "client_id": 1},
        }
        assert (
            await client.put(
                f"/api/accounts/{r.json()['id']}/integration", headers=h, json=body
            )
        ).status_code == 200
        await wait_until(
            lambda: _outbox_drained(client), timeout_s=30, message="outbox drained"
        )
