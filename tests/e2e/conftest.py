"""The browser end-to-end stack: real account-api, every connector and every simulator on the
session's NATS and PostgreSQL (from the `infra` fixture), driven by Playwright through Debian's
chromium. Everything runs in the session's event loop; nothing is downloaded.

When the browser or the Playwright driver cannot start, every test here skips with the reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

CHROMIUM = os.environ.get("BROKERLINK_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ROOT = Path(__file__).resolve().parents[2]
# Every page and step is saved here as a test artifact (CI can upload the folder); the ones the
# docs show are copied to docs/screenshots from the same files, so the docs never drift.
ARTIFACTS = (
    Path(os.environ.get("BROKERLINK_ARTIFACTS", ROOT / "test-results")) / "screenshots"
)
SCREENSHOTS = ROOT / "docs" / "screenshots"
VIEWPORT = {"width": 1280, "height": 800}

# What the simulators serve.
GATEWAY = "e2e-gateway"
IB_CODES = ("U1111111", "U2222222")
SCHWAB_APP_KEY = "e2e-app-key"
SCHWAB_APP_SECRET = "e2e-app-secret-123"
SCHWAB_LOGIN = "e2e-login"
SCHWAB_NUMBER = "87654321"
FLEX_TOKEN = "556677889900112233445566"
FLEX_EXPIRED_TOKEN = "665544332211009988776655"
FLEX_QUERY, FLEX_EXPIRED_QUERY = "700001", "700002"
FLEX_ACCOUNTS = {"U5550001": 15000.25, "U5550002": 2500.5}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.e2e)


def _skip(reason: str) -> None:
    reason = reason.splitlines()[0][:300]
    print(f"\n[e2e] skipping browser tests: {reason}")
    pytest.skip(reason)


@dataclass
class Stack:
    """The running services, as the tests see them."""

    base_url: str
    ib_sim: Any
    ib_admin_url: str
    gateway_port: int
    schwab_sim: Any
    flex_sim: Any
    database_url: str = ""  # account-api's database (the migrator's target)


def _ib_scenario_accounts() -> list[Any]:
    from brokerlink_simulators.ib_gateway import AccountSpec, PositionSpec

    return [
        AccountSpec(
            code=IB_CODES[0],
            cash={"USD": Decimal("12500"), "EUR": Decimal("1000")},
            fx_rates={"EUR": Decimal("1.10")},
            positions=[
                PositionSpec(
                    symbol="AAPL",
                    quantity=Decimal(10),
                    average_cost=Decimal(150),
                    market_price=Decimal(190),
                ),
                PositionSpec(
                    symbol="MSFT",
                    quantity=Decimal(5),
                    average_cost=Decimal(300),
                    market_price=Decimal(410),
                ),
            ],
        ),
        AccountSpec(code=IB_CODES[1], cash={"USD": Decimal("4321.50")}),
    ]


def _schwab_scenario() -> Any:
    from brokerlink_simulators.schwab_api import (
        Scenario,
        SimAccount,
        SimApp,
        SimLogin,
        SimPosition,
    )

    return Scenario(
        apps=[
            SimApp(
                app_key=SCHWAB_APP_KEY,
                app_secret=SCHWAB_APP_SECRET,
                default_login=SCHWAB_LOGIN,
            )
        ],
        logins=[
            SimLogin(
                login_id=SCHWAB_LOGIN,
                accounts=[
                    SimAccount(
                        account_number=SCHWAB_NUMBER,
                        liquidation_value=25750.75,
                        cash_balance=1750.75,
                        positions=[
                            SimPosition(
                                symbol="VTI",
                                quantity=100,
                                average_price=200,
                                market_value=24000,
                            )
                        ],
                    )
                ],
            )
        ],
    )


def _flex_scenario() -> Any:
    from brokerlink_simulators.ib_flex import (
        FlexAccount,
        FlexLimits,
        FlexQuery,
        FlexToken,
        Scenario,
    )

    return Scenario(
        tokens=[
            FlexToken(token=FLEX_TOKEN),
            FlexToken(token=FLEX_EXPIRED_TOKEN, expired=True),
        ],
        queries=[
            FlexQuery(
                query_id=FLEX_QUERY, token=FLEX_TOKEN, accounts=list(FLEX_ACCOUNTS)
            ),
            FlexQuery(
                query_id=FLEX_EXPIRED_QUERY,
                token=FLEX_EXPIRED_TOKEN,
                accounts=["U5550003"],
            ),
        ],
        accounts=[
            FlexAccount(account_id=code, nav=nav, cash={"USD": nav}, positions=[])
            for code, nav in FLEX_ACCOUNTS.items()
        ],
        limits=FlexLimits(per_window=20, window_s=5, min_interval_s=0),
    )


@pytest.fixture(scope="session")
async def stack(infra: Any) -> AsyncIterator[Stack]:
    """Simulators, connectors and account-api, each in this event loop on its own port."""
    from brokerlink_shared.reach import LOOPBACK
    from brokerlink_simulators.ib_flex import IbFlexSimulator
    from brokerlink_simulators.ib_gateway import (
        GatewaySpec,
        IBGatewaySimulator,
        Scenario,
    )
    from brokerlink_simulators.schwab_api import SchwabApiSimulator
    from ib_connector.config import Settings as IbSettings
    from ib_connector.main import create_app as create_ib
    from ibflex_connector.config import Settings as FlexSettings
    from ibflex_connector.main import create_app as create_flex
    from schwab_connector.config import Settings as SchwabSettings
    from schwab_connector.main import create_app as create_schwab

    namespace = f"{infra.namespace}ui"
    cleanup = contextlib.AsyncExitStack()
    async with cleanup:
        ib_sim = IBGatewaySimulator(Scenario(), admin_port=0)
        await ib_sim.start()
        cleanup.push_async_callback(ib_sim.stop)
        gateway = await ib_sim.add_gateway(
            GatewaySpec(name=GATEWAY, accounts=_ib_scenario_accounts())
        )

        schwab_sim = SchwabApiSimulator(_schwab_scenario())
        await schwab_sim.start()
        cleanup.push_async_callback(schwab_sim.stop)

        ib_app = create_ib(
            IbSettings(
                nats_url=infra.nats_url,
                namespace=namespace,
                health_enabled=False,
                allowed_networks=LOOPBACK,
                connect_timeout_s=3.0,
                request_timeout_s=6.0,
                backoff_initial_s=0.2,
                backoff_max_s=1.0,
                primary_retry_s=1.0,
                lease_ttl_s=2.0,
            )
        )
        await ib_app.start()
        cleanup.push_async_callback(lambda: asyncio.wait_for(ib_app.stop(), 30))

        schwab_app = create_schwab(
            SchwabSettings(
                nats_url=infra.nats_url,
                namespace=namespace,
                encryption_keys=infra.encryption_keys,
                api_base_url=schwab_sim.base_url,
                health_host="127.0.0.1",
                health_port=0,
                backoff_base_s=0.05,
                backoff_cap_s=0.5,
            )
        )
        await schwab_app.start()
        cleanup.push_async_callback(lambda: asyncio.wait_for(schwab_app.stop(), 30))

        flex_sim = IbFlexSimulator(_flex_scenario())
        await flex_sim.start()
        cleanup.push_async_callback(flex_sim.stop)
        flex_app = create_flex(
            FlexSettings(
                nats_url=infra.nats_url,
                namespace=namespace,
                encryption_keys=infra.encryption_keys,
                send_request_url=flex_sim.send_request_url,
                health_host="127.0.0.1",
                health_port=0,
                # the simulator's throttle scaled down (20 per 5 s): 4 per 1.25 s slice
                rate_limit=20,
                rate_window_s=5.0,
                rate_slices=4,
                rate_min_spacing_s=0.0,
                backoff_base_s=0.05,
                backoff_cap_s=0.3,
            )
        )
        await flex_app.start()
        cleanup.push_async_callback(lambda: asyncio.wait_for(flex_app.stop(), 30))

        database = infra.new_database("e2e")
        base_url = await serve_account_api(
            infra,
            cleanup,
            namespace,
            database,
            schwab_authorize_url=f"{schwab_sim.base_url}/v1/oauth/authorize",
            ib_allowed_networks=LOOPBACK,
        )
        yield Stack(
            base_url=base_url,
            ib_sim=ib_sim,
            ib_admin_url=ib_sim.admin_url,
            gateway_port=gateway.port,
            schwab_sim=schwab_sim,
            flex_sim=flex_sim,
            database_url=database,
        )


async def serve_account_api(
    infra: Any,
    cleanup: contextlib.AsyncExitStack,
    namespace: str,
    database: str,
    **overrides: Any,
) -> str:
    """account-api on a free port over a freshly migrated `database`, served until `cleanup`
    closes, with the end-to-end defaults (no scheduler, short waits) and `overrides`; returns
    its base URL once /healthz says ok."""
    from account_api.config import Settings as ApiSettings
    from account_api.main import create_app as create_api
    from account_api.migrate import upgrade
    from brokerlink_devkit.devstack.embedded import free_port
    from brokerlink_devkit.testing.serving import serving

    upgrade(database)
    port = free_port()
    settings = ApiSettings.model_validate(
        {
            "database_url": database,
            "nats_url": infra.nats_url,
            "namespace": namespace,
            "encryption_keys": infra.encryption_keys,
            "jwt_secret": secrets.token_urlsafe(32),
            "port": port,
            "public_url": f"http://127.0.0.1:{port}",
            "scheduled_refresh_interval_s": 0,
            "refresh_wait_default_s": 5.0,
            "integration_test_timeout_s": 5.0,
            **overrides,
        }
    )
    base_url: str = await cleanup.enter_async_context(
        serving(create_api(settings), port)
    )
    await _wait_healthy(base_url)
    return base_url


async def _wait_healthy(base_url: str, timeout_s: float = 30.0) -> None:
    """account-api connects to NATS in the background; wait until /healthz says ok."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    async with httpx.AsyncClient(base_url=base_url, timeout=5) as client:
        while True:
            response = await client.get("/healthz")
            if response.status_code == 200:
                return
            if loop.time() > deadline:
                raise AssertionError(f"account-api not healthy: {response.text}")
            await asyncio.sleep(0.1)


def chromium_path() -> str | None:
    """Debian's chromium (or `$BROKERLINK_CHROMIUM`), never a downloaded browser."""
    return CHROMIUM if Path(CHROMIUM).exists() else shutil.which("chromium")


@pytest.fixture(scope="session")
def chromium() -> str:
    executable = chromium_path()
    if executable is None:
        _skip(f"no chromium at {CHROMIUM} (apt-get install chromium)")
    assert executable is not None
    return executable


@pytest.fixture(scope="session")
async def browser(chromium: str) -> AsyncIterator[Any]:
    try:
        from playwright.async_api import async_playwright
    except ImportError as exc:  # pragma: no cover - playwright is a dev dependency
        _skip(f"playwright is not installed: {exc}")
    try:
        manager = async_playwright()
        playwright = await manager.start()
    except Exception as exc:
        _skip(f"the Playwright driver could not start: {type(exc).__name__}: {exc}")
    try:
        browser = await playwright.chromium.launch(
            executable_path=chromium, args=CHROMIUM_ARGS
        )
    except Exception as exc:
        await manager.__aexit__(None, None, None)
        _skip(f"chromium at {chromium} could not start: {type(exc).__name__}: {exc}")
    try:
        yield browser
    finally:
        await browser.close()
        await manager.__aexit__(None, None, None)


@pytest.fixture(scope="module")
async def page(browser: Any, stack: Stack) -> AsyncIterator[Any]:
    """One signed-in-later page for a module's scenario (the tests build on each other)."""
    from playwright.async_api import expect

    expect.set_options(timeout=15_000)
    context = await browser.new_context(base_url=stack.base_url, viewport=VIEWPORT)
    page = await context.new_page()
    page.set_default_timeout(15_000)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.errors = errors
    try:
        yield page
    finally:
        await context.close()


class Screenshots:
    """`await shots.take(page, "name")` saves an artifact; `doc=True` also refreshes the docs'
    copy of the same image."""

    def __init__(self) -> None:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        self.taken: list[str] = []

    async def take(self, page: Any, name: str, *, doc: bool = False) -> Path:
        path = ARTIFACTS / f"{name}.png"
        await page.screenshot(path=str(path))
        self.taken.append(name)
        if doc:
            SCREENSHOTS.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, SCREENSHOTS / f"{name}.png")
        return path


@pytest.fixture(scope="session")
def shots() -> Screenshots:
    return Screenshots()
