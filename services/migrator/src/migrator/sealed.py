"""A user's plan as the writer takes it: checksums taken, secrets encrypted, values in the text
forms the staging tables read (amounts and times as text, configs as JSON), everything in plain
tuples — what crosses from the planning process to the writer per batch, so the writer's
interpreter does not spend its time on any of it (pickled dataclasses, `Decimal`s and
`datetime`s cost several times plain tuples of text).

Only what depends on the target is left to the writer: the target's ids for legacy ids, which
rows changed since an earlier run (their checksums), and the events.

Layout (tuples, in this order):

- `SealedUser`: (legacy user id, lower email to check against the target or None, user or
  None, accounts, pending, copies, skipped, conflicts)
- user: (legacy id, checksum, `target.USER_COLS` row)
- account: (legacy id, user legacy id, account checksum, integration checksum or None,
  integration type or None, origin or None, stored config or None, `head`, `tail`) where the
  staged row is (legacy id, user id, *head, w_acc, w_int, type, config JSON, *tail)
- pending: (legacy table, legacy id, user legacy id, type, kind, reason, suggested legacy
  ids, verified legacy ids, checksum, stored config JSON)
- copy: (table, legacy id, checksum, outcome, user legacy id or None, target account legacy
  id or None, staged row with None for the user id and the target account id)
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime
from decimal import Decimal
from typing import Any

import orjson
from brokerlink_shared.crypto import SecretBox

from migrator import convert as cv
from migrator import plan as pl

SealedUser = tuple[
    int,
    str | None,
    tuple[int, str, tuple[Any, ...]] | None,
    list[tuple[Any, ...]],
    list[tuple[Any, ...]],
    list[tuple[Any, ...]],
    list[tuple[str, int, str]],
    list[dict[str, Any]],
]


def seal(uid: int, lower: str | None, plan: pl.UserPlan, box: SecretBox) -> SealedUser:
    enc = _encrypter(box)
    u = plan.user
    user = None
    if u is not None:
        user = (
            u.legacy_id,
            u.checksum(),
            (
                u.email,
                u.name,
                u.password_hash,
                u.base_currency,
                enc(u.two_factor_secret) if u.two_factor_secret else None,
                u.two_factor_enabled,
                u.legacy_id,
                _time(u.created_at),
                _time(u.updated_at),
            ),
        )
    accounts = []
    for a in plan.accounts:
        integ = a.integration
        stored = None if integ is None else stored_config(enc, integ.type, integ.config)
        accounts.append(
            (
                a.legacy_id,
                a.user_legacy_id,
                a.checksum(),
                None if integ is None else integ.checksum(),
                None if integ is None else integ.type,
                None if integ is None else integ.origin,
                stored,
                (
                    a.name,
                    a.currency,
                    a.account_type,
                    a.account_number,
                    str(a.original_capital),
                    str(a.current_balance),
                    _time(a.last_updated),
                    _time(a.created_at),
                    _time(a.updated_at),
                ),
                (
                    None if integ is None else integ.status,
                    None if integ is None else _time(integ.last_connected_at),
                    None if integ is None else _time(integ.access_expires_at),
                    None if integ is None else _time(integ.refresh_expires_at),
                ),
            )
        )
    pending = [
        (
            x.legacy_table,
            x.legacy_id,
            x.user_legacy_id,
            x.integration_type,
            x.kind,
            x.reason,
            x.suggestions,
            x.verified,
            x.checksum(),
            config_json(stored_config(enc, x.integration_type, x.config, lenient=True)),
        )
        for x in plan.pending
    ]
    copies = [_copy(c, enc) for c in plan.copies]
    return (
        uid,
        lower,
        user,
        accounts,
        pending,
        copies,
        plan.skipped,
        plan.conflicts,
    )


def _copy(c: pl.LegacyCopy, enc: Callable[[str], str]) -> tuple[Any, ...]:
    r = c.row
    legacy_id = int(r[0])
    user_legacy = _int(r[1])
    if c.table == "ib_connections":
        target = (
            c.target_account_legacy_id
            if c.target_account_legacy_id is not None
            else _int(r[6])
        )
        row: tuple[Any, ...] = (
            legacy_id,
            user_legacy or 0,
            None,
            r[2],
            r[3],
            _int(r[4]),
            _int(r[5]),
            target,
            None,
            None if r[7] is None else bool(r[7]),
            _time(cv.timestamp(r[8])),
            _amount(cv.money(r[9])),
            r[10],
            r[11],
            c.outcome,
            _time(cv.timestamp(r[12])),
            _time(cv.timestamp(r[13])),
        )
    else:
        target = None
        row = (
            legacy_id,
            user_legacy or 0,
            None,
            r[2],
            _secret(enc, r[3]),
            _secret(enc, r[4]),
            _secret(enc, r[5]),
            _int(r[6]),
            c.outcome,
            _time(cv.timestamp(r[7])),
            _time(cv.timestamp(r[8])),
        )
    return (
        c.table,
        legacy_id,
        c.checksum(),
        c.outcome,
        None if r[1] is None else user_legacy,
        target,
        row,
    )


def stored_config(
    enc: Callable[[str], str],
    kind: str,
    config: dict[str, Any],
    *,
    lenient: bool = False,
) -> dict[str, Any]:
    """The stored (encrypted with `enc`) form of a plaintext integration config."""
    if kind == "IB":
        return dict(config)
    stored: dict[str, Any] = {
        "app_key": config.get("app_key"),
        "app_secret_enc": _secret(enc, config.get("app_secret"))
        if config.get("app_secret") or not lenient
        else None,
        "token_enc": enc(json.dumps(config["token"])) if config.get("token") else None,
        "account_number": config.get("account_number"),
        "account_hash": config.get("account_hash"),
    }
    if config.get("unverified"):
        stored["unverified"] = True
    return stored


def config_json(stored: dict[str, Any] | None) -> str | None:
    """A stored config as the JSON text a jsonb column reads."""
    return None if stored is None else orjson.dumps(stored).decode()


def _encrypter(box: SecretBox) -> Callable[[str], str]:
    """Encryption for one user's plan: a plaintext stored in several places (a Schwab app
    secret in the pending item and in the legacy copy) is encrypted once, and each place holds
    that ciphertext (the same key and plaintext; each place is re-encrypted on its own by
    rekey, and decrypts on its own)."""
    done: dict[str, str] = {}

    def enc(plaintext: str) -> str:
        ciphertext = done.get(plaintext)
        if ciphertext is None:
            ciphertext = done[plaintext] = box.encrypt(plaintext)
        return ciphertext

    return enc


def _secret(enc: Callable[[str], str], value: Any) -> str | None:
    return None if value is None or value == "" else enc(str(value))


def _time(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _amount(value: Decimal | None) -> str | None:
    return None if value is None else str(value)


def _int(value: Any) -> int | None:
    try:
        return None if value is None else int(value)
    except (TypeError, ValueError):
        return None
