"""The connector plugin contract: every declaration is consistent with its models."""

from __future__ import annotations

import pytest
from brokerlink_shared.contracts.plugins import (
    IB_FLEX,
    PLUGINS,
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
    form = plugin.form()
    assert [f["name"] for f in form["fields"]] == [f.name for f in plugin.fields]  # type: ignore[index]


def test_every_broker_is_declared() -> None:
    assert set(PLUGINS) == set(Broker)
    assert plugin_for("IB_FLEX") is IB_FLEX
    with pytest.raises(ValueError):
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
