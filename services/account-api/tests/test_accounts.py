"""Accounts, auth and history routes against real PostgreSQL and NATS."""

from __future__ import annotations

import httpx


async def test_healthz_reports_db_and_bus(client: httpx.AsyncClient, new_user) -> None:
    from brokerlink_devkit.testing import wait_until

    async def healthy() -> dict | None:
        r = await client.get("/healthz")
        return r.json() if r.status_code == 200 else None

    body = await wait_until(healthy, timeout_s=15, message="healthz 200")
    assert body["database"] == "ok"
    assert body["bus"] == "connected"


async def test_account_crud_and_isolation(client: httpx.AsyncClient, new_user) -> None:
    alice = await new_user(client)
    bob = await new_user(client)
    r = await client.post(
        "/api/accounts",
        headers=alice,
        json={"name": "Main", "currency": "usd", "original_capital": "1000.50"},
    )
    assert r.status_code == 201, r.text
    account = r.json()
    assert account["currency"] == "USD"
    assert (
        account["current_balance"] == "1000.5000"
        or float(account["current_balance"]) == 1000.5
    )
    aid = account["id"]
    assert (await client.get(f"/api/accounts/{aid}", headers=alice)).status_code == 200
    assert [
        a["id"] for a in (await client.get("/api/accounts", headers=alice)).json()
    ] == [aid]
    for method, path in [
        ("GET", f"/api/accounts/{aid}"),
        ("PUT", f"/api/accounts/{aid}"),
        ("DELETE", f"/api/accounts/{aid}"),
        ("GET", f"/api/accounts/{aid}/history"),
        ("GET", f"/api/accounts/{aid}/integration"),
        ("GET", f"/api/accounts/{aid}/audit"),
    ]:
        r = await client.request(
            method, path, headers=bob, json={} if method == "PUT" else None
        )
        assert r.status_code == 404, (method, path, r.status_code)
    assert (await client.get("/api/accounts", headers=bob)).json() == []
    r = await client.put(
        f"/api/accounts/{aid}", headers=alice, json={"name": "Renamed"}
    )
    assert r.json()["name"] == "Renamed"
    assert (
        await client.delete(f"/api/accounts/{aid}", headers=alice)
    ).status_code == 204
    assert (await client.get(f"/api/accounts/{aid}", headers=alice)).status_code == 404


async def test_history_one_row_per_day(client: httpx.AsyncClient, new_user) -> None:
    h = await new_user(client)
    aid = (
        await client.post(
            "/api/accounts", headers=h, json={"name": "A", "currency": "EUR"}
        )
    ).json()["id"]
    r1 = await client.post(
        f"/api/accounts/{aid}/history",
        headers=h,
        json={"date": "2026-11-01", "balance": "10"},
    )
    r2 = await client.post(
        f"/api/accounts/{aid}/history",
        headers=h,
        json={"date": "2026-11-01", "balance": "12"},
    )
    assert r1.status_code == r2.status_code == 201
    rows = (await client.get(f"/api/accounts/{aid}/history", headers=h)).json()
    assert len(rows) == 1 and float(rows[0]["balance"]) == 12
    hid = rows[0]["id"]
    assert (
        await client.put(
            f"/api/accounts/{aid}/history/{hid}", headers=h, json={"note": "x"}
        )
    ).json()["note"] == "x"
    assert (
        await client.delete(f"/api/accounts/{aid}/history/{hid}", headers=h)
    ).status_code == 204


async def test_list_with_history_matches_the_history_route(
    client: httpx.AsyncClient, new_user
) -> None:
    h = await new_user(client)
    other = await new_user(client)
    ids = []
    for name in ("A", "B"):
        r = await client.post(
            "/api/accounts", headers=h, json={"name": name, "currency": "USD"}
        )
        ids.append(r.json()["id"])
    for day, balance in (
        ("2026-09-01", "10"),
        ("2026-10-01", "11.5"),
        ("2026-11-01", "12"),
    ):
        r = await client.post(
            f"/api/accounts/{ids[0]}/history",
            headers=h,
            json={"date": day, "balance": balance, "note": f"on {day}"},
        )
        assert r.status_code == 201, r.text
    await client.post(
        f"/api/accounts/{ids[0]}/history",
        headers=other,
        json={"date": "2026-11-02", "balance": "1"},
    )  # another user's write to this account is refused and never shows up

    listed = (
        await client.get("/api/accounts", headers=h, params={"include": "history"})
    ).json()
    assert [a["id"] for a in listed] == ids
    plain = (await client.get("/api/accounts", headers=h)).json()
    assert [{k: v for k, v in a.items() if k != "history"} for a in listed] == plain
    for account in listed:
        route = (
            await client.get(f"/api/accounts/{account['id']}/history", headers=h)
        ).json()
        assert [
            (r["id"], r["date"], r["note"], r["source"]) for r in account["history"]
        ] == [(r["id"], r["date"], r["note"], r["source"]) for r in route]
        assert [float(r["balance"]) for r in account["history"]] == [
            float(r["balance"]) for r in route
        ]
    assert [r["date"] for r in listed[0]["history"]] == [
        "2026-11-01",
        "2026-10-01",
        "2026-09-01",
    ]
    assert listed[1]["history"] == []
    newest = (
        await client.get(
            "/api/accounts",
            headers=h,
            params={"include": "history", "history_limit": 1},
        )
    ).json()
    assert [r["date"] for r in newest[0]["history"]] == ["2026-11-01"]
    bad = await client.get("/api/accounts", headers=h, params={"include": "secrets"})
    assert bad.status_code == 422 and "include" in bad.text
    assert (await client.get("/api/accounts", headers=other)).json() == []


async def test_auth_flow(client: httpx.AsyncClient, new_user) -> None:
    r = await client.post(
        "/api/auth/register",
        json={"email": "not-an-email", "password": "longenough", "name": "x"},
    )
    assert r.status_code == 422
    assert (await client.get("/api/accounts")).status_code == 401
    assert (
        await client.get("/api/accounts", headers={"Authorization": "Bearer nope"})
    ).status_code == 401
    h = await new_user(client)
    me = (await client.get("/api/auth/me", headers=h)).json()
    assert me["email"].endswith("@example.com")
