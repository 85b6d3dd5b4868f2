"""IB Flex through the whole stack, over account-api's REST API (no browser): configured like any
type, its connection test, a bulk refresh that costs IB one statement for the accounts its query
covers, and an expired token shown as needing a new token."""

from __future__ import annotations

import secrets
from decimal import Decimal
from typing import Any

import httpx
from brokerlink_devkit.testing import wait_until

from .conftest import (
    FLEX_ACCOUNTS,
    FLEX_EXPIRED_QUERY,
    FLEX_EXPIRED_TOKEN,
    FLEX_QUERY,
    FLEX_TOKEN,
)


async def _user(client: httpx.AsyncClient) -> dict[str, str]:
    email, password = f"flex{secrets.token_hex(5)}@example.com", "flex-password-1"
    assert (
        await client.post(
            "/api/auth/register",
            json={"email": email, "password": password, "name": "F"},
        )
    ).status_code == 201
    token = (
        await client.post(
            "/api/auth/login", json={"email": email, "password": password}
        )
    ).json()["access_token"]
    return {"Authorization": f"Bearer {token}"}


async def _flex_account(
    client: httpx.AsyncClient, h: dict[str, str], token: str, query: str, code: str
) -> int:
    aid = (
        await client.post(
            "/api/accounts", headers=h, json={"name": f"Flex {code}", "currency": "USD"}
        )
    ).json()["id"]
    r = await client.put(
        f"/api/accounts/{aid}/integration",
        headers=h,
        json={
            "type": "IB_FLEX",
            "config": {"token": token, "query_id": query, "account_code": code},
        },
    )
    assert r.status_code == 200, r.text
    assert r.json()["config"]["token"] == "********" and token not in r.text
    return int(aid)


async def test_bulk_refresh_of_a_multi_account_query(stack: Any) -> None:
    async with httpx.AsyncClient(base_url=stack.base_url, timeout=60) as client:
        h = await _user(client)
        ids = {
            code: await _flex_account(client, h, FLEX_TOKEN, FLEX_QUERY, code)
            for code in FLEX_ACCOUNTS
        }
        before = stack.flex_sim.state.counters[FLEX_TOKEN].statements
        job = await client.post("/api/integrations/refresh", headers=h)
        assert job.status_code in (200, 202), job.text

        async def balances() -> dict[str, Decimal] | None:
            out = {}
            for code, aid in ids.items():
                sync = (
                    await client.get(f"/api/accounts/{aid}/integration", headers=h)
                ).json()
                if sync["last_success_at"] is None:  # no balance recorded yet
                    return None
                account = (await client.get(f"/api/accounts/{aid}", headers=h)).json()
                out[code] = Decimal(account["current_balance"])
            return out

        got = await wait_until(balances, timeout_s=60, message="both balances")
        assert got == {code: Decimal(str(nav)) for code, nav in FLEX_ACCOUNTS.items()}
        # the connection test right after is answered from the same statement
        test = await client.post(
            f"/api/accounts/{ids['U5550002']}/integration/test", headers=h
        )
        assert test.status_code == 200 and test.json()["success"], test.text
        assert "U5550002" in test.json()["message"]
        # one statement for the job's two accounts and the test
        assert stack.flex_sim.state.counters[FLEX_TOKEN].statements - before == 1
        assert stack.flex_sim.state.counters[FLEX_TOKEN].throttled == 0


async def test_expired_token_asks_for_a_new_token(stack: Any) -> None:
    async with httpx.AsyncClient(base_url=stack.base_url, timeout=60) as client:
        h = await _user(client)
        aid = await _flex_account(
            client, h, FLEX_EXPIRED_TOKEN, FLEX_EXPIRED_QUERY, "U5550003"
        )
        r = await client.post(
            f"/api/accounts/{aid}/integration/refresh?wait=30", headers=h
        )
        # a refresh that failed within the wait is a 502 naming the broker's reason
        assert r.status_code == 502 and "expired" in r.json()["detail"], r.text

        async def integration() -> dict[str, Any] | None:
            body = (
                await client.get(f"/api/accounts/{aid}/integration", headers=h)
            ).json()
            return body if body["status"] == "reauth_required" else None

        body = await wait_until(integration, timeout_s=60, message="reauth_required")
        assert "expired" in body["last_error"]
        assert "Flex Web Service Configuration" in body["last_error"]
