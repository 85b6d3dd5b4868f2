"""Every refresh ends: unanswered ones are failed by the sweeper with the reason, bulk job counts
add up, and a late answer still updates the account — real PostgreSQL and NATS."""

from __future__ import annotations

from datetime import UTC, datetime

import httpx
import nats
import psycopg
from account_api.migrate import upgrade
from brokerlink_devkit.testing import wait_until
from brokerlink_shared.contracts.events import BalanceUpdated
from brokerlink_shared.messaging import EventPublisher, make_broker
from brokerlink_shared.subjects import Broker, Topology

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


async def _accounts(client: httpx.AsyncClient, h: dict[str, str], n: int) -> list[int]:
    ids = []
    for i in range(n):
        aid = (
            await client.post(
                "/api/accounts", headers=h, json={"name": f"A{i}", "currency": "USD"}
            )
        ).json()["id"]
        r = await client.put(f"/api/accounts/{aid}/integration", headers=h, json=IB)
        assert r.status_code == 200, r.text
        ids.append(aid)
    return ids


async def _job_finished(client, h, job_id):  # type: ignore[no-untyped-def]
    job = (await client.get(f"/api/integrations/refresh/{job_id}", headers=h)).json()
    return job if job["pending"] == 0 else None


async def test_unanswered_refreshes_end_with_their_reason(infra, api_factory) -> None:  # type: ignore[no-untyped-def]
    database = infra.new_database("sweep")
    upgrade(database)
    settings = api_factory.settings(
        database, f"{infra.namespace}sweep", refresh_deadline_s=1.0
    )
    topology = Topology(settings.namespace)
    async with (
        api_factory.run(settings) as api,
        httpx.AsyncClient(base_url=api.base_url, timeout=30) as client,
    ):
        h = await register_user(client)
        ids = await _accounts(client, h, 3)

        # No IB connector runs: the bulk job still completes, every refresh failed, with why.
        job = (await client.post("/api/integrations/refresh", headers=h)).json()
        assert job["total"] == 3
        done = await wait_until(
            lambda: _job_finished(client, h, job["job_id"]),
            timeout_s=30,
            message="the job to complete",
        )
        assert (done["done"], done["failed"], done["pending"]) == (0, 3, 0)
        async with await psycopg.AsyncConnection.connect(
            database.replace("postgresql+psycopg://", "postgresql://", 1)
        ) as conn:
            messages = await (
                await conn.execute(
                    "SELECT DISTINCT message FROM refreshes WHERE job_id = %s",
                    (job["job_id"],),
                )
            ).fetchall()
        assert messages == [
            ("connector unavailable: no IB connector is running; retry later",)
        ]

        # A connector that is up but never answers: "timed out".
        nc = await nats.connect(infra.nats_url)

        async def alive(msg) -> None:  # type: ignore[no-untyped-def]
            await msg.respond(b"{}")

        health = await nc.subscribe(
            topology.health_subject(Broker.IB.connector), cb=alive
        )
        try:
            r = await client.post(
                f"/api/accounts/{ids[0]}/integration/refresh?wait=0", headers=h
            )
            refresh_id = r.json()["refresh_id"]

            async def ended() -> dict | None:
                r = await client.get(
                    f"/api/accounts/{ids[0]}/integration/refresh/{refresh_id}",
                    headers=h,
                )
                return r.json() if r.status_code == 502 else None

            failed = await wait_until(ended, timeout_s=30, message="timed out")
            assert failed["detail"].startswith("timed out: the IB connector")
        finally:
            await health.unsubscribe()
            await nc.close()

        # The late answer still lands on the account; the refresh stays ended.
        user_id = (await client.get("/api/auth/me", headers=h)).json()["id"]
        broker = make_broker(infra.nats_url, topology, "late-connector")
        await broker.connect()
        try:
            await EventPublisher(broker, topology).publish(
                BalanceUpdated(
                    user_id=user_id,
                    account_id=ids[0],
                    payload={
                        "broker": "IB",
                        "refresh_id": refresh_id,
                        "as_of": datetime.now(UTC),
                        "currency": "USD",
                        "balance": "77.5",
                    },
                )
            )

            async def balance() -> float | None:
                r = await client.get(f"/api/accounts/{ids[0]}", headers=h)
                value = r.json()["current_balance"]
                return float(value) if value is not None else None

            assert (
                await wait_until(balance, timeout_s=30, message="late balance") == 77.5
            )
            r = await client.get(
                f"/api/accounts/{ids[0]}/integration/refresh/{refresh_id}", headers=h
            )
            assert r.status_code == 502
        finally:
            await broker.stop()


async def test_reason_texts() -> None:
    from account_api.integrations.lifecycle import refresh_overdue_reason

    assert refresh_overdue_reason(
        "IB", connector_answers=False, deadline_s=120
    ).startswith("connector unavailable")
    assert refresh_overdue_reason("SCHWAB", connector_answers=True, deadline_s=120) == (
        "timed out: the SCHWAB connector did not answer within 120 s; retry"
    )
