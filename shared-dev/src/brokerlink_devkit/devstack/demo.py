"""Demo data for `make run`: a user with two IB accounts on the simulated gateway and two
Schwab accounts, created through account-api's public API (the same path a person takes).
On later runs the IB accounts are re-pointed when the simulated gateway had to move to
another port (its last port was taken)."""

from __future__ import annotations

from typing import Any

import httpx

DEMO_EMAIL = "demo@example.com"
DEMO_PASSWORD = "demo-password-2026"


def ensure_demo(base_url: str, gateways: dict[str, int]) -> tuple[str, str]:
    """Create the demo user and accounts unless they exist, point its IB accounts at the
    running gateway; returns the login."""
    with httpx.Client(base_url=base_url, timeout=30) as client:
        client.post(
            "/api/auth/register",
            json={
                "email": DEMO_EMAIL,
                "password": DEMO_PASSWORD,
                "name": "Demo Investor",
            },
        )
        token = (
            client.post(
                "/api/auth/login", json={"email": DEMO_EMAIL, "password": DEMO_PASSWORD}
            )
            .raise_for_status()
            .json()["access_token"]
        )
        client.headers["Authorization"] = f"Bearer {token}"
        port = next(iter(gateways.values()), 4002)
        accounts = client.get("/api/accounts").raise_for_status().json()
        if accounts:
            _repoint_ib(client, accounts, port)
            return DEMO_EMAIL, DEMO_PASSWORD
        for name, code in (("IB Main", "U1234567"), ("IB Family", "U7654321")):
            account = (
                client.post(
                    "/api/accounts",
                    json={
                        "name": name,
                        "currency": "USD",
                        "account_type": "INVESTMENT",
                        "account_number": code,
                        "original_capital": "100000",
                    },
                )
                .raise_for_status()
                .json()
            )
            client.put(
                f"/api/accounts/{account['id']}/integration",
                json={
                    "type": "IB",
                    "config": {
                        "host": "127.0.0.1",
                        "port": port,
                        "client_id": 1,
                        "account_code": code,
                    },
                },
            ).raise_for_status()
        for name, number in (
            ("Schwab Brokerage", "12345678"),
            ("Schwab IRA", "87654321"),
        ):
            account = (
                client.post(
                    "/api/accounts",
                    json={
                        "name": name,
                        "currency": "USD",
                        "account_type": "INVESTMENT",
                        "account_number": number,
                        "original_capital": "50000",
                    },
                )
                .raise_for_status()
                .json()
            )
            client.put(
                f"/api/accounts/{account['id']}/integration",
                json={
                    "type": "SCHWAB",
                    "config": {
                        "app_key": "demo-schwab-app",
                        "app_secret": "demo-schwab-secret",
                        "account_number": number,
                    },
                },
            ).raise_for_status()
        client.post("/api/integrations/refresh")
    return DEMO_EMAIL, DEMO_PASSWORD


def _repoint_ib(
    client: httpx.Client, accounts: list[dict[str, Any]], port: int
) -> None:
    moved = False
    for account in accounts:
        url = f"/api/accounts/{account['id']}/integration"
        integration = client.get(url).raise_for_status().json()
        config = integration.get("config") or {}
        if integration.get("type") == "IB" and config.get("port") != port:
            client.put(
                url, json={"type": "IB", "config": {**config, "port": port}}
            ).raise_for_status()
            moved = True
    if moved:
        client.post("/api/integrations/refresh")
