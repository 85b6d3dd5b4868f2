"""Pending links over the in-memory fakes: attaching an item configures the account exactly as
`PUT .../integration` would, and deletes the item in the same transaction."""

from __future__ import annotations

import json

import pytest
from account_api.errors import AccountNotFound, InvalidField
from account_api.integrations.service import IntegrationService
from account_api.pending_links.service import PendingLinkNotFound, PendingLinkService
from brokerlink_shared.contracts.events import IntegrationConfigured
from brokerlink_shared.crypto import SecretBox, generate_key

pytestmark = pytest.mark.fast

IB_ITEM = {"host": "10.1.2.3", "port": 4001, "client_id": 3, "read_only": True}


@pytest.fixture
def links(
    integrations: IntegrationService, secret_box: SecretBox
) -> PendingLinkService:
    return PendingLinkService(integrations, secret_box)


async def test_the_list_holds_only_the_users_items_with_secrets_masked(
    links, uow, actor, secret_box
) -> None:  # type: ignore[no-untyped-def]
    mine = uow.pending_links.put(
        actor.user_id,
        "SCHWAB",
        {"app_key": "key-1234567", "app_secret_enc": secret_box.encrypt("s3cret")},
    )
    uow.pending_links.put(actor.user_id + 1, "IB", IB_ITEM)

    [item] = await links.list(uow, actor)

    assert item.id == mine.id
    assert item.config["app_secret"] == "********"
    assert "s3cret" not in item.model_dump_json()


async def test_linking_an_ib_item_configures_the_account_and_deletes_the_item(
    links, uow, actor
) -> None:  # type: ignore[no-untyped-def]
    item = uow.pending_links.put(actor.user_id, "IB", IB_ITEM)
    account = uow.accounts.put(actor.user_id)

    [out] = await links.link(uow, actor, item.id, [account.id])

    assert (out.type, out.status) == ("IB", "pending")
    assert account.integration_config["host"] == "10.1.2.3"
    assert uow.pending_links.rows == {}
    assert len(uow.outbox.of_type(IntegrationConfigured)) == 1
    [entry] = uow.audit_log.entries
    assert entry.action == "integration.create"
    assert entry.detail == {
        "pending_link_id": item.id,
        "legacy_table": "ib_connections",
        "legacy_id": item.legacy_id,
    }
    assert uow.commits == 1


async def test_a_schwab_item_keeps_the_legacy_logins_tokens(
    links, uow, actor, secret_box
) -> None:  # type: ignore[no-untyped-def]
    token = {
        "creation_timestamp": 1_764_590_400,
        "token": {"expires_at": 1_764_592_200},
    }
    item = uow.pending_links.put(
        actor.user_id,
        "SCHWAB",
        {
            "app_key": "key-1234567",
            "app_secret_enc": secret_box.encrypt("s3cret"),
            "token_enc": secret_box.encrypt(json.dumps(token)),
        },
    )
    account = uow.accounts.put(actor.user_id, account_number="1234-5678")

    await links.link(uow, actor, item.id, [account.id])

    stored = account.integration_config
    assert secret_box.decrypt(stored["app_secret_enc"]) == "s3cret"
    assert stored["account_number"] == "12345678"
    assert stored["token_enc"] == item.config["token_enc"]
    assert account.token_access_expires_at is not None
    assert account.token_refresh_expires_at is not None


async def test_an_undecryptable_secret_is_refused_and_nothing_changes(
    links, uow, actor
) -> None:  # type: ignore[no-untyped-def]
    foreign = SecretBox.from_setting(generate_key()).encrypt("s3cret")
    item = uow.pending_links.put(
        actor.user_id, "SCHWAB", {"app_key": "key-1234567", "app_secret_enc": foreign}
    )
    account = uow.accounts.put(actor.user_id)

    with pytest.raises(InvalidField) as raised:
        await links.link(uow, actor, item.id, [account.id])

    assert raised.value.field == "config.app_secret"
    assert item.id in uow.pending_links.rows
    assert account.integration_type is None
    assert uow.commits == 0


async def test_invalid_stored_settings_name_the_field(links, uow, actor) -> None:  # type: ignore[no-untyped-def]
    item = uow.pending_links.put(actor.user_id, "IB", {**IB_ITEM, "port": 70000})
    account = uow.accounts.put(actor.user_id)

    with pytest.raises(InvalidField) as raised:
        await links.link(uow, actor, item.id, [account.id])

    assert raised.value.field == "config.port"
    assert "70000" not in raised.value.message
    assert uow.commits == 0


async def test_another_users_item_or_account_is_not_found(links, uow, actor) -> None:  # type: ignore[no-untyped-def]
    theirs = uow.pending_links.put(actor.user_id + 1, "IB", IB_ITEM)
    mine = uow.pending_links.put(actor.user_id, "IB", IB_ITEM)
    my_account = uow.accounts.put(actor.user_id)
    their_account = uow.accounts.put(actor.user_id + 1)

    with pytest.raises(PendingLinkNotFound):
        await links.link(uow, actor, theirs.id, [my_account.id])
    with pytest.raises(AccountNotFound):
        await links.link(uow, actor, mine.id, [their_account.id])

    assert len(uow.pending_links.rows) == 2
    assert uow.commits == 0


async def test_discarding_deletes_the_item_and_audits_it(links, uow, actor) -> None:  # type: ignore[no-untyped-def]
    item = uow.pending_links.put(actor.user_id, "IB", IB_ITEM)

    await links.discard(uow, actor, item.id)

    assert uow.pending_links.rows == {}
    [entry] = uow.audit_log.entries
    assert entry.action == "pending_link.discard"
    assert entry.detail["type"] == "IB"
