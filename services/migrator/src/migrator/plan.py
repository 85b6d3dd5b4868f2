"""Per-user decisions: which legacy rows become which target rows, which integration lands on
which account, what is pending, what conflicts. Pure: plaintext in, plaintext out."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, tzinfo
from decimal import Decimal
from typing import Any

from migrator import convert as cv

USER_COLS = (
    "id",
    "email",
    "password_hash",
    "name",
    "base_currency",
    "two_factor_secret",
    "two_factor_enabled",
    "created_at",
    "updated_at",
)
ACCOUNT_COLS = (
    "id",
    "user_id",
    "name",
    "currency",
    "account_type",
    "account_number",
    "original_capital",
    "current_balance",
    "last_updated",
    "created_at",
    "updated_at",
    "integration_type",
    "integration_config",
)
IB_COLS = (
    "id",
    "user_id",
    "name",
    "host",
    "port",
    "client_id",
    "target_account_id",
    "is_connected",
    "last_connected",
    "account_balance",
    "account_currency",
    "error",
    "created_at",
    "updated_at",
)
SCHWAB_COLS = (
    "id",
    "user_id",
    "app_key",
    "app_secret",
    "access_token",
    "refresh_token",
    "token_expires_at",
    "created_at",
    "updated_at",
)
HISTORY_COLS = ("id", "account_id", "balance", "note", "date", "created_at")
ACCOUNT_TYPES = {"INVESTMENT", "BANK"}
EPOCH = datetime.fromtimestamp(0, UTC)


@dataclass(slots=True)
class Integration:
    type: str  # IB | SCHWAB
    config: dict[
        str, Any
    ]  # plaintext: Schwab holds app_secret and token (object) instead of *_enc
    status: str
    origin: str
    last_connected_at: datetime | None = None
    access_expires_at: datetime | None = None
    refresh_expires_at: datetime | None = None

    def checksum(self) -> str:
        return cv.digest(self.type, self.config, self.status, self.last_connected_at)


@dataclass(slots=True)
class UserRow:
    legacy_id: int
    email: str
    name: str
    password_hash: str
    base_currency: str
    two_factor_secret: str | None
    two_factor_enabled: bool
    created_at: datetime | None
    updated_at: datetime | None

    def content(self) -> tuple[Any, ...]:
        return (
            self.email,
            self.name,
            self.password_hash,
            self.base_currency,
            self.two_factor_secret,
            self.two_factor_enabled,
        )

    def checksum(self) -> str:
        return cv.digest(*self.content(), self.created_at, self.updated_at)


@dataclass(slots=True)
class AccountRow:
    legacy_id: int
    user_legacy_id: int
    name: str
    currency: str
    account_type: str
    account_number: str | None
    original_capital: Decimal
    current_balance: Decimal
    last_updated: datetime | None
    created_at: datetime | None
    updated_at: datetime | None
    integration: Integration | None = None
    claimed: bool = (
        False  # its own (malformed) integration is quarantined: never overwritten
    )

    def content(self) -> tuple[Any, ...]:
        return (
            self.user_legacy_id,
            self.name,
            self.currency,
            self.account_type,
            self.account_number,
            str(self.original_capital),
            str(self.current_balance),
        )

    def checksum(self) -> str:
        return cv.digest(
            *self.content(), self.last_updated, self.created_at, self.updated_at
        )


@dataclass(slots=True)
class Pending:
    legacy_table: str
    legacy_id: int
    user_legacy_id: int
    integration_type: str
    config: dict[str, Any]  # plaintext, like Integration.config
    reason: str
    suggestions: list[int]  # legacy account ids, best first
    kind: str = "link"  # link | conflict | quarantine
    verified: list[int] = field(
        default_factory=list
    )  # suggestions the broker confirmed

    def checksum(self) -> str:
        return cv.digest(
            self.integration_type,
            self.config,
            self.reason,
            self.suggestions,
            self.kind,
            self.verified,
        )


@dataclass(slots=True)
class LegacyCopy:
    table: str  # ib_connections | schwab_settings
    row: tuple[Any, ...]  # the source row (IB_COLS / SCHWAB_COLS order)
    outcome: str  # linked | pending | conflict | skipped
    target_account_legacy_id: int | None = None

    def checksum(self) -> str:
        return cv.digest(self.row, self.outcome, self.target_account_legacy_id)


@dataclass
class UserPlan:
    user: UserRow | None
    accounts: list[AccountRow] = field(default_factory=list)
    pending: list[Pending] = field(default_factory=list)
    copies: list[LegacyCopy] = field(default_factory=list)
    skipped: list[tuple[str, int, str]] = field(
        default_factory=list
    )  # (table, legacy id, reason)
    conflicts: list[dict[str, Any]] = field(default_factory=list)


def user_row(
    row: tuple[Any, ...], local: tzinfo = UTC
) -> tuple[UserRow | None, str | None]:
    """(row, None) or (None, reason); `local` is the legacy server's time zone (`updated_at`)."""
    uid, email, pw, name, currency, secret, enabled, created, updated = row
    legacy_id = cv.legacy_id(uid)
    if legacy_id is None:
        return None, "id is not a whole number"
    email = cv.clean(email)
    if not email:
        return None, "no email"
    if len(email) > 254:
        return None, "email longer than 254 characters"
    if "@" not in email:
        return None, "email has no @"
    if not isinstance(pw, str) or not pw or len(pw) > 255:
        return None, "password_hash missing or not a password hash"
    if secret is not None and (not isinstance(secret, str) or len(secret) > 128):
        return None, "two_factor_secret is not a TOTP secret"
    if name is not None and len(str(name)) > 200:
        return None, "name longer than 200 characters"
    base = (cv.clean(currency) or "HKD").upper()
    return (
        UserRow(
            legacy_id=legacy_id,
            email=email,
            name=(cv.clean(name) or email.split("@")[0])[:200],
            password_hash=pw,
            base_currency=base if len(base) == 3 and base.isalpha() else "HKD",
            two_factor_secret=cv.clean(secret),
            two_factor_enabled=cv.boolean(enabled),
            created_at=cv.timestamp(created),
            updated_at=cv.timestamp(updated, local),
        ),
        None,
    )


def account_row(
    row: tuple[Any, ...], local: tzinfo = UTC
) -> tuple[AccountRow | None, str | None]:
    (
        aid,
        uid,
        name,
        currency,
        kind,
        number,
        capital,
        balance,
        last,
        created,
        updated,
        _it,
        _ic,
    ) = row
    legacy_id = cv.legacy_id(aid)
    if legacy_id is None:
        return None, "id is not a whole number"
    code = (cv.clean(currency) or "").upper()
    if len(code) != 3 or not code.isalpha():
        return None, f"invalid currency {str(currency)[:12]!r}"
    kind_text = (cv.clean(kind) or "INVESTMENT").upper()
    number_text = cv.clean(number)
    if number_text and len(number_text) > 64:
        return None, "account_number longer than 64 characters"
    if name is not None and len(str(name)) > 200:
        return None, "name longer than 200 characters"
    amounts = []
    for label, value in (("original_capital", capital), ("current_balance", balance)):
        amount = cv.money(value)
        if amount is None:
            if value not in (None, ""):
                return None, f"{label} is not a number"
            amount = Decimal("0.0000")
        elif abs(amount) >= 10**16:
            return None, f"{label} out of range"
        amounts.append(amount)
    return (
        AccountRow(
            legacy_id=legacy_id,
            user_legacy_id=int(uid),
            name=(cv.clean(name) or f"Account {aid}")[:200],
            currency=code,
            account_type=kind_text if kind_text in ACCOUNT_TYPES else "INVESTMENT",
            account_number=number_text[:64] if number_text else None,
            original_capital=amounts[0],
            current_balance=amounts[1],
            last_updated=cv.timestamp(last, local),
            created_at=cv.timestamp(created),
            updated_at=cv.timestamp(updated, local),
        ),
        None,
    )


def history_row(row: tuple[Any, ...]) -> tuple[tuple[Any, ...] | None, str | None]:
    """(legacy_id, account legacy id, day, balance, note, as_of, created_at) or a reason."""
    hid, aid, balance, note, when, created = row
    if cv.legacy_id(hid) is None:
        return None, "id is not a whole number"
    if cv.legacy_id(aid) is None:
        return None, "no account" if aid is None else "account_id is not a whole number"
    if note is not None and len(str(note)) > 2000:
        return None, "note longer than 2000 characters"
    the_day = cv.day(when)
    if the_day is None:
        return None, "date is not a readable date"
    amount = cv.money(balance)
    if amount is None or abs(amount) >= 10**16:
        return None, "balance is not a number in range"
    return (
        cv.legacy_id(hid),
        cv.legacy_id(aid),
        the_day,
        amount,
        None if note is None else str(note),
        cv.timestamp(when),
        cv.timestamp(created),
    ), None


def history_line(row: tuple[Any, ...]) -> tuple[int, str] | None:
    """The common, well-formed history row (whole-number ids, a float balance below 10^15 with
    at most 4 decimals, a note of text or none, a date as `YYYY-MM-DD`, `YYYY-MM-DD HH:MM:SS`
    or ISO-8601 in UTC with `Z`, a `created_at` as the legacy app writes it) straight to
    (legacy id, its line of COPY text in `history_row`'s column order), with exactly the
    values `history_row` gives; None for anything else (which then goes through
    `history_row`)."""
    hid, aid, balance, note, when, created = row
    if (
        type(hid) is not int
        or type(aid) is not int
        or type(balance) is not float
        or not -1e15 < balance < 1e15
        or not (note is None or (type(note) is str and len(note) <= 2000))
        or type(when) is not str
        or not (created is None or (type(created) is str and len(created) == 19))
        or not (-(2**63) <= hid < 2**63 and -(2**63) <= aid < 2**63)
    ):
        return None
    whole, _, frac = repr(balance).partition(".")
    if len(frac) > 4 or not frac or "e" in frac:
        return None
    amount = "0.0000" if balance == 0 else f"{whole}.{frac:0<4}"
    as_of = _plain_moment(when)
    if as_of is None or not (created is None or _plain_time(created)):
        return None
    day = when[:10]
    made = NULL_TEXT if created is None else created + "+00"
    copy_note = NULL_TEXT if note is None else _copy_text(note)
    return hid, f"{hid}\t{aid}\t{day}\t{amount}\t{copy_note}\t{as_of}\t{made}\n"


NULL_TEXT = "\\N"  # NULL in COPY text


def _plain_moment(text: str) -> str | None:
    """A history date the legacy app writes (`YYYY-MM-DD`, `YYYY-MM-DD HH:MM:SS`, or ISO-8601
    with `Z`) as COPY text of the instant `cv.timestamp` reads in it (UTC); None otherwise."""
    n = len(text)
    if n == 10:
        if text[4] != "-" or text[7] != "-":
            return None
        try:
            date.fromisoformat(text)
        except ValueError:
            return None
        return text + " 00:00:00+00"
    if n == 19:
        return text + "+00" if _plain_time(text) else None
    if text.endswith("Z") and n in (20, 24) and text[10] == "T":
        naive = text[:-1]
        if n == 24 and (naive[19] != "." or not naive[20:].isdigit()):
            return None
        return naive + "+00" if _plain_time(naive[:19]) else None
    return None


def _plain_time(text: str) -> bool:
    """`YYYY-MM-DD HH:MM:SS` (or with `T`), a valid time without a zone."""
    if (
        len(text) != 19
        or text[4] != "-"
        or text[7] != "-"
        or text[10] not in " T"
        or text[13] != ":"
        or text[16] != ":"
    ):
        return False
    try:
        return datetime.fromisoformat(text).tzinfo is None
    except ValueError:
        return False


def history_text(row: tuple[Any, ...]) -> str:
    """A `history_row` result as a line of COPY text (same columns)."""
    hid, aid, the_day, amount, note, as_of, created = row
    return (
        "\t".join(
            (
                str(hid),
                str(aid),
                the_day.isoformat(),
                str(amount),
                _copy_text(note),
                NULL_TEXT if as_of is None else as_of.isoformat(),
                NULL_TEXT if created is None else created.isoformat(),
            )
        )
        + "\n"
    )


def history_copy_fields(text: str) -> tuple[int, tuple[str, str, str, str, str | None]]:
    """A line of `history_line` / `history_text` back to (legacy id, (legacy id, account
    legacy id, day, balance, note) as text): what verification's canonical line is built from."""
    hid, aid, day, amount, note, _rest = text.split("\t", 5)
    return int(hid), (hid, aid, day, amount, _from_copy_text(note))


_COPY_ESCAPES = {"\\": "\\", "t": "\t", "n": "\n", "r": "\r"}
_COPY_ESCAPED = re.compile(r"\\(.)")


def _from_copy_text(value: str) -> str | None:
    if value == NULL_TEXT:
        return None
    if "\\" not in value:
        return value
    return _COPY_ESCAPED.sub(lambda m: _COPY_ESCAPES[m.group(1)], value)


def _copy_text(value: str | None) -> str:
    if value is None:
        return NULL_TEXT
    return (
        value.replace("\\", "\\\\")
        .replace("\t", "\\t")
        .replace("\n", "\\n")
        .replace("\r", "\\r")
    )


def _schwab_plain(
    app_key: str,
    app_secret: str,
    token: dict[str, Any] | None,
    number: str | None,
    account_hash: str | None,
    unverified: bool,
) -> dict[str, Any]:
    config: dict[str, Any] = {
        "app_key": app_key,
        "app_secret": app_secret,
        "token": token,
        "account_number": number,
        "account_hash": account_hash,
    }
    if unverified:
        config["unverified"] = True
    return config


def _schwab_integration(
    config: dict[str, Any], origin: str, now: datetime
) -> Integration:
    token = config.get("token")
    access, refresh = cv.token_times(token)
    return Integration(
        type="SCHWAB",
        config=config,
        status=cv.schwab_status(token, now),
        origin=origin,
        access_expires_at=access,
        refresh_expires_at=refresh,
    )


def per_account_integration(
    account: AccountRow, raw_type: Any, raw_config: Any, now: datetime
) -> tuple[Integration | None, Quarantined | None, str | None]:
    """The integration the legacy app wrote on the account itself, normalised:
    (integration, None, note) when it is valid (a note for a harmless oddity), (None,
    quarantined, None) when it is malformed, (None, None, None) when there is none."""
    kind = (cv.clean(raw_type) or "").upper()
    if not kind and raw_config in (None, ""):
        return None, None, None
    if not kind:
        declared = cv.parse_json_object(raw_config) or {}
        kind = str(declared.get("type") or "").upper()
        if kind not in {"IB", "SCHWAB"}:
            return (
                None,
                Quarantined(
                    "UNKNOWN", {}, "integration_config without integration_type"
                ),
                None,
            )
    if kind not in {"IB", "SCHWAB"}:
        return (
            None,
            Quarantined(
                "UNKNOWN", {}, f"unknown integration_type {str(raw_type)[:16]!r}"
            ),
            None,
        )
    if raw_config in (None, ""):
        return (
            None,
            Quarantined(
                kind, {}, f"integration_type {kind} without integration_config"
            ),
            None,
        )
    config, why = cv.legacy_config(kind, raw_config)
    if config is None:
        return (
            None,
            Quarantined(kind, _salvage(kind, raw_config), why or "malformed"),
            None,
        )
    if kind == "IB":
        try:
            stored = cv.ib_config(
                config["host"],
                config["port"],
                config["client_id"],
                account.account_number,
            )
        except ValueError as exc:
            return (
                None,
                Quarantined(
                    "IB",
                    _salvage(kind, raw_config),
                    f"IB integration_config invalid ({exc})",
                ),
                None,
            )
        note = None
        last = None
        if "last_connected" in config:
            last = cv.timestamp(config["last_connected"])
            if last is None:
                note = "lastConnected is not a readable time; left empty"
        return (
            Integration(
                type="IB",
                config=stored,
                status="pending",
                origin="accounts.integration_config",
                last_connected_at=last,
            ),
            None,
            note,
        )
    token = cv.schwab_token(
        config.get("access_token"),
        config.get("refresh_token"),
        config.get("token_expires_at"),
    )
    account_hash = config.get("account_hash")
    plain = _schwab_plain(
        config["app_key"],
        config["app_secret"],
        token,
        cv.config_number(account.account_number),
        account_hash,
        not account_hash,
    )
    return _schwab_integration(plain, "accounts.integration_config", now), None, None


@dataclass(slots=True)
class Quarantined:
    """A per-account integration that cannot be used as it is."""

    type: str  # IB | SCHWAB | UNKNOWN
    config: dict[str, Any]  # what could be salvaged (plaintext, encrypted when stored)
    reason: str


def _salvage(kind: str, raw: Any) -> dict[str, Any]:
    """The well-formed parts of a malformed config, so the pending item shows what it was."""
    data = cv.parse_json_object(raw) or {}
    names = cv._CONFIG_KEYS.get(kind, {})
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = names.get(key)
        if name in (None, "type", "last_connected") or value is None:
            continue
        if (isinstance(value, str) and len(value) <= 512) or (
            isinstance(value, int) and not isinstance(value, bool)
        ):
            out[name] = value
    if kind == "IB":
        return {k: out[k] for k in ("host", "port", "client_id") if k in out}
    return {
        k: out[k]
        for k in ("app_key", "app_secret")
        if k in out and isinstance(out[k], str)
    }


def _ib_like(accounts: list[AccountRow]) -> list[int]:
    return [
        a.legacy_id
        for a in accounts
        if a.integration is None
        and not a.claimed
        and cv.looks_like_ib(a.name, a.account_number)
    ]


def schwab_suggestions(
    accounts: list[AccountRow], seen: set[str]
) -> tuple[list[int], list[int]]:
    """(ranked suggestions, verified ones) for a Schwab login: accounts whose number the login
    sees first (verified), then Schwab-shaped numbers (8 digits), then a name saying Schwab,
    then investment accounts without a number. Only accounts free of any integration."""
    ranked: list[tuple[int, int]] = []
    verified: list[int] = []
    for a in accounts:
        if a.integration is not None or a.claimed:
            continue
        number = cv.config_number(a.account_number)
        if number is not None and number in seen:
            rank = 0
            verified.append(a.legacy_id)
        elif cv.schwab_number(a.account_number):
            rank = 1
        elif a.name and "schwab" in a.name.lower():
            rank = 2
        elif not a.account_number and a.account_type == "INVESTMENT":
            rank = 3
        else:
            continue
        ranked.append((rank, a.legacy_id))
    return [legacy_id for _rank, legacy_id in sorted(ranked)], verified


@dataclass(slots=True)
class SchwabAnswer:
    """What schwab-connector answered for a legacy login during the import."""

    accounts: list[tuple[str, str]]  # (account number, account hash) the login sees
    token: dict[str, Any] | None = None  # the token object after a refresh on the way


SchwabSeen = dict[int, SchwabAnswer]
"""schwab_settings id -> the connector's answer; absent when it could not be asked or did not
answer (then nothing is verified)."""


def plan_user(
    user: tuple[Any, ...] | None,
    accounts: list[tuple[Any, ...]],
    ibs: list[tuple[Any, ...]],
    schwabs: list[tuple[Any, ...]],
    now: datetime,
    *,
    user_skip_reason: str | None = None,
    schwab_seen: SchwabSeen | None = None,
    local: tzinfo = UTC,
) -> UserPlan:
    """Everything that happens to one legacy user and the rows hanging off it."""
    if user is None or user_skip_reason:
        return _skip_user(user, accounts, ibs, schwabs, user_skip_reason)
    urow, why = user_row(user, local)
    if urow is None:
        return _skip_user(user, accounts, ibs, schwabs, why)
    plan = UserPlan(user=urow)
    by_id: dict[int, AccountRow] = {}
    for raw in accounts:
        acc, why = account_row(raw, local)
        if acc is None:
            plan.skipped.append(
                ("accounts", cv.legacy_id(raw[0]) or 0, why or "invalid")
            )
            continue
        plan.accounts.append(acc)
        by_id[acc.legacy_id] = acc
        integ, bad, note = per_account_integration(acc, raw[11], raw[12], now)
        if note:
            plan.conflicts.append(
                {
                    "kind": "account_integration_note",
                    "account_legacy_id": acc.legacy_id,
                    "detail": note,
                }
            )
        if integ is not None:
            acc.integration = integ
        elif bad is not None:
            acc.claimed = True
            plan.conflicts.append(
                {
                    "kind": "invalid_account_integration",
                    "account_legacy_id": acc.legacy_id,
                    "detail": f"{bad.reason}; quarantined as a pending item, the account is left without an integration",
                }
            )
            if bad.type in {"IB", "SCHWAB"}:
                plan.pending.append(
                    Pending(
                        "accounts",
                        acc.legacy_id,
                        urow.legacy_id,
                        bad.type,
                        bad.config,
                        f"the account's own {bad.type} settings are malformed ({bad.reason})",
                        [acc.legacy_id],
                        kind="quarantine",
                    )
                )
    _plan_ib(plan, urow.legacy_id, by_id, ibs)
    for r in schwabs:
        _plan_schwab(plan, urow.legacy_id, r, (schwab_seen or {}).get(int(r[0])), now)
    return plan


def _skip_user(
    user: tuple[Any, ...] | None,
    accounts: list[tuple[Any, ...]],
    ibs: list[tuple[Any, ...]],
    schwabs: list[tuple[Any, ...]],
    reason: str | None,
) -> UserPlan:
    plan = UserPlan(user=None)
    if user is not None:
        plan.skipped.append(
            (
                "users",
                cv.legacy_id(user[0]) or 0,
                reason or "user missing in the source",
            )
        )
    orphan = (
        "its user was not migrated"
        if user is not None
        else "its user does not exist in the source"
    )
    for a in accounts:
        plan.skipped.append(("accounts", cv.legacy_id(a[0]) or 0, orphan))
    for r in ibs:
        plan.copies.append(LegacyCopy("ib_connections", r, "skipped"))
        plan.skipped.append(("ib_connections", int(r[0]), orphan))
    for r in schwabs:
        plan.copies.append(LegacyCopy("schwab_settings", r, "skipped"))
        plan.skipped.append(("schwab_settings", int(r[0]), orphan))
    return plan


def _plan_ib(
    plan: UserPlan,
    user_legacy_id: int,
    by_id: dict[int, AccountRow],
    ibs: list[tuple[Any, ...]],
) -> None:
    later: list[tuple[tuple[Any, ...], str, dict[str, Any], str, list[int]]] = []
    for r in ibs:
        rid, target = int(r[0]), cv.legacy_id(r[6])
        acc = by_id.get(target) if target is not None else None
        try:
            stored = cv.ib_config(r[3], r[4], r[5], acc.account_number if acc else None)
        except ValueError as exc:
            raw = {
                "host": r[3],
                "port": r[4],
                "client_id": r[5],
                "read_only": True,
                "backups": [],
            }
            later.append((r, f"invalid IB settings ({exc})", raw, "quarantine", []))
            continue
        if r[6] is None:
            later.append(
                (r, "no target account (target_account_id is NULL)", stored, "link", [])
            )
            continue
        if acc is None:
            later.append(
                (
                    r,
                    f"target account #{str(r[6])[:20]} is not one of this user's accounts "
                    "(missing, or another user's: never linked across users)",
                    stored,
                    "link",
                    [],
                )
            )
            continue
        if acc.claimed:
            later.append(
                (
                    r,
                    f"target account #{target} has malformed settings of its own (see its pending item)",
                    stored,
                    "conflict",
                    [acc.legacy_id],
                )
            )
            continue
        existing = acc.integration
        if existing is None:
            acc.integration = Integration(
                type="IB",
                config=stored,
                status="pending",
                origin=f"ib_connections#{rid}",
                last_connected_at=cv.timestamp(r[8]),
            )
            plan.copies.append(LegacyCopy("ib_connections", r, "linked", acc.legacy_id))
            continue
        if existing.origin != "accounts.integration_config":
            later.append(
                (
                    r,
                    f"target account #{target} is already linked by {existing.origin}",
                    stored,
                    "link",
                    [],
                )
            )
            continue
        if existing.type == "IB" and cv.same_ib(existing.config, stored):
            if existing.last_connected_at is None:
                existing.last_connected_at = cv.timestamp(r[8])
            plan.copies.append(LegacyCopy("ib_connections", r, "linked", acc.legacy_id))
            continue
        theirs = f"{stored['host']}:{stored['port']} client {stored['client_id']}"
        if existing.type == "IB":
            plan.conflicts.append(
                {
                    "kind": "account_integration_differs",
                    "account_legacy_id": acc.legacy_id,
                    "legacy_table": "ib_connections",
                    "legacy_id": rid,
                    "detail": f"account carries IB {_describe(existing)}; ib_connections #{rid} says IB {theirs}; "
                    "the account's own value is kept, the other is a pending item",
                }
            )
            reason = f"differs from account #{target}'s own IB settings ({_describe(existing)}), which were kept"
            later.append((r, reason, stored, "conflict", [acc.legacy_id]))
        else:
            plan.conflicts.append(
                {
                    "kind": "type_conflict",
                    "account_legacy_id": acc.legacy_id,
                    "legacy_table": "ib_connections",
                    "legacy_id": rid,
                    "detail": f"account carries its own {existing.type} integration; ib_connections #{rid} targets it "
                    f"with IB {theirs}; the account's own value is kept, the IB row is a pending item",
                }
            )
            reason = f"targets account #{target}, which has its own {existing.type} integration (kept)"
            later.append((r, reason, stored, "conflict", []))
        plan.copies.append(LegacyCopy("ib_connections", r, "conflict", acc.legacy_id))
    ib_like = _ib_like(plan.accounts)
    for r, reason, config, kind, first in later:
        suggestions = first + [a for a in ib_like if a not in first]
        plan.pending.append(
            Pending(
                "ib_connections",
                int(r[0]),
                user_legacy_id,
                "IB",
                config,
                reason,
                suggestions,
                kind=kind,
            )
        )
        if kind != "conflict":
            plan.copies.append(LegacyCopy("ib_connections", r, "pending"))


def _plan_schwab(
    plan: UserPlan,
    user_legacy_id: int,
    r: tuple[Any, ...],
    answer: SchwabAnswer | None,
    now: datetime,
) -> None:
    rid = int(r[0])
    app_key, app_secret = cv.clean(r[2]), cv.clean(r[3])
    token = cv.schwab_token(cv.clean(r[4]), cv.clean(r[5]), r[6])
    seen = answer.accounts if answer is not None else None
    if answer is not None and answer.token is not None:
        token = answer.token  # refreshed while asking: the legacy one may be spent
    plain = _schwab_plain(app_key or "", app_secret or "", token, None, None, True)
    too_long = [
        name
        for name, value, limit in (
            ("app_key", app_key, 128),
            ("app_secret", app_secret, 512),
        )
        if value and len(value) > limit
    ]
    if not app_key or not app_secret or too_long:
        why = (
            f"{' and '.join(too_long)} longer than allowed"
            if too_long
            else "app_key or app_secret blank"
        )
        plan.pending.append(
            Pending(
                "schwab_settings",
                rid,
                user_legacy_id,
                "SCHWAB",
                _schwab_plain(
                    (app_key or "")[:128],
                    (app_secret or "")[:512] if not too_long else "",
                    token,
                    None,
                    None,
                    True,
                ),
                f"incomplete Schwab settings ({why})",
                [],
                kind="quarantine",
            )
        )
        plan.copies.append(LegacyCopy("schwab_settings", r, "pending"))
        return
    hashes = dict(seen or [])
    # The login's own per-account configs (same app key): per-account values always win.
    differs: list[int] = []
    covered: list[int] = []
    for acc in plan.accounts:
        integ = acc.integration
        if (
            integ is None
            or integ.type != "SCHWAB"
            or integ.origin != "accounts.integration_config"
        ):
            continue
        cfg = integ.config
        if cfg["app_key"] != app_key:
            continue
        covered.append(acc.legacy_id)
        mine = (cfg["token"] or {}).get("token") or {}
        theirs = (token or {}).get("token") or {}
        same_tokens = (mine.get("access_token"), mine.get("refresh_token")) == (
            theirs.get("access_token"),
            theirs.get("refresh_token"),
        )
        if cfg["app_secret"] != app_secret or not same_tokens:
            newer = theirs.get("expires_at", 0) > mine.get("expires_at", 0)
            differs.append(acc.legacy_id)
            plan.conflicts.append(
                {
                    "kind": "account_integration_differs",
                    "account_legacy_id": acc.legacy_id,
                    "legacy_table": "schwab_settings",
                    "legacy_id": rid,
                    "detail": f"account carries Schwab settings of the same login that differ from schwab_settings #{rid} "
                    f"({'app secret' if cfg['app_secret'] != app_secret else 'tokens'}"
                    f"{'; the user-level tokens expire later' if newer else ''}); the account's own value is kept",
                }
            )
        if cfg.get("account_hash") is None and acc.account_number:
            number = cv.config_number(acc.account_number)
            if (
                number in hashes
            ):  # the login sees it: the connector's hash verifies the account
                cfg["account_hash"] = hashes[number]
                cfg.pop("unverified", None)
    linked = []
    if seen:
        for acc in plan.accounts:
            number = cv.config_number(acc.account_number)
            if number is None or number not in hashes or acc.legacy_id in covered:
                continue
            if acc.integration is not None or acc.claimed:
                plan.conflicts.append(
                    {
                        "kind": "type_conflict"
                        if acc.integration and acc.integration.type != "SCHWAB"
                        else "account_integration_differs",
                        "account_legacy_id": acc.legacy_id,
                        "legacy_table": "schwab_settings",
                        "legacy_id": rid,
                        "detail": f"the Schwab login of schwab_settings #{rid} sees this account's number, but the account "
                        "carries another integration (kept)",
                    }
                )
                continue
            config = _schwab_plain(
                app_key, app_secret, token, number, hashes[number], False
            )
            acc.integration = _schwab_integration(config, f"schwab_settings#{rid}", now)
            linked.append(acc.legacy_id)
    suggestions, verified = schwab_suggestions(plan.accounts, set(hashes))
    if linked and not differs:
        plan.copies.append(LegacyCopy("schwab_settings", r, "linked"))
        return
    if covered and not differs and not suggestions:
        plan.copies.append(LegacyCopy("schwab_settings", r, "linked"))
        return
    if differs:
        reason = (
            f"differs from the Schwab settings that account(s) #{', #'.join(map(str, differs))} carry "
            "themselves (kept there)"
        )
        kind = "conflict"
    elif seen is None:
        reason = "Schwab settings name no account, and Schwab could not be asked which accounts this login sees"
        kind = "link"
    else:
        reason = "the accounts this Schwab login sees match none of this user's free accounts by number"
        kind = "link"
    plan.pending.append(
        Pending(
            "schwab_settings",
            rid,
            user_legacy_id,
            "SCHWAB",
            plain,
            reason,
            [*differs, *[s for s in suggestions if s not in differs]]
            if differs
            else suggestions,
            kind=kind,
            verified=verified,
        )
    )
    plan.copies.append(
        LegacyCopy(
            "schwab_settings",
            r,
            "conflict" if differs else ("linked" if linked else "pending"),
        )
    )


def _describe(integ: Integration) -> str:
    if integ.type == "IB":
        return f"{integ.config['host']}:{integ.config['port']} client {integ.config['client_id']}"
    return f"app key {integ.config['app_key'][:4]}…"
