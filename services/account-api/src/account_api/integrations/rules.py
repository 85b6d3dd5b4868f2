"""Integration rules as pure functions: merging a request into the stored config, masking it for
output, building the bus form, and which changes matter. No I/O here, and no branch per
integration type: each type's declaration (brokerlink_shared.contracts.plugins) says how."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any, Literal, overload

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


def _no_secrets(_text: str) -> str:
    raise AssertionError("IB configs hold no secrets")


def can_refresh(integration_type: str | None, stored: dict[str, Any] | None) -> bool:
    """Whether a refresh could succeed now: configured, and signed in where the type has a
    sign-in step (Schwab)."""
    return integration_type is not None and plugin_for(integration_type).can_refresh(
        stored
    )


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


@overload
def public_config(integration_type: str, stored: dict[str, Any]) -> dict[str, Any]: ...
@overload
def public_config(
    integration_type: str | None, stored: dict[str, Any] | None
) -> dict[str, Any] | None: ...
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


# ---- sync facts ------------------------------------------------------------------------------

SYNC_COLUMNS = (
    "integration_type",
    "integration_config",
    "integration_status",
    "last_refresh_at",
    "last_success_at",
    "last_failure_at",
    "last_error",
    "last_error_code",
)
Attempt = Literal["pending", "succeeded", "failed"]


def last_attempt(
    asked_at: datetime | None,
    succeeded_at: datetime | None,
    failed_at: datetime | None,
) -> Attempt | None:
    """How the newest refresh ended, from the account's three times (one clock: ours).

    A refresh asked after the newest result is still running; otherwise the newer result wins.
    """
    results = [t for t in (succeeded_at, failed_at) if t is not None]
    newest = max(results) if results else None
    if asked_at is not None and (newest is None or newest < asked_at):
        return "pending"
    if failed_at is not None and (succeeded_at is None or failed_at > succeeded_at):
        return "failed"
    return "succeeded" if succeeded_at is not None else None


def sync_facts(account: Mapping[str, Any]) -> dict[str, Any] | None:
    """One account's sync facts, the same wherever the account is shown (account list,
    integration, health page); None for an account without an integration."""
    kind = account["integration_type"]
    if kind is None:
        return None
    config = account["integration_config"] or {}
    return {
        "status": account["integration_status"],
        "last_success_at": account["last_success_at"],
        "last_attempt_at": account["last_refresh_at"],
        "last_failure_at": account["last_failure_at"],
        "last_attempt": last_attempt(
            account["last_refresh_at"],
            account["last_success_at"],
            account["last_failure_at"],
        ),
        "last_error": account["last_error"],
        "last_error_code": account["last_error_code"],
        "signed_in": plugin_for(kind).signed_in(config),
    }


def sync_facts_of(account: object) -> dict[str, Any] | None:
    """`sync_facts` of an ORM account."""
    return sync_facts({name: getattr(account, name) for name in SYNC_COLUMNS})
