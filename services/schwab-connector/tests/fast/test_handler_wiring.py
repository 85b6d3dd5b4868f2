"""Handler wiring over FastStream's `TestNatsBroker`: what account-api publishes for Schwab
(addressed and encoded by the same `EventPublisher`) reaches the matching handler, parsed into its
contract model; what is meant for IB does not; request/reply subjects answer, and an unexpected
error becomes a failed reply naming only its type. The connector behind the handlers is a
recorder here; the real one is tested against the Schwab simulator."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from brokerlink_shared.contracts.events import (
    HealthReply,
    IntegrationConfigured,
    IntegrationRemoved,
    IntegrationTestReply,
    IntegrationTestRequest,
    RefreshRequested,
    SchwabOAuthExchangeReply,
    SchwabOAuthExchangeRequest,
)
from brokerlink_shared.messaging import EventPublisher
from brokerlink_shared.subjects import (
    INTEGRATION_TEST,
    SCHWAB_OAUTH_EXCHANGE,
    Broker,
    Topology,
)
from faststream.nats import NatsBroker, TestNatsBroker
from schwab_connector.config import SERVICE
from schwab_connector.handlers.subscribers import register_handlers

pytestmark = pytest.mark.fast

SCHWAB = {"type": "SCHWAB", "app_key": "key-1", "app_secret_enc": "enc"}
IB = {"type": "IB", "host": "gw.example", "port": 4002, "client_id": 7}


class RecordingConnector:
    """Stands in for `SchwabConnector`: records what each handler passed on."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.fail_with: Exception | None = None

    async def on_configured(self, event: IntegrationConfigured) -> None:
        self.calls.append(("configured", event))

    async def on_removed(self, event: IntegrationRemoved) -> None:
        self.calls.append(("removed", event))

    async def on_refresh(self, event: RefreshRequested, queued_s: float = 0.0) -> None:
        self.calls.append(("refresh", event))

    async def test_integration(
        self, request: IntegrationTestRequest
    ) -> IntegrationTestReply:
        self.calls.append(("test", request))
        if self.fail_with:
            raise self.fail_with
        return IntegrationTestReply(success=True, message="connected")

    async def exchange_code(
        self, request: SchwabOAuthExchangeRequest
    ) -> SchwabOAuthExchangeReply:
        self.calls.append(("exchange", request))
        if self.fail_with:
            raise self.fail_with
        return SchwabOAuthExchangeReply(
            success=True, message="signed in", token_enc="t"
        )


@pytest.fixture
def topology() -> Topology:
    return Topology("fastschwab")


@pytest.fixture
def connector() -> RecordingConnector:
    return RecordingConnector()


@pytest.fixture
def broker(topology: Topology, connector: RecordingConnector) -> NatsBroker:
    broker = NatsBroker()

    async def probe() -> HealthReply:
        return HealthReply(service=SERVICE, status="ok")

    register_handlers(broker, topology, lambda: connector, probe, refresh_workers=2)  # type: ignore[arg-type, return-value]
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


async def test_schwab_commands_reach_their_handlers_parsed(
    broker: NatsBroker, topology: Topology, connector: RecordingConnector
) -> None:
    publisher = EventPublisher(broker, topology)
    asked = refresh(SCHWAB)
    configured = IntegrationConfigured(
        user_id=3,
        account_id=11,
        payload={"broker": "SCHWAB", "config": SCHWAB, "version": 1},
    )
    removed = IntegrationRemoved(user_id=3, account_id=11, payload={"broker": "SCHWAB"})

    async with TestNatsBroker(broker):
        for event in (asked, configured, removed):
            await publisher.publish(event)

    assert connector.calls == [
        ("refresh", asked),
        ("configured", configured),
        ("removed", removed),
    ]


async def test_ib_commands_do_not_reach_the_schwab_connector(
    broker: NatsBroker, topology: Topology, connector: RecordingConnector
) -> None:
    async with TestNatsBroker(broker):
        await EventPublisher(broker, topology).publish(refresh(IB))

    assert connector.calls == []


def connection_test(timeout_s: float = 2) -> IntegrationTestRequest:
    return IntegrationTestRequest(
        broker=Broker.SCHWAB,
        account_id=11,
        user_id=3,
        config=SCHWAB,
        timeout_s=timeout_s,
    )


async def test_a_connection_test_is_answered_on_the_schwab_test_subject(
    broker: NatsBroker, topology: Topology, connector: RecordingConnector
) -> None:
    request = connection_test()
    async with TestNatsBroker(broker) as br:
        reply = await br.request(
            request.model_dump_json().encode(),
            topology.subject(INTEGRATION_TEST, Broker.SCHWAB),
        )

    assert IntegrationTestReply.model_validate_json(reply.body).success
    assert connector.calls == [("test", request)]


async def test_an_unexpected_error_is_a_failed_reply_without_its_message(
    broker: NatsBroker, topology: Topology, connector: RecordingConnector
) -> None:
    connector.fail_with = RuntimeError("secret-bearing detail")
    async with TestNatsBroker(broker) as br:
        reply = await br.request(
            connection_test().model_dump_json().encode(),
            topology.subject(INTEGRATION_TEST, Broker.SCHWAB),
        )

    answer = IntegrationTestReply.model_validate_json(reply.body)
    assert (answer.success, answer.message) == (False, "internal error (RuntimeError)")


async def test_a_code_exchange_is_answered_on_the_exchange_subject(
    broker: NatsBroker, topology: Topology, connector: RecordingConnector
) -> None:
    request = SchwabOAuthExchangeRequest(
        user_id=3,
        account_id=11,
        app_key="key-1",
        app_secret_enc="enc",
        code_enc="enc-code",
        redirect_uri="https://brokerlink.example/api/integrations/schwab/callback",
    )
    async with TestNatsBroker(broker) as br:
        reply = await br.request(
            request.model_dump_json().encode(), topology.subject(SCHWAB_OAUTH_EXCHANGE)
        )

    assert SchwabOAuthExchangeReply.model_validate_json(reply.body).token_enc == "t"
    assert connector.calls == [("exchange", request)]


async def test_health_answers_on_the_health_subject(
    broker: NatsBroker, topology: Topology
) -> None:
    async with TestNatsBroker(broker) as br:
        reply = await br.request(b"", topology.health_subject(SERVICE))

    assert HealthReply.model_validate_json(reply.body).status == "ok"
