"""A new integration type in the browser: IB Flex offered in the Integration tab with the fields,
help and secrecy its declaration gives, configured, tested and refreshed like any other type."""

from __future__ import annotations

import re
import secrets

from playwright.async_api import Page, expect

from .conftest import FLEX_QUERY, FLEX_TOKEN, Stack

SLOW = 30_000
NAME = "Flex Daily"


async def test_ib_flex_from_the_integration_tab(page: Page, stack: Stack) -> None:
    await page.goto("/")
    await page.get_by_role("link", name="Create an account").click()
    await page.get_by_label("Name").fill("Flex User")
    await page.get_by_label("Email").fill(f"flexui{secrets.token_hex(4)}@example.com")
    await page.get_by_label("Password").fill("correct horse battery")
    await page.get_by_role("button", name="Create account").click()
    await expect(page.get_by_role("heading", name="Accounts")).to_be_visible()
    await page.locator("#create-name").fill(NAME)
    await page.locator("#create-currency").fill("USD")
    await page.get_by_role("button", name="Create account").click()

    await page.get_by_role("button", name=f"Edit {NAME}").click()
    dialog = page.locator("#account-dialog")
    await dialog.get_by_role("tab", name="Integration").click()
    await page.get_by_label("Integration type").select_option("IB_FLEX")
    fields = page.locator("#ib-flex-fields")  # the form rendered from the declaration
    await expect(fields).to_be_visible()
    token = fields.get_by_label("Flex Web Service token")
    await expect(token).to_have_attribute("type", "password")
    await expect(dialog).to_contain_text(
        "Flex Web Service Configuration"
    )  # its help text
    await token.fill(FLEX_TOKEN)
    await fields.get_by_label("Flex Query ID").fill(FLEX_QUERY)
    await fields.get_by_label("Account code").fill("U5550001")
    await page.locator("#integration-save").click()
    result = page.locator("#integration-result")
    # saving starts the first refresh: one statement from the (simulated) Flex Web Service
    await expect(result).to_contain_text(
        re.compile(r"Saved and synced: balance \$15,000\.25"), timeout=SLOW
    )
    await expect(token).to_have_value("")  # never sent back
    await expect(token).to_have_attribute("placeholder", "********")
    assert FLEX_TOKEN not in await page.content()

    await page.get_by_role("button", name="Test Connection").click()
    await expect(result).to_contain_text("Connection works", timeout=SLOW)
    await page.get_by_role("button", name="Refresh Now").click()
    await expect(result).to_contain_text(
        re.compile(r"Refreshed: balance \$15,000\.25"), timeout=SLOW
    )
    await expect(page.locator("#integration-status")).to_have_attribute(
        "data-status", "connected"
    )
