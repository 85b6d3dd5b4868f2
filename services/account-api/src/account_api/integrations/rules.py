"""Integration rules as pure functions: merging a request into the stored config, masking it for
output, building the bus form, and which changes matter. No I/O here, and no branch per
integration type: each type's declaration (brokerlink_shared.contracts.plugins) says how."""

from __future__ import annotations

from typing import Any

from brokerlink_shared.contracts.plugins import SECRET_MASK, ConfigError, plugin_for
from brokerlink_shared.crypto import SecretBox
from pydantic import BaseModel

from account_api.errors import InvalidField

MASK = SECRET_MASK


def stored_config(
    integration_type: str,
    incoming: BaseModel,
    stored: dict[str, Any] | None,
    secrets: SecretBox,
) -> dict[str, Any]:
    """Stored form of a config, by the type's declaration: secrets encrypted (omitted or masked
    ones keep the stored value), login-bound values dropped when the login changes. `stored` is
    the current config when the type stays the same, else None."""
    try:
        return plugin_for(integration_type).stored_config(
            incoming, stored, secrets.encrypt
        )
    except ConfigError as exc:
        raise InvalidField(str(exc), field=f"config.{exc.field}") from None


def merge_ib(config: BaseModel) -> dict[str, Any]:
    """Stored form of an IB config (it holds no secrets); the migrator's reference."""
    return plugin_for("IB").stored_config(config, None, _no_secrets)


def _no_secrets(text: str) -> str:
    raise AssertionError("IB configs hold no secrets")


def changed_fields(
    before: dict[str, Any] | None, after: dict[str, Any] | None
) -> list[str]:
    """Names of fields whose value changed (secret values are compared, never recorded)."""
    before, after = before or {}, after or {}
    names = sorted(set(before) | set(after))
    out = []
    for name in names:
        if before.get(name) != after.get(name):
            out.append(name.removesuffix("_enc"))
    return out


def public_config(
    integration_type: str | None, stored: dict[str, Any] | None
) -> dict[str, Any] | None:
    """The config as a client may see it: secrets masked, tokens reduced to flags."""
    if integration_type is None or stored is None:
        return None
    return plugin_for(integration_type).public_config(stored)


def bus_connection(integration_type: str, stored: dict[str, Any]) -> BaseModel:
    """The config as it travels to connectors (secrets stay ciphertext)."""
    return plugin_for(integration_type).bus_connection(stored)
