"""Handler wiring over FastStream's `TestNatsBroker`: what account-api publishes for IB (addressed
and encoded by the same `EventPublisher`) reaches the matching handler, parsed into its contract
model; what is meant for Schwab does not; request/reply subjects answer. The connector service
behind the handlers is a recorder here; the real one is tested against the IB simulator."""

from __future__ import annotations

import uuid
from typing import Any

import orjson
import pytest
from brokerlink_shared.contracts.events import (
    HealthReply,
    IntegrationConfigured,
    IntegrationRemoved,
    IntegrationTestReply,
    IntegrationTestRequest,
    RefreshRequested,
)
from brokerlink_shared.contracts.replicas import ForwardedRefresh, ForwardReply
from brokerlink_shared.messaging import EventPublisher
from brokerlink_shared.subjects import INTEGRATION_TEST, Broker, Topology
from faststream.nats import NatsBroker, TestNatsBroker
from ib_connector.config import SERVICE, Settings
from ib_connector.handlers.subscribers import register_handlers
from ib_connector.service import forward_subject

pytestmark = pytest.mark.fast

IB = {"type": "IB", "host": "gw.example", "port": 4002, "client_id": 7}
SCHWAB = {"type": "SCHWAB", "app_key": "key-1", "app_secret_enc": "enc"}


class RecordingService:
    """Stands in for `IBConnectorService`: records what each handler passed on."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    async def on_refresh(self, event: RefreshRequested, queued_s: float = 0.0) -> None:
        self.calls.append(("refresh", event))

    async def on_configured(self, event: IntegrationConfigured) -> None:
        self.calls.append(("configured", event))

    async def on_removed(self, event: IntegrationRemoved) -> None:
        self.calls.append(("removed", event))

    async def test_integration(
        self, request: IntegrationTestRequest
    ) -> IntegrationTestReply:
        self.calls.append(("test", request))
        return IntegrationTestReply(success=True, message="connected")

    async def on_forwarded(self, command: Any) -> ForwardReply:
        self.calls.append(("forwarded", command))
        return ForwardReply(ok=True)


@pytest.fixture
def topology() -> Topology:
    return Topology("fastib")


@pytest.fixture
def settings() -> Settings:
    return Settings(replica_id="replica-a", health_enabled=False)


@pytest.fixture
def service() -> RecordingService:
    return RecordingService()


@pytest.fixture
def broker(
    topology: Topology, settings: Settings, service: RecordingService
) -> NatsBroker:
    broker = NatsBroker()

    async def health() -> HealthReply:
        return HealthReply(service=SERVICE, status="ok")

    register_handlers(broker, topology, settings, service, health)  # type: ignore[arg-type]
    return broker


def refresh(config: dict[str, object]) -> RefreshRequested:
    return RefreshRequested(
        user_id=3,
        account_id=11,
        payload={
            "broker": config["type"],
            "refresh_id": uuid.uuid4(),
            "config": config,
        },
    )


async def test_ib_commands_reach_their_handlers_parsed(
    broker: NatsBroker, topology: Topology, service: RecordingService
) -> None:
    publisher = EventPublisher(broker, topology)
    asked = refresh(IB)
    configured = IntegrationConfigured(
        user_id=3, account_id=11, payload={"broker": "IB", "config": IB, "version": 2}
    )
    removed = IntegrationRemoved(user_id=3, account_id=11, payload={"broker": "IB"})

    async with TestNatsBroker(broker):
        for event in (asked, configured, removed):
            await publisher.publish(event)

    assert service.calls == [
        ("refresh", asked),
        ("configured", configured),
        ("removed", removed),
    ]


async def test_schwab_commands_do_not_reach_the_ib_connector(
    broker: NatsBroker, topology: Topology, service: RecordingService
) -> None:
    async with TestNatsBroker(broker):
        await EventPublisher(broker, topology).publish(refresh(SCHWAB))

    assert service.calls == []


async def test_a_connection_test_is_answered_on_the_ib_test_subject(
    broker: NatsBroker, topology: Topology, service: RecordingService
) -> None:
    request = IntegrationTestRequest(
        broker=Broker.IB, account_id=11, user_id=3, config=IB, timeout_s=2
    )
    async with TestNatsBroker(broker) as br:
        reply = await br.request(
            request.model_dump_json().encode(),
            topology.subject(INTEGRATION_TEST, Broker.IB),
        )

    assert IntegrationTestReply.model_validate_json(reply.body).success
    assert service.calls == [("test", request)]


async def test_a_forwarded_command_is_parsed_into_its_typed_contract(
    broker: NatsBroker,
    topology: Topology,
    settings: Settings,
    service: RecordingService,
) -> None:
    command = ForwardedRefresh(data=refresh(IB))
    async with TestNatsBroker(broker) as br:
        reply = await br.request(
            command.model_dump_json().encode(),
            forward_subject(topology, settings.replica_id),
        )

    assert ForwardReply.model_validate_json(reply.body).ok
    assert service.calls == [("forwarded", command)]


async def test_a_malformed_forwarded_command_is_refused_without_reaching_the_service(
    broker: NatsBroker,
    topology: Topology,
    settings: Settings,
    service: RecordingService,
) -> None:
    async with TestNatsBroker(broker) as br:
        reply = await br.request(
            orjson.dumps({"kind": "refresh", "data": {"nonsense": 1}}),
            forward_subject(topology, settings.replica_id),
        )

    answer = ForwardReply.model_validate_json(reply.body)
    assert not answer.ok
    assert "invalid forwarded command" in (answer.error or "")
    assert service.calls == []


async def test_health_answers_on_the_health_subject(
    broker: NatsBroker, topology: Topology
) -> None:
    async with TestNatsBroker(broker) as br:
        reply = await br.request(b"", topology.health_subject(SERVICE))

    assert HealthReply.model_validate_json(reply.body).status == "ok"
