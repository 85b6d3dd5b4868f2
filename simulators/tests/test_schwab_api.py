"""The Schwab API simulator over HTTP: OAuth, accounts, clock, rate limit, faults, admin API, CLI."""

from __future__ import annotations

import asyncio
import base64
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from brokerlink_simulators.schwab_api import SchwabApiSimulator
from schwab.auth import client_from_access_functions

DEMO = Path(__file__).parents[1] / "scenarios" / "schwab_demo.json"
APP, SECRET = "demo-schwab-app", "demo-schwab-secret"
CALLBACK = "https://127.0.0.1:8443/api/integrations/schwab/callback"


@pytest.fixture
async def sim() -> AsyncIterator[SchwabApiSimulator]:
    simulator = SchwabApiSimulator(DEMO)
    await simulator.start()
    try:
        yield simulator
    finally:
        await simulator.stop()


@pytest.fixture
async def http(sim: SchwabApiSimulator) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=sim.base_url) as client:
        yield client


def _basic(key: str = APP, secret: str = SECRET) -> dict[str, str]:
    return {
        "Authorization": "Basic "
        + base64.b64encode(f"{key}:{secret}".encode()).decode()
    }


async def _code(http: httpx.AsyncClient, state: str = "s1") -> str:
    page = await http.get(
        "/v1/oauth/authorize",
        params={
            "response_type": "code",
            "client_id": APP,
            "redirect_uri": CALLBACK,
            "state": state,
        },
    )
    assert page.status_code == 200
    assert 'id="allow"' in page.text
    href = (
        page.text.split('id="allow-default" href="')[1]
        .split('"')[0]
        .replace("&amp;", "&")
    )
    redirect = await http.get(href)
    assert redirect.status_code == 302
    location = urlsplit(redirect.headers["location"])
    assert f"{location.scheme}://{location.netloc}{location.path}" == CALLBACK
    query = parse_qs(location.query)
    assert query["state"] == [state]
    return query["code"][0]


async def _tokens(http: httpx.AsyncClient, code: str) -> dict[str, Any]:
    resp = await http.post(
        "/v1/oauth/token",
        data={
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": CALLBACK,
        },
        headers=_basic(),
    )
    assert resp.status_code == 200, resp.text
    return dict(resp.json())


def _rewrite_to(base_url: str) -> Any:
    target = httpx.URL(base_url)

    async def hook(request: httpx.Request) -> None:
        request.url = request.url.copy_with(
            scheme=target.scheme, host=target.host, port=target.port
        )

    return hook


async def test_oauth_code_flow_and_errors(http: httpx.AsyncClient) -> None:
    code = await _code(http)
    tokens = await _tokens(http, code)
    assert tokens["expires_in"] == 1800
    assert tokens["token_type"] == "Bearer"
    assert {"access_token", "refresh_token", "scope", "id_token"} <= tokens.keys()

    reused = await http.post(
        "/v1/oauth/token",
        data={
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": CALLBACK,
        },
        headers=_basic(),
    )
    assert reused.status_code == 400
    assert reused.json()["error"] == "invalid_grant"

    bad_secret = await http.post(
        "/v1/oauth/token",
        data={"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]},
        headers=_basic(secret="nope"),
    )
    assert bad_secret.status_code == 401
    assert bad_secret.json()["error"] == "invalid_client"

    unknown = await http.get(
        "/v1/oauth/authorize", params={"client_id": "who", "redirect_uri": CALLBACK}
    )
    assert unknown.status_code == 400


async def test_schwab_py_reads_accounts(
    sim: SchwabApiSimulator, http: httpx.AsyncClient
) -> None:
    tokens = await _tokens(http, await _code(http))
    store: dict[str, Any] = {"creation_timestamp": 1, "token": tokens}
    client = client_from_access_functions(
        APP, SECRET, lambda: store, lambda t, *a, **k: store.update(t), asyncio=True
    )
    client.session.event_hooks = {
        "request": [_rewrite_to(sim.base_url)],
        "response": [],
    }
    try:
        numbers = (await client.get_account_numbers()).json()
        assert [n["accountNumber"] for n in numbers] == ["12345678", "87654321"]
        assert all(len(n["hashValue"]) == 64 for n in numbers)

        accounts = (
            await client.get_accounts(fields=[client.Account.Fields.POSITIONS])
        ).json()
        first = accounts[0]["securitiesAccount"]
        assert first["accountNumber"] == "12345678"
        assert first["currentBalances"]["liquidationValue"] == 52340.75
        assert first["currentBalances"]["cashBalance"] == 10250.25
        assert [p["instrument"]["symbol"] for p in first["positions"]] == [
            "AAPL",
            "MSFT",
            "SCHD",
        ]
        assert "hashValue" not in first

        without = (await client.get_accounts()).json()
        assert "positions" not in without[0]["securitiesAccount"]

        one = (
            await client.get_account(
                numbers[1]["hashValue"], fields=[client.Account.Fields.POSITIONS]
            )
        ).json()
        assert one["securitiesAccount"]["accountNumber"] == "87654321"
        assert (await client.get_account("F" * 64)).status_code == 404
    finally:
        await client.close_async_session()
    counters = (await http.get("/admin/counters")).json()
    assert counters["requests"]["accounts"][APP] == 2
    assert counters["requests"]["accountNumbers"][APP] == 1
    assert counters["responses"]["account"][APP] == {"200": 1, "404": 1}


async def test_clock_expires_access_then_refresh_token(http: httpx.AsyncClient) -> None:
    tokens = await _tokens(http, await _code(http))
    bearer = {"Authorization": f"Bearer {tokens['access_token']}"}
    assert (await http.get("/trader/v1/accounts", headers=bearer)).status_code == 200

    await http.post("/admin/clock", json={"advance_s": 31 * 60})
    assert (await http.get("/trader/v1/accounts", headers=bearer)).status_code == 401
    refreshed = await http.post(
        "/v1/oauth/token",
        data={"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]},
        headers=_basic(),
    )
    assert refreshed.status_code == 200
    new_bearer = {"Authorization": f"Bearer {refreshed.json()['access_token']}"}
    assert (
        await http.get("/trader/v1/accounts", headers=new_bearer)
    ).status_code == 200

    await http.post("/admin/clock", json={"offset_s": 7 * 24 * 3600 + 1})
    dead = await http.post(
        "/v1/oauth/token",
        data={"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]},
        headers=_basic(),
    )
    assert dead.status_code == 400
    assert dead.json()["error"] == "invalid_grant"
    assert (await http.get("/admin/clock")).json()["offset_s"] == 7 * 24 * 3600 + 1


async def test_rate_limit_faults_and_counters(http: httpx.AsyncClient) -> None:
    tokens = await _tokens(http, await _code(http))
    bearer = {"Authorization": f"Bearer {tokens['access_token']}"}
    await http.post("/admin/rate-limit", json={"requests_per_minute": 3})
    statuses = [
        (await http.get("/trader/v1/accounts", headers=bearer)).status_code
        for _ in range(4)
    ]
    assert statuses == [200, 200, 200, 429]
    limited = await http.get("/trader/v1/accounts", headers=bearer)
    assert limited.status_code == 429
    assert 1 <= int(limited.headers["Retry-After"]) <= 60

    await http.post("/admin/counters/reset")
    await http.post("/admin/rate-limit", json={"requests_per_minute": 120})
    await http.post(
        "/admin/faults", json={"endpoint": "accounts", "status": 503, "count": 2}
    )
    await http.post(
        "/admin/faults",
        json={"endpoint": "accountNumbers", "status": 429, "retry_after_s": 2},
    )
    assert (await http.get("/trader/v1/accounts", headers=bearer)).status_code == 503
    assert (await http.get("/trader/v1/accounts", headers=bearer)).status_code == 503
    assert (await http.get("/trader/v1/accounts", headers=bearer)).status_code == 200
    fault_429 = await http.get("/trader/v1/accounts/accountNumbers", headers=bearer)
    assert (fault_429.status_code, fault_429.headers["Retry-After"]) == (429, "2")

    await http.post("/admin/faults", json={"endpoint": "accounts", "delay_s": 0.3})
    started = asyncio.get_running_loop().time()
    assert (await http.get("/trader/v1/accounts", headers=bearer)).status_code == 200
    assert asyncio.get_running_loop().time() - started >= 0.3

    counters = (await http.get("/admin/counters")).json()
    assert counters["responses"]["accounts"][APP] == {"503": 2, "200": 2}
    assert counters["requests"]["accountNumbers"][APP] == 1


async def test_admin_changes_world_at_run_time(http: httpx.AsyncClient) -> None:
    await http.post(
        "/admin/apps",
        json={
            "app_key": "other-app",
            "app_secret": "other-secret",
            "default_login": "bob",
        },
    )
    await http.post(
        "/admin/logins",
        json={
            "login_id": "bob",
            "accounts": [
                {
                    "account_number": "55550000",
                    "liquidation_value": 10,
                    "cash_balance": 10,
                }
            ],
        },
    )
    await http.patch(
        "/admin/accounts/55550000",
        json={
            "liquidation_value": 2500.5,
            "positions": [{"symbol": "IBM", "quantity": 3, "average_price": 100}],
        },
    )
    consent = (
        await http.post(
            "/admin/consent", json={"app_key": "other-app", "redirect_uri": CALLBACK}
        )
    ).json()
    resp = await http.post(
        "/v1/oauth/token",
        data={
            "grant_type": "authorization_code",
            "code": consent["code"],
            "redirect_uri": CALLBACK,
        },
        headers=_basic("other-app", "other-secret"),
    )
    bearer = {"Authorization": f"Bearer {resp.json()['access_token']}"}
    accounts = (
        await http.get(
            "/trader/v1/accounts", params={"fields": "positions"}, headers=bearer
        )
    ).json()
    assert len(accounts) == 1
    sa = accounts[0]["securitiesAccount"]
    assert sa["currentBalances"]["liquidationValue"] == 2500.5
    assert sa["positions"][0]["marketValue"] == 300

    await http.post("/admin/tokens/revoke", json={"app_key": "other-app"})
    assert (await http.get("/trader/v1/accounts", headers=bearer)).status_code == 401
    await http.post("/admin/reset")
    assert [a["app_key"] for a in (await http.get("/admin/state")).json()["apps"]] == [
        APP
    ]


async def test_cli_prints_base_url_and_stops_on_sigterm() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "brokerlink_simulators.schwab_api",
        "--scenario",
        str(DEMO),
        "--port",
        "0",
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 20)
        base_url = json.loads(line)["base_url"]
        async with httpx.AsyncClient() as http:
            state = (await http.get(f"{base_url}/admin/state")).json()
        assert state["apps"][0]["app_key"] == APP
    finally:
        proc.terminate()
        assert await asyncio.wait_for(proc.wait(), 10) == 0
