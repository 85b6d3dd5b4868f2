"""Pure conversions from legacy values to account-api's: no I/O, no encryption.

Everything here works on plaintext; `migrator.plan` decides per user and `migrator.target`
encrypts right before writing. Checksums are taken over these plaintext forms, so a rerun
can tell an unchanged row without comparing ciphertexts (Fernet is not deterministic).
"""

from __future__ import annotations

import hashlib
import json
import re
from datetime import UTC, date, datetime, timedelta, tzinfo
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any

from brokerlink_shared.contracts.values import IB_ACCOUNT_CODE, IBConnection
from pydantic import ValidationError

CENT4 = Decimal("0.0001")
SCHWAB_ACCESS_TTL_S = 1800
SCHWAB_REFRESH_TTL = timedelta(days=7)
_IB_NUMBER = re.compile(r"^(U|DU)\d+$", re.IGNORECASE)
_IB_NAME = re.compile(r"\bIB\b|interactive", re.IGNORECASE)
_IB_CODE = re.compile(IB_ACCOUNT_CODE)
_NOT_DIGIT = re.compile(r"[\s-]")


def timestamp(value: Any, zone: tzinfo = UTC) -> datetime | None:
    """A legacy timestamp (text `YYYY-MM-DD HH:MM:SS`, ISO text, or epoch number) as an aware
    datetime; None when absent or unreadable. Text without a zone is in `zone`: UTC for the
    legacy app's `created_at` (CURRENT_TIMESTAMP), the server's local time for the `updated_at`
    it wrote with datetime('now','localtime')."""
    if value is None or value == "":
        return None
    if isinstance(value, int | float):
        try:
            return datetime.fromtimestamp(value / 1000 if value > 1e11 else value, UTC)
        except (OverflowError, OSError, ValueError):
            return None
    text = str(value).strip()
    if (
        len(text) == 19 and zone is UTC
    ):  # the legacy app's `YYYY-MM-DD HH:MM:SS`: the fast path
        try:
            return datetime.fromisoformat(text + "+00:00")
        except ValueError:
            return None
    text = text.replace("Z", "+00:00")
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    return (
        parsed.replace(tzinfo=zone).astimezone(UTC)
        if parsed.tzinfo is None
        else parsed.astimezone(UTC)
    )


def day(value: Any) -> date | None:
    """The calendar day of a legacy DATETIME (SQLite's DATE(date))."""
    if value is None:
        return None
    text = str(value).strip()
    try:
        return date.fromisoformat(text[:10])
    except ValueError:
        moment = timestamp(value)
        return moment.date() if moment else None


def money(value: Any) -> Decimal | None:
    """A REAL as NUMERIC(20,4) (rounded half away from zero, as PostgreSQL rounds NUMERIC)."""
    if value is None or value == "":
        return None
    try:
        result = Decimal(
            repr(value) if isinstance(value, float) else str(value)
        ).quantize(CENT4, ROUND_HALF_UP)
    except (InvalidOperation, ValueError):
        return None
    if not result.is_finite():  # 'NaN' / 'Infinity' text in a REAL column: not money
        return None
    return result + 0  # no negative zero


def legacy_id(value: Any) -> int | None:
    """A legacy id (INTEGER PK / reference) as an int; None when it is not a whole number."""
    if type(value) is int:  # the common case, first
        return value if -(2**63) <= value < 2**63 else None
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        return value if -(2**63) <= value < 2**63 else None
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().isdigit() and len(value.strip()) < 19:
        return int(value.strip())
    return None


def boolean(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in {"1", "true", "t", "yes"}
    return bool(value)


def clean(value: Any) -> str | None:
    """Stripped text, None when blank."""
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def schwab_number(account_number: str | None) -> str | None:
    """The account number as Schwab writes it (digits only) when it has a Schwab shape: 8 digits."""
    if not account_number:
        return None
    digits = _NOT_DIGIT.sub("", account_number)
    return digits if len(digits) == 8 and digits.isdigit() else None


def config_number(account_number: str | None) -> str | None:
    """An account number acceptable as a Schwab config's `account_number` (4-12 digits)."""
    if not account_number:
        return None
    digits = _NOT_DIGIT.sub("", account_number)
    return digits if digits.isdigit() and 4 <= len(digits) <= 12 else None


def looks_like_ib(name: str | None, account_number: str | None) -> bool:
    """An account that looks like an IB account: number U/DU + digits, or name with IB/Interactive."""
    if account_number and _IB_NUMBER.match(account_number.strip()):
        return True
    return bool(name and _IB_NAME.search(name))


def looks_like_schwab(name: str | None, account_number: str | None) -> bool:
    return bool((name and "schwab" in name.lower()) or schwab_number(account_number))


def ib_config(
    host: Any, port: Any, client_id: Any, account_number: str | None
) -> dict[str, Any]:
    """Stored form of an IB integration (as `rules.merge_ib` writes it); raises ValueError."""
    code = account_number.strip().upper() if account_number else None
    try:
        connection = IBConnection(
            host=str(host or "").strip(),
            port=int(port)
            if isinstance(port, int | str) and str(port).strip().isdigit()
            else port,
            client_id=int(client_id)
            if isinstance(client_id, int | str) and str(client_id).strip().isdigit()
            else client_id,
            account_code=code if code and _IB_CODE.match(code) else None,
        )
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "config"
        raise ValueError(f"{where}: {first['msg']}") from None
    return connection.model_dump(mode="json", exclude={"type"})


def same_ib(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return (str(a.get("host", "")).lower(), a.get("port"), a.get("client_id")) == (
        str(b.get("host", "")).lower(),
        b.get("port"),
        b.get("client_id"),
    )


def schwab_token(
    access_token: str | None, refresh_token: str | None, expires_at: Any
) -> dict[str, Any] | None:
    """The schwab-py token object for legacy tokens; None when there is no refresh token.

    The legacy app kept no creation time: the access token was issued `expires_in` seconds
    before it expires, and that issue time stands in for the login time (the refresh token may
    be older; a dead one answers `invalid_grant` at the first refresh, which asks for re-login)."""
    if not refresh_token:
        return None
    try:
        expires = int(float(expires_at)) if expires_at is not None else None
    except (TypeError, ValueError):
        expires = None
    if expires is not None and expires > 10**11:  # milliseconds
        expires //= 1000
    if expires is None:
        expires = 0
    return {
        "creation_timestamp": expires - SCHWAB_ACCESS_TTL_S,
        "token": {
            "access_token": access_token or "",
            "refresh_token": refresh_token,
            "token_type": "Bearer",
            "expires_in": SCHWAB_ACCESS_TTL_S,
            "scope": "api",
            "expires_at": expires,
        },
    }


def token_times(
    token: dict[str, Any] | None,
) -> tuple[datetime | None, datetime | None]:
    """(access expiry, estimated refresh expiry) of a token object."""
    if not token:
        return None, None
    access = datetime.fromtimestamp(token["token"]["expires_at"], UTC)
    refresh = (
        datetime.fromtimestamp(token["creation_timestamp"], UTC) + SCHWAB_REFRESH_TTL
    )
    return access, refresh


def schwab_status(token: dict[str, Any] | None, now: datetime) -> str:
    """`pending` while the refresh token may still work, else `reauth_required`."""
    _access, refresh = token_times(token)
    if refresh is None or refresh <= now:
        return "reauth_required"
    return "pending"


def parse_json_object(raw: Any) -> dict[str, Any] | None:
    if raw is None or raw == "":
        return None
    if isinstance(raw, dict):
        return raw
    try:
        value = json.loads(raw)
    except (TypeError, ValueError):
        return None
    return value if isinstance(value, dict) else None


# The per-account `integration_config` as the legacy app writes it (camelCase, a redundant
# `type`, optional keys absent) and as the seed plan spells it (snake_case): key -> stored name.
_CONFIG_KEYS: dict[str, dict[str, str]] = {
    "IB": {
        "type": "type",
        "host": "host",
        "port": "port",
        "clientId": "client_id",
        "client_id": "client_id",
        "lastConnected": "last_connected",
        "last_connected": "last_connected",
    },
    "SCHWAB": {
        "type": "type",
        "appKey": "app_key",
        "app_key": "app_key",
        "appSecret": "app_secret",
        "app_secret": "app_secret",
        "accessToken": "access_token",
        "access_token": "access_token",
        "refreshToken": "refresh_token",
        "refresh_token": "refresh_token",
        "tokenExpiresAt": "token_expires_at",
        "token_expires_at": "token_expires_at",
        "accountHash": "account_hash",
        "account_hash": "account_hash",
    },
}
# Longest value a field may hold (longer is a hand-edited or corrupted file, never a real one).
_MAX_TEXT = {
    "host": 253,
    "last_connected": 64,
    "app_key": 128,
    "app_secret": 512,
    "access_token": 8192,
    "refresh_token": 8192,
    "account_hash": 256,
}
_INT_KEYS = {"port", "client_id", "token_expires_at"}
_REQUIRED = {"IB": ("host", "port", "client_id"), "SCHWAB": ("app_key", "app_secret")}
MAX_CONFIG_TEXT = 65_536


def legacy_config(kind: str, raw: Any) -> tuple[dict[str, Any] | None, str | None]:
    """A per-account `integration_config` (either spelling) as snake_case values, or the
    reason it is malformed. Reasons name keys, never values (they may be secrets)."""
    if isinstance(raw, str) and len(raw) > MAX_CONFIG_TEXT:
        return None, f"integration_config longer than {MAX_CONFIG_TEXT} characters"
    data = parse_json_object(raw)
    if data is None:
        return None, "integration_config is not a JSON object"
    declared = data.get("type", kind)
    if not isinstance(declared, str) or declared.upper() != kind:
        return (
            None,
            f"integration_config says type {str(declared)[:12]!r} but integration_type is {kind}",
        )
    names = _CONFIG_KEYS[kind]
    unknown = sorted(str(k)[:40] for k in data if k not in names)
    if unknown:
        return None, f"unknown keys in integration_config: {', '.join(unknown)}"
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = names[key]
        if value is None:
            continue  # the legacy app omits optional keys; a hand-edited null means the same
        if name in out and out[name] != value:
            return None, f"integration_config spells {name} twice with different values"
        out[name] = value
    out.pop("type", None)
    for name in _REQUIRED[kind]:
        if name not in out or out[name] == "":
            return None, f"integration_config lacks {name}"
    for name, value in out.items():
        if name in _INT_KEYS:
            number = _integer(value)
            if number is None:
                return None, f"integration_config {name} is not a whole number"
            out[name] = number
        elif not isinstance(value, str):
            return None, f"integration_config {name} is not text"
        elif len(value) > _MAX_TEXT[name]:
            return (
                None,
                f"integration_config {name} longer than {_MAX_TEXT[name]} characters",
            )
    return out, None


def _integer(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value.strip())
    return None


def digest(*parts: Any) -> str:
    """Stable checksum (sha1 hex) of plaintext values (their repr: str, int, Decimal, datetime,
    and dicts the planner builds in a fixed key order)."""
    return hashlib.sha1(repr(parts).encode(), usedforsecurity=False).hexdigest()
