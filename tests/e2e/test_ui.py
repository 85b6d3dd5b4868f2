"""A user's first session in a real browser, against the real stack (see conftest.py).

The tests run in order and build on each other, like the user would: register, walk an IB
account from creation to a synced balance and edited backups, connect two more IB accounts on
one gateway, see a broken gateway worded as a sentence, sign in to Schwab, check that sign-in
state stays with its account, read history and audit, refresh everything, watch a gateway
restart, act from the health page, read the totals. Nothing is stubbed: every request reaches
account-api, the connectors and the simulators. Every wait is an auto-waiting `expect`.
"""

from __future__ import annotations

import datetime
import re
import secrets
from decimal import Decimal
from typing import Any

import httpx
from brokerlink_devkit.devstack.embedded import free_port
from playwright.async_api import Page, expect

from .conftest import (
    GATEWAY,
    IB_CODES,
    SCHWAB_APP_KEY,
    SCHWAB_APP_SECRET,
    Screenshots,
    Stack,
)

IB_ONE, IB_TWO, SCHWAB = "IB Main", "IB Second", "Schwab Brokerage"
WALK, BROKEN, FRESH = "IB Walk", "IB Broken", "Fresh"
SLOW = 30_000
IB_TWO_BALANCE = "$4,321.50"


def row(page: Page, name: str) -> Any:
    return page.locator("#account-rows tr").filter(
        has=page.get_by_role("button", name=name, exact=True)
    )


async def nothing_hidden_shows(page: Page) -> None:
    """Every element with the `hidden` attribute is really not displayed."""
    shown = await page.evaluate(
        """[...document.querySelectorAll('[hidden]')]
             .filter((e) => getComputedStyle(e).display !== 'none')
             .map((e) => e.id || e.className || e.tagName)"""
    )
    assert shown == [], shown


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


async def create_account(page: Page, name: str, currency: str = "USD") -> None:
    await page.locator("#create-name").fill(name)
    await page.locator("#create-currency").fill(currency)
    await page.get_by_role("button", name="Create account").click()
    await expect(row(page, name)).to_be_visible()


async def api_client(page: Page, stack: Stack) -> httpx.AsyncClient:
    """The signed-in user's own token, for what the UI cannot show (the saved integration)."""
    token = await page.evaluate(
        "JSON.parse(sessionStorage.getItem('brokerlink.tokens')).access"
    )
    return httpx.AsyncClient(
        base_url=stack.base_url, headers={"Authorization": f"Bearer {token}"}
    )


async def account_id(page: Page, name: str) -> int:
    return int(await row(page, name).get_attribute("data-account-id"))


async def fill_ib(page: Page, port: int, client_id: int, code: str) -> None:
    await page.get_by_label("Integration type").select_option("IB")
    await page.get_by_label("Host", exact=True).fill("127.0.0.1")
    await page.get_by_label("Port", exact=True).fill(str(port))
    await page.get_by_label("Client ID").fill(str(client_id))
    await page.get_by_label("Account code").fill(code)


async def test_register_and_what_is_hidden_stays_hidden(
    page: Page, stack: Stack, shots: Screenshots
) -> None:
    await page.goto("/")
    await expect(page).to_have_url(re.compile(r"/login"))
    await shots.take(page, "login")
    await page.get_by_role("link", name="Create an account").click()
    await shots.take(page, "register")
    await page.get_by_label("Name").fill("Ada Lovelace")
    await page.get_by_label("Email").fill(f"ada{secrets.token_hex(4)}@example.com")
    await page.get_by_label("Password").fill("short")
    await page.get_by_role("button", name="Create account").click()
    await expect(page.locator("#register-password-error")).to_have_text(
        "Use at least 8 characters."
    )
    await page.get_by_label("Password").fill("correct horse battery")
    await page.get_by_role("button", name="Create account").click()
    await expect(page.get_by_role("heading", name="Accounts")).to_be_visible()
    await expect(page.locator("#user-name")).to_have_text("Ada Lovelace")
    # no empty progress bar beside "Refresh all" on a plain visit
    await expect(page.locator("#refresh-job")).to_be_hidden()
    await expect(page.locator("#refresh-progress")).to_be_hidden()
    await nothing_hidden_shows(page)

    # an empty name is said in plain words, next to the input
    await page.get_by_role("button", name="Create account").click()
    await expect(page.locator("#create-name-error")).to_have_text("Can't be empty.")

    for name in (IB_ONE, IB_TWO, SCHWAB):
        await create_account(page, name)
    await expect(page.locator("#account-rows tr")).to_have_count(3)
    await expect(row(page, IB_ONE).locator(".updated")).to_have_text(
        "Balance updated just now"
    )
    # no pending links from a migration: no banner
    await expect(page.locator("#migration-banner")).to_be_hidden()

    # an account without an integration offers no Test, Refresh or Remove
    await open_edit(page, IB_ONE)
    for button in ("Test Connection", "Refresh Now", "Remove integration"):
        await expect(page.get_by_role("button", name=button)).to_be_hidden()
    await expect(page.locator("#integration-state")).to_be_hidden()
    await nothing_hidden_shows(page)
    # choosing a type offers Test (it works on the form's values); Refresh/Remove need a save
    await page.get_by_label("Integration type").select_option("IB")
    await expect(page.get_by_role("button", name="Test Connection")).to_be_visible()
    await expect(page.get_by_role("button", name="Refresh Now")).to_be_hidden()
    await expect(page.get_by_role("button", name="Remove integration")).to_be_hidden()
    await nothing_hidden_shows(page)
    await close_dialog(page)


async def backup_hosts(page: Page) -> list[tuple[str, str]]:
    items = page.locator("#ib-backups li")
    return [
        (
            await items.nth(i).locator("input.host").input_value(),
            await items.nth(i).locator("input.port").input_value(),
        )
        for i in range(await items.count())
    ]


async def test_walk_create_test_unsaved_save_first_sync_backups_reload(
    page: Page, stack: Stack, shots: Screenshots
) -> None:
    """create account -> choose IB -> Test unsaved values -> Save -> the first refresh shows a
    balance without clicking Refresh -> edit backups -> reload -> backups still there."""
    await create_account(page, WALK)
    walk = await account_id(page, WALK)
    await open_edit(page, WALK)
    await fill_ib(page, stack.gateway_port, 9, IB_CODES[1])
    result = page.locator("#integration-result")

    await page.get_by_role("button", name="Test Connection").click()
    await expect(result).to_contain_text("✓ Connection works", timeout=SLOW)
    async with await api_client(page, stack) as client:
        saved = (await client.get(f"/api/accounts/{walk}/integration")).json()
    assert saved["type"] is None  # the test saved nothing

    # the gateway answers slowly, so the first refresh's progress is there to see
    async with httpx.AsyncClient(base_url=stack.ib_admin_url) as admin:
        slow = await admin.patch(f"/gateways/{GATEWAY}/faults", json={"delay_ms": 600})
        assert slow.status_code == 200, slow.text
        try:
            await page.locator("#integration-save").click()
            await expect(result).to_have_text("Saved. Fetching the balance…")
            await expect(page.locator("#integration-progress progress")).to_be_visible()
        finally:
            await admin.patch(f"/gateways/{GATEWAY}/faults", json={"delay_ms": 0})
    await expect(result).to_have_text(
        f"✓ Saved and synced: balance {IB_TWO_BALANCE}", timeout=SLOW
    )
    await expect(page.locator("#integration-progress")).to_be_hidden()
    await expect(page.locator("#integration-status")).to_have_attribute(
        "data-status", "connected"
    )
    await expect(page.locator("#integration-updated")).to_have_text("Synced just now")
    await close_dialog(page)
    await expect(row(page, WALK).locator(".balance")).to_have_text(IB_TWO_BALANCE)
    await expect(row(page, WALK).locator(".updated")).to_have_text("Synced just now")

    # backups: add three, move the second up, remove the third
    await open_edit(page, WALK)
    add = page.get_by_role("button", name="Add backup gateway")
    for host, port in (("127.0.0.2", "9"), ("127.0.0.3", "9"), ("127.0.0.4", "9")):
        await add.click()
        n = await page.locator("#ib-backups li").count()
        await page.get_by_label(f"Backup {n} host").fill(host)
        await page.get_by_label(f"Backup {n} port").fill(port)
    await page.get_by_role("button", name="Move backup 2 up").click()
    await page.get_by_role("button", name="Remove backup 3").click()
    assert await backup_hosts(page) == [("127.0.0.3", "9"), ("127.0.0.2", "9")]
    await page.locator("#integration-save").click()
    await expect(result).to_contain_text("✓ Saved and synced", timeout=SLOW)

    await page.reload()
    await open_edit(page, WALK)
    await expect(page.locator("#ib-backups li")).to_have_count(2)
    assert await backup_hosts(page) == [("127.0.0.3", "9"), ("127.0.0.2", "9")]
    await shots.take(page, "integration-ib", doc=True)
    await close_dialog(page)

    # a save that does not mention backups (an older client) keeps them
    async with await api_client(page, stack) as client:
        body = {
            "type": "IB",
            "config": {
                "host": "127.0.0.1",
                "port": stack.gateway_port,
                "client_id": 9,
                "account_code": IB_CODES[1],
            },
        }
        r = await client.put(f"/api/accounts/{walk}/integration", json=body)
        assert r.status_code == 200, r.text
    await open_edit(page, WALK)
    await expect(page.locator("#ib-backups li")).to_have_count(2)
    assert await backup_hosts(page) == [("127.0.0.3", "9"), ("127.0.0.2", "9")]
    await close_dialog(page)


async def configure_ib(page: Page, stack: Stack, name: str, code: str) -> None:
    await open_edit(page, name)
    await fill_ib(page, stack.gateway_port, 7, code)
    await expect(page.get_by_label("Read-only")).to_be_checked()
    await expect(page.get_by_label("Read-only")).to_be_disabled()
    await page.locator("#integration-save").click()
    result = page.locator("#integration-result")
    await expect(result).to_contain_text("✓ Saved and synced: balance $", timeout=SLOW)
    await page.get_by_role("button", name="Test Connection").click()
    await expect(result).to_contain_text("Connection works", timeout=SLOW)
    await page.get_by_role("button", name="Refresh Now").click()
    await expect(result).to_contain_text("✓ Refreshed: balance $", timeout=SLOW)


async def test_two_ib_accounts_on_one_gateway(page: Page, stack: Stack) -> None:
    await configure_ib(page, stack, IB_ONE, IB_CODES[0])
    await close_dialog(page)
    await configure_ib(page, stack, IB_TWO, IB_CODES[1])
    await expect(page.locator("#integration-updated")).to_have_text("Synced just now")
    await close_dialog(page)

    await expect(row(page, IB_TWO).locator(".balance")).to_have_text(IB_TWO_BALANCE)
    await expect(row(page, IB_ONE).locator(".balance")).not_to_have_text("$0.00")
    for name in (IB_ONE, IB_TWO):
        await expect(row(page, name).locator(".badge")).to_have_attribute(
            "data-status", "connected"
        )
        await expect(row(page, name).locator(".updated")).to_have_text(
            "Synced just now"
        )


async def test_field_errors_in_plain_words_next_to_their_inputs(page: Page) -> None:
    await open_edit(page, IB_TWO)
    port = page.get_by_label("Port", exact=True)
    await port.fill("70000")
    await page.locator("#integration-save").click()
    error = page.locator("#ib-port-error")
    await expect(error).to_have_text("Must be 65535 or less.")
    await expect(port).to_have_attribute("aria-invalid", "true")
    await expect(port).to_have_attribute(
        "aria-describedby", re.compile("ib-port-error")
    )
    await expect(port).to_be_focused()
    # the code stays available, behind a disclosure
    details = page.locator("#integration-error-form details")
    await expect(details).to_contain_text("less_than_equal")
    await port.fill("4001")
    await page.get_by_role("button", name="Add backup gateway").click()
    await page.get_by_label("Backup 1 host").fill("127.0.0.2")
    await page.get_by_label("Backup 1 port").fill("abc")
    await page.locator("#integration-save").click()
    await expect(page.locator("#integration-error-form")).to_contain_text(
        "Backup gateway 1, port: Enter a whole number."
    )
    await expect(page.get_by_label("Backup 1 port")).to_have_attribute(
        "aria-invalid", "true"
    )
    await close_dialog(page)  # nothing was saved
    await open_edit(page, IB_TWO)
    await expect(page.locator("#ib-backups li")).to_have_count(0)
    await expect(page.get_by_label("Port", exact=True)).not_to_have_value("70000")
    await close_dialog(page)


async def test_a_broken_gateway_is_a_sentence_and_the_last_good_sync_stays(
    page: Page, stack: Stack, shots: Screenshots
) -> None:
    dead = free_port()
    await create_account(page, BROKEN)
    await open_edit(page, BROKEN)
    await fill_ib(page, dead, 11, IB_CODES[0])
    result = page.locator("#integration-result")
    # never reached by this user, so refused / timed out read the same (no port scanning)
    sentence = (
        f"No IB Gateway answered at 127.0.0.1:{dead} — check the host and port, "
        "that IB Gateway is running and that its API is enabled."
    )
    await page.get_by_role("button", name="Test Connection").click()
    await expect(result).to_contain_text(sentence, timeout=SLOW)
    await expect(result.locator("details")).to_contain_text("code unreachable")
    assert "(code" not in await result.locator(".error-message").first.inner_text()

    # saved broken: the first refresh fails and says so; nothing claims a sync
    await page.locator("#integration-save").click()
    await expect(result).to_contain_text(sentence, timeout=SLOW)
    await expect(page.locator("#integration-updated")).to_have_text(
        "Last sync failed just now · no balance yet"
    )
    await expect(page.locator("#integration-status")).to_have_attribute(
        "data-status", "error"
    )
    await close_dialog(page)
    await expect(row(page, BROKEN).locator(".updated")).to_have_text(
        "Last sync failed just now · no balance yet"
    )
    await expect(row(page, BROKEN).locator(".badge")).to_have_attribute(
        "data-status", "error"
    )

    # fixed: a good sync; broken again: the failure is shown and the good sync stays visible
    await open_edit(page, BROKEN)
    await page.get_by_label("Port", exact=True).fill(str(stack.gateway_port))
    await page.locator("#integration-save").click()
    await expect(result).to_contain_text("✓ Saved and synced", timeout=SLOW)
    await page.get_by_label("Port", exact=True).fill(str(dead))
    await page.locator("#integration-save").click()
    await expect(page.locator("#integration-updated")).to_have_text(
        "Last sync failed just now · last good sync just now", timeout=SLOW
    )
    await expect(page.locator("#integration-error")).to_contain_text(sentence)
    await expect(result).to_contain_text(sentence, timeout=SLOW)  # the save flow ended
    await page.locator("#integration-error details summary").click()
    await expect(page.locator("#integration-error details")).to_contain_text(
        "code unreachable"
    )
    await shots.take(page, "integration-error", doc=True)

    # remove it (asks first), so the rest of the session has four integrations
    await page.get_by_role("button", name="Remove integration").click()
    await page.get_by_role("button", name="Yes, remove").click()
    await expect(result).to_have_text("Integration removed.")
    await expect(page.locator("#integration-state")).to_be_hidden()
    await close_dialog(page)
    await expect(row(page, BROKEN).locator(".integration")).to_have_text("None")


async def test_schwab_sign_in_then_first_sync_with_cash(
    page: Page, stack: Stack, shots: Screenshots
) -> None:
    await open_edit(page, SCHWAB)
    await page.get_by_label("Integration type").select_option("SCHWAB")
    await page.get_by_label("App key").fill(SCHWAB_APP_KEY)
    await page.get_by_label("App secret").fill(SCHWAB_APP_SECRET)
    await page.locator("#integration-save").click()
    result = page.locator("#integration-result")
    await expect(result).to_have_text("Saved. Now sign in with Re-authenticate.")
    secret = page.get_by_label("App secret")
    await expect(secret).to_have_value("")  # the secret is never sent back
    await expect(secret).to_have_attribute("placeholder", "********")
    assert SCHWAB_APP_SECRET not in await page.content()
    # never signed in: not "expired", and no time claims a sync
    await expect(page.locator("#integration-status")).to_contain_text("Not signed in")
    await expect(page.locator("#schwab-oauth")).to_contain_text("Not signed in yet")
    await expect(page.locator("#integration-updated")).to_have_text("Never synced")

    async with page.expect_popup() as popup_info:
        await page.get_by_role("button", name="Re-authenticate").click()
    popup = await popup_info.value
    await popup.wait_for_load_state()
    async with popup.expect_event("close", timeout=SLOW):
        await popup.locator("#allow").click()

    # the popup told the opener; the dialog is (re)opened on the Integration tab and the
    # first refresh runs without anyone clicking Refresh
    await expect(page.locator("#tab-integration")).to_have_attribute(
        "aria-selected", "true"
    )
    await expect(result).to_have_text(
        "✓ Signed in to Schwab and synced: balance $25,750.75", timeout=SLOW
    )
    await expect(page.locator("#schwab-oauth")).to_contain_text("✓ Signed in")
    await expect(page.locator("#integration-status")).to_have_attribute(
        "data-status", re.compile("connected|expiring_soon")
    )
    await shots.take(page, "integration-schwab", doc=True)
    await page.get_by_role("tab", name="History").click()
    cash = page.locator("#cash-rows")
    await expect(cash).to_contain_text("USD")
    await expect(cash).to_contain_text("$1,750.75")
    await close_dialog(page)
    await expect(row(page, SCHWAB).locator(".balance")).to_have_text("$25,750.75")


async def test_sign_in_state_never_leaks_between_dialogs(page: Page) -> None:
    line = page.locator("#schwab-oauth-line")
    await open_edit(page, SCHWAB)
    await expect(line).to_be_visible()
    await expect(page.locator("#schwab-oauth")).to_contain_text("Signed in")
    await close_dialog(page)
    await create_account(page, FRESH)
    for name in (FRESH, IB_ONE):
        await open_edit(page, name)
        await expect(line).to_be_hidden()
        await page.get_by_label("Integration type").select_option("SCHWAB")
        await expect(page.locator("#schwab-fields")).to_be_visible()
        await expect(line).to_be_hidden()  # unsaved Schwab settings have no sign-in
        await expect(page.locator("#schwab-oauth")).to_have_text("")
        await expect(page.get_by_role("button", name="Re-authenticate")).to_be_hidden()
        await nothing_hidden_shows(page)
        await close_dialog(page)


async def add_history(page: Page, stack: Stack, name: str, balances: list[str]) -> None:
    """Earlier balances typed in by hand (the History API), so the chart has a line."""
    aid = await account_id(page, name)
    today = datetime.date.today()
    async with await api_client(page, stack) as client:
        for days_ago, balance in enumerate(reversed(balances), start=1):
            day = today - datetime.timedelta(days=7 * days_ago)
            response = await client.post(
                f"/api/accounts/{aid}/history",
                json={"date": day.isoformat(), "balance": balance},
            )
            assert response.status_code == 201, response.text


async def test_tabs_keyboard_history_and_audit(
    page: Page, stack: Stack, shots: Screenshots
) -> None:
    await add_history(
        page, stack, IB_ONE, ["15200", "15950.5", "15480", "16720", "17105.25"]
    )
    await open_edit(page, IB_ONE, tab="Details")
    await shots.take(page, "details")
    details = page.get_by_role("tab", name="Details")
    await details.focus()
    await page.keyboard.press("ArrowRight")
    await expect(page.get_by_role("tab", name="Integration")).to_be_focused()
    await expect(page.locator("#panel-integration")).to_be_visible()
    await page.keyboard.press("ArrowRight")
    history = page.get_by_role("tab", name="History")
    await expect(history).to_be_focused()
    await expect(history).to_have_attribute("aria-selected", "true")
    await expect(page.locator("#panel-history")).to_be_visible()
    await expect(page.locator("#history-chart svg")).to_be_visible()
    await expect(page.locator("#history-rows tr")).to_have_count(6)
    await expect(page.locator("#history-chart circle")).to_have_count(6)
    await expect(page.locator("#position-rows")).to_contain_text("AAPL")
    await expect(page.locator("#cash-rows")).to_contain_text("EUR")
    await shots.take(page, "history", doc=True)

    await page.keyboard.press("End")
    audit = page.get_by_role("tab", name="Audit")
    await expect(audit).to_be_focused()
    await expect(page.locator("#panel-audit")).to_be_visible()
    rows = page.locator("#audit-rows tr")
    for what in ("Account created", "Integration added", "Connection tested"):
        await expect(rows.filter(has_text=what).first).to_be_visible()
    await expect(rows.filter(has_text="Integration added")).to_contain_text("Host")
    await shots.take(page, "audit", doc=True)
    await page.keyboard.press("Home")
    await expect(details).to_be_focused()
    await page.keyboard.press("Escape")
    await expect(page.locator("#account-dialog")).to_be_hidden()


async def test_refresh_all_shows_progress(page: Page, shots: Screenshots) -> None:
    await page.get_by_role("button", name="Refresh all").click()
    await expect(page.locator("#refresh-job")).to_be_visible()
    await expect(page.locator("#refresh-job-text")).to_have_text(
        "Refreshed: 4 done, 0 failed, 4 total", timeout=SLOW
    )
    await expect(page.locator("#net-worth")).to_be_visible()
    await shots.take(page, "accounts", doc=True)


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
    # the connector reports a dropped session as `disconnected` while it reconnects
    for badge in badges:
        await expect(badge).to_have_attribute(
            "data-status", re.compile("disconnected|error"), timeout=SLOW
        )
    for badge in badges:
        await expect(badge).to_have_attribute("data-status", "connected", timeout=SLOW)
    assert await page.evaluate("window.__sameDocument") is True


def _amount(text: str) -> Decimal:
    return Decimal(re.sub(r"[^\d.-]", "", text))


async def test_health_page_acts_and_totals(
    page: Page, stack: Stack, shots: Screenshots
) -> None:
    balances = [_amount(t) for t in await page.locator(".balance").all_inner_texts()]
    await page.get_by_role("link", name="Integration health").click()
    rows = page.locator("#health-rows tr")
    await expect(rows).to_have_count(4)
    await nothing_hidden_shows(page)
    # every account is in USD: one total, equal to the table's balances added up
    await expect(page.locator("#net-worth")).to_have_text(
        f"${sum(balances):,.2f}", timeout=SLOW
    )
    schwab = rows.filter(has_text=SCHWAB)
    await expect(schwab.locator(".badge")).to_have_attribute(
        "data-status", re.compile("connected|expiring_soon")
    )
    await expect(schwab.locator(".expiry")).to_have_text(
        re.compile(r"^\d+d \d+h \d+m$")
    )
    ib = rows.filter(has_text=IB_ONE)
    await expect(ib.locator(".badge")).to_have_attribute("data-status", "connected")
    await expect(ib.locator(".sync")).to_have_text(
        re.compile(r"^Synced (just now|\d+ mins? ago)$")
    )

    await page.get_by_role("button", name=f"Refresh {IB_ONE}").click()
    await expect(ib.locator(".result")).to_contain_text("✓ Refreshed", timeout=SLOW)
    await expect(ib.locator(".sync")).to_have_text("Synced just now")

    async with page.expect_popup() as popup_info:
        await page.get_by_role("button", name=f"Re-authenticate {SCHWAB}").click()
    popup = await popup_info.value
    await popup.wait_for_load_state()
    async with popup.expect_event("close", timeout=SLOW):
        await popup.locator("#allow").click()
    await expect(schwab.locator(".result")).to_have_text(
        "✓ Signed in to Schwab.", timeout=SLOW
    )
    await shots.take(page, "health", doc=True)
    assert page.errors == [], page.errors

    await page.get_by_role("link", name=f"Open settings of {IB_TWO}").click()
    await expect(page.locator("#dialog-title")).to_have_text(f"Edit Account: {IB_TWO}")
    await expect(page.locator("#tab-integration")).to_have_attribute(
        "aria-selected", "true"
    )
    await expect(page).to_have_url(re.compile(r"/$"))
    await page.keyboard.press("Escape")


async def test_totals_per_currency_when_currencies_differ(page: Page) -> None:
    await page.goto("/")
    await create_account(page, "Euro savings", currency="EUR")
    totals = page.locator("#totals")
    await expect(page.locator("#no-total")).to_be_visible()
    await expect(page.locator("#net-worth")).to_have_count(0)
    await expect(totals.locator('[data-currency="EUR"]')).to_contain_text("1 account")
    await expect(totals.locator('[data-currency="USD"]')).to_contain_text("6 accounts")


async def test_oauth_return_in_the_same_window(page: Page) -> None:
    """With popups blocked the callback's redirect lands on this page instead."""
    await page.goto("/")
    schwab_id = await account_id(page, SCHWAB)
    await page.goto(f"/?oauth=ok&account={schwab_id}")
    await expect(page.locator("#dialog-title")).to_have_text(f"Edit Account: {SCHWAB}")
    await expect(page.locator("#tab-integration")).to_have_attribute(
        "aria-selected", "true"
    )
    await expect(page.locator("#integration-result")).to_contain_text(
        "✓ Signed in to Schwab", timeout=SLOW
    )
    await expect(page).to_have_url(re.compile(r"/$"))  # the query is dropped
    await page.keyboard.press("Escape")
    await page.goto("/?oauth=error&reason=invalid_field")
    await expect(page.locator("#toast")).to_contain_text("(invalid_field)")
    await expect(page.locator("#account-dialog")).to_be_hidden()
    assert page.errors == [], page.errors
