"""Integration config, validation, secrets, refresh results — real PostgreSQL and NATS."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import httpx
import nats
import psycopg
import pytest
from brokerlink_devkit.testing import wait_until
from brokerlink_shared.contracts.events import BalanceUpdated, IntegrationStatusChanged
from brokerlink_shared.messaging import EventPublisher, make_broker
from brokerlink_shared.subjects import Topology

from .conftest import ib_integration


def _ib() -> dict:  # type: ignore[type-arg]
    return ib_integration(account_code="U1234567")


SCHWAB_SECRET = "sch-secret-DO-NOT-LEAK-4711"
SCHWAB = {
    "type": "SCHWAB",
    "config": {
        "app_key": "app-key-1",
        "app_secret": SCHWAB_SECRET,
        "account_number": "12345678",
    },
}


def _libpq(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://")


async def _row_counts(api) -> tuple[int, int]:  # type: ignore[no-untyped-def]
    async with await psycopg.AsyncConnection.connect(
        _libpq(api.settings.database_url)
    ) as conn:
        audit = (
            await (await conn.execute("SELECT count(*) FROM audit_log")).fetchone()
        )[0]  # type: ignore[index]
        outbox = (await (await conn.execute("SELECT count(*) FROM outbox")).fetchone())[
            0
        ]  # type: ignore[index]
    return audit, outbox


@pytest.fixture
async def account(client: httpx.AsyncClient, new_user) -> tuple[dict[str, str], int]:  # type: ignore[no-untyped-def]
    h = await new_user(client)
    r = await client.post(
        "/api/accounts",
        headers=h,
        json={"name": "Broker", "currency": "USD", "account_number": "12345678"},
    )
    return h, r.json()["id"]


BAD_BODIES = [
    ("malformed json", b'{"type": "IB", "config": {', None),
    (
        "wrong type",
        {"type": "IB", "config": {"host": "gw", "port": "4001", "client_id": 1}},
        "port",
    ),
    (
        "port 0",
        {"type": "IB", "config": {"host": "gw", "port": 0, "client_id": 1}},
        "port",
    ),
    (
        "port 70000",
        {"type": "IB", "config": {"host": "gw", "port": 70000, "client_id": 1}},
        "port",
    ),
    (
        "host with scheme",
        {"type": "IB", "config": {"host": "http://gw", "port": 4001, "client_id": 1}},
        "host",
    ),
    (
        "negative client id",
        {"type": "IB", "config": {"host": "gw", "port": 4001, "client_id": -1}},
        "client_id",
    ),
    ("unknown type", {"type": "FIDELITY", "config": {}}, "type"),
    (
        "unknown field",
        {
            "type": "IB",
            "config": {"host": "gw", "port": 4001, "client_id": 1, "extra": 1},
        },
        "extra",
    ),
    (
        "client token",
        {
            "type": "SCHWAB",
            "config": {"app_key": "k", "app_secret": "s", "access_token": "t"},
        },
        "access_token",
    ),
    (
        "oversized",
        {"type": "IB", "config": {"host": "a" * 300, "port": 4001, "client_id": 1}},
        "host",
    ),
    (
        "bad account code",
        {
            "type": "IB",
            "config": {
                "host": "gw",
                "port": 4001,
                "client_id": 1,
                "account_code": "x y",
            },
        },
        "account_code",
    ),
]


@pytest.mark.parametrize(
    ("case", "body", "field"), BAD_BODIES, ids=[b[0] for b in BAD_BODIES]
)
async def test_bad_integration_input_is_refused_and_changes_nothing(
    client, api, account, case, body, field
) -> None:  # type: ignore[no-untyped-def]
    h, aid = account
    before = await _row_counts(api)
    if isinstance(body, bytes):
        r = await client.put(
            f"/api/accounts/{aid}/integration",
            headers={**h, "Content-Type": "application/json"},
            content=body,
        )
    else:
        r = await client.put(f"/api/accounts/{aid}/integration", headers=h, json=body)
    assert r.status_code == 422, r.text
    if field:
        assert field in r.text
    assert await _row_counts(api) == before
    assert (await client.get(f"/api/accounts/{aid}/integration", headers=h)).json()[
        "type"
    ] is None


async def test_schwab_first_time_needs_secret_then_keeps_it(client, account) -> None:  # type: ignore[no-untyped-def]
    h, aid = account
    r = await client.put(
        f"/api/accounts/{aid}/integration",
        headers=h,
        json={"type": "SCHWAB", "config": {"app_key": "k1"}},
    )
    assert r.status_code == 422 and r.json()["field"] == "config.app_secret"
    r = await client.put(f"/api/accounts/{aid}/integration", headers=h, json=SCHWAB)
    assert r.status_code == 200, r.text
    assert r.json()["config"]["app_secret"] == "********"
    assert SCHWAB_SECRET not in r.text
    # omitted or masked secret keeps the stored one
    r = await client.put(
        f"/api/accounts/{aid}/integration",
        headers=h,
        json={
            "type": "SCHWAB",
            "config": {"app_secret": "********", "account_number": "87654321"},
        },
    )
    assert r.status_code == 200 and r.json()["config"]["account_number"] == "87654321"
    got = await client.get(f"/api/accounts/{aid}", headers=h)
    assert got.json()["integration_type"] == "SCHWAB" and SCHWAB_SECRET not in got.text
    audit = (await client.get(f"/api/accounts/{aid}/audit", headers=h)).json()
    assert [a["action"] for a in audit][:2] == [
        "integration.update",
        "integration.create",
    ]
    assert "app_secret" in audit[1]["changed_fields"]
    assert SCHWAB_SECRET not in str(audit)


async def test_secrets_never_plaintext_in_db_or_on_bus(
    client, api, account, infra
) -> None:  # type: ignore[no-untyped-def]
    h, aid = account
    seen: list[bytes] = []
    nc = await nats.connect(infra.nats_url)

    async def collect(msg) -> None:  # type: ignore[no-untyped-def]
        seen.append(msg.subject.encode() + b" " + msg.data)

    await nc.subscribe(">", cb=collect)
    try:
        assert (
            await client.put(f"/api/accounts/{aid}/integration", headers=h, json=SCHWAB)
        ).status_code == 200
        await wait_until(
            lambda: any(b"integration.configured" in m for m in seen),
            timeout_s=10,
            message="event on the bus",
        )
        assert not any(SCHWAB_SECRET.encode() in m for m in seen)
        async with await psycopg.AsyncConnection.connect(
            _libpq(api.settings.database_url)
        ) as conn:
            for table in ("accounts", "outbox", "audit_log"):
                dump = await (
                    await conn.execute(f"SELECT t::text FROM {table} t")
                ).fetchall()
                assert SCHWAB_SECRET not in str(dump), table
    finally:
        await nc.close()


async def test_refresh_result_is_applied_once_and_never_regresses(
    client, api, account, infra
) -> None:  # type: ignore[no-untyped-def]
    h, aid = account
    IB = _ib()
    assert (
        await client.put(f"/api/accounts/{aid}/integration", headers=h, json=IB)
    ).status_code == 200
    r = await client.post(f"/api/accounts/{aid}/integration/refresh?wait=0", headers=h)
    assert r.status_code == 202, r.text
    refresh_id = r.json()["refresh_id"]
    user_id = (await client.get("/api/auth/me", headers=h)).json()["id"]
    topology = Topology(api.settings.namespace)
    broker = make_broker(infra.nats_url, topology, "fake-connector")
    await broker.connect()
    publisher = EventPublisher(broker, topology)
    now = datetime.now(UTC)
    if now.hour == 0:
        # the older balance (an hour earlier) must fall on the same UTC day, whose one
        # history row it must not overwrite; in the first hour of a day it would fill the day
        # before, rightly, and this test would count two rows
        now -= timedelta(hours=1)
    event = BalanceUpdated(
        user_id=user_id,
        account_id=aid,
        payload={
            "broker": "IB",
            "refresh_id": refresh_id,
            "as_of": now,
            "currency": "USD",
            "balance": "1234.56",
            "cash": [
                {"currency": "USD", "amount": "100"},
                {"currency": "HKD", "amount": "50"},
            ],
            "positions": [{"symbol": "AAPL", "quantity": "10", "market_value": "2000"}],
        },
    )
    try:
        await publisher.publish(event)
        status = await wait_until(
            lambda: _refresh_state(client, h, aid, refresh_id),
            timeout_s=10,
            message="refresh succeeded",
        )
        assert float(status["balance"]) == 1234.56
        # The same event again (new msg id so the broker does not drop it) is ignored by the consumer.
        await publisher.publish(event, msg_id=str(uuid.uuid4()))
        older = BalanceUpdated(
            user_id=user_id,
            account_id=aid,
            payload={
                "broker": "IB",
                "as_of": now - timedelta(hours=1),
                "currency": "USD",
                "balance": "1",
            },
        )
        await publisher.publish(older)
        marker = IntegrationStatusChanged(
            user_id=user_id,
            account_id=aid,
            payload={"broker": "IB", "status": "connected", "message": "ok"},
        )
        await publisher.publish(marker)
        await wait_until(
            lambda: _status_is(client, h, aid, "connected"),
            timeout_s=10,
            message="status consumed",
        )
        acc = (await client.get(f"/api/accounts/{aid}", headers=h)).json()
        assert float(acc["current_balance"]) == 1234.56
        hist = (await client.get(f"/api/accounts/{aid}/history", headers=h)).json()
        assert len(hist) == 1 and float(hist[0]["balance"]) == 1234.56
        cash = (
            await client.get(f"/api/accounts/{aid}/integration/cash", headers=h)
        ).json()
        assert {c["currency"] for c in cash} == {"USD", "HKD"}
        pos = (
            await client.get(f"/api/accounts/{aid}/integration/portfolio", headers=h)
        ).json()
        assert pos[0]["symbol"] == "AAPL"
    finally:
        await broker.stop()


async def _refresh_state(client, h, aid, refresh_id):  # type: ignore[no-untyped-def]
    r = await client.get(
        f"/api/accounts/{aid}/integration/refresh/{refresh_id}", headers=h
    )
    return (
        r.json() if r.status_code == 200 and r.json()["status"] == "succeeded" else None
    )


async def _status_is(client, h, aid, status):  # type: ignore[no-untyped-def]
    r = await client.get(f"/api/accounts/{aid}/integration", headers=h)
    return r.json()["status"] == status


async def test_test_without_connector_answers_clearly(client, account) -> None:  # type: ignore[no-untyped-def]
    h, aid = account
    assert (
        await client.post(f"/api/accounts/{aid}/integration/test", headers=h)
    ).status_code == 409
    await client.put(f"/api/accounts/{aid}/integration", headers=h, json=_ib())
    r = await client.post(f"/api/accounts/{aid}/integration/test", headers=h)
    assert (
        r.status_code == 200
        and r.json()["success"] is False
        and "connector" in r.json()["message"]
    )


async def test_bulk_refresh_job_counts(client, account) -> None:  # type: ignore[no-untyped-def]
    h, aid = account
    await client.put(f"/api/accounts/{aid}/integration", headers=h, json=_ib())
    before = (await client.get(f"/api/accounts/{aid}", headers=h)).json()["sync"]
    r = await client.post("/api/integrations/refresh", headers=h)
    assert r.status_code == 202 and r.json()["total"] == 1
    job = (
        await client.get(f"/api/integrations/refresh/{r.json()['job_id']}", headers=h)
    ).json()
    assert job["pending"] + job["done"] + job["failed"] == 1
    health = (await client.get("/api/integrations/health", headers=h)).json()
    assert health[0]["account_id"] == aid and health[0]["type"] == "IB"
    # the bulk path writes the account's state too (set-based, not through an ORM flush)
    shown = (await client.get(f"/api/accounts/{aid}", headers=h)).json()
    assert shown["sync"]["last_attempt_at"] > before["last_attempt_at"]
    assert shown["integration_config"]["host"] == _ib()["config"]["host"]


async def test_a_result_read_with_an_old_config_is_not_applied(
    client, api, account, infra
) -> None:  # type: ignore[no-untyped-def]
    h, aid = account
    IB = _ib()
    assert (
        await client.put(f"/api/accounts/{aid}/integration", headers=h, json=IB)
    ).status_code == 200
    refresh_id = (
        await client.post(f"/api/accounts/{aid}/integration/refresh?wait=0", headers=h)
    ).json()["refresh_id"]
    changed = {"type": "IB", "config": {**IB["config"], "account_code": "U7654321"}}
    assert (
        await client.put(f"/api/accounts/{aid}/integration", headers=h, json=changed)
    ).status_code == 200
    user_id = (await client.get("/api/auth/me", headers=h)).json()["id"]
    topology = Topology(api.settings.namespace)
    broker = make_broker(infra.nats_url, topology, "fake-connector")
    await broker.connect()
    try:
        late = BalanceUpdated(
            user_id=user_id,
            account_id=aid,
            payload={
                "broker": "IB",
                "refresh_id": refresh_id,
                "as_of": datetime.now(UTC),
                "currency": "USD",
                "balance": "999999",
            },
        )
        await EventPublisher(broker, topology).publish(late)

        async def settled() -> dict | None:
            r = await client.get(
                f"/api/accounts/{aid}/integration/refresh/{refresh_id}", headers=h
            )
            return r.json() if r.status_code == 502 else None

        failed = await wait_until(
            settled, timeout_s=10, message="stale refresh marked failed"
        )
        assert "changed" in failed["detail"]
        assert (
            float(
                (await client.get(f"/api/accounts/{aid}", headers=h)).json()[
                    "current_balance"
                ]
            )
            != 999999
        )
        assert (
            await client.get(f"/api/accounts/{aid}/history", headers=h)
        ).json() == []
    finally:
        await broker.stop()
