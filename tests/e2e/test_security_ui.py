"""Two-factor sign-in in a real browser: enrol on the Security page (QR code, key, recovery
codes), sign out (the session ends on the server), sign in again with the authenticator's code."""

from __future__ import annotations

import re
import secrets
import time
from urllib.parse import quote

import pyotp
from playwright.async_api import Page, expect

PASSWORD = "correct horse battery"


async def register(page: Page, name: str) -> str:
    """Create an account through the register page (which signs in); returns its e-mail."""
    email = f"{name.split()[0].lower()}{secrets.token_hex(4)}@example.com"
    await page.goto("/register")
    await page.get_by_label("Name").fill(name)
    await page.get_by_label("Email").fill(email)
    await page.get_by_label("Password").fill(PASSWORD)
    await page.get_by_role("button", name="Create account").click()
    await expect(page.get_by_role("heading", name="Accounts")).to_be_visible()
    return email


async def test_enrol_and_sign_in_with_a_code(page: Page) -> None:
    email = await register(page, "Grace Hopper")

    await page.get_by_role("link", name="Security").click()
    await expect(page.locator("#twofa-state")).to_have_text(
        "Two-factor sign-in is off."
    )
    await page.get_by_role("button", name="Set up two-factor sign-in").click()
    qr = page.get_by_alt_text("QR code holding the two-factor key")
    await expect(qr).to_have_attribute(
        "src", re.compile(r"^data:image/svg\+xml;base64,")
    )
    secret = (await page.locator("#twofa-secret").text_content() or "").strip()
    totp = pyotp.TOTP(secret)
    await page.get_by_label("Code from the app", exact=True).fill(
        "000000" if totp.now() != "000000" else "111111"
    )
    await page.get_by_role("button", name="Turn on").click()
    await expect(page.locator("#twofa-enrol-error")).not_to_be_empty()
    await page.get_by_label("Code from the app", exact=True).fill(totp.now())
    await page.get_by_role("button", name="Turn on").click()
    await expect(page.locator("#twofa-code-list li")).to_have_count(10)
    await expect(page.locator("#twofa-state")).to_have_text("Two-factor sign-in is on.")

    await page.get_by_role("button", name="Sign out", exact=True).click()
    await expect(page).to_have_url(re.compile(r"/login"))
    await page.get_by_label("Email").fill(email)
    await page.get_by_label("Password").fill(PASSWORD)
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.locator("#login-error")).to_have_text(
        "Enter the code from your authenticator app."
    )
    code = page.get_by_label("Code from your authenticator app (or a recovery code)")
    await expect(code).to_be_focused()
    await code.fill(totp.at(time.time() + 30))  # the next step: never the one just used
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.get_by_role("heading", name="Accounts")).to_be_visible()
    await expect(page.locator("#user-name")).to_have_text("Grace Hopper")
    assert not page.errors  # type: ignore[attr-defined]


async def test_sign_in_goes_back_to_a_page_of_this_site_only(page: Page) -> None:
    """`/login?next=` after a sign-in: a page of ours is where it goes; another site never is
    (the link would otherwise hand a fresh sign-in to a look-alike page)."""
    email = await register(page, "Ada Lovelace")
    origin = re.escape(page.url.split("/", 3)[0] + "//" + page.url.split("/", 3)[2])
    for target, lands in (
        ("https://evil.example/phish", "/"),
        ("//evil.example/phish", "/"),
        ("/\\evil.example/phish", "/"),
        # dot segments make a path of this site that reads `//host`: followed whole, it
        # stays here (a page that does not exist), where its path alone went to the host
        ("/.//evil.example/phish", "//evil.example/phish"),
        ("/..//evil.example/phish", "//evil.example/phish"),
        ("http://[", "/"),
        ("/security", "/security"),
    ):
        await page.goto("/")
        await page.get_by_role("button", name="Sign out", exact=True).click()
        await expect(page).to_have_url(re.compile(r"/login"))
        await page.goto("/login?next=" + quote(target, safe=""))
        await page.get_by_label("Email").fill(email)
        await page.get_by_label("Password").fill(PASSWORD)
        await page.get_by_role("button", name="Sign in").click()
        await expect(page).to_have_url(re.compile(f"^{origin}{re.escape(lands)}$"))
        if not lands.startswith("//"):
            await expect(page.locator("#user-name")).to_have_text("Ada Lovelace")
    assert not page.errors  # type: ignore[attr-defined]
