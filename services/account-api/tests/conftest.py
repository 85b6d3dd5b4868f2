"""account-api fixtures: a migrated database of its own and the real app served by uvicorn."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import secrets
import socket
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from account_api.config import Settings
from account_api.consumers.worker_claim import ConsumerClaim
from account_api.main import create_app
from account_api.migrate import upgrade
from brokerlink_devkit.devstack.embedded import free_port
from brokerlink_devkit.testing.serving import serving
from brokerlink_shared.reach import LOOPBACK


@dataclass
class RunningApi:
    base_url: str
    settings: Settings
    app: object


@contextlib.asynccontextmanager
async def running_api(
    settings: Settings, consumers: ConsumerClaim | None = None
) -> AsyncIterator[RunningApi]:
    """Serve account-api in this event loop on `settings.port` until the block ends."""
    app = create_app(settings, consumers)
    async with serving(app, settings.port) as base_url:
        yield RunningApi(base_url, settings, app)


def api_settings_for(
    infra, database_url: str, namespace: str, **overrides: object
) -> Settings:  # type: ignore[no-untyped-def]
    values: dict[str, object] = {
        "database_url": database_url,
        "nats_url": infra.nats_url,
        "namespace": namespace,
        "encryption_keys": infra.encryption_keys,
        "jwt_secret": secrets.token_urlsafe(32),
        "port": free_port(),
        "scheduled_refresh_interval_s": 0,
        "refresh_wait_default_s": 2.0,
        "integration_test_timeout_s": 2.0,
        "ib_allowed_networks": LOOPBACK,
        # every test signs in from 127.0.0.1: the per-client limit has its own test
        "login_client_max_failures": 100_000,
    }
    values.update(overrides)
    settings = Settings.model_validate(values)
    settings.public_url = f"http://127.0.0.1:{settings.port}"
    return settings


# Gateway endpoints belong to the first user who configures them: every test user gets ports
# of its own (unique within the session, whose database is fresh).
_gateway_ports = itertools.count(20000)


def gateway_port() -> int:
    return next(_gateway_ports)


def ib_integration(**config: object) -> dict[str, object]:
    """An IB integration body on a loopback gateway port nobody else in this session uses."""
    return {
        "type": "IB",
        "config": {
            "host": "127.0.0.1",
            "port": gateway_port(),
            "client_id": 7,
            **config,
        },
    }


@pytest.fixture(scope="session")
def api_database(infra) -> str:  # type: ignore[no-untyped-def]
    url = infra.new_database("api")
    upgrade(url)
    return url


@pytest.fixture(scope="session")
async def api(infra, api_database: str) -> AsyncIterator[RunningApi]:  # type: ignore[no-untyped-def]
    settings = api_settings_for(infra, api_database, f"{infra.namespace}api")
    async with running_api(settings) as running:
        yield running


@pytest.fixture
async def client(api: RunningApi) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=api.base_url, timeout=30) as c:
        yield c


@pytest.fixture
def new_user():  # type: ignore[no-untyped-def]
    """`await new_user(client)` registers and logs in a fresh user; returns auth headers."""
    return register_user


async def register_user(client: httpx.AsyncClient) -> dict[str, str]:
    """Register and log in a fresh user; returns auth headers."""
    email = f"u{secrets.token_hex(6)}@example.com"
    password = "correct horse battery"
    r = await client.post(
        "/api/auth/register",
        json={"email": email, "password": password, "name": "Test User"},
    )
    assert r.status_code == 201, r.text
    r = await client.post(
        "/api/auth/login", json={"email": email, "password": password}
    )
    assert r.status_code == 200, r.text
    return {"Authorization": f"Bearer {r.json()['access_token']}"}


@dataclass
class ApiFactory:
    """Start more account-api instances (own database or NATS) inside a test."""

    infra: object

    def settings(
        self, database_url: str, namespace: str, **overrides: object
    ) -> Settings:
        return api_settings_for(self.infra, database_url, namespace, **overrides)

    run = staticmethod(running_api)


@pytest.fixture(scope="session")
def api_factory(infra) -> ApiFactory:  # type: ignore[no-untyped-def]
    return ApiFactory(infra)


@dataclass
class SlowNameServer:
    """The system resolver, except that `host` answers (127.0.0.1) only once `release` is
    set: a name server taking its time, as seen by whatever resolves it in this process."""

    host: str = "gateway.slow-dns.test"
    entered: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)

    async def asked(self) -> None:
        """Until someone is waiting on `host`."""
        assert await asyncio.to_thread(self.entered.wait, 30)


@pytest.fixture
def slow_name_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[SlowNameServer]:
    server = SlowNameServer()
    system_resolver = socket.getaddrinfo

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host == server.host:
            server.entered.set()
            server.release.wait(30)
            host = "127.0.0.1"
        return system_resolver(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    yield server
    server.release.set()
