"""Integration rules as pure functions: merging a request into the stored config, masking it for
output, building the bus form, and which changes matter. No I/O here."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any, Literal

from brokerlink_shared.contracts.values import IBConnection, SchwabConnection
from brokerlink_shared.crypto import SecretBox

from account_api.errors import InvalidField
from account_api.integrations.schemas import IBConfigIn, SchwabConfigIn

MASK = "********"
SECRET_FIELDS = frozenset(
    {"app_secret", "app_secret_enc", "token_enc", "access_token", "refresh_token"}
)


def merge_ib(config: IBConfigIn, stored: dict[str, Any] | None) -> dict[str, Any]:
    """Stored form of an IB config (it holds no secrets). Backup gateways the request does not
    mention are kept (absent = keep, `[]` = clear), so a form that cannot show them never
    drops them."""
    values = config.model_dump(exclude={"backups"})
    values["backups"] = (
        (stored or {}).get("backups", [])
        if config.backups is None
        else [b.model_dump() for b in config.backups]
    )
    return IBConnection.model_validate(values).model_dump(mode="json", exclude={"type"})


def merge_schwab(
    incoming: SchwabConfigIn, stored: dict[str, Any] | None, secrets: SecretBox
) -> dict[str, Any]:
    """Stored form of a Schwab config: omitted or masked secrets keep the stored value;
    a new app key drops the old login's tokens."""
    previous = stored or {}
    app_key = incoming.app_key or previous.get("app_key")
    if not app_key:
        raise InvalidField(
            "app_key is required when Schwab is first configured",
            field="config.app_key",
        )
    secret = incoming.app_secret.get_secret_value() if incoming.app_secret else None
    if secret in (None, "", MASK):
        if not previous.get("app_secret_enc"):
            raise InvalidField(
                "app_secret is required when Schwab is first configured",
                field="config.app_secret",
            )
        secret_enc = previous["app_secret_enc"]
    else:
        secret_enc = secrets.encrypt(secret)
    same_login = previous.get("app_key") == app_key
    merged: dict[str, Any] = {
        "app_key": app_key,
        "app_secret_enc": secret_enc,
        "account_number": incoming.account_number
        if incoming.account_number is not None
        else previous.get("account_number"),
        "account_hash": incoming.account_hash
        if incoming.account_hash is not None
        else (previous.get("account_hash") if same_login else None),
        "token_enc": previous.get("token_enc") if same_login else None,
    }
    if same_login and previous.get("login"):
        merged["login"] = previous["login"]
    if "unverified" in previous and same_login:
        merged["unverified"] = previous["unverified"]
    return merged


def can_refresh(integration_type: str | None, stored: dict[str, Any] | None) -> bool:
    """Whether a refresh could succeed now: IB always, Schwab once signed in."""
    if integration_type == "IB":
        return True
    return integration_type == "SCHWAB" and bool((stored or {}).get("token_enc"))


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
    """The config as a client may see it: secrets masked, tokens reduced to a flag."""
    if integration_type is None or stored is None:
        return None
    if integration_type == "IB":
        return {k: v for k, v in stored.items() if k not in SECRET_FIELDS}
    return {
        "app_key": _mask_key(stored.get("app_key")),
        "app_secret": MASK if stored.get("app_secret_enc") else None,
        "account_number": stored.get("account_number"),
        "account_hash": stored.get("account_hash"),
        "has_tokens": bool(stored.get("token_enc")),
        "unverified": bool(stored.get("unverified", False)),
    }


def _mask_key(key: str | None) -> str | None:
    if not key:
        return None
    return key[:4] + "…" if len(key) > 8 else "…"


def bus_connection(
    integration_type: str, stored: dict[str, Any]
) -> IBConnection | SchwabConnection:
    """The config as it travels to connectors (secrets stay ciphertext)."""
    if integration_type == "IB":
        return IBConnection.model_validate(
            {
                k: v
                for k, v in stored.items()
                if k in IBConnection.model_fields and k != "type"
            }
        )
    return SchwabConnection(
        app_key=stored["app_key"],
        app_secret_enc=stored["app_secret_enc"],
        token_enc=stored.get("token_enc"),
        account_number=stored.get("account_number"),
        account_hash=stored.get("account_hash"),
        login=stored.get("login"),
    )


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
        "signed_in": bool(config.get("token_enc")) if kind == "SCHWAB" else None,
    }


def sync_facts_of(account: object) -> dict[str, Any] | None:
    """`sync_facts` of an ORM account."""
    return sync_facts({name: getattr(account, name) for name in SYNC_COLUMNS})
