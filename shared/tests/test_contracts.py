"""Contracts: the AsyncAPI document is current, and models refuse what they should."""

from __future__ import annotations

from pathlib import Path

import pytest
from brokerlink_shared.asyncapi import render
from brokerlink_shared.contracts.events import parse_event
from brokerlink_shared.contracts.values import IBConnection
from brokerlink_shared.crypto import SecretBox, SecretDecryptionError, generate_key
from brokerlink_shared.logging import redact, redact_text
from pydantic import ValidationError

pytestmark = pytest.mark.fast

DOC = Path(__file__).resolve().parents[2] / "docs" / "asyncapi.json"


def test_asyncapi_document_is_current() -> None:
    assert DOC.read_bytes() == render(), (
        "docs/asyncapi.json is stale: run `make asyncapi`"
    )


@pytest.mark.parametrize(
    "config",
    [
        {"host": "http://gw", "port": 4001, "client_id": 1},
        {"host": "gw", "port": 0, "client_id": 1},
        {"host": "gw", "port": 4001, "client_id": -1},
        {"host": "gw host", "port": 4001, "client_id": 1},
        {"host": "gw", "port": 4001, "client_id": 1, "account_code": "u123"},
        {"host": "gw", "port": 4001, "client_id": 1, "surprise": True},
    ],
)
def test_ib_connection_refuses_bad_values(config: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        IBConnection.model_validate(config)


def test_parse_event_rejects_unknown_type() -> None:
    with pytest.raises(ValueError, match="unknown event type"):
        parse_event(b'{"type": "nope"}')


def test_secret_box_rotation() -> None:
    old, new = generate_key(), generate_key()
    token = SecretBox([old]).encrypt("s3cret")
    both = SecretBox([new, old])
    assert both.decrypt(token) == "s3cret"
    rotated = both.rotate(token)
    assert SecretBox([new]).decrypt(rotated) == "s3cret"
    with pytest.raises(SecretDecryptionError) as info:
        SecretBox([generate_key()]).decrypt(token)
    assert "s3cret" not in str(info.value)


def test_redaction() -> None:
    assert redact({"app_secret": "x", "nested": {"refresh_token": "y"}, "port": 1}) == {
        "app_secret": "***",
        "nested": {"refresh_token": "***"},
        "port": 1,
    }
    text = redact_text(
        'failed with app_secret=hunter2 and Authorization: Bearer abc.def "access_token": "zzz"'
    )
    assert "hunter2" not in text and "abc.def" not in text and "zzz" not in text


def test_redaction_of_oauth_codes_and_escaped_json() -> None:
    assert "C0.abc" not in redact_text(
        "GET /api/integrations/schwab/callback?code=C0.abc@&state=s"
    )
    assert "C0.abc" not in redact_text('{"code": "C0.abc"}')
    assert "SECRETVALUE" not in redact_text(r"{\"refresh_token\": \"SECRETVALUE\"}")
