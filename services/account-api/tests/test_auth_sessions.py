"""Sign-in sessions through the REST API: rotating refresh tokens (reuse ends the family),
sign-out, sign-out everywhere and password change stop access tokens within seconds on every
worker (a second account-api instance on the same database stands for another worker), and
sign-in is throttled per e-mail address and per client."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator

import httpx
import psycopg
import pytest
from account_api.migrate import upgrade
from brokerlink_devkit.testing import wait_until

PASSWORD = "correct horse battery"


async def _register(client: httpx.AsyncClient) -> str:
    email = f"s{secrets.token_hex(6)}@example.com"
    r = await client.post(
        "/api/auth/register", json={"email": email, "password": PASSWORD, "name": "S"}
    )
    assert r.status_code == 201, r.text
    return email


async def _login(
    client: httpx.AsyncClient, email: str, password: str = PASSWORD
) -> dict:  # type: ignore[type-arg]
    r = await client.post(
        "/api/auth/login", json={"email": email, "password": password}
    )
    assert r.status_code == 200, r.text
    return r.json()


def _bearer(tokens: dict) -> dict[str, str]:  # type: ignore[type-arg]
    return {"Authorization": f"Bearer {tokens['access_token']}"}


async def _status(
    client: httpx.AsyncClient, tokens: dict, path: str = "/api/auth/me"
) -> int:  # type: ignore[type-arg]
    return (await client.get(path, headers=_bearer(tokens))).status_code


@pytest.fixture
async def other_worker(api, api_factory) -> AsyncIterator[httpx.AsyncClient]:  # type: ignore[no-untyped-def]
    """A second account-api on the same database and secret: another worker's cache."""
    settings = api_factory.settings(
        api.settings.database_url,
        api.settings.namespace,
        jwt_secret=api.settings.jwt_secret.get_secret_value(),
    )
    async with (
        api_factory.run(settings) as running,
        httpx.AsyncClient(base_url=running.base_url, timeout=30) as client,
    ):
        yield client


async def _gone_on(
    client: httpx.AsyncClient, tokens: dict, what: str, path: str = "/api/auth/me"
) -> None:  # type: ignore[type-arg]
    async def refused() -> bool:
        return await _status(client, tokens, path) == 401

    await wait_until(refused, timeout_s=10, message=f"{what} refused on every worker")


async def test_refresh_rotates_and_reuse_ends_the_family(
    client: httpx.AsyncClient, other_worker: httpx.AsyncClient
) -> None:
    email = await _register(client)
    first = await _login(client, email)
    assert await _status(other_worker, first) == 200  # cached there now
    r = await client.post(
        "/api/auth/refresh", json={"refresh_token": first["refresh_token"]}
    )
    assert r.status_code == 200, r.text
    second = r.json()
    assert second["refresh_token"] != first["refresh_token"]
    assert await _status(client, second) == 200
    # the old refresh token again: someone else has it, so the whole session ends
    r = await client.post(
        "/api/auth/refresh", json={"refresh_token": first["refresh_token"]}
    )
    assert r.status_code == 401 and "already used" in r.json()["detail"]
    r = await client.post(
        "/api/auth/refresh", json={"refresh_token": second["refresh_token"]}
    )
    assert r.status_code == 401
    assert await _status(client, second) == 401
    await _gone_on(other_worker, first, "a reused family's access token")
    # a forged token for a real session id changes nothing else and is refused
    r = await client.post("/api/auth/refresh", json={"refresh_token": "A" * 64})
    assert r.status_code == 401


async def test_logout_and_logout_all(
    client: httpx.AsyncClient, other_worker: httpx.AsyncClient
) -> None:
    email = await _register(client)
    laptop, phone, tablet = (
        await _login(client, email),
        await _login(client, email),
        await _login(client, email),
    )
    for tokens in (laptop, phone, tablet):
        assert await _status(other_worker, tokens) == 200
    r = await client.post("/api/auth/logout", headers=_bearer(laptop))
    assert r.status_code == 204
    assert await _status(client, laptop) == 401  # at once on this worker
    await _gone_on(other_worker, laptop, "a signed-out access token")
    r = await client.post(
        "/api/auth/refresh", json={"refresh_token": laptop["refresh_token"]}
    )
    assert r.status_code == 401
    assert await _status(client, phone) == 200  # other sessions carry on

    r = await other_worker.post("/api/auth/logout-all", headers=_bearer(phone))
    assert r.status_code == 204
    for tokens in (phone, tablet):
        await _gone_on(client, tokens, "every session after sign-out everywhere")
        r = await client.post(
            "/api/auth/refresh", json={"refresh_token": tokens["refresh_token"]}
        )
        assert r.status_code == 401
    assert (
        await client.post(
            "/api/auth/login", json={"email": email, "password": PASSWORD}
        )
    ).status_code == 200


async def test_password_change_signs_out_the_other_sessions(
    client: httpx.AsyncClient, other_worker: httpx.AsyncClient
) -> None:
    email = await _register(client)
    here, elsewhere = await _login(client, email), await _login(client, email)
    assert await _status(other_worker, elsewhere) == 200
    new_password = "another horse battery"
    r = await client.post(
        "/api/auth/password",
        headers=_bearer(here),
        json={"current_password": "wrong password", "new_password": new_password},
    )
    assert r.status_code == 422 and r.json()["field"] == "current_password"
    assert "wrong password" not in r.text.replace("the current password is wrong", "")
    r = await client.post(
        "/api/auth/password",
        headers=_bearer(here),
        json={"current_password": PASSWORD, "new_password": new_password},
    )
    assert r.status_code == 204, r.text
    assert await _status(client, here) == 200
    await _gone_on(other_worker, elsewhere, "another session after a password change")
    r = await client.post(
        "/api/auth/refresh", json={"refresh_token": elsewhere["refresh_token"]}
    )
    assert r.status_code == 401
    r = await client.post(
        "/api/auth/login", json={"email": email, "password": PASSWORD}
    )
    assert r.status_code == 401
    await _login(client, email, new_password)


async def test_login_is_throttled_per_account_with_retry_after(
    client: httpx.AsyncClient, api
) -> None:  # type: ignore[no-untyped-def]
    email = await _register(client)
    unknown = f"nobody{secrets.token_hex(4)}@example.com"
    limit = api.settings.login_account_max_failures
    for target in (email, unknown):
        for _ in range(limit):
            r = await client.post(
                "/api/auth/login", json={"email": target, "password": "guess-guess"}
            )
            assert (
                r.status_code == 401 and r.json()["detail"] == "wrong email or password"
            )
        r = await client.post(
            "/api/auth/login", json={"email": target, "password": PASSWORD}
        )
        assert r.status_code == 429, r.text
        assert 0 < int(r.headers["Retry-After"]) <= api.settings.login_account_window_s
    # the address's owner is throttled, others are not
    other = await _register(client)
    await _login(client, other)


async def test_login_is_throttled_per_client(infra, api, api_factory) -> None:  # type: ignore[no-untyped-def]
    database = infra.new_database("throttle")  # its own counters for 127.0.0.1
    upgrade(database)
    settings = api_factory.settings(
        database,
        api.settings.namespace,
        login_client_max_failures=3,
        login_client_window_s=60,
    )
    async with (
        api_factory.run(settings) as running,
        httpx.AsyncClient(base_url=running.base_url, timeout=30) as client,
    ):
        email = await _register(client)
        for n in range(3):
            r = await client.post(
                "/api/auth/login",
                json={
                    "email": f"spray{n}{secrets.token_hex(3)}@example.com",
                    "password": "x",
                },
            )
            assert r.status_code == 401
        r = await client.post(
            "/api/auth/login", json={"email": email, "password": PASSWORD}
        )
        assert r.status_code == 429 and int(r.headers["Retry-After"]) <= 60


async def test_health_answers_while_logins_hash(
    client: httpx.AsyncClient,
) -> None:
    """Hashing runs on a thread pool: /healthz is served while many logins are in flight."""
    email = await _register(client)
    logins = [
        asyncio.create_task(
            client.post("/api/auth/login", json={"email": email, "password": PASSWORD})
        )
        for _ in range(12)
    ]
    health = await client.get("/healthz")
    assert health.status_code == 200
    assert not all(t.done() for t in logins)  # answered before the logins finished
    results = await asyncio.gather(*logins)
    assert all(r.status_code == 200 for r in results)


async def test_a_deleted_users_tokens_stop_working_everywhere(
    api, client: httpx.AsyncClient, other_worker: httpx.AsyncClient
) -> None:  # type: ignore[no-untyped-def]
    """Whatever deletes the user (an operator, the migrator's rollback): a database trigger
    records the revocation, and every worker's cached token check sees it."""
    email = await _register(client)
    tokens = await _login(client, email)
    # a route that does not itself look the user up: only the token check can refuse
    assert await _status(other_worker, tokens, "/api/accounts") == 200
    url = api.settings.database_url.replace("postgresql+psycopg://", "postgresql://")
    async with await psycopg.AsyncConnection.connect(url) as conn:
        await conn.execute("DELETE FROM users WHERE email = %s", (email,))
        await conn.commit()
    for worker in (other_worker, client):
        await _gone_on(worker, tokens, "a deleted user's token", "/api/accounts")
