"""The Schwab OAuth flow over the in-memory fakes; the connector's side of the code exchange
answers through FastStream's `TestNatsBroker`."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qs, urlsplit

import pytest
from account_api.errors import Conflict, InvalidField
from account_api.integrations.oauth import SchwabOAuthFlow
from account_api.integrations.service import IntegrationService
from brokerlink_shared.contracts.events import (
    IntegrationConfigured,
    SchwabOAuthExchangeReply,
    SchwabOAuthExchangeRequest,
)
from brokerlink_shared.subjects import SCHWAB_OAUTH_EXCHANGE
from faststream.nats import TestNatsBroker

pytestmark = pytest.mark.fast

ACCESS = datetime(2026, 12, 1, 13, 0, tzinfo=UTC)
REFRESH = ACCESS + timedelta(days=7)


@pytest.fixture
def flow(integrations: IntegrationService) -> SchwabOAuthFlow:
    return integrations.oauth


def schwab_account(uow, user_id: int, secret_box, app_key: str = "key-1234567"):  # type: ignore[no-untyped-def]
    return uow.accounts.put(
        user_id,
        integration_type="SCHWAB",
        integration_config={
            "app_key": app_key,
            "app_secret_enc": secret_box.encrypt("app-secret"),
            "account_number": "12345678",
        },
        integration_version=1,
        integration_status="reauth_required",
    )


def exchange_replying(
    broker, topology, reply: SchwabOAuthExchangeReply
) -> list[SchwabOAuthExchangeRequest]:  # type: ignore[no-untyped-def]
    asked: list[SchwabOAuthExchangeRequest] = []

    @broker.subscriber(topology.subject(SCHWAB_OAUTH_EXCHANGE))
    async def connector(
        request: SchwabOAuthExchangeRequest,
    ) -> SchwabOAuthExchangeReply:
        asked.append(request)
        return reply

    return asked


async def started_state(flow, uow, actor, account) -> str:  # type: ignore[no-untyped-def]
    out = await flow.oauth_start(uow, actor, account.id)
    [state] = parse_qs(urlsplit(out.authorize_url).query)["state"]
    return state


async def test_start_stores_a_single_use_state_and_points_at_schwab(
    flow, uow, actor, secret_box, settings
) -> None:  # type: ignore[no-untyped-def]
    account = schwab_account(uow, actor.user_id, secret_box)

    out = await flow.oauth_start(uow, actor, account.id)

    query = parse_qs(urlsplit(out.authorize_url).query)
    assert out.authorize_url.startswith(settings.schwab_authorize_url)
    assert query["client_id"] == ["key-1234567"]
    assert query["redirect_uri"] == [
        "https://brokerlink.example/api/integrations/schwab/callback"
    ]
    [nonce] = uow.oauth_states.rows
    assert query["state"][0].startswith(nonce + ".")
    assert uow.audit_log.actions == ["integration.reauth_start"]


async def test_start_on_an_ib_account_is_a_conflict(flow, uow, actor) -> None:  # type: ignore[no-untyped-def]
    account = uow.accounts.put(
        actor.user_id, integration_type="IB", integration_config={}
    )

    with pytest.raises(Conflict):
        await flow.oauth_start(uow, actor, account.id)

    assert uow.oauth_states.rows == {}


async def test_a_forged_state_is_refused_before_anything_is_read(flow, uow) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidField) as raised:
        await flow.oauth_callback(uow, "code", "nonce.forged-signature", "req-2")

    assert raised.value.field == "state"
    assert uow.commits == 0


async def test_a_successful_sign_in_stores_the_tokens_on_every_account_of_the_login(
    flow, uow, actor, secret_box, broker, topology
) -> None:  # type: ignore[no-untyped-def]
    account = schwab_account(uow, actor.user_id, secret_box)
    sibling = schwab_account(uow, actor.user_id, secret_box)
    other_login = schwab_account(uow, actor.user_id, secret_box, app_key="other-key")
    state = await started_state(flow, uow, actor, account)
    asked = exchange_replying(
        broker,
        topology,
        SchwabOAuthExchangeReply(
            success=True,
            message="signed in",
            token_enc=secret_box.encrypt('{"token": {}}'),
            account_hash="HASH1",
            access_expires_at=ACCESS,
            refresh_expires_at=REFRESH,
        ),
    )

    async with TestNatsBroker(broker):
        result = await flow.oauth_callback(uow, "the-code", state, "req-2")

    assert result == (account.id, True, "signed in")
    [request] = asked
    assert secret_box.decrypt(request.code_enc) == "the-code"
    assert "the-code" not in request.model_dump_json()
    for row in (account, sibling):
        assert row.integration_config["token_enc"]
        assert row.token_refresh_expires_at == REFRESH
    assert "token_enc" not in other_login.integration_config
    assert account.integration_status == "connected"
    assert account.integration_version == 2
    [event] = uow.outbox.of_type(IntegrationConfigured)
    assert event.account_id == account.id
    assert uow.audit_log.entries[-1].changed_fields == ["tokens"]


async def test_a_state_is_spent_by_its_first_use(
    flow, uow, actor, secret_box, broker, topology
) -> None:  # type: ignore[no-untyped-def]
    account = schwab_account(uow, actor.user_id, secret_box)
    state = await started_state(flow, uow, actor, account)
    exchange_replying(
        broker, topology, SchwabOAuthExchangeReply(success=False, message="bad code")
    )
    async with TestNatsBroker(broker):
        await flow.oauth_callback(uow, "the-code", state, "req-2")

        with pytest.raises(InvalidField, match="expired or already used"):
            await flow.oauth_callback(uow, "the-code", state, "req-3")


async def test_a_refused_code_leaves_the_account_waiting_for_sign_in_with_its_status_time(
    flow, uow, actor, secret_box, broker, topology
) -> None:  # type: ignore[no-untyped-def]
    account = schwab_account(uow, actor.user_id, secret_box)
    state = await started_state(flow, uow, actor, account)
    exchange_replying(
        broker, topology, SchwabOAuthExchangeReply(success=False, message="bad code")
    )

    async with TestNatsBroker(broker):
        result = await flow.oauth_callback(uow, "the-code", state, "req-2")

    assert result == (account.id, False, "bad code")
    assert account.integration_status == "reauth_required"
    assert account.integration_status_at is not None
    assert account.last_error == "bad code"
    assert "token_enc" not in account.integration_config
    assert uow.outbox.events == []


async def test_tokens_for_a_login_changed_during_sign_in_are_dropped(
    flow, uow, actor, secret_box, broker, topology
) -> None:  # type: ignore[no-untyped-def]
    account = schwab_account(uow, actor.user_id, secret_box)
    state = await started_state(flow, uow, actor, account)

    @broker.subscriber(topology.subject(SCHWAB_OAUTH_EXCHANGE))
    async def connector(
        request: SchwabOAuthExchangeRequest,
    ) -> SchwabOAuthExchangeReply:
        # Meanwhile, the user configures another app key on the account.
        account.integration_config = {
            **account.integration_config,
            "app_key": "new-key",
        }
        return SchwabOAuthExchangeReply(success=True, message="ok", token_enc="enc")

    async with TestNatsBroker(broker):
        _, success, message = await flow.oauth_callback(uow, "c", state, "req-2")

    assert not success
    assert "changed during sign-in" in message
    assert "token_enc" not in account.integration_config
    assert uow.outbox.events == []
