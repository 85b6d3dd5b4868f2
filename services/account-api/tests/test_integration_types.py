"""Every declared integration type through the API, with no test per type: validation, secrets
encrypted and masked, kept when omitted, never in plaintext in the database or on the bus; the
type offered in the UI. The declarations (brokerlink_shared.contracts.plugins) drive it all."""

from __future__ import annotations

import uuid

import httpx
import nats
import psycopg
import pytest
from brokerlink_devkit.testing import wait_until
from brokerlink_shared.contracts.plugins import PLUGINS, SECRET_MASK, IntegrationPlugin

TYPES = list(PLUGINS.values())


def _libpq(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://")


def _secrets(plugin: IntegrationPlugin) -> list[str]:
    return [
        str(plugin.example[f.name])
        for f in plugin.secret_fields
        if f.name in plugin.example
    ]


@pytest.fixture
async def account(client: httpx.AsyncClient, new_user) -> tuple[dict[str, str], int]:  # type: ignore[no-untyped-def]
    h = await new_user(client)
    r = await client.post(
        "/api/accounts",
        headers=h,
        json={"name": f"Broker {uuid.uuid4().hex[:6]}", "currency": "USD"},
    )
    return h, r.json()["id"]


@pytest.mark.parametrize("plugin", TYPES, ids=lambda p: p.integration_type.value)
async def test_a_declared_type_is_configured_masked_and_kept(
    client, api, account, infra, plugin: IntegrationPlugin
) -> None:  # type: ignore[no-untyped-def]
    h, aid = account
    url = f"/api/accounts/{aid}/integration"
    seen: list[bytes] = []
    nc = await nats.connect(infra.nats_url)

    async def collect(msg) -> None:  # type: ignore[no-untyped-def]
        seen.append(msg.data)

    await nc.subscribe(">", cb=collect)
    try:
        body = {"type": plugin.integration_type.value, "config": plugin.example}
        r = await client.put(url, headers=h, json=body)
        assert r.status_code == 200, r.text
        shown = r.json()
        assert shown["type"] == plugin.integration_type.value
        assert shown["status"] == "pending"
        for f in plugin.secret_fields:
            assert shown["config"][f.name] == SECRET_MASK
        for secret in _secrets(plugin):
            assert secret not in r.text
        await wait_until(
            lambda: any(b"integration.configured" in m for m in seen),
            timeout_s=10,
            message="integration.configured on the bus",
        )
        # an update without the secrets keeps them
        without = {
            k: v
            for k, v in plugin.example.items()
            if k not in {f.name for f in plugin.secret_fields}
        }
        r = await client.put(
            url,
            headers=h,
            json={"type": plugin.integration_type.value, "config": without},
        )
        assert r.status_code == 200, r.text
        for f in plugin.secret_fields:
            assert r.json()["config"][f.name] == SECRET_MASK
        async with await psycopg.AsyncConnection.connect(
            _libpq(api.settings.database_url)
        ) as conn:
            stored = (
                await (
                    await conn.execute(
                        "SELECT integration_config FROM accounts WHERE id = %s", (aid,)
                    )
                ).fetchone()
            )[0]  # type: ignore[index]
            for f in plugin.secret_fields:
                assert stored[f.stored_as].startswith("gAAAAA")  # SecretBox ciphertext
            for table in ("accounts", "outbox", "audit_log"):
                dump = str(
                    await (
                        await conn.execute(f"SELECT t::text FROM {table} t")
                    ).fetchall()
                )
                for secret in _secrets(plugin):
                    assert secret not in dump, table
        for secret in _secrets(plugin):
            assert not any(secret.encode() in m for m in seen)
    finally:
        await nc.close()


@pytest.mark.parametrize("plugin", TYPES, ids=lambda p: p.integration_type.value)
async def test_a_declared_type_refuses_bad_fields_without_echoing_secrets(
    client, account, plugin: IntegrationPlugin
) -> None:  # type: ignore[no-untyped-def]
    h, aid = account
    bad = {**plugin.example, "not_a_field": "x"}
    r = await client.put(
        f"/api/accounts/{aid}/integration",
        headers=h,
        json={"type": plugin.integration_type.value, "config": bad},
    )
    assert r.status_code == 422 and "not_a_field" in r.text
    for secret in _secrets(plugin):
        assert secret not in r.text
    for f in plugin.fields:
        if f.name not in plugin.example or f.kind.value == "boolean":
            continue
        if f.secret:
            continue  # see test_a_wrong_secret_is_never_echoed
        value = "\u0000 bad \u0000" * 30
        broken = {**plugin.example, f.name: value}
        r = await client.put(
            f"/api/accounts/{aid}/integration",
            headers=h,
            json={"type": plugin.integration_type.value, "config": broken},
        )
        assert r.status_code == 422, (f.name, r.text)
        assert f.name in r.text
    got = (await client.get(f"/api/accounts/{aid}/integration", headers=h)).json()
    assert got["type"] is None  # nothing was stored


@pytest.mark.parametrize(
    "plugin",
    [p for p in TYPES if p.secret_fields],
    ids=lambda p: p.integration_type.value,
)
async def test_a_wrong_secret_is_never_echoed(
    client, account, plugin: IntegrationPlugin
) -> None:  # type: ignore[no-untyped-def]
    h, aid = account
    for f in plugin.secret_fields:
        broken = {**plugin.example, f.name: "Zq!" * 100}  # too long for any secret
        r = await client.put(
            f"/api/accounts/{aid}/integration",
            headers=h,
            json={"type": plugin.integration_type.value, "config": broken},
        )
        assert r.status_code == 422 and f.name in r.text
        assert "Zq!Zq!" not in r.text


async def test_every_declared_type_is_offered_in_the_form(
    client: httpx.AsyncClient,
) -> None:
    html = (await client.get("/")).text
    for plugin in TYPES:
        assert (
            f'<option value="{plugin.integration_type.value}">{plugin.label}</option>'
            in html
        )
        for f in plugin.fields:
            prefix = plugin.integration_type.value.lower().replace("_", "-")
            assert f'id="{prefix}-{f.name.replace("_", "-")}" name="{f.name}"' in html
            if f.secret:
                assert f'name="{f.name}" type="password"' in html
