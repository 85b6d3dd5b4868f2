"""One IB Gateway under two addresses of its host, through the REST API on a running stack.

account-api owns gateway endpoints by address, but a gateway listening on every interface also
answers at the machine's LAN address (or a Docker bridge address, another DNS name, a rebound
name), which account-api cannot tell is the same gateway. ib-connector owns the accounts the
gateway manages: the second user's session is closed before anything is read, and every route
shows the second user one message that names no account and no user."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import secrets
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import httpx
import nats
import orjson
import pytest
from brokerlink_devkit.testing import wait_until
from brokerlink_shared.contracts.values import (
    GATEWAY_OWNED_ELSEWHERE,
    GATEWAY_OWNED_ELSEWHERE_MESSAGE,
)
from brokerlink_shared.kv import bucket_keys
from nats.js.errors import KeyNotFoundError

from .conftest import serve_account_api

OWNER_CODES = ("U3200001", "U3200002")


def _lan_address() -> str | None:
    """This machine's non-loopback IPv4 address, if it has one."""
    candidates: list[str] = []
    with (
        contextlib.suppress(OSError),
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe,
    ):
        probe.connect(("10.255.255.255", 1))  # no packet is sent: only routes
        candidates.append(probe.getsockname()[0])
    with contextlib.suppress(OSError):
        candidates += [
            str(info[4][0])
            for info in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET)
        ]
    for candidate in candidates:
        address = ipaddress.ip_address(candidate)
        if not (address.is_loopback or address.is_link_local or address.is_unspecified):
            return candidate
    return None


@dataclass
class TwoAddressStack:
    base_url: str
    lan: str
    port: int
    nats_url: str
    claims_bucket: str


async def _kept_without_integrations(stack: TwoAddressStack, user_id: int) -> bool:
    """ib-connector has taken every integration of `user_id` off their gateway hold and kept
    the hold (as the claims bucket has it: held, listing none)."""
    nc = await nats.connect(stack.nats_url)
    try:
        kv = await nc.jetstream().key_value(stack.claims_bucket)
        holds = []
        for key in await bucket_keys(nc, stack.claims_bucket):
            if key.startswith("s"):
                with contextlib.suppress(KeyNotFoundError):
                    holds.append(orjson.loads((await kv.get(key)).value or b"{}"))
        return any(
            (h.get("user_id"), h.get("state"), h.get("integrations"))
            == (user_id, "held", [])
            for h in holds
        )
    finally:
        await nc.close()


@pytest.fixture(scope="module")
async def two_addresses(infra: Any) -> AsyncIterator[TwoAddressStack]:
    """account-api and ib-connector allowed loopback and this machine's LAN address, and a
    simulated gateway listening on every address."""
    from brokerlink_simulators.ib_gateway import (
        AccountSpec,
        GatewaySpec,
        IBGatewaySimulator,
        Scenario,
    )
    from ib_connector.config import Settings as IbSettings
    from ib_connector.main import create_app as create_ib

    lan = _lan_address()
    if lan is None:
        pytest.skip("this machine has no non-loopback IPv4 address")
    allowed = f"127.0.0.0/8,{lan}/32"
    namespace = f"{infra.namespace}gwacct"
    async with contextlib.AsyncExitStack() as cleanup:
        sim = IBGatewaySimulator(Scenario(), host="0.0.0.0", admin_port=None)
        await sim.start()
        cleanup.push_async_callback(sim.stop)
        gateway = await sim.add_gateway(
            GatewaySpec(
                name="two-addresses",
                accounts=[
                    AccountSpec(code=OWNER_CODES[0], cash={"USD": Decimal("32001")}),
                    AccountSpec(code=OWNER_CODES[1], cash={"USD": Decimal("32002")}),
                ],
            )
        )
        ib_app = create_ib(
            IbSettings(
                nats_url=infra.nats_url,
                namespace=namespace,
                health_enabled=False,
                allowed_networks=allowed,
                connect_timeout_s=3.0,
                request_timeout_s=6.0,
                backoff_initial_s=0.2,
                backoff_max_s=1.0,
                lease_ttl_s=2.0,
            )
        )
        await ib_app.start()
        cleanup.push_async_callback(lambda: asyncio.wait_for(ib_app.stop(), 30))
        base_url = await serve_account_api(
            infra,
            cleanup,
            namespace,
            infra.new_database("gwacct"),
            ib_allowed_networks=allowed,
        )
        yield TwoAddressStack(
            base_url, lan, gateway.port, infra.nats_url, f"{namespace}_ib_accounts"
        )


async def _user(client: httpx.AsyncClient) -> tuple[dict[str, str], str]:
    email, password = f"gw{secrets.token_hex(5)}@example.com", "gateway-password-1"
    r = await client.post(
        "/api/auth/register",
        json={"email": email, "password": password, "name": "Gateway Person"},
    )
    assert r.status_code == 201, r.text
    r = await client.post(
        "/api/auth/login", json={"email": email, "password": password}
    )
    return {"Authorization": f"Bearer {r.json()['access_token']}"}, email


async def _ib_account(
    client: httpx.AsyncClient, headers: dict[str, str], config: dict[str, Any]
) -> int:
    r = await client.post(
        "/api/accounts", headers=headers, json={"name": "IB", "currency": "USD"}
    )
    assert r.status_code == 201, r.text
    account = int(r.json()["id"])
    r = await client.put(
        f"/api/accounts/{account}/integration",
        headers=headers,
        json={"type": "IB", "config": config},
    )
    assert r.status_code == 200, r.text
    return account


async def test_the_same_gateway_under_a_lan_address_stays_its_owners(
    two_addresses: TwoAddressStack,
) -> None:
    stack = two_addresses
    async with httpx.AsyncClient(base_url=stack.base_url, timeout=30) as client:
        owner, owner_email = await _user(client)
        other, _ = await _user(client)

        async def owners_account(client_id: int) -> int:
            config = {
                "host": "127.0.0.1",
                "port": stack.port,
                "client_id": client_id,
                "account_code": OWNER_CODES[0],
            }
            return await _ib_account(client, owner, config)

        mine = await owners_account(31)
        r = await client.post(
            f"/api/accounts/{mine}/integration/refresh?wait=10", headers=owner
        )
        assert r.json()["status"] == "succeeded", r.text

        # account-api sees another endpoint, so the save succeeds; the connector does not
        theirs = await _ib_account(
            client,
            other,
            {
                "host": stack.lan,
                "port": stack.port,
                "client_id": 32,
                "account_code": OWNER_CODES[1],
            },
        )

        async def refused() -> bool:
            got = await client.get(f"/api/accounts/{theirs}/integration", headers=other)
            return bool(got.json()["last_error_code"] == GATEWAY_OWNED_ELSEWHERE)

        # the save's own first refresh meets the claim (a test sent at the same moment may
        # race the new session for the client id, which reads as unreachable for a moment)
        await wait_until(
            refused, timeout_s=20, message="the other user's session refused"
        )
        r = await client.post(f"/api/accounts/{theirs}/integration/test", headers=other)
        assert r.status_code == 409, r.text
        assert (r.json()["code"], r.json()["field"]) == (
            GATEWAY_OWNED_ELSEWHERE,
            "config.host",
        )
        r = await client.post(
            f"/api/accounts/{theirs}/integration/refresh?wait=10", headers=other
        )
        # a failed refresh is the route's 502, with the connector's uniform message
        assert (r.status_code, r.json()["detail"]) == (
            502,
            GATEWAY_OWNED_ELSEWHERE_MESSAGE,
        ), r.text
        seen = str(
            [
                (await client.get(path, headers=other)).text
                for path in (
                    "/api/accounts",
                    f"/api/accounts/{theirs}",
                    f"/api/accounts/{theirs}/integration",
                    f"/api/accounts/{theirs}/integration/portfolio",
                    f"/api/accounts/{theirs}/integration/cash",
                    f"/api/accounts/{theirs}/audit",
                    "/api/integrations/health",
                )
            ]
        )
        # (the code the other user typed is theirs to see; the owner's other one is not)
        for leak in (OWNER_CODES[0], "32001", "32002", owner_email):
            assert leak not in seen, leak

        # the owner is unaffected
        r = await client.post(
            f"/api/accounts/{mine}/integration/refresh?wait=10", headers=owner
        )
        assert (
            r.json()["status"] == "succeeded" and Decimal(r.json()["balance"]) == 32001
        )

        # once the owner removes the integration, the gateway stays theirs (as account-api
        # keeps the endpoint): the other user, under the LAN address, is still refused
        r = await client.delete(f"/api/accounts/{mine}/integration", headers=owner)
        assert r.status_code == 204
        owner_id = (await client.get("/api/auth/me", headers=owner)).json()["id"]
        await wait_until(
            lambda: _kept_without_integrations(stack, owner_id),
            timeout_s=20,
            message="the connector applied the removal and kept the gateway the owner's",
        )
        r = await client.post(f"/api/accounts/{theirs}/integration/test", headers=other)
        assert (r.status_code, r.json()["code"]) == (409, GATEWAY_OWNED_ELSEWHERE)
        r = await client.post(
            f"/api/accounts/{theirs}/integration/refresh?wait=10", headers=other
        )
        assert (r.status_code, r.json()["detail"]) == (
            502,
            GATEWAY_OWNED_ELSEWHERE_MESSAGE,
        ), r.text
        # and the owner, configuring it again, reads as before
        mine = await owners_account(33)
        r = await client.post(
            f"/api/accounts/{mine}/integration/refresh?wait=10", headers=owner
        )
        assert (
            r.json()["status"] == "succeeded" and Decimal(r.json()["balance"]) == 32001
        ), r.text
