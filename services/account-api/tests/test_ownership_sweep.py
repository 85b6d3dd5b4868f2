"""An automatic sweep over the OpenAPI document: every route that takes an id answers another
user with 404 — with the owner's ids alone, and with the caller's own account id combined with
the owner's sub-resource id — and the owner's data is unchanged afterwards.

A new route with a request body needs a valid example below: the sweep fails until it has one,
so no route escapes it."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import psycopg

from .conftest import ib_integration

# A valid body for every route with a request body and a path id; `{mine}` is the caller's
# own account id (so only the owner check can refuse).
VALID_BODIES: dict[tuple[str, str], Any] = {
    ("PUT", "/api/accounts/{account_id}"): {
        "name": "taken over",
        "current_balance": "1",
    },
    ("POST", "/api/accounts/{account_id}/history"): {
        "date": "2026-01-02",
        "balance": "1",
    },
    ("PUT", "/api/accounts/{account_id}/history/{history_id}"): {"balance": "2"},
    ("PUT", "/api/accounts/{account_id}/integration"): "ib",
    # a dry test of unsaved settings: another user's account is a 404 all the same
    ("POST", "/api/accounts/{account_id}/integration/test"): "ib",
    ("POST", "/api/integrations/pending-links/{link_id}/link"): {
        "account_id": "{mine}"
    },
}


async def _owner_world(
    api, client: httpx.AsyncClient, owner: dict[str, str]
) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    account = (
        await client.post(
            "/api/accounts",
            headers=owner,
            json={"name": "Owner", "currency": "USD", "current_balance": "500"},
        )
    ).json()["id"]
    history = (
        await client.post(
            f"/api/accounts/{account}/history",
            headers=owner,
            json={"date": "2026-01-01", "balance": "500"},
        )
    ).json()["id"]
    assert (
        await client.put(
            f"/api/accounts/{account}/integration",
            headers=owner,
            json=ib_integration(account_code="U4400001"),
        )
    ).status_code == 200
    refresh = (
        await client.post(
            f"/api/accounts/{account}/integration/refresh?wait=0", headers=owner
        )
    ).json()["refresh_id"]
    job = (await client.post("/api/integrations/refresh", headers=owner)).json()[
        "job_id"
    ]
    user_id = (await client.get("/api/auth/me", headers=owner)).json()["id"]
    async with await psycopg.AsyncConnection.connect(
        api.settings.database_url.replace("postgresql+psycopg://", "postgresql://")
    ) as conn:
        row = await (
            await conn.execute(
                """INSERT INTO pending_links (user_id, integration_type, config, reason,
                       suggestions, legacy_table, legacy_id)
                   VALUES (%s, 'IB', %s::jsonb, 'no target', '{}', 'ib_connections', %s)
                   RETURNING id""",
                (
                    user_id,
                    json.dumps({"host": "127.0.0.1", "port": 4999, "client_id": 1}),
                    int(time.time() * 1000) % 10**9 + 7,
                ),
            )
        ).fetchone()
        await conn.commit()
    assert row is not None
    return {
        "account_id": account,
        "history_id": history,
        "refresh_id": refresh,
        "job_id": job,
        "link_id": row[0],
    }


async def _snapshot(
    client: httpx.AsyncClient, owner: dict[str, str], ids: dict[str, Any]
) -> list[str]:
    a = ids["account_id"]
    paths = [
        f"/api/accounts/{a}",
        f"/api/accounts/{a}/history",
        f"/api/accounts/{a}/integration",
        f"/api/accounts/{a}/audit",
        f"/api/accounts/{a}/integration/refresh/{ids['refresh_id']}",
        f"/api/integrations/refresh/{ids['job_id']}",
        "/api/integrations/pending-links",
        "/api/accounts",
    ]
    return [(await client.get(p, headers=owner)).text for p in paths]


async def test_every_route_with_an_id_is_404_for_another_user(
    api, client: httpx.AsyncClient, new_user
) -> None:  # type: ignore[no-untyped-def]
    owner, other = await new_user(client), await new_user(client)
    ids = await _owner_world(api, client, owner)
    mine = (
        await client.post(
            "/api/accounts", headers=other, json={"name": "Mine", "currency": "USD"}
        )
    ).json()["id"]
    before = await _snapshot(client, owner, ids)
    spec = (await client.get("/openapi.json")).json()

    swept = []
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            names = [
                p["name"] for p in operation.get("parameters", []) if p["in"] == "path"
            ]
            if not names:
                continue
            unknown = set(names) - set(ids)
            assert not unknown, f"{method} {path}: no owner's id for {unknown}; add one"
            body = None
            if "requestBody" in operation:
                key = (method.upper(), path)
                assert key in VALID_BODIES, f"{key}: add a valid example body"
                body = VALID_BODIES[key]
                body = (
                    ib_integration()
                    if body == "ib"
                    else json.loads(json.dumps(body).replace('"{mine}"', str(mine)))
                )
            variants = [dict(ids)]
            if "account_id" in names and len(names) > 1:
                variants.append(dict(ids, account_id=mine))  # my account, their sub-id
            for values in variants:
                url = path
                for name in names:
                    url = url.replace("{" + name + "}", str(values[name]))
                r = await client.request(method.upper(), url, headers=other, json=body)
                assert r.status_code == 404, (method, url, r.status_code, r.text)
                swept.append((method, path))
    assert len(swept) >= 20, swept
    assert await _snapshot(client, owner, ids) == before
