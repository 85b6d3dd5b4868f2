"""Security review findings, proved against the running API (real PostgreSQL and NATS): one
gateway reached under another loopback address or name, and a rejected e-mail echoed in a 422."""

from __future__ import annotations

import asyncio

import psycopg
from brokerlink_devkit.devstack.embedded import free_port
from psycopg.types.json import Jsonb

from .conftest import gateway_port


async def _account(client, headers) -> int:  # type: ignore[no-untyped-def]
    r = await client.post(
        "/api/accounts",
        json={"name": "IB", "currency": "USD", "account_type": "INVESTMENT"},
        headers=headers,
    )
    assert r.status_code == 201, r.text
    return int(r.json()["id"])


async def test_second_user_cannot_reach_a_gateway_through_another_loopback_address(
    client, new_user
) -> None:  # type: ignore[no-untyped-def]
    port = free_port()  # bound below: a free port, never a fixed one
    # One IB Gateway, listening as the real one does on every interface.
    gateway = await asyncio.start_server(lambda r, w: w.close(), "0.0.0.0", port)
    try:
        alice, bob = await new_user(client), await new_user(client)
        alice_account = await _account(client, alice)
        r = await client.put(
            f"/api/accounts/{alice_account}/integration",
            json={
                "type": "IB",
                "config": {"host": "127.0.0.1", "port": port, "client_id": 1},
            },
            headers=alice,
        )
        assert r.status_code == 200, r.text

        # 127.0.0.2 is the same machine, so the same gateway: Bob reaches Alice's socket.
        _, writer = await asyncio.open_connection("127.0.0.2", port)
        writer.close()

        bob_account = await _account(client, bob)
        r = await client.put(
            f"/api/accounts/{bob_account}/integration",
            json={
                "type": "IB",
                "config": {"host": "127.0.0.2", "port": port, "client_id": 2},
            },
            headers=bob,
        )
        assert r.status_code == 409, (
            r.text
        )  # today: 200, Bob's integration reads Alice's gateway
        assert r.json()["code"] == "gateway_owned_elsewhere"
    finally:
        gateway.close()
        await gateway.wait_closed()


async def test_a_rejected_email_is_not_echoed_in_the_422(client) -> None:  # type: ignore[no-untyped-def]
    for email in ("someone@[10.20.30.999]", "someone@xn--secretpart.com"):
        r = await client.post(
            "/api/auth/register",
            json={"email": email, "password": "correct horse battery", "name": "n"},
        )
        assert r.status_code == 422, r.text
        assert r.json()["field"] == "email"
        # today: "...not valid: It is not an IPv4 address (Octet 999 (> 255) not permitted
        # in '10.20.30.999')..." and the IDNA decoding of the domain
        assert "10.20.30.999" not in r.text, r.text
        assert "xn--secretpart" not in r.text and "હ" not in r.text, r.text


async def test_a_migrated_gateway_cannot_be_taken_under_another_name(
    client, api, new_user
) -> None:  # type: ignore[no-untyped-def]
    port = gateway_port()
    alice, bob = await new_user(client), await new_user(client)
    alice_account = await _account(client, alice)
    # What brokerlink-migrate writes for a legacy IB integration: the config on the account,
    # no gateway_endpoints row.
    url = api.settings.database_url.replace("postgresql+psycopg://", "postgresql://")
    async with await psycopg.AsyncConnection.connect(url) as conn:
        await conn.execute(
            "UPDATE accounts SET integration_type = 'IB', integration_status = 'pending', "
            "integration_config = %s WHERE id = %s",
            (
                Jsonb(
                    {"host": "localhost", "port": port, "client_id": 1}
                    | {"read_only": True, "backups": [], "account_code": None}
                ),
                alice_account,
            ),
        )
        await conn.commit()

    bob_account = await _account(client, bob)
    r = await client.put(
        f"/api/accounts/{bob_account}/integration",
        json={
            "type": "IB",
            "config": {"host": "127.0.0.1", "port": port, "client_id": 2},
        },
        headers=bob,
    )
    assert r.status_code == 409, r.text  # today: 200, Bob now owns Alice's gateway


async def test_a_slow_name_server_holds_no_lock_on_the_account(
    client, api, new_user, slow_name_server
) -> None:  # type: ignore[no-untyped-def]
    """A gateway's host is resolved before the request's transaction opens: while the name
    server takes its time (up to 5 s), the account's row is not locked, so the refresh
    results stored for it (and every other account in their batch) do not wait on it."""
    headers = await new_user(client)
    account = await _account(client, headers)
    put = asyncio.create_task(
        client.put(
            f"/api/accounts/{account}/integration",
            json={
                "type": "IB",
                "config": {
                    "host": slow_name_server.host,
                    "port": gateway_port(),
                    "client_id": 1,
                },
            },
            headers=headers,
        )
    )
    try:
        await slow_name_server.asked()
        url = api.settings.database_url.replace(
            "postgresql+psycopg://", "postgresql://"
        )
        async with await psycopg.AsyncConnection.connect(url) as conn:
            # before: LockNotAvailable, the request held the row for the whole lookup
            await conn.execute(
                "SELECT id FROM accounts WHERE id = %s FOR UPDATE NOWAIT", (account,)
            )
            await conn.rollback()
    finally:
        slow_name_server.release.set()
    r = await put
    assert r.status_code == 200, r.text
    assert r.json()["config"]["host"] == slow_name_server.host
