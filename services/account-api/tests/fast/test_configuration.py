"""Configuring an integration, as a use case over the in-memory fakes: what is stored, what the
outbox and the audit log receive, and that refused input writes nothing."""

from __future__ import annotations

import pytest
from account_api.errors import (
    AccountNotFound,
    IntegrationNotConfigured,
    InvalidField,
    TooManyRequests,
)
from account_api.gateways.service import GatewayOwnedElsewhere
from account_api.integrations.configuration import IntegrationConfiguration
from account_api.integrations.schemas import IBIntegrationIn, SchwabIntegrationIn
from account_api.integrations.service import IntegrationService
from brokerlink_shared.contracts.events import (
    IntegrationConfigured,
    IntegrationRemoved,
    IntegrationTestReply,
    IntegrationTestRequest,
    RefreshRequested,
)
from brokerlink_shared.subjects import INTEGRATION_TEST, Broker
from faststream.nats import TestNatsBroker

pytestmark = pytest.mark.fast

IB = IBIntegrationIn.model_validate(
    {"type": "IB", "config": {"host": "10.1.2.3", "port": 4002, "client_id": 7}}
)


def schwab(**config: object) -> SchwabIntegrationIn:
    return SchwabIntegrationIn.model_validate({"type": "SCHWAB", "config": config})


@pytest.fixture
def configuration(integrations: IntegrationService) -> IntegrationConfiguration:
    return integrations.configuration


async def test_a_new_ib_integration_is_stored_announced_audited_and_first_refreshed(
    configuration, uow, actor, topology
) -> None:  # type: ignore[no-untyped-def]
    account = uow.accounts.put(actor.user_id)

    out = await configuration.configure(uow, actor, account.id, IB)

    assert out.type == "IB"
    assert out.status == "pending"
    assert account.integration_version == 1
    assert account.integration_status_at is not None
    configured, first_refresh = uow.outbox.events
    assert isinstance(configured, IntegrationConfigured)
    assert configured.payload.version == 1
    assert configured.correlation_id == actor.request_id
    assert isinstance(first_refresh, RefreshRequested)
    assert first_refresh.payload.refresh_id == out.refresh_id
    assert uow.refreshes.rows[out.refresh_id].integration_version == 1
    assert uow.outbox.subjects == [
        topology.subject("integration.configured", Broker.IB),
        topology.subject("refresh.requested", Broker.IB),
    ]
    [entry] = uow.audit_log.entries
    assert (entry.action, entry.account_id) == ("integration.create", account.id)
    assert "type" in entry.changed_fields
    assert uow.commits == 1


async def test_the_same_configuration_again_writes_nothing(
    configuration, uow, actor
) -> None:  # type: ignore[no-untyped-def]
    account = uow.accounts.put(actor.user_id)
    await configuration.configure(uow, actor, account.id, IB)

    await configuration.configure(uow, actor, account.id, IB)

    assert account.integration_version == 1
    assert len(uow.outbox.events) == 2  # the first save's configuration and refresh
    assert uow.audit_log.actions == ["integration.create"]
    assert uow.commits == 1


async def test_schwab_secrets_are_stored_encrypted_and_audited_by_name(
    configuration, uow, actor, secret_box
) -> None:  # type: ignore[no-untyped-def]
    account = uow.accounts.put(actor.user_id)

    out = await configuration.configure(
        uow, actor, account.id, schwab(app_key="key-1234567", app_secret="s3cret-value")
    )

    stored = account.integration_config
    assert "s3cret-value" not in repr(stored)
    assert secret_box.decrypt(stored["app_secret_enc"]) == "s3cret-value"
    assert out.config["app_secret"] == "********"
    [entry] = uow.audit_log.entries
    assert "app_secret" in entry.changed_fields
    assert "s3cret-value" not in repr(entry.detail)


async def test_a_first_schwab_configuration_without_its_secret_changes_nothing(
    configuration, uow, actor
) -> None:  # type: ignore[no-untyped-def]
    account = uow.accounts.put(actor.user_id)

    with pytest.raises(InvalidField) as raised:
        await configuration.configure(uow, actor, account.id, schwab(app_key="key-1"))

    assert raised.value.field == "config.app_secret"
    assert account.integration_type is None
    assert uow.outbox.events == []
    assert uow.audit_log.entries == []
    assert uow.commits == 0


async def test_another_users_account_is_not_found_and_untouched(
    configuration, uow, actor
) -> None:  # type: ignore[no-untyped-def]
    theirs = uow.accounts.put(actor.user_id + 1)

    with pytest.raises(AccountNotFound):
        await configuration.configure(uow, actor, theirs.id, IB)

    assert theirs.integration_type is None
    assert uow.commits == 0


async def test_removal_tells_the_connector_and_resets_the_state(
    configuration, uow, actor
) -> None:  # type: ignore[no-untyped-def]
    account = uow.accounts.put(actor.user_id)
    await configuration.configure(uow, actor, account.id, IB)

    await configuration.remove(uow, actor, account.id)

    assert account.integration_type is None
    assert account.integration_status == "not_configured"
    assert account.integration_version == 2
    removed = uow.outbox.of_type(IntegrationRemoved)
    assert [e.payload.broker for e in removed] == [Broker.IB]
    assert uow.audit_log.actions == ["integration.create", "integration.delete"]


async def test_removing_no_integration_is_refused(configuration, uow, actor) -> None:  # type: ignore[no-untyped-def]
    account = uow.accounts.put(actor.user_id)

    with pytest.raises(IntegrationNotConfigured):
        await configuration.remove(uow, actor, account.id)

    assert uow.outbox.events == []
    assert uow.commits == 0


async def test_a_connection_test_asks_the_connector_and_audits_the_answer(
    configuration, uow, actor, broker, topology
) -> None:  # type: ignore[no-untyped-def]
    account = uow.accounts.put(actor.user_id)
    await configuration.configure(uow, actor, account.id, IB)
    asked: list[IntegrationTestRequest] = []

    @broker.subscriber(topology.subject(INTEGRATION_TEST, Broker.IB))
    async def connector(request: IntegrationTestRequest) -> IntegrationTestReply:
        asked.append(request)
        return IntegrationTestReply(success=True, message="connected to 10.1.2.3")

    async with TestNatsBroker(broker):
        result = await configuration.test(uow, actor, account.id)

    assert (result.success, result.message) == (True, "connected to 10.1.2.3")
    [request] = asked
    assert (request.account_id, request.user_id) == (account.id, actor.user_id)
    assert request.config.host == "10.1.2.3"
    assert uow.audit_log.entries[-1].action == "integration.test"
    assert uow.audit_log.entries[-1].detail["success"] is True


async def test_a_gateway_another_user_owns_is_refused_and_nothing_is_written(
    configuration, uow, actor
) -> None:  # type: ignore[no-untyped-def]
    uow.gateway_endpoints.owner[("10.1.2.3", 4002)] = actor.user_id + 1
    account = uow.accounts.put(actor.user_id)

    with pytest.raises(GatewayOwnedElsewhere) as raised:
        await configuration.configure(uow, actor, account.id, IB)

    assert raised.value.field == "config.host"
    assert account.integration_type is None
    assert uow.outbox.events == []
    assert uow.commits == 0


async def test_a_gateway_outside_the_allowed_networks_is_refused(
    configuration, uow, actor
) -> None:  # type: ignore[no-untyped-def]
    account = uow.accounts.put(actor.user_id)
    public = IBIntegrationIn.model_validate(
        {"type": "IB", "config": {"host": "8.8.8.8", "port": 4002, "client_id": 7}}
    )

    with pytest.raises(InvalidField) as raised:
        await configuration.configure(uow, actor, account.id, public)

    assert raised.value.field == "config.host"
    assert uow.gateway_endpoints.owner == {}
    assert uow.commits == 0


async def test_connection_tests_are_rate_limited_per_account(
    configuration, uow, actor, settings, broker, topology
) -> None:  # type: ignore[no-untyped-def]
    account = uow.accounts.put(actor.user_id)
    await configuration.configure(uow, actor, account.id, IB)
    uow.throttle.counts[f"test:acct:{account.id}"] = (
        settings.tests_per_account_per_minute
    )

    with pytest.raises(TooManyRequests):
        await configuration.test(uow, actor, account.id)

    assert uow.audit_log.actions == ["integration.create"]


async def test_a_dry_test_checks_gateway_ownership_without_claiming(
    configuration, uow, actor, broker, topology
) -> None:  # type: ignore[no-untyped-def]
    account = uow.accounts.put(actor.user_id)
    uow.gateway_endpoints.owner[("10.1.2.3", 4002)] = actor.user_id + 1

    with pytest.raises(GatewayOwnedElsewhere):
        await configuration.test(uow, actor, account.id, IB)

    uow.gateway_endpoints.owner.clear()

    @broker.subscriber(topology.subject(INTEGRATION_TEST, Broker.IB))
    async def connector(request: IntegrationTestRequest) -> IntegrationTestReply:
        return IntegrationTestReply(success=True, message="connected")

    async with TestNatsBroker(broker):
        result = await configuration.test(uow, actor, account.id, IB)

    assert result.success
    assert uow.gateway_endpoints.owner == {}  # a dry test records no owner
    assert account.integration_type is None
