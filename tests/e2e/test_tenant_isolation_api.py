"""Tenant isolation through the REST API on the running stack (account-api, ib-connector, the
IB Gateway simulator): a second user can never point an integration at the first user's
gateway — with the same client id, another one, or that user's account code — and the
connector reaches only the allowed networks, with uniform errors for unproven addresses."""

from __future__ import annotations

import secrets
from decimal import Decimal
from typing import Any

import httpx
from brokerlink_devkit.devstack.embedded import free_port

OWNER_CODE = "U3100001"


async def _user(client: httpx.AsyncClient) -> tuple[dict[str, str], str]:
    email, password = f"tenant{secrets.token_hex(5)}@example.com", "tenant-password-1"
    assert (
        await client.post(
            "/api/auth/register",
            json={"email": email, "password": password, "name": "Tenant Person"},
        )
    ).status_code == 201
    token = (
        await client.post(
            "/api/auth/login", json={"email": email, "password": password}
        )
    ).json()["access_token"]
    return {"Authorization": f"Bearer {token}"}, email


async def _account(client: httpx.AsyncClient, headers: dict[str, str]) -> int:
    r = await client.post(
        "/api/accounts", headers=headers, json={"name": "IB", "currency": "USD"}
    )
    assert r.status_code == 201, r.text
    return int(r.json()["id"])


def _ib(port: int, client_id: int, code: str | None = None, host: str = "127.0.0.1"):  # type: ignore[no-untyped-def]
    config: dict[str, Any] = {"host": host, "port": port, "client_id": client_id}
    if code:
        config["account_code"] = code
    return {"type": "IB", "config": config}


async def test_a_second_user_cannot_use_the_first_users_gateway(stack: Any) -> None:
    from brokerlink_simulators.ib_gateway import AccountSpec, GatewaySpec

    gateway = await stack.ib_sim.add_gateway(
        GatewaySpec(
            name="tenant-owner",
            accounts=[AccountSpec(code=OWNER_CODE, cash={"USD": Decimal("31000")})],
        )
    )
    async with httpx.AsyncClient(base_url=stack.base_url, timeout=30) as client:
        owner, owner_email = await _user(client)
        other, _ = await _user(client)
        owner_account = await _account(client, owner)
        r = await client.put(
            f"/api/accounts/{owner_account}/integration",
            headers=owner,
            json=_ib(gateway.port, 11, OWNER_CODE),
        )
        assert r.status_code == 200, r.text
        r = await client.post(
            f"/api/accounts/{owner_account}/integration/refresh?wait=10", headers=owner
        )
        assert r.status_code == 200 and r.json()["status"] == "succeeded", r.text
        owner_before = (
            await client.get(f"/api/accounts/{owner_account}", headers=owner)
        ).json()
        assert Decimal(owner_before["current_balance"]) == Decimal(31000)
        owner_id = (await client.get("/api/auth/me", headers=owner)).json()["id"]

        other_account = await _account(client, other)
        attempts = {
            "same client id": _ib(gateway.port, 11),
            "another client id": _ib(gateway.port, 12),
            "the owner's account code": _ib(gateway.port, 13, OWNER_CODE),
            "another name for the host": _ib(gateway.port, 14, host="localhost"),
        }
        for case, body in attempts.items():
            r = await client.put(
                f"/api/accounts/{other_account}/integration", headers=other, json=body
            )
            assert r.status_code == 409, (case, r.text)
            assert r.json()["code"] == "gateway_owned_elsewhere", case
            for leak in (OWNER_CODE, owner_email, "Tenant Person", f" {owner_id}"):
                assert leak not in r.text, (case, leak)
        # as a backup of an address of its own, and through the legacy route, too
        r = await client.put(
            f"/api/accounts/{other_account}/integration",
            headers=other,
            json={
                "type": "IB",
                "config": {
                    "host": "127.0.0.1",
                    "port": free_port(),
                    "client_id": 1,
                    "backups": [{"host": "127.0.0.1", "port": gateway.port}],
                },
            },
        )
        assert r.status_code == 409 and r.json()["field"] == "config.backups.0.host"
        r = await client.post(
            "/api/ib/settings",
            headers=other,
            json={
                "host": "127.0.0.1",
                "port": gateway.port,
                "client_id": 15,
                "target_account_id": other_account,
            },
        )
        assert r.status_code == 409 and OWNER_CODE not in r.text

        # nothing changed for either user, and nothing of the owner's reached the other
        integration = (
            await client.get(
                f"/api/accounts/{other_account}/integration", headers=other
            )
        ).json()
        assert integration["type"] is None
        assert (
            await client.get("/api/integrations/health", headers=other)
        ).json() == []
        job = (await client.post("/api/integrations/refresh", headers=other)).json()
        assert job["total"] == 0
        everything = str(
            [
                (await client.get(path, headers=other)).text
                for path in (
                    "/api/accounts",
                    f"/api/accounts/{other_account}",
                    f"/api/accounts/{other_account}/audit",
                    "/api/ib/settings",
                    "/api/ib/balance",
                )
            ]
        )
        assert OWNER_CODE not in everything and "31000" not in everything
        owner_after = (
            await client.get(f"/api/accounts/{owner_account}", headers=owner)
        ).json()
        assert owner_after["current_balance"] == owner_before["current_balance"]
        assert owner_after["integration_type"] == "IB"
        assert gateway.client_ids == [11] or sorted(set(gateway.client_ids)) == [11]


async def test_hosts_outside_the_allowed_networks_are_refused(stack: Any) -> None:
    async with httpx.AsyncClient(base_url=stack.base_url, timeout=30) as client:
        user, _ = await _user(client)
        account = await _account(client, user)
        for host in ("169.254.169.254", "10.0.0.1", "::ffff:169.254.169.254"):
            r = await client.put(
                f"/api/accounts/{account}/integration",
                headers=user,
                json=_ib(4001, 1, host=host),
            )
            assert r.status_code == 422, (host, r.text)
            assert r.json()["field"] == "config.host"
            assert r.json()["detail"][0]["type"] == "host_not_allowed"
            assert host not in r.text
        r = await client.put(
            f"/api/accounts/{account}/integration",
            headers=user,
            json=_ib(4001, 1, host="no-such-gateway.invalid"),
        )
        assert r.status_code == 422 and r.json()["field"] == "config.host"
        assert (
            await client.get(f"/api/accounts/{account}/integration", headers=user)
        ).json()["type"] is None


async def test_connection_errors_are_uniform_for_unproven_addresses(
    stack: Any,
) -> None:
    """Closed port, open non-IB port: the test route cannot tell them apart."""
    import asyncio

    async def silent(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        writer.write(b"SSH-2.0-OpenSSH_9.6\r\n")  # a banner, not IB
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    open_port = server.sockets[0].getsockname()[1]
    closed_port = free_port()
    messages = {}
    try:
        async with httpx.AsyncClient(base_url=stack.base_url, timeout=30) as client:
            user, _ = await _user(client)
            for name, port in (("open", open_port), ("closed", closed_port)):
                account = await _account(client, user)
                assert (
                    await client.put(
                        f"/api/accounts/{account}/integration",
                        headers=user,
                        json=_ib(port, 1),
                    )
                ).status_code == 200
                r = await client.post(
                    f"/api/accounts/{account}/integration/test", headers=user
                )
                assert r.status_code == 200 and r.json()["success"] is False
                messages[name] = r.json()["message"].replace(str(port), "PORT")
    finally:
        server.close()
    assert messages["open"] == messages["closed"], messages
    assert "SSH" not in messages["open"]
