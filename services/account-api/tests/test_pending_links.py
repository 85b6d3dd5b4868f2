"""Pending links: what the migrator could not attach with certainty, listed and linked per user."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import psycopg
from brokerlink_shared.crypto import SecretBox

from .conftest import gateway_port


def _libpq(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://")


async def _me(client: httpx.AsyncClient, h: dict[str, str]) -> int:
    return int((await client.get("/api/auth/me", headers=h)).json()["id"])


async def _insert(
    api, user_id: int, kind: str, config: dict, legacy_id: int, suggestions: list[int]
) -> int:  # type: ignore[no-untyped-def]
    async with await psycopg.AsyncConnection.connect(
        _libpq(api.settings.database_url)
    ) as conn:
        row = await (
            await conn.execute(
                """INSERT INTO pending_links (user_id, integration_type, config, reason, suggestions, legacy_table, legacy_id)
               VALUES (%s, %s, %s::jsonb, 'no target account', %s, %s, %s) RETURNING id""",
                (
                    user_id,
                    kind,
                    json.dumps(config),
                    suggestions,
                    "ib_connections" if kind == "IB" else "schwab_settings",
                    legacy_id,
                ),
            )
        ).fetchone()
        await conn.commit()
    return int(row[0])  # type: ignore[index]


async def _account(client: httpx.AsyncClient, h: dict[str, str], number: str) -> int:
    r = await client.post(
        "/api/accounts",
        headers=h,
        json={"name": "IB acct", "currency": "USD", "account_number": number},
    )
    return int(r.json()["id"])


async def test_link_ib_item(api, client: httpx.AsyncClient, new_user) -> None:
    alice, bob = await new_user(client), await new_user(client)
    aid = await _account(client, alice, "U7654321")
    legacy_id = int(time.time() * 1000) % 10**9
    item = await _insert(
        api,
        await _me(client, alice),
        "IB",
        {
            "host": "127.0.0.1",
            "port": gateway_port(),
            "client_id": 3,
            "account_code": None,
            "read_only": True,
            "backups": [],
        },
        legacy_id,
        [aid],
    )
    r = await client.get("/api/integrations/pending-links", headers=alice)
    assert r.status_code == 200
    [listed] = [x for x in r.json() if x["id"] == item]
    assert (
        listed["type"] == "IB"
        and listed["suggested_account_ids"] == [aid]
        and listed["config"]["client_id"] == 3
    )
    # another user's item is invisible
    assert (
        await client.get("/api/integrations/pending-links", headers=bob)
    ).json() == []
    assert (
        await client.post(
            f"/api/integrations/pending-links/{item}/link",
            headers=bob,
            json={"account_id": aid},
        )
    ).status_code == 404
    assert (
        await client.delete(f"/api/integrations/pending-links/{item}", headers=bob)
    ).status_code == 404
    # someone else's account is not a target
    bob_account = await _account(client, bob, "U1111111")
    assert (
        await client.post(
            f"/api/integrations/pending-links/{item}/link",
            headers=alice,
            json={"account_id": bob_account},
        )
    ).status_code == 404

    r = await client.post(
        f"/api/integrations/pending-links/{item}/link",
        headers=alice,
        json={"account_id": aid},
    )
    assert r.status_code == 200, r.text
    assert r.json()["type"] == "IB" and r.json()["status"] == "pending"
    integration = (
        await client.get(f"/api/accounts/{aid}/integration", headers=alice)
    ).json()
    assert (
        integration["config"]["host"] == "127.0.0.1"
        and integration["config"]["client_id"] == 3
    )
    audit = (await client.get(f"/api/accounts/{aid}/audit", headers=alice)).json()
    assert audit[0]["action"] == "integration.create"
    assert (
        await client.get("/api/integrations/pending-links", headers=alice)
    ).json() == []
    async with await psycopg.AsyncConnection.connect(
        _libpq(api.settings.database_url)
    ) as conn:
        events = await (
            await conn.execute(
                "SELECT count(*) FROM outbox WHERE family = 'integration.configured' AND partition_key = %s",
                (str(aid),),
            )
        ).fetchone()
    assert events[0] == 1  # type: ignore[index]


async def test_link_schwab_item_keeps_login_and_discard(
    api, client: httpx.AsyncClient, new_user
) -> None:
    box = SecretBox.from_setting(api.settings.encryption_keys.get_secret_value())
    h = await new_user(client)
    uid = await _me(client, h)
    aid = await _account(client, h, "12345678")
    now = int(time.time())
    token = {
        "creation_timestamp": now - 100,
        "token": {
            "access_token": "a",
            "refresh_token": "r",
            "token_type": "Bearer",
            "expires_in": 1800,
            "scope": "api",
            "expires_at": now + 1700,
        },
    }
    config = {
        "app_key": "legacyapp1",
        "app_secret_enc": box.encrypt("sec"),
        "token_enc": box.encrypt(json.dumps(token)),
        "account_number": None,
        "account_hash": None,
        "unverified": True,
    }
    base = int(time.time() * 1000) % 10**9
    item = await _insert(api, uid, "SCHWAB", config, base + 1, [])
    other = await _insert(
        api, uid, "IB", {"host": "bad host!", "port": 1, "client_id": 1}, base + 2, []
    )

    r = await client.post(
        f"/api/integrations/pending-links/{item}/link",
        headers=h,
        json={"account_id": aid},
    )
    assert r.status_code == 200, r.text
    out = r.json()
    assert (
        out["type"] == "SCHWAB"
        and out["config"]["has_tokens"] is True
        and out["config"]["unverified"] is True
    )
    assert (
        out["config"]["account_number"] == "12345678"
        and out["token_access_expires_at"] is not None
    )
    # invalid stored settings fail like PUT would (422) and the item stays
    r = await client.post(
        f"/api/integrations/pending-links/{other}/link",
        headers=h,
        json={"account_id": aid},
    )
    assert r.status_code == 422
    assert [
        x["id"]
        for x in (await client.get("/api/integrations/pending-links", headers=h)).json()
    ] == [other]
    assert (
        await client.delete(f"/api/integrations/pending-links/{other}", headers=h)
    ).status_code == 204
    assert (await client.get("/api/integrations/pending-links", headers=h)).json() == []
    assert (await client.get(f"/api/accounts/{aid}/integration", headers=h)).json()[
        "type"
    ] == "SCHWAB"


async def test_schwab_item_attaches_to_several_accounts_of_its_login_in_one_action(
    api, client: httpx.AsyncClient, new_user
) -> None:
    box = SecretBox.from_setting(api.settings.encryption_keys.get_secret_value())
    h = await new_user(client)
    uid = await _me(client, h)
    first, second = (
        await _account(client, h, "11112222"),
        await _account(client, h, "33334444"),
    )
    now = int(time.time())
    token = {
        "creation_timestamp": now - 100,
        "token": {
            "access_token": "a",
            "refresh_token": "r",
            "token_type": "Bearer",
            "expires_in": 1800,
            "scope": "api",
            "expires_at": now + 1700,
        },
    }
    config = {
        "app_key": "legacyapp2",
        "app_secret_enc": box.encrypt("sec"),
        "token_enc": box.encrypt(json.dumps(token)),
        "account_number": None,
        "account_hash": None,
        "unverified": True,
    }
    base = int(time.time() * 1000) % 10**9
    item = await _insert(api, uid, "SCHWAB", config, base + 3, [first, second])
    ib = await _insert(
        api, uid, "IB", {"host": "gw.lan", "port": 4001, "client_id": 1}, base + 4, []
    )
    [listed] = [
        x
        for x in (await client.get("/api/integrations/pending-links", headers=h)).json()
        if x["id"] == item
    ]
    assert listed["summary"] == "Schwab login (app key lega…)"
    assert listed["kind"] == "link" and listed["suggested_account_ids"] == [
        first,
        second,
    ]
    assert listed["verified_account_ids"] == []
    r = await client.post(
        f"/api/integrations/pending-links/{ib}/link",
        headers=h,
        json={"account_ids": [first, second]},
    )
    assert r.status_code == 422 and r.json()["field"] == "account_ids", r.text
    r = await client.post(
        f"/api/integrations/pending-links/{item}/link",
        headers=h,
        json={"account_ids": [first, second]},
    )
    assert r.status_code == 200, r.text
    assert [(o["type"], o["config"]["has_tokens"]) for o in r.json()] == [
        ("SCHWAB", True),
        ("SCHWAB", True),
    ]
    async with await psycopg.AsyncConnection.connect(
        _libpq(api.settings.database_url)
    ) as conn:
        rows = await (
            await conn.execute(
                "SELECT integration_config->>'token_enc' FROM accounts WHERE id = ANY(%s) ORDER BY id",
                ([first, second],),
            )
        ).fetchall()
    assert [json.loads(box.decrypt(t))["token"]["refresh_token"] for (t,) in rows] == [
        "r",
        "r",
    ]
    assert [
        x["id"]
        for x in (await client.get("/api/integrations/pending-links", headers=h)).json()
    ] == [ib]


async def test_an_item_changed_while_its_gateway_resolves_is_a_409(
    api, client: httpx.AsyncClient, new_user, slow_name_server
) -> None:
    """The item's gateway is resolved before the transaction that locks it; a migrator rerun
    that changes the item's gateway in between makes the attach a 409 to retry, and nothing
    is attached."""
    h = await new_user(client)
    aid = await _account(client, h, "U7654322")
    item = await _insert(
        api,
        await _me(client, h),
        "IB",
        {"host": slow_name_server.host, "port": gateway_port(), "client_id": 1},
        int(time.time() * 1000) % 10**9 + 7,
        [aid],
    )
    attach = asyncio.create_task(
        client.post(
            f"/api/integrations/pending-links/{item}/link",
            headers=h,
            json={"account_ids": [aid]},
        )
    )
    try:
        await slow_name_server.asked()
        async with await psycopg.AsyncConnection.connect(
            _libpq(api.settings.database_url)
        ) as conn:
            await conn.execute(
                "UPDATE pending_links SET config = config || '{\"port\": 4999}' WHERE id = %s",
                (item,),
            )
            await conn.commit()
    finally:
        slow_name_server.release.set()
    r = await attach
    assert r.status_code == 409, r.text
    assert r.json()["field"] == "pending_link_id"
    account = (await client.get(f"/api/accounts/{aid}", headers=h)).json()
    assert account["integration_type"] is None
