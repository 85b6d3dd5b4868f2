"""User-level Schwab settings are linked only where schwab-connector, asked over the bus with the
legacy tokens during the import, confirms the login sees the account: real NATS, the real
connector, schwab-py over HTTP to the Schwab simulator."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from brokerlink_shared.crypto import SecretBox
from brokerlink_simulators.schwab_api import SchwabApiSimulator
from brokerlink_simulators.schwab_api.scenario import (
    Scenario,
    SimAccount,
    SimApp,
    SimLogin,
)
from migrator.legacy_schema import create
from migrator.target import libpq_url
from schwab_connector.config import Settings
from schwab_connector.main import ConnectorRuntime

from .conftest import CREATED, HASH, UPDATED_LOCAL

CALLBACK = "https://legacy.example/schwab/callback"
APPS = {"KEY-ANN": "ann-secret", "KEY-BEN": "ben-secret"}


def _scenario() -> Scenario:
    return Scenario(
        apps=[
            SimApp(app_key="KEY-ANN", app_secret=APPS["KEY-ANN"], default_login="ann"),
            SimApp(app_key="KEY-BEN", app_secret=APPS["KEY-BEN"], default_login="ben"),
        ],
        logins=[
            SimLogin(
                login_id="ann",
                accounts=[
                    SimAccount(account_number="11112222", liquidation_value=10),
                    SimAccount(account_number="33334444", liquidation_value=20),
                ],
            ),
            SimLogin(
                login_id="ben",
                accounts=[SimAccount(account_number="55556666", liquidation_value=30)],
            ),
        ],
    )


async def _legacy_tokens(
    http: httpx.AsyncClient, app_key: str, login: str
) -> dict[str, Any]:
    """Sign in as the legacy app did (authorization code, then the token endpoint)."""
    consent = (
        await http.post(
            "/admin/consent",
            json={"app_key": app_key, "login_id": login, "redirect_uri": CALLBACK},
        )
    ).json()
    token = await http.post(
        "/v1/oauth/token",
        auth=(app_key, APPS[app_key]),
        data={
            "grant_type": "authorization_code",
            "code": consent["code"],
            "redirect_uri": CALLBACK,
        },
    )
    assert token.status_code == 200, token.text
    return dict(token.json())


@pytest.fixture
async def connector(infra: Any) -> AsyncIterator[tuple[SchwabApiSimulator, str]]:
    sim = SchwabApiSimulator(_scenario())
    await sim.start()
    namespace = f"{infra.namespace}mig"
    runtime = ConnectorRuntime(
        Settings(
            nats_url=infra.nats_url,
            namespace=namespace,
            encryption_keys=infra.encryption_keys,
            api_base_url=sim.base_url,
            health_port=0,
            health_host="127.0.0.1",
        )
    )
    await runtime.app.start()
    try:
        yield sim, namespace
    finally:
        await runtime.app.stop()
        await sim.stop()


async def test_schwab_settings_link_only_to_accounts_the_login_sees(
    connector, infra, tmp_path: Path, target_url, migrate, box: SecretBox, monkeypatch
) -> None:
    sim, namespace = connector
    async with httpx.AsyncClient(base_url=sim.base_url) as http:
        ann = await _legacy_tokens(http, "KEY-ANN", "ann")
        ben = await _legacy_tokens(http, "KEY-BEN", "ben")
        await http.post("/admin/tokens/revoke", json={"app_key": "KEY-BEN"})
    path = tmp_path / "investment_tracker.db"
    conn = create(path)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.executemany(
        "INSERT INTO users (id, email, password_hash, name, created_at, updated_at)"
        f" VALUES (?, ?, '{HASH}', ?, '{CREATED}', '{UPDATED_LOCAL}')",
        [(1, "ann@example.com", "Ann"), (2, "ben@example.com", "Ben")],
    )
    conn.executemany(
        "INSERT INTO accounts (id, user_id, name, currency, account_number, original_capital, current_balance)"
        " VALUES (?, ?, ?, 'USD', ?, 1, 1)",
        [
            (10, 1, "Brokerage", "1111-2222"),  # the login sees it (typed with a dash)
            (11, 1, "IRA", "33334444"),  # sees it too: one setting, two accounts
            (12, 1, "Old Schwab", "99998888"),  # Schwab-shaped, but not this login's
            (20, 2, "Ben's", "55556666"),
        ],
    )
    expires = int(time.time()) + 1800
    conn.executemany(
        "INSERT INTO schwab_settings (id, user_id, app_key, app_secret, access_token, refresh_token, token_expires_at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?)",
        [
            (
                1,
                1,
                "KEY-ANN",
                APPS["KEY-ANN"],
                ann["access_token"],
                ann["refresh_token"],
                expires,
            ),
            (
                2,
                2,
                "KEY-BEN",
                APPS["KEY-BEN"],
                ben["access_token"],
                ben["refresh_token"],
                expires,
            ),
        ],
    )
    conn.commit()
    conn.close()

    monkeypatch.setenv("NATS_URL", infra.nats_url)
    monkeypatch.setattr(infra, "namespace", namespace)
    report_path = tmp_path / "report.json"
    code, _out, err = await asyncio.to_thread(  # the CLI runs its own event loop
        migrate, target_url, "--source", str(path), "--report", str(report_path)
    )
    assert code == 0, err
    report = json.loads(report_path.read_text())
    assert any("1 answered" in n for n in report["notes"]), report["notes"]
    with psycopg.connect(libpq_url(target_url)) as db:
        accounts = {
            r[0]: r[1:]
            for r in db.execute(
                "SELECT legacy_id, integration_type, integration_config FROM accounts"
            ).fetchall()
        }
        pending = db.execute(
            "SELECT legacy_id, reason, suggestions, verified_suggestions FROM pending_links"
        ).fetchall()
    hashes = {
        n: SimAccount(account_number=n).account_hash() for n in ("11112222", "33334444")
    }
    for legacy_id, number in ((10, "11112222"), (11, "33334444")):
        kind, config = accounts[legacy_id]
        assert kind == "SCHWAB" and config["account_hash"] == hashes[number]
        assert "unverified" not in config and config["account_number"] == number
        token = json.loads(box.decrypt(config["token_enc"]))
        assert token["token"]["refresh_token"] == ann["refresh_token"]
    assert accounts[12][0] is None  # Schwab-shaped, but the login does not see it
    # Ben's login was revoked: Schwab could not confirm anything, so nothing is linked
    assert accounts[20][0] is None
    ((legacy_id, _reason, suggestions, verified),) = pending
    assert legacy_id == 2 and suggestions and verified == []
