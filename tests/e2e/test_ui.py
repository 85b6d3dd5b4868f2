"""A user's first session in a real browser, against the real stack (see conftest.py).

The tests run in order and build on each other, like the user would: register, create accounts,
connect two IB accounts on one gateway and one Schwab account, sign in to Schwab, refresh, watch a
gateway restart, read the health page. Every wait is an auto-waiting `expect` with a deadline.
"""

from __future__ import annotations

import datetime
import re
import secrets
from pathlib import Path
from typing import Any

import httpx
from playwright.async_api import Page, expect

from .conftest import GATEWAY, IB_CODES, SCHWAB_APP_KEY, SCHWAB_APP_SECRET, Stack

IB_ONE, IB_TWO, SCHWAB = "IB Main", "IB Second", "Schwab Brokerage"
SLOW = 30_000


def row(page: Page, name: str) -> Any:
    return page.locator("#account-rows tr").filter(
        has=page.get_by_role("button", name=name, exact=True)
    )


async def open_edit(page: Page, name: str, tab: str = "Integration") -> None:
    await page.get_by_role("button", name=f"Edit {name}").click()
    dialog = page.locator("#account-dialog")
    await expect(dialog).to_be_visible()
    await expect(page.locator("#dialog-title")).to_have_text(f"Edit Account: {name}")
    await dialog.get_by_role("tab", name=tab).click()
    await expect(dialog.get_by_role("tab", name=tab)).to_have_attribute(
        "aria-selected", "true"
    )


async def close_dialog(page: Page) -> None:
    await page.locator("#dialog-close").click()
    await expect(page.locator("#account-dialog")).to_be_hidden()


async def test_register_and_create_accounts(page: Page, stack: Stack) -> None:
    await page.goto("/")
    await expect(page).to_have_url(re.compile(r"/login"))
    await page.get_by_role("link", name="Create an account").click()
    await page.get_by_label("Name").fill("Ada Lovelace")
    await page.get_by_label("Email").fill(f"ada{secrets.token_hex(4)}@example.com")
    await page.get_by_label("Password").fill("correct horse battery")
    await page.get_by_role("button", name="Create account").click()
    await expect(page.get_by_role("heading", name="Accounts")).to_be_visible()
    await expect(page.locator("#user-name")).to_have_text("Ada Lovelace")

    for name in (IB_ONE, IB_TWO, SCHWAB):
        await page.locator("#create-name").fill(name)
        await page.locator("#create-currency").fill("USD")
        await page.get_by_role("button", name="Create account").click()
        await expect(row(page, name)).to_be_visible()
    await expect(page.locator("#account-rows tr")).to_have_count(3)
    # no pending links from a migration (or no such route yet): no banner
    await expect(page.locator("#migration-banner")).to_be_hidden()


async def configure_ib(page: Page, stack: Stack, name: str, code: str) -> None:
    await open_edit(page, name)
    await page.get_by_label("Integration type").select_option("IB")
    await page.get_by_label("Host").fill("127.0.0.1")
    await page.get_by_label("Port").fill(str(stack.gateway_port))
    await page.get_by_label("Client ID").fill("7")
    await page.get_by_label("Account code").fill(code)
    await expect(page.get_by_label("Read-only")).to_be_checked()
    await expect(page.get_by_label("Read-only")).to_be_disabled()
    await page.locator("#integration-save").click()
    result = page.locator("#integration-result")
    await expect(result).to_have_text("Saved.")
    await expect(page.locator("#integration-status")).to_have_attribute(
        "data-status", "connected", timeout=SLOW
    )
    await page.get_by_role("button", name="Test Connection").click()
    await expect(result).to_contain_text("Connection works", timeout=SLOW)
    await page.get_by_role("button", name="Refresh Now").click()
    await expect(result).to_contain_text("Refreshed: balance $", timeout=SLOW)


async def test_two_ib_accounts_on_one_gateway(
    page: Page, stack: Stack, screenshots: Path
) -> None:
    await configure_ib(page, stack, IB_ONE, IB_CODES[0])
    await close_dialog(page)
    await configure_ib(page, stack, IB_TWO, IB_CODES[1])
    await expect(page.locator("#integration-updated")).to_have_text(
        re.compile("just now|min")
    )
    await close_dialog(page)

    await expect(row(page, IB_TWO).locator(".balance")).to_have_text("$4,321.50")
    await expect(row(page, IB_ONE).locator(".balance")).not_to_have_text("$0.00")
    for name in (IB_ONE, IB_TWO):
        await expect(row(page, name).locator(".badge")).to_have_attribute(
            "data-status", "connected"
        )
        await expect(row(page, name).locator(".updated")).to_have_text("just now")

    await open_edit(page, IB_ONE)
    await page.screenshot(path=str(screenshots / "integration-ib.png"))
    await close_dialog(page)


async def test_bad_port_shows_field_error_next_to_port(page: Page) -> None:
    await open_edit(page, IB_TWO)
    port = page.get_by_label("Port")
    await port.fill("70000")
    await page.locator("#integration-save").click()
    error = page.locator("#ib-port-error")
    await expect(error).to_contain_text("65535")
    await expect(port).to_have_attribute("aria-invalid", "true")
    await expect(port).to_have_attribute(
        "aria-describedby", re.compile("ib-port-error")
    )
    await expect(port).to_be_focused()
    await close_dialog(page)


async def test_schwab_oauth_from_the_dialog_then_refresh(
    page: Page, stack: Stack, screenshots: Path
) -> None:
    await open_edit(page, SCHWAB)
    await page.get_by_label("Integration type").select_option("SCHWAB")
    await page.get_by_label("App key").fill(SCHWAB_APP_KEY)
    await page.get_by_label("App secret").fill(SCHWAB_APP_SECRET)
    await page.locator("#integration-save").click()
    result = page.locator("#integration-result")
    await expect(result).to_contain_text("Saved")
    secret = page.get_by_label("App secret")
    await expect(secret).to_have_value("")  # the secret is never sent back
    await expect(secret).to_have_attribute("placeholder", "********")
    assert SCHWAB_APP_SECRET not in await page.content()

    async with page.expect_popup() as popup_info:
        await page.get_by_role("button", name="Re-authenticate").click()
    popup = await popup_info.value
    await popup.wait_for_load_state()
    async with popup.expect_event("close", timeout=SLOW):
        await popup.locator("#allow").click()

    # the popup told the opener; the dialog is (re)opened on the Integration tab
    await expect(page.locator("#tab-integration")).to_have_attribute(
        "aria-selected", "true"
    )
    await expect(result).to_contain_text("Signed in to Schwab", timeout=SLOW)
    await expect(page.locator("#schwab-oauth")).to_contain_text("Authenticated")
    await expect(page.locator("#integration-status")).to_have_attribute(
        "data-status", re.compile("connected|expiring_soon")
    )
    await page.get_by_role("button", name="Refresh Now").click()
    await expect(result).to_contain_text("Refreshed: balance $25,750.75", timeout=SLOW)
    await page.screenshot(path=str(screenshots / "integration-schwab.png"))
    await close_dialog(page)
    await expect(row(page, SCHWAB).locator(".balance")).to_have_text("$25,750.75")


async def add_history(page: Page, stack: Stack, name: str, balances: list[str]) -> None:
    """Earlier balances typed in by hand (the History API), so the chart has a line."""
    token = await page.evaluate(
        "JSON.parse(sessionStorage.getItem('brokerlink.tokens')).access"
    )
    account_id = await row(page, name).get_attribute("data-account-id")
    today = datetime.date.today()
    async with httpx.AsyncClient(
        base_url=stack.base_url, headers={"Authorization": f"Bearer {token}"}
    ) as client:
        for days_ago, balance in enumerate(reversed(balances), start=1):
            day = today - datetime.timedelta(days=7 * days_ago)
            response = await client.post(
                f"/api/accounts/{account_id}/history",
                json={"date": day.isoformat(), "balance": balance},
            )
            assert response.status_code == 201, response.text


async def test_tabs_keyboard_and_history(
    page: Page, stack: Stack, screenshots: Path
) -> None:
    await add_history(
        page, stack, IB_ONE, ["15200", "15950.5", "15480", "16720", "17105.25"]
    )
    await open_edit(page, IB_ONE, tab="Details")
    details = page.get_by_role("tab", name="Details")
    await details.focus()
    await page.keyboard.press("ArrowRight")
    await expect(page.get_by_role("tab", name="Integration")).to_be_focused()
    await expect(page.locator("#panel-integration")).to_be_visible()
    await page.keyboard.press("End")
    history = page.get_by_role("tab", name="History")
    await expect(history).to_be_focused()
    await expect(history).to_have_attribute("aria-selected", "true")
    await expect(page.locator("#panel-history")).to_be_visible()
    await expect(page.locator("#history-chart svg")).to_be_visible()
    await expect(page.locator("#history-rows tr")).to_have_count(6)
    await expect(page.locator("#history-chart circle")).to_have_count(6)
    await expect(page.locator("#position-rows")).to_contain_text("AAPL")
    await expect(page.locator("#cash-rows")).to_contain_text("EUR")
    await page.screenshot(path=str(screenshots / "history.png"))
    await page.keyboard.press("Home")
    await expect(details).to_be_focused()
    await page.keyboard.press("Escape")
    await expect(page.locator("#account-dialog")).to_be_hidden()


async def test_refresh_all_shows_progress(page: Page, screenshots: Path) -> None:
    await page.get_by_role("button", name="Refresh all").click()
    await expect(page.locator("#refresh-job-text")).to_have_text(
        "Refreshed: 3 done, 0 failed, 3 total", timeout=SLOW
    )
    await page.screenshot(path=str(screenshots / "accounts.png"))


async def test_gateway_restart_goes_down_and_back_without_reload(
    page: Page, stack: Stack
) -> None:
    await page.evaluate("window.__sameDocument = true")
    badges = [row(page, name).locator(".badge") for name in (IB_ONE, IB_TWO)]
    for badge in badges:
        await expect(badge).to_have_attribute("data-status", "connected")
    async with httpx.AsyncClient(base_url=stack.ib_admin_url) as admin:
        response = await admin.post(
            f"/gateways/{GATEWAY}/restart", json={"down_for_s": 6}
        )
        assert response.status_code == 200, response.text
    # the connector reports a dropped session as `disconnected` (grey) while it reconnects
    for badge in badges:
        await expect(badge).to_have_attribute(
            "data-status", re.compile("disconnected|error"), timeout=SLOW
        )
    for badge in badges:
        await expect(badge).to_have_attribute("data-status", "connected", timeout=SLOW)
    assert await page.evaluate("window.__sameDocument") is True


async def test_health_page(page: Page, screenshots: Path) -> None:
    await page.get_by_role("link", name="Integration health").click()
    rows = page.locator("#health-rows tr")
    await expect(rows).to_have_count(3)
    schwab = rows.filter(has_text=SCHWAB)
    await expect(schwab.locator(".badge")).to_have_attribute(
        "data-status", re.compile("connected|expiring_soon")
    )
    await expect(schwab.locator(".expiry")).to_have_text(
        re.compile(r"^\d+d \d+h \d+m$")
    )
    ib = rows.filter(has_text=IB_ONE)
    await expect(ib.locator(".badge")).to_have_attribute("data-status", "connected")
    await expect(ib.locator("td").nth(2)).to_have_text(re.compile("just now|min"))
    await page.screenshot(path=str(screenshots / "health.png"))
    assert page.errors == [], page.errors


async def test_oauth_return_in_the_same_window(page: Page) -> None:
    """With popups blocked the callback's redirect lands on this page instead."""
    await page.goto("/")
    schwab_id = await row(page, SCHWAB).get_attribute("data-account-id")
    await page.goto(f"/?oauth=ok&account={schwab_id}")
    await expect(page.locator("#dialog-title")).to_have_text(f"Edit Account: {SCHWAB}")
    await expect(page.locator("#tab-integration")).to_have_attribute(
        "aria-selected", "true"
    )
    await expect(page.locator("#integration-result")).to_have_text(
        "✓ Signed in to Schwab."
    )
    await expect(page).to_have_url(re.compile(r"/$"))  # the query is dropped
    await page.keyboard.press("Escape")
    await page.goto("/?oauth=error&reason=invalid_field")
    await expect(page.locator("#toast")).to_contain_text("(invalid_field)")
    await expect(page.locator("#account-dialog")).to_be_hidden()
