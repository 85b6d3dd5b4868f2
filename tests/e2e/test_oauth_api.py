"""The Schwab OAuth dance driven through account-api's REST API (no browser): start → the
simulator's consent page → our callback → connected; a replayed or forged `state` is refused."""

from __future__ import annotations

import re
import secrets
from html import unescape
from typing import Any
from urllib.parse import parse_qs, urljoin, urlparse

import httpx

APP_KEY, APP_SECRET, NUMBER = "e2e-app-key", "e2e-app-secret-123", "87654321"


async def _user(client: httpx.AsyncClient) -> dict[str, str]:
    email, password = f"oauth{secrets.token_hex(5)}@example.com", "oauth-password-1"
    assert (
        await client.post(
            "/api/auth/register",
            json={"email": email, "password": password, "name": "O"},
        )
    ).status_code == 201
    token = (
        await client.post(
            "/api/auth/login", json={"email": email, "password": password}
        )
    ).json()["access_token"]
    return {"Authorization": f"Bearer {token}"}


async def _consent(authorize_url: str) -> str:
    """Open the simulator's consent page, press Allow; returns our callback URL."""
    async with httpx.AsyncClient(timeout=10) as sim:
        page = await sim.get(authorize_url)
        assert page.status_code == 200, page.text
        allow = unescape(
            re.search(r'id="allow-default" href="([^"]+)"', page.text).group(1)
        )  # type: ignore[union-attr]
        redirect = await sim.get(urljoin(authorize_url, allow))
        assert redirect.status_code in (302, 303, 307), redirect.text
        return redirect.headers["location"]


async def test_oauth_dance_from_the_api(stack: Any) -> None:
    async with httpx.AsyncClient(base_url=stack.base_url, timeout=30) as client:
        h = await _user(client)
        aid = (
            await client.post(
                "/api/accounts",
                headers=h,
                json={"name": "Schwab", "currency": "USD", "account_number": NUMBER},
            )
        ).json()["id"]
        body = {
            "type": "SCHWAB",
            "config": {
                "app_key": APP_KEY,
                "app_secret": APP_SECRET,
                "account_number": NUMBER,
            },
        }
        assert (
            await client.put(f"/api/accounts/{aid}/integration", headers=h, json=body)
        ).status_code == 200

        start = await client.post(
            f"/api/accounts/{aid}/integration/oauth/start", headers=h
        )
        assert start.status_code == 200, start.text
        callback = await _consent(start.json()["authorize_url"])
        assert urlparse(callback).path == "/api/integrations/schwab/callback"
        done = await client.get(callback)
        assert done.status_code == 303 and "oauth=ok" in done.headers["location"], (
            done.headers
        )

        integration = (
            await client.get(f"/api/accounts/{aid}/integration", headers=h)
        ).json()
        assert integration["status"] == "connected"
        assert (
            integration["config"]["has_tokens"] is True
            and integration["config"]["account_hash"]
        )
        assert integration["token_refresh_expires_at"]

        # The same state again (a replay) and a forged one are refused, and change nothing.
        replay = await client.get(callback, headers={"Accept": "application/json"})
        assert replay.status_code == 422 and "state" in replay.text
        query = parse_qs(urlparse(callback).query)
        forged = await client.get(
            "/api/integrations/schwab/callback",
            params={"code": query["code"][0], "state": query["state"][0][:-3] + "abc"},
            headers={"Accept": "application/json"},
        )
        assert forged.status_code == 422 and "state" in forged.text

        # With tokens stored, a refresh reaches Schwab through the connector.
        refreshed = await client.post(
            f"/api/accounts/{aid}/integration/refresh?wait=10", headers=h
        )
        assert refreshed.status_code == 200, refreshed.text
        assert refreshed.json()["balance"] == "25750.7500"

        audit = (await client.get(f"/api/accounts/{aid}/audit", headers=h)).json()
        actions = [a["action"] for a in audit]
        assert "integration.reauth" in actions and "integration.reauth_start" in actions
