"""Deprecated legacy routes (/api/ib/*, /api/schwab/*) over per-account integrations."""

from __future__ import annotations

import logging

import httpx
import pytest
from account_api.compat.service import usage

from .conftest import gateway_port


def _ib_settings() -> dict[str, object]:
    return {"host": "127.0.0.1", "port": gateway_port(), "client_id": 7}


def _assert_deprecated(r: httpx.Response, successor: str | None = None) -> None:
    assert r.headers["Deprecation"].startswith("@")
    assert r.headers["Sunset"].endswith("GMT")
    assert 'rel="successor-version"' in r.headers["Link"]
    if successor:
        assert r.headers["Link"] == f'<{successor}>; rel="successor-version"'


async def _account(
    client: httpx.AsyncClient, h: dict[str, str], **extra: object
) -> int:
    r = await client.post(
        "/api/accounts", headers=h, json={"name": "Broker", "currency": "USD", **extra}
    )
    assert r.status_code == 201, r.text
    return int(r.json()["id"])


async def test_ib_settings_round_trip(client: httpx.AsyncClient, new_user) -> None:
    alice, bob = await new_user(client), await new_user(client)
    aid = await _account(client, alice, account_number="U1234567")
    IB_SETTINGS = _ib_settings()

    r = await client.get("/api/ib/settings", headers=alice)
    assert r.status_code == 200 and r.json()["configured"] is False
    _assert_deprecated(r)

    r = await client.post(
        "/api/ib/settings",
        headers=alice,
        json={**IB_SETTINGS, "target_account_id": aid, "name": "old client field"},
    )
    assert r.status_code == 200, r.text
    _assert_deprecated(r, f"/api/accounts/{aid}/integration")
    legacy = r.json()
    new = (await client.get(f"/api/accounts/{aid}/integration", headers=alice)).json()
    assert new["type"] == "IB"
    assert {k: new["config"][k] for k in ("host", "port", "client_id")} == IB_SETTINGS
    assert {k: legacy[k] for k in ("host", "port", "client_id")} == IB_SETTINGS
    assert legacy["target_account_id"] == aid and legacy["status"] == new["status"]

    r = await client.get("/api/ib/settings", headers=alice)
    assert r.json()["host"] == "127.0.0.1" and r.json()["target_account_id"] == aid
    audit = (await client.get(f"/api/accounts/{aid}/audit", headers=alice)).json()
    assert audit[0]["action"] == "integration.create"

    # validation is the PUT route's: a bad host is a 422, with the headers too
    r = await client.post(
        "/api/ib/settings",
        headers=alice,
        json={**IB_SETTINGS, "host": "http://x/y", "target_account_id": aid},
    )
    assert r.status_code == 422
    _assert_deprecated(r)
    # another user's account is invisible, and so are the settings
    r = await client.post(
        "/api/ib/settings", headers=bob, json={**IB_SETTINGS, "target_account_id": aid}
    )
    assert r.status_code == 404
    _assert_deprecated(r)
    assert (await client.get("/api/ib/settings", headers=bob)).json()[
        "configured"
    ] is False
    assert (await client.get("/api/ib/balance", headers=bob)).json()["accounts"] == []
    assert (await client.get(f"/api/accounts/{aid}/integration", headers=alice)).json()[
        "config"
    ]["host"] == "127.0.0.1"


async def test_ib_balance_and_refresh(client: httpx.AsyncClient, new_user) -> None:
    h = await new_user(client)
    aid = await _account(client, h, original_capital="10", current_balance="12.5")
    IB_SETTINGS = _ib_settings()
    assert (
        await client.post("/api/ib/portfolio/refresh", headers=h)
    ).status_code == 409
    await client.put(
        f"/api/accounts/{aid}/integration",
        headers=h,
        json={"type": "IB", "config": IB_SETTINGS},
    )
    r = await client.get("/api/ib/balance", headers=h)
    assert r.status_code == 200
    _assert_deprecated(r, f"/api/accounts/{aid}/integration")
    account = (await client.get(f"/api/accounts/{aid}", headers=h)).json()
    assert float(r.json()["balance"]) == float(account["current_balance"]) == 12.5
    assert r.json()["currency"] == "USD" and r.json()["account_id"] == aid
    r = await client.post("/api/ib/portfolio/refresh", headers=h)
    assert r.status_code == 202, r.text
    _assert_deprecated(r, "/api/integrations/refresh")
    [item] = r.json()["refreshes"]
    assert item["account_id"] == aid and item["status"] in {
        "pending",
        "succeeded",
        "failed",
    }


async def test_schwab_settings_and_token_status(
    client: httpx.AsyncClient, new_user
) -> None:
    alice, bob = await new_user(client), await new_user(client)
    r = await client.post(
        "/api/schwab/settings",
        headers=alice,
        json={"app_key": "legacykey1", "app_secret": "s3cret"},
    )
    assert r.status_code == 409
    _assert_deprecated(r)
    aid = await _account(client, alice, account_number="12345678")
    r = await client.put(
        f"/api/accounts/{aid}/integration",
        headers=alice,
        json={
            "type": "SCHWAB",
            "config": {
                "app_key": "firstkey01",
                "app_secret": "x",
                "account_number": "12345678",
            },
        },
    )
    assert r.status_code == 200, r.text

    r = await client.post(
        "/api/schwab/settings",
        headers=alice,
        json={"app_key": "legacykey1", "app_secret": "s3cret"},
    )
    assert r.status_code == 200, r.text
    _assert_deprecated(r, f"/api/accounts/{aid}/integration")
    body = r.json()
    assert "s3cret" not in r.text
    new = (await client.get(f"/api/accounts/{aid}/integration", headers=alice)).json()
    assert body["app_key"] == new["config"]["app_key"] == "lega…"
    assert body["has_tokens"] is new["config"]["has_tokens"] is False

    r = await client.get("/api/schwab/token-status", headers=alice)
    assert r.status_code == 200
    _assert_deprecated(r)
    assert r.json() == {
        **r.json(),
        "configured": True,
        "has_tokens": False,
        "needs_reauth": True,
    }
    assert (await client.get("/api/schwab/settings", headers=bob)).json()[
        "configured"
    ] is False
    assert (await client.get("/api/schwab/token-status", headers=bob)).json()[
        "configured"
    ] is False


async def test_unauthenticated_still_deprecated(client: httpx.AsyncClient) -> None:
    r = await client.get("/api/schwab/settings")
    assert r.status_code == 401
    _assert_deprecated(r)


def test_usage_logged_once_per_user_per_day(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="account_api.compat"):
        assert usage.use(987654321, "GET /api/ib/settings") is True
        assert usage.use(987654321, "GET /api/ib/settings") is False
        assert usage.use(987654322, "GET /api/ib/settings") is True
    assert (
        len([r for r in caplog.records if r.getMessage() == "deprecated route used"])
        == 2
    )
