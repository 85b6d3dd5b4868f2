"""Per-user decisions: which legacy rows become which target rows, which integration lands on
which account, what is pending, what conflicts. Pure: plaintext in, plaintext out."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
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
    suggestions: list[int]  # legacy account ids

    def checksum(self) -> str:
        return cv.digest(
            self.integration_type, self.config, self.reason, self.suggestions
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


def user_row(row: tuple[Any, ...]) -> tuple[UserRow | None, str | None]:
    """(row, None) or (None, reason)."""
    uid, email, pw, name, currency, secret, enabled, created, updated = row
    email = cv.clean(email)
    if not email:
        return None, "no email"
    if len(email) > 254:
        return None, "email longer than 254 characters"
    base = (cv.clean(currency) or "HKD").upper()
    return (
        UserRow(
            legacy_id=int(uid),
            email=email,
            name=(cv.clean(name) or email.split("@")[0])[:200],
            password_hash=str(pw or ""),
            base_currency=base if len(base) == 3 and base.isalpha() else "HKD",
            two_factor_secret=cv.clean(secret),
            two_factor_enabled=cv.boolean(enabled),
            created_at=cv.timestamp(created),
            updated_at=cv.timestamp(updated),
        ),
        None,
    )


def account_row(row: tuple[Any, ...]) -> tuple[AccountRow | None, str | None]:
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
    code = (cv.clean(currency) or "").upper()
    if len(code) != 3 or not code.isalpha():
        return None, f"invalid currency {currency!r}"
    kind_text = (cv.clean(kind) or "INVESTMENT").upper()
    number_text = cv.clean(number)
    return (
        AccountRow(
            legacy_id=int(aid),
            user_legacy_id=int(uid),
            name=(cv.clean(name) or f"Account {aid}")[:200],
            currency=code,
            account_type=kind_text if kind_text in ACCOUNT_TYPES else "INVESTMENT",
            account_number=number_text[:64] if number_text else None,
            original_capital=cv.money(capital) or Decimal("0.0000"),
            current_balance=cv.money(balance) or Decimal("0.0000"),
            last_updated=cv.timestamp(last),
            created_at=cv.timestamp(created),
            updated_at=cv.timestamp(updated),
        ),
        None,
    )


def history_row(row: tuple[Any, ...]) -> tuple[tuple[Any, ...] | None, str | None]:
    """(legacy_id, account legacy id, day, balance, note, as_of, created_at) or a reason."""
    hid, aid, balance, note, when, created = row
    if aid is None:
        return None, "no account"
    the_day = cv.day(when)
    if the_day is None:
        return None, f"unreadable date {when!r}"
    amount = cv.money(balance)
    if amount is None:
        return None, f"unreadable balance {balance!r}"
    return (
        int(hid),
        int(aid),
        the_day,
        amount,
        note,
        cv.timestamp(when),
        cv.timestamp(created),
    ), None


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
) -> tuple[Integration | None, str | None]:
    """The integration the legacy app wrote on the account itself, normalised; or an issue."""
    kind = (cv.clean(raw_type) or "").upper()
    if not kind:
        return None, None
    if kind not in {"IB", "SCHWAB"}:
        return None, f"unknown integration_type {raw_type!r} ignored"
    config = cv.parse_json_object(raw_config)
    if config is None:
        return None, f"{kind} integration_config is not a JSON object; ignored"
    if kind == "IB":
        try:
            stored = cv.ib_config(
                config.get("host"),
                config.get("port"),
                config.get("client_id"),
                account.account_number,
            )
        except ValueError as exc:
            return None, f"IB integration_config invalid ({exc}); ignored"
        return Integration(
            type="IB",
            config=stored,
            status="pending",
            origin="accounts.integration_config",
            last_connected_at=cv.timestamp(config.get("last_connected")),
        ), None
    app_key, app_secret = (
        cv.clean(config.get("app_key")),
        cv.clean(config.get("app_secret")),
    )
    if not app_key or not app_secret:
        return None, "SCHWAB integration_config lacks app_key or app_secret; ignored"
    token = cv.schwab_token(
        cv.clean(config.get("access_token")),
        cv.clean(config.get("refresh_token")),
        config.get("token_expires_at"),
    )
    account_hash = cv.clean(config.get("account_hash"))
    plain = _schwab_plain(
        app_key,
        app_secret,
        token,
        cv.config_number(account.account_number),
        account_hash,
        not account_hash,
    )
    return _schwab_integration(plain, "accounts.integration_config", now), None


def plan_user(
    user: tuple[Any, ...] | None,
    accounts: list[tuple[Any, ...]],
    ibs: list[tuple[Any, ...]],
    schwabs: list[tuple[Any, ...]],
    now: datetime,
    *,
    user_skip_reason: str | None = None,
) -> UserPlan:
    """Everything that happens to one legacy user and the rows hanging off it."""
    if user is None or user_skip_reason:
        reason_user = user_skip_reason or "user missing in the source"
        plan = UserPlan(user=None)
        if user is not None:
            plan.skipped.append(("users", int(user[0]), reason_user))
        for a in accounts:
            plan.skipped.append(("accounts", int(a[0]), "its user was not migrated"))
        for r in ibs:
            plan.copies.append(LegacyCopy("ib_connections", r, "skipped"))
            plan.skipped.append(
                ("ib_connections", int(r[0]), "its user was not migrated")
            )
        for r in schwabs:
            plan.copies.append(LegacyCopy("schwab_settings", r, "skipped"))
            plan.skipped.append(
                ("schwab_settings", int(r[0]), "its user was not migrated")
            )
        return plan
    urow, why = user_row(user)
    if urow is None:
        return plan_user(user, accounts, ibs, schwabs, now, user_skip_reason=why)
    plan = UserPlan(user=urow)
    by_id: dict[int, AccountRow] = {}
    per_account: dict[int, Integration] = {}
    for raw in accounts:
        acc, why = account_row(raw)
        if acc is None:
            plan.skipped.append(("accounts", int(raw[0]), why or "invalid"))
            continue
        plan.accounts.append(acc)
        by_id[acc.legacy_id] = acc
        integ, issue = per_account_integration(acc, raw[11], raw[12], now)
        if issue:
            plan.conflicts.append(
                {
                    "kind": "invalid_account_integration",
                    "account_legacy_id": acc.legacy_id,
                    "detail": issue,
                }
            )
        if integ is not None:
            acc.integration = integ
            per_account[acc.legacy_id] = integ

    pending_ib: list[tuple[tuple[Any, ...], str, dict[str, Any]]] = []
    for r in ibs:
        rid, target = int(r[0]), r[6]
        raw_config = {
            "host": r[3],
            "port": r[4],
            "client_id": r[5],
            "read_only": True,
            "backups": [],
        }
        acc = by_id.get(int(target)) if target is not None else None
        try:
            stored = cv.ib_config(r[3], r[4], r[5], acc.account_number if acc else None)
        except ValueError as exc:
            pending_ib.append((r, f"invalid IB settings ({exc})", raw_config))
            continue
        if target is None:
            pending_ib.append(
                (r, "no target account (target_account_id is NULL)", stored)
            )
            continue
        if acc is None:
            pending_ib.append(
                (
                    r,
                    f"target account #{target} does not exist (or is not this user's)",
                    stored,
                )
            )
            continue
        if acc.integration is not None:
            existing = acc.integration
            if existing.origin == "accounts.integration_config":
                if existing.type == "IB" and cv.same_ib(existing.config, stored):
                    if existing.last_connected_at is None:
                        existing.last_connected_at = cv.timestamp(r[8])
                    plan.copies.append(
                        LegacyCopy("ib_connections", r, "linked", acc.legacy_id)
                    )
                    continue
                plan.conflicts.append(
                    {
                        "kind": "account_integration_differs",
                        "account_legacy_id": acc.legacy_id,
                        "legacy_table": "ib_connections",
                        "legacy_id": rid,
                        "detail": f"account carries {existing.type} {_describe(existing)}; ib_connections #{rid} says IB "
                        f"{stored['host']}:{stored['port']} client {stored['client_id']}; the account's value is kept",
                    }
                )
                plan.copies.append(
                    LegacyCopy("ib_connections", r, "conflict", acc.legacy_id)
                )
                continue
            pending_ib.append(
                (
                    r,
                    f"target account #{target} is already linked by {existing.origin}",
                    stored,
                )
            )
            continue
        acc.integration = Integration(
            type="IB",
            config=stored,
            status="pending",
            origin=f"ib_connections#{rid}",
            last_connected_at=cv.timestamp(r[8]),
        )
        plan.copies.append(LegacyCopy("ib_connections", r, "linked", acc.legacy_id))

    for r in schwabs:
        rid = int(r[0])
        app_key, app_secret = cv.clean(r[2]), cv.clean(r[3])
        token = cv.schwab_token(cv.clean(r[4]), cv.clean(r[5]), r[6])
        plain = _schwab_plain(app_key or "", app_secret or "", token, None, None, True)
        if not app_key or not app_secret:
            plan.pending.append(
                Pending(
                    "schwab_settings",
                    rid,
                    urow.legacy_id,
                    "SCHWAB",
                    plain,
                    "incomplete Schwab settings (app_key or app_secret blank)",
                    [],
                )
            )
            plan.copies.append(LegacyCopy("schwab_settings", r, "pending"))
            continue
        covered = False
        for acc_id, integ in per_account.items():
            if integ.type != "SCHWAB":
                continue
            cfg = integ.config
            same_login = cfg["app_key"] == app_key
            covered = covered or same_login
            if (
                not same_login
                or cfg["app_secret"] != app_secret
                or (cfg["token"] or {}).get("token") != (token or {}).get("token")
            ):
                plan.conflicts.append(
                    {
                        "kind": "account_integration_differs",
                        "account_legacy_id": acc_id,
                        "legacy_table": "schwab_settings",
                        "legacy_id": rid,
                        "detail": "account carries SCHWAB settings that differ from schwab_settings "
                        f"#{rid} ({'app key' if not same_login else 'secret or tokens'}); the account's value is kept",
                    }
                )
        matched = 0
        for acc in plan.accounts:
            number = cv.schwab_number(acc.account_number)
            if acc.integration is not None or number is None:
                continue
            config = _schwab_plain(app_key, app_secret, token, number, None, True)
            acc.integration = _schwab_integration(config, f"schwab_settings#{rid}", now)
            matched += 1
        if matched:
            plan.copies.append(LegacyCopy("schwab_settings", r, "linked"))
        elif covered:
            plan.copies.append(
                LegacyCopy(
                    "schwab_settings", r, "conflict" if plan.conflicts else "linked"
                )
            )
        else:
            plan.pending.append(
                Pending(
                    "schwab_settings",
                    rid,
                    urow.legacy_id,
                    "SCHWAB",
                    plain,
                    "no account of this user has a Schwab account number (8 digits) free of another integration",
                    [
                        a.legacy_id
                        for a in plan.accounts
                        if a.integration is None
                        and a.account_type == "INVESTMENT"
                        and (
                            cv.looks_like_schwab(a.name, a.account_number)
                            or not a.account_number
                        )
                    ],
                )
            )
            plan.copies.append(LegacyCopy("schwab_settings", r, "pending"))

    ib_like = [
        a.legacy_id
        for a in plan.accounts
        if a.integration is None and cv.looks_like_ib(a.name, a.account_number)
    ]
    for r, reason, config in pending_ib:
        plan.pending.append(
            Pending(
                "ib_connections",
                int(r[0]),
                urow.legacy_id,
                "IB",
                config,
                reason,
                ib_like,
            )
        )
        plan.copies.append(LegacyCopy("ib_connections", r, "pending"))
    return plan


def _describe(integ: Integration) -> str:
    if integ.type == "IB":
        return f"{integ.config['host']}:{integ.config['port']} client {integ.config['client_id']}"
    return f"app key {integ.config['app_key'][:4]}…"
