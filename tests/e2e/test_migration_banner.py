"""The migration banner in a real browser, against the real API and a real import: the migrator
runs against the stack's database, then the migrated user signs in, sees each pending item for
what it is, and attaches or discards each in one click. No route is stubbed."""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import bcrypt
import httpx
import pytest
from playwright.async_api import Page, expect

from .conftest import VIEWPORT, Stack

EMAIL, PASSWORD = f"legacy-ui-{int(time.time())}@example.com", "legacy password 42"


def _legacy(path: Path) -> Path:
    from migrator.legacy_schema import create

    pw = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=4)).decode()
    conn = create(path)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute(
        "INSERT INTO users (id, email, password_hash, name) VALUES (1, ?, ?, 'Lea Legacy')",
        (EMAIL, pw.replace("$2b$", "$2a$")),
    )
    conn.executemany(
        "INSERT INTO accounts (id, user_id, name, currency, account_number, original_capital, current_balance,"
        " integration_type, integration_config) VALUES (?, 1, ?, 'USD', ?, 1, 1, ?, ?)",
        [
            (1, "IB Old", "U3333333", None, None),
            (2, "Schwab A", "11112222", None, None),
            (3, "Schwab B", "3333-4444", None, None),
            (
                4,
                "Broken",
                "U4444444",
                "IB",
                '{"type":"IB","host":"gw.lan","port":"x","clientId":2}',
            ),
        ],
    )
    conn.execute(
        "INSERT INTO ib_connections (id, user_id, name, host, port, client_id, target_account_id)"
        " VALUES (1, 1, 'old', '127.0.0.1', 4001, 3, NULL)"
    )
    conn.execute(
        "INSERT INTO schwab_settings (id, user_id, app_key, app_secret, access_token, refresh_token, token_expires_at)"
        " VALUES (1, 1, 'LEGACYUIKEY', 'ui-secret', 'a', 'r', ?)",
        (int(time.time()) + 900,),
    )
    conn.commit()
    conn.close()
    return path


@pytest.fixture(scope="module")
async def migrated(stack: Stack, infra: Any, tmp_path_factory: Any) -> str:
    from migrator.cli import run_cli

    source = _legacy(tmp_path_factory.mktemp("legacy") / "investment_tracker.db")
    env = {
        "DATABASE_URL": stack.database_url,
        "BROKERLINK_ENCRYPTION_KEYS": infra.encryption_keys,
        "BROKERLINK_NAMESPACE": f"{infra.namespace}ui",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:  # the CLI is synchronous: run it off the event loop the stack lives in
        code = await asyncio.to_thread(
            run_cli, ["--source", str(source), "--no-schwab-check", "--quiet"]
        )
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    assert code == 0
    return EMAIL


@pytest.fixture(scope="module")
async def page(browser: Any, stack: Stack, migrated: str) -> AsyncIterator[Page]:
    expect.set_options(timeout=15_000)
    context = await browser.new_context(base_url=stack.base_url, viewport=VIEWPORT)
    page = await context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.errors = errors  # type: ignore[attr-defined]
    try:
        yield page
    finally:
        await context.close()


async def _api(stack: Stack, path: str) -> Any:
    async with httpx.AsyncClient(base_url=stack.base_url, timeout=10) as client:
        token = (
            await client.post(
                "/api/auth/login", json={"email": EMAIL, "password": PASSWORD}
            )
        ).json()["access_token"]
        r = await client.get(path, headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 200, r.text
        return r.json()


async def test_migrated_user_attaches_and_discards_pending_items(
    page: Page, stack: Stack
) -> None:
    await page.goto("/login")
    await page.get_by_label("Email").fill(EMAIL)
    await page.get_by_label("Password").fill(PASSWORD)
    await page.get_by_role("button", name="Sign in").click()
    banner = page.locator("#migration-banner")
    await expect(banner).to_be_visible()
    items = banner.locator("li")
    await expect(items).to_have_count(3)

    # what it is, and why: the IB gateway with its client id, nothing preselected (unverified)
    ib = items.filter(has_text="IB gateway 127.0.0.1:4001 (client id 3)")
    await expect(ib).to_contain_text("no target account")
    select = ib.get_by_label("Attach to")
    await expect(select).to_have_value("")
    suggested = select.locator("optgroup[label='Suggested'] option")
    await expect(suggested).to_have_text(["IB Old (U3333333)"])
    await select.select_option(label="IB Old (U3333333)")
    await ib.get_by_role("button", name="Attach").click()
    await expect(page.locator("#toast")).to_contain_text("Connection attached")
    await expect(items).to_have_count(2)

    # the Schwab login: several accounts of it in one action; suggestions ranked, none checked
    schwab = items.filter(has_text="Schwab login")
    boxes = schwab.get_by_role("checkbox")
    await expect(boxes.first).not_to_be_checked()
    await schwab.get_by_label("Schwab A (11112222) — suggested").check()
    await schwab.get_by_label("Schwab B (3333-4444) — suggested").check()
    await schwab.get_by_role("button", name="Attach").click()
    await expect(page.locator("#toast")).to_contain_text("attached to 2 accounts")
    await expect(items).to_have_count(1)

    # the quarantined per-account config: shown for what it is, discarded in one click
    broken = items.filter(has_text="Could not be read")
    await expect(broken).to_contain_text("IB gateway gw.lan:x (client id 2)")
    await expect(broken).to_contain_text("port is not a whole number")
    await broken.get_by_role("button", name="Discard").click()
    await expect(banner).to_be_hidden()

    accounts = {a["name"]: a for a in await _api(stack, "/api/accounts")}
    assert accounts["IB Old"]["integration_type"] == "IB"
    assert accounts["IB Old"]["integration_config"]["host"] == "127.0.0.1"
    for name in ("Schwab A", "Schwab B"):
        config = accounts[name]["integration_config"]
        assert (
            accounts[name]["integration_type"] == "SCHWAB"
            and config["has_tokens"] is True
        )
    assert accounts["Broken"]["integration_type"] is None
    assert await _api(stack, "/api/integrations/pending-links") == []
    assert page.errors == [], page.errors  # type: ignore[attr-defined]
    json.dumps(accounts)  # plain data all the way
