"""pytest plugin (loaded from the root pytest config): real NATS and PostgreSQL for every test.

Where they come from, in order: `NATS_URL` / `DATABASE_URL` when set; otherwise testcontainers
when a Docker engine answers; otherwise embedded servers started for this session. Every session
gets a fresh database and a fresh subject/stream namespace, so runs never see each other's data.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import nats
import pytest
from brokerlink_shared.crypto import generate_key
from nats.aio.client import Client as NatsClient

from brokerlink_devkit.devstack.embedded import (
    EmbeddedNats,
    EmbeddedPostgres,
    sqlalchemy_url,
)


def _docker_answers() -> bool:
    if os.environ.get("BROKERLINK_TEST_NO_DOCKER"):
        return False
    try:
        import docker  # type: ignore[import-untyped]

        docker.from_env(timeout=2).ping()
    except Exception:
        return False
    return True


@dataclass
class Infra:
    """What the session's tests run against."""

    nats_url: str
    database_url: (
        str  # SQLAlchemy URL (postgresql+psycopg://) of the session's fresh database
    )
    admin_database_url: (
        str  # libpq URI of the maintenance database, for creating more databases
    )
    namespace: str
    encryption_keys: str
    source: str
    embedded_nats: EmbeddedNats | None = None
    embedded_pg: EmbeddedPostgres | None = None
    workdir: Path | None = None

    def new_database(self, prefix: str = "t") -> str:
        """Create another fresh database on the same server; returns its SQLAlchemy URL."""
        import psycopg

        name = f"{prefix}_{secrets.token_hex(6)}"
        with psycopg.connect(self.admin_database_url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        base, _, query = self.admin_database_url.partition("?")
        head = base.rsplit("/", 1)[0]
        return sqlalchemy_url(f"{head}/{name}" + (f"?{query}" if query else ""))

    def service_env(self) -> dict[str, str]:
        """Environment for a service process started by a test."""
        return {
            "NATS_URL": self.nats_url,
            "DATABASE_URL": self.database_url,
            "BROKERLINK_NAMESPACE": self.namespace,
            "BROKERLINK_ENCRYPTION_KEYS": self.encryption_keys,
        }


@pytest.fixture(scope="session")
def infra() -> Iterator[Infra]:
    """Real NATS + PostgreSQL for the session (see module docstring for where they come from)."""
    stack = contextlib.ExitStack()
    workdir = Path(tempfile.mkdtemp(prefix="brokerlink-test-"))
    embedded_nats: EmbeddedNats | None = None
    embedded_pg: EmbeddedPostgres | None = None
    sources = []
    nats_url = os.environ.get("NATS_URL")
    admin_uri = os.environ.get("DATABASE_URL")
    docker = None if (nats_url and admin_uri) else _docker_answers()
    if nats_url:
        sources.append("NATS_URL")
    elif docker:
        from testcontainers.nats import NatsContainer

        container = stack.enter_context(NatsContainer().with_command("-js"))
        nats_url = container.nats_uri()
        sources.append("testcontainers NATS")
    else:
        embedded_nats = EmbeddedNats(workdir / "nats")
        nats_url = embedded_nats.start()
        stack.callback(embedded_nats.stop)
        sources.append("embedded nats-server")
    if admin_uri:
        admin_uri = admin_uri.replace("postgresql+psycopg://", "postgresql://")
        sources.append("DATABASE_URL")
    elif docker:
        from testcontainers.postgres import PostgresContainer

        pg = stack.enter_context(PostgresContainer("postgres:16", driver=None))
        admin_uri = pg.get_connection_url()
        sources.append("testcontainers PostgreSQL")
    else:
        embedded_pg = EmbeddedPostgres(workdir / "pg")
        embedded_pg.start()
        admin_uri = embedded_pg.uri("postgres")
        stack.callback(embedded_pg.stop)
        sources.append("embedded PostgreSQL (pgserver)")
    namespace = f"t{secrets.token_hex(5)}"
    infra = Infra(
        nats_url=nats_url,
        database_url="",
        admin_database_url=admin_uri,
        namespace=namespace,
        encryption_keys=generate_key(),
        source=", ".join(sources),
        embedded_nats=embedded_nats,
        embedded_pg=embedded_pg,
        workdir=workdir,
    )
    infra.database_url = infra.new_database("brokerlink_test")
    try:
        yield infra
    finally:
        stack.close()


@pytest.fixture
async def nats_client(infra: Infra) -> AsyncIterator[NatsClient]:
    """A plain nats-py connection to the session's NATS, closed after the test."""
    client = await nats.connect(infra.nats_url)
    try:
        yield client
    finally:
        await client.close()


def pytest_report_header() -> str:
    return "brokerlink: NATS/PostgreSQL from NATS_URL/DATABASE_URL, else testcontainers, else embedded"
