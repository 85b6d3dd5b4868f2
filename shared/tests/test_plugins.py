"""The connector plugin contract: every declaration is consistent with its models."""

from __future__ import annotations

import pytest
from brokerlink_shared.contracts.plugins import (
    IB_FLEX,
    PLUGINS,
    SECRET_MASK,
    ConfigError,
    IBFlexConfigIn,
    IBFlexConnection,
    IntegrationPlugin,
    plugin_for,
)
from brokerlink_shared.subjects import Broker
from pydantic import SecretStr, ValidationError


@pytest.mark.parametrize(
    "plugin", list(PLUGINS.values()), ids=lambda p: p.integration_type
)
def test_declaration_matches_its_models(plugin: IntegrationPlugin) -> None:
    form_fields = plugin.config_in.model_fields
    bus_fields = plugin.connection.model_fields
    assert bus_fields["type"].default == plugin.integration_type.value
    for f in plugin.fields:
        assert f.name in form_fields, f.name
        is_secret_type = "SecretStr" in str(form_fields[f.name].annotation)
        assert is_secret_type == f.secret, f.name
        assert f.stored_as in bus_fields, (
            f.stored_as
        )  # secrets travel as ciphertext only
    for name in plugin.stored_secret_names:
        assert name not in form_fields  # a client can never send ciphertext or tokens
    plugin.config_in.model_validate(plugin.example)  # the example is a valid config
    form = plugin.form()
    assert [f["name"] for f in form["fields"]] == [f.name for f in plugin.fields]  # type: ignore[index]


def test_every_broker_is_declared() -> None:
    assert set(PLUGINS) == set(Broker)
    assert plugin_for("IB_FLEX") is IB_FLEX
    with pytest.raises(ValueError, match="ROBINHOOD"):
        plugin_for("ROBINHOOD")


def test_ib_flex_config_validation() -> None:
    ok = IBFlexConfigIn.model_validate(
        {
            "token": "123456789012345678901234",
            "query_id": "987654",
            "account_code": "U1234567",
        }
    )
    assert isinstance(ok.token, SecretStr) and "1234567890" not in repr(ok)
    for bad in (
        {"token": "short", "query_id": "1"},
        {"token": "123456789012", "query_id": "abc"},
        {"token": "123456789012", "query_id": "1", "account_code": "nope"},
        {
            "token": "123456789012",
            "query_id": "1",
            "token_enc": "x",
        },  # no injected fields
        {"token": "12345678901!", "query_id": "1"},
    ):
        with pytest.raises(ValidationError) as caught:
            IBFlexConfigIn.model_validate(bad)
        assert "123456789012" not in str(caught.value)  # never echoes the token
    assert [f.name for f in IB_FLEX.secret_fields] == ["token"]
    assert IB_FLEX.stored_secret_names == {"token_enc"}
    assert IBFlexConnection(token_enc="gAAAA", query_id="1").type == "IB_FLEX"


def _enc(text: str) -> str:
    return f"enc({text})"


def test_ib_rules_match_todays_behaviour() -> None:
    ib = plugin_for("IB")
    incoming = ib.config_in.model_validate(
        {"host": "gw.local", "port": 4002, "client_id": 3, "account_code": "U1234567"}
    )
    stored = ib.stored_config(incoming, {"host": "old", "port": 1}, _enc)
    assert stored == {
        "host": "gw.local",
        "port": 4002,
        "client_id": 3,
        "account_code": "U1234567",
        "read_only": True,
        "backups": [],
    }
    assert ib.public_config(stored) == stored  # nothing to hide
    assert ib.bus_connection(stored).model_dump()["type"] == "IB"
    assert ib.signed_in(stored) is None and ib.can_refresh(stored)


def test_schwab_rules_match_todays_behaviour() -> None:
    schwab = plugin_for("SCHWAB")
    new = schwab.config_in.model_validate(
        {"app_key": "appkey1234", "app_secret": "s3cret"}
    )
    first = schwab.stored_config(new, None, _enc)
    assert first == {
        "app_key": "appkey1234",
        "app_secret_enc": "enc(s3cret)",
        "account_number": None,
        "account_hash": None,
        "token_enc": None,
        "login": None,
    }
    signed = first | {
        "token_enc": "tok",
        "account_hash": "HASH",
        "unverified": True,
        "login": "login-1",
    }
    # an update without the secret keeps it, and the same app key keeps the login's tokens
    same = schwab.stored_config(
        schwab.config_in.model_validate({"account_number": "12345678"}), signed, _enc
    )
    assert same == signed | {"account_number": "12345678"}
    masked = schwab.config_in.model_validate({"app_secret": "********"})
    assert schwab.stored_config(masked, signed, _enc)["app_secret_enc"] == "enc(s3cret)"
    # a new app key is a new login: no tokens, no hash, no leftovers
    other = schwab.stored_config(
        schwab.config_in.model_validate({"app_key": "otherkey99"}), signed, _enc
    )
    assert other["token_enc"] is None and other["account_hash"] is None
    assert other["login"] is None
    assert "unverified" not in other
    with pytest.raises(ConfigError) as no_key:
        schwab.stored_config(
            schwab.config_in.model_validate({"app_secret": "s"}), None, _enc
        )
    assert no_key.value.field == "app_key"
    with pytest.raises(ConfigError) as missing:
        schwab.stored_config(
            schwab.config_in.model_validate({"app_key": "k"}), None, _enc
        )
    assert missing.value.field == "app_secret"
    assert (
        str(missing.value) == "app_secret is required when Schwab is first configured"
    )
    assert schwab.public_config(signed) == {
        "app_key": "appk…",
        "app_secret": SECRET_MASK,
        "account_number": None,
        "account_hash": "HASH",
        "has_tokens": True,
        "unverified": True,
    }
    assert schwab.signed_in(first) is False and not schwab.can_refresh(first)
    assert schwab.can_refresh(signed)


def test_ib_flex_masking_and_encryption() -> None:
    token = "123456789012345678901234"
    incoming = IBFlexConfigIn.model_validate({"token": token, "query_id": "987654"})
    stored = IB_FLEX.stored_config(incoming, None, _enc)
    assert stored == {
        "token_enc": f"enc({token})",
        "query_id": "987654",
        "account_code": None,
    }
    shown = IB_FLEX.public_config(stored)
    assert shown == {"token": SECRET_MASK, "query_id": "987654", "account_code": None}
    assert token not in str(shown)
    # omitted or masked token: the stored ciphertext stays; a new one replaces it
    for keep in ({"query_id": "1"}, {"query_id": "1", "token": SECRET_MASK}):
        kept = IB_FLEX.stored_config(IBFlexConfigIn.model_validate(keep), stored, _enc)
        assert kept["token_enc"] == f"enc({token})" and kept["query_id"] == "1"
    with pytest.raises(ConfigError) as missing:
        IB_FLEX.stored_config(
            IBFlexConfigIn.model_validate({"query_id": "1"}), None, _enc
        )
    assert missing.value.field == "token"
    bus = IB_FLEX.bus_connection(stored)
    assert isinstance(bus, IBFlexConnection) and bus.token_enc == f"enc({token})"
