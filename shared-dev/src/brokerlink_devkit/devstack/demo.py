"""Demo data for `make run`: a user with two IB accounts on the simulated gateway and two
Schwab accounts, created through account-api's public API (the same path a person takes)."""

from __future__ import annotations

import httpx

DEMO_EMAIL = "demo@example.com"
DEMO_PASSWORD = "demo-password-2026"


def seed_demo(base_url: str, gateways: dict[str, int]) -> tuple[str, str]:
    """Create the demo user and accounts unless they exist; returns the login."""
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
        if client.get("/api/accounts").raise_for_status().json():
            return DEMO_EMAIL, DEMO_PASSWORD
        port = next(iter(gateways.values()), 4002)
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
