"""Fixtures for ib-connector tests: the IB Gateway simulator, a running connector, and a bus
client that sends commands and collects what the connector publishes."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import nats
import pytest
from brokerlink_devkit.testing import wait_until
from brokerlink_shared.contracts.events import (
    BalanceUpdated,
    Event,
    IntegrationConfigured,
    IntegrationRemoved,
    IntegrationStatusChanged,
    IntegrationTestReply,
    IntegrationTestRequest,
    RefreshFailed,
    RefreshRequested,
    parse_event,
)
from brokerlink_shared.contracts.values import IBConnection, IntegrationStatus
from brokerlink_shared.messaging import EventPublisher, ensure_streams, make_broker
from brokerlink_shared.reach import LOOPBACK
from brokerlink_shared.subjects import (
    BALANCE_UPDATED,
    INTEGRATION_STATUS,
    INTEGRATION_TEST,
    REFRESH_FAILED,
    Broker,
    Topology,
)
from brokerlink_simulators.ib_gateway import (
    AccountSpec,
    GatewaySpec,
    IBGatewaySimulator,
    PositionSpec,
    Scenario,
)
from faststream import FastStream
from ib_connector.config import Settings
from ib_connector.main import create_app
from nats.aio.client import Client as NatsClient


def account(
    code: str,
    usd: str,
    hkd: str | None = None,
    positions: list[PositionSpec] | None = None,
) -> AccountSpec:
    cash = {"USD": Decimal(usd)} | ({"HKD": Decimal(hkd)} if hkd else {})
    return AccountSpec(
        code=code,
        cash=cash,
        fx_rates={"HKD": Decimal("0.128")},
        positions=positions or [],
    )


def connector_settings(infra: Any, topology: Topology, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "nats_url": infra.nats_url,
        "namespace": topology.namespace,
        "health_enabled": False,
        "connect_timeout_s": 3.0,
        "request_timeout_s": 5.0,
        "backoff_initial_s": 0.1,
        "backoff_max_s": 0.5,
        "primary_retry_s": 0.5,
        "lease_ttl_s": 3.0,
        "forward_timeout_s": 6.0,
        "log_level": "INFO",
        "allowed_networks": LOOPBACK,
    }
    values.update(overrides)
    return Settings(**values)


@dataclass
class Bus:
    """Sends commands the way account-api does and records the connector's events."""

    topology: Topology
    nc: NatsClient
    publisher: EventPublisher
    events: list[Event] = field(default_factory=list)

    async def refresh(
        self, account_id: int, config: IBConnection, user_id: int = 1
    ) -> uuid.UUID:
        refresh_id = uuid.uuid4()
        await self.publisher.publish(
            RefreshRequested(
                user_id=user_id,
                account_id=account_id,
                payload={
                    "broker": Broker.IB,
                    "refresh_id": refresh_id,
                    "config": config,
                },
            )
        )
        return refresh_id

    async def configure(
        self, account_id: int, config: IBConnection, user_id: int = 1
    ) -> None:
        await self.publisher.publish(
            IntegrationConfigured(
                user_id=user_id,
                account_id=account_id,
                payload={"broker": Broker.IB, "config": config, "version": 1},
            )
        )

    async def remove(
        self,
        account_id: int,
        config: IBConnection,
        user_id: int = 1,
        *,
        owner_deleted: bool = False,
    ) -> None:
        await self.publisher.publish(
            IntegrationRemoved(
                user_id=user_id,
                account_id=account_id,
                payload={
                    "broker": Broker.IB,
                    "config": config,
                    "owner_deleted": owner_deleted,
                },
            )
        )

    async def test(
        self, config: IBConnection, timeout_s: float = 5.0, user_id: int = 1
    ) -> IntegrationTestReply:
        request = IntegrationTestRequest(
            broker=Broker.IB,
            account_id=99,
            user_id=user_id,
            config=config,
            timeout_s=timeout_s,
        )
        reply = await self.nc.request(
            self.topology.subject(INTEGRATION_TEST, Broker.IB),
            request.model_dump_json().encode(),
            timeout=timeout_s + 1,
        )
        return IntegrationTestReply.model_validate_json(reply.data)

    def balances(self, account_id: int) -> list[BalanceUpdated]:
        return [
            e
            for e in self.events
            if isinstance(e, BalanceUpdated) and e.account_id == account_id
        ]

    def balance_for(self, refresh_id: uuid.UUID) -> BalanceUpdated | None:
        return next(
            (
                e
                for e in self.events
                if isinstance(e, BalanceUpdated) and e.payload.refresh_id == refresh_id
            ),
            None,
        )

    def failure_for(self, refresh_id: uuid.UUID) -> RefreshFailed | None:
        return next(
            (
                e
                for e in self.events
                if isinstance(e, RefreshFailed) and e.payload.refresh_id == refresh_id
            ),
            None,
        )

    def statuses(self, account_id: int) -> list[IntegrationStatusChanged]:
        return [
            e
            for e in self.events
            if isinstance(e, IntegrationStatusChanged) and e.account_id == account_id
        ]

    def status_trail(
        self, account_id: int
    ) -> list[tuple[IntegrationStatus, str | None]]:
        return [(e.payload.status, e.payload.code) for e in self.statuses(account_id)]

    def last_status(self, account_id: int) -> IntegrationStatusChanged | None:
        found = self.statuses(account_id)
        return found[-1] if found else None

    async def refreshed(
        self,
        account_id: int,
        config: IBConnection,
        timeout_s: float = 10.0,
        user_id: int = 1,
    ) -> BalanceUpdated:
        """Ask for a refresh and wait for its balance (fails on refresh.failed)."""
        refresh_id = await self.refresh(account_id, config, user_id)

        def outcome() -> BalanceUpdated | RefreshFailed | None:
            return self.balance_for(refresh_id) or self.failure_for(refresh_id)

        result = await wait_until(
            outcome, timeout_s=timeout_s, message=f"refresh of account {account_id}"
        )
        assert isinstance(result, BalanceUpdated), f"refresh failed: {result.payload}"
        return result


@pytest.fixture(scope="module")
async def bus(infra: Any, request: pytest.FixtureRequest) -> AsyncIterator[Bus]:
    suffix = (
        request.module.__name__.rsplit(".", 1)[-1]
        .replace("test_", "")[:8]
        .replace("_", "")
    )
    topology = Topology(f"{infra.namespace}ib{suffix}")
    broker = make_broker(infra.nats_url, topology, "ib-test")
    await broker.connect()
    await ensure_streams(broker, topology)
    nc = await nats.connect(infra.nats_url)
    collected = Bus(topology, nc, EventPublisher(broker, topology))

    async def record(msg: Any) -> None:
        collected.events.append(parse_event(msg.data))

    for family in (BALANCE_UPDATED, REFRESH_FAILED, INTEGRATION_STATUS):
        await nc.subscribe(topology.subject(family, Broker.IB), cb=record)
    await nc.flush()
    try:
        yield collected
    finally:
        await nc.drain()
        await broker.stop()


@pytest.fixture(scope="module")
async def sim() -> AsyncIterator[IBGatewaySimulator]:
    simulator = IBGatewaySimulator(Scenario(), admin_port=None)
    await simulator.start()
    try:
        yield simulator
    finally:
        await simulator.stop()


@pytest.fixture(scope="module")
async def all_addresses_sim() -> AsyncIterator[IBGatewaySimulator]:
    """Gateways listening on every address of this machine, as a real one often does: the same
    gateway answers at 127.0.0.1 and at any other loopback address (127.0.0.2 on Linux)."""
    simulator = IBGatewaySimulator(Scenario(), host="0.0.0.0", admin_port=None)
    await simulator.start()
    try:
        yield simulator
    finally:
        await simulator.stop()


ConnectorFactory = Callable[..., Any]


@pytest.fixture(scope="module")
async def connectors(infra: Any, bus: Bus) -> AsyncIterator[Callable[..., Any]]:
    """Start connector instances (replicas) in this loop; all stop at the end of the module."""
    running: list[FastStream] = []

    async def start(**overrides: Any) -> FastStream:
        app = create_app(connector_settings(infra, bus.topology, **overrides))
        await app.start()
        running.append(app)
        return app

    try:
        yield start
    finally:
        for app in reversed(running):
            await asyncio.wait_for(app.stop(), 30)


@pytest.fixture(scope="module")
async def connector(connectors: Callable[..., Any]) -> FastStream:
    """One connector instance for the module."""
    app: FastStream = await connectors()
    return app


async def add_gateway(
    sim: IBGatewaySimulator, name: str, *accounts: AccountSpec, **extra: Any
) -> IBConnection:
    """Add a simulated gateway and return an IB config pointing at it (client id 1)."""
    gateway = await sim.add_gateway(
        GatewaySpec(name=name, accounts=list(accounts), **extra)
    )
    return IBConnection(host="127.0.0.1", port=gateway.port, client_id=1)
