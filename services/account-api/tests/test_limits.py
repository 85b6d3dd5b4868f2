"""Limits, all settings: accounts and integrations per user, tests and refreshes per account
per minute (429 + Retry-After), bulk refreshes per user, and the request body size (413)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from account_api.migrate import upgrade

from .conftest import ib_integration, register_user


@pytest.fixture
async def strict(infra, api, api_factory) -> AsyncIterator[httpx.AsyncClient]:  # type: ignore[no-untyped-def]
    database = infra.new_database("limits")
    upgrade(database)
    settings = api_factory.settings(
        database,
        api.settings.namespace,
        max_accounts_per_user=3,
        max_integrations_per_user=2,
        tests_per_account_per_minute=2,
        refreshes_per_account_per_minute=2,
        bulk_refreshes_per_user_per_minute=1,
        max_request_body_bytes=4096,
        integration_test_timeout_s=0.5,
    )
    async with (
        api_factory.run(settings) as running,
        httpx.AsyncClient(base_url=running.base_url, timeout=30) as client,
    ):
        yield client


async def test_quotas_and_rates(strict: httpx.AsyncClient) -> None:
    client = strict
    h = await register_user(client)
    ids = []
    for n in range(3):
        r = await client.post(
            "/api/accounts", headers=h, json={"name": f"A{n}", "currency": "USD"}
        )
        assert r.status_code == 201, r.text
        ids.append(r.json()["id"])
    r = await client.post(
        "/api/accounts", headers=h, json={"name": "A3", "currency": "USD"}
    )
    assert r.status_code == 409 and r.json()["code"] == "limit_reached"

    for aid in ids[:2]:
        r = await client.put(
            f"/api/accounts/{aid}/integration", headers=h, json=ib_integration()
        )
        assert r.status_code == 200, r.text
    r = await client.put(
        f"/api/accounts/{ids[2]}/integration", headers=h, json=ib_integration()
    )
    assert r.status_code == 409 and r.json()["code"] == "limit_reached"
    # changing an existing integration is not a new one
    r = await client.put(
        f"/api/accounts/{ids[0]}/integration", headers=h, json=ib_integration()
    )
    assert r.status_code == 200

    aid = ids[0]
    for _ in range(2):
        r = await client.post(
            f"/api/accounts/{aid}/integration/refresh?wait=0", headers=h
        )
        assert r.status_code == 202, r.text
    r = await client.post(f"/api/accounts/{aid}/integration/refresh?wait=0", headers=h)
    assert r.status_code == 429 and 0 < int(r.headers["Retry-After"]) <= 60
    # another account has its own budget
    r = await client.post(
        f"/api/accounts/{ids[1]}/integration/refresh?wait=0", headers=h
    )
    assert r.status_code == 202

    for _ in range(2):
        r = await client.post(f"/api/accounts/{aid}/integration/test", headers=h)
        assert r.status_code == 200
    r = await client.post(f"/api/accounts/{aid}/integration/test", headers=h)
    assert r.status_code == 429 and "Retry-After" in r.headers

    assert (
        await client.post("/api/integrations/refresh", headers=h)
    ).status_code == 202
    r = await client.post("/api/integrations/refresh", headers=h)
    assert r.status_code == 429

    # another user cannot spend the owner's budget: 404 before any counting
    other = await register_user(client)
    r = await client.post(
        f"/api/accounts/{ids[1]}/integration/refresh?wait=0", headers=other
    )
    assert r.status_code == 404
    r = await client.post(
        f"/api/accounts/{ids[1]}/integration/refresh?wait=0", headers=h
    )
    assert r.status_code == 202


async def test_request_body_size(strict: httpx.AsyncClient) -> None:
    client = strict
    h = await register_user(client)
    big = {"name": "x" * 5000, "currency": "USD"}
    r = await client.post("/api/accounts", headers=h, json=big)
    assert r.status_code == 413 and r.json()["code"] == "body_too_large"
    assert "xxxx" not in r.text

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: streamed
        yield b'{"name": "'
        for _ in range(10):
            yield b"y" * 1000
        yield b'", "currency": "USD"}'

    r = await client.post(
        "/api/accounts",
        headers={**h, "Content-Type": "application/json"},
        content=chunks(),
    )
    assert r.status_code == 413
    assert (await client.get("/api/accounts", headers=h)).json() == []
