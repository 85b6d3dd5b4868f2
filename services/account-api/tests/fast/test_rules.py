"""The validation rules of integrations, pure: request models, merging into the stored form,
masking for output, the bus form, and which changes count."""

from __future__ import annotations

import pytest
from account_api.errors import InvalidField
from account_api.integrations import rules
from account_api.integrations.schemas import (
    IBIntegrationIn,
    SchwabConfigIn,
    SchwabIntegrationIn,
)
from brokerlink_shared.contracts.values import IBConnection, SchwabConnection
from pydantic import ValidationError

pytestmark = pytest.mark.fast

STORED_SCHWAB = {
    "app_key": "key-1234567",
    "app_secret_enc": "enc-old",
    "account_number": "12345678",
    "account_hash": "HASH1",
    "token_enc": "enc-token",
    "login": "login-1",
}


@pytest.mark.parametrize(
    ("config", "field"),
    [
        ({"host": "10.1.2.3", "port": 0, "client_id": 1}, "port"),
        ({"host": "", "port": 4001, "client_id": 1}, "host"),
        (
            {"host": "10.1.2.3", "port": 4001, "client_id": 1, "read_only": False},
            "read_only",
        ),
        (
            {"host": "10.1.2.3", "port": 4001, "client_id": 1, "password": "x"},
            "password",
        ),
    ],
)
def test_ib_requests_are_checked_field_by_field(
    config: dict[str, object], field: str
) -> None:
    with pytest.raises(ValidationError) as raised:
        IBIntegrationIn.model_validate({"type": "IB", "config": config})
    assert field in {str(p) for e in raised.value.errors() for p in e["loc"]}


def test_tokens_are_never_accepted_from_clients() -> None:
    with pytest.raises(ValidationError):
        SchwabIntegrationIn.model_validate(
            {"type": "SCHWAB", "config": {"app_key": "k", "access_token": "t"}}
        )


def test_a_schwab_secret_left_masked_keeps_the_stored_one(secret_box) -> None:  # type: ignore[no-untyped-def]
    merged = rules.stored_config(
        "SCHWAB", SchwabConfigIn(app_secret=rules.MASK), STORED_SCHWAB, secret_box
    )
    assert merged["app_secret_enc"] == "enc-old"
    assert merged["token_enc"] == "enc-token"  # same login
    assert merged["login"] == "login-1"


def test_a_new_app_key_drops_the_old_logins_tokens_and_hash(secret_box) -> None:  # type: ignore[no-untyped-def]
    merged = rules.stored_config(
        "SCHWAB", SchwabConfigIn(app_key="other-key"), STORED_SCHWAB, secret_box
    )
    assert merged["token_enc"] is None
    assert merged["account_hash"] is None
    assert merged.get("login") is None
    assert merged["app_secret_enc"] == "enc-old"


def test_a_new_secret_is_stored_encrypted(secret_box) -> None:  # type: ignore[no-untyped-def]
    merged = rules.stored_config(
        "SCHWAB", SchwabConfigIn(app_secret="fresh-secret"), STORED_SCHWAB, secret_box
    )
    assert secret_box.decrypt(merged["app_secret_enc"]) == "fresh-secret"


@pytest.mark.parametrize(
    ("incoming", "field"),
    [
        (SchwabConfigIn(app_secret="s"), "config.app_key"),
        (SchwabConfigIn(app_key="k"), "config.app_secret"),
        (SchwabConfigIn(app_key="k", app_secret=rules.MASK), "config.app_secret"),
    ],
)
def test_a_first_schwab_configuration_needs_key_and_secret(
    incoming: SchwabConfigIn, field: str, secret_box
) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidField) as raised:
        rules.stored_config("SCHWAB", incoming, None, secret_box)
    assert raised.value.field == field


def test_changed_fields_name_secrets_without_their_suffix_or_value() -> None:
    after = {**STORED_SCHWAB, "app_secret_enc": "enc-new", "account_number": "87654321"}
    assert rules.changed_fields(STORED_SCHWAB, after) == [
        "account_number",
        "app_secret",
    ]
    assert rules.changed_fields(STORED_SCHWAB, dict(STORED_SCHWAB)) == []


def test_public_config_masks_secrets_and_reduces_tokens_to_a_flag() -> None:
    public = rules.public_config("SCHWAB", STORED_SCHWAB)
    assert public == {
        "app_key": "key-…",
        "app_secret": rules.MASK,
        "account_number": "12345678",
        "account_hash": "HASH1",
        "has_tokens": True,
        "unverified": False,
    }
    assert rules.public_config(None, STORED_SCHWAB) is None


def test_the_bus_form_carries_ciphertext_only() -> None:
    ib = rules.bus_connection("IB", {"host": "10.1.2.3", "port": 4001, "client_id": 1})
    schwab = rules.bus_connection("SCHWAB", STORED_SCHWAB)
    assert isinstance(ib, IBConnection)
    assert isinstance(schwab, SchwabConnection)
    assert schwab.app_secret_enc == "enc-old"
    assert schwab.token_enc == "enc-token"
