"""Verification after an apply: every migrated source row is in the target and its per-row
checksum (over the plaintext values, secrets decrypted) equals the source's.

A target row that differs although this run did not write it was changed in the target after
an earlier run (a login upgrading a password hash, a connector updating a balance): it is
reported as drift, not as a failure. Rows this run wrote must match exactly."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
from brokerlink_shared.crypto import SecretBox, SecretDecryptionError

from migrator import convert as cv
from migrator import plan as pl
from migrator.source import Source

NAMED = 20  # rows named per problem kind


def _dec(box: SecretBox, value: str | None) -> str | None:
    if value is None:
        return None
    try:
        return box.decrypt(value)
    except SecretDecryptionError:
        return "<undecryptable>"


def _target(
    conn: psycopg.Connection[Any],
    name: str,
    sql: str,
    params: dict[str, Any],
    row: Callable[[tuple[Any, ...]], tuple[int, str, bool]],
) -> Iterator[tuple[int, str, bool]]:
    with conn.cursor(name=f"verify_{name}") as cur:
        cur.itersize = 5000
        cur.execute(sql, params)
        for r in cur:
            yield row(r)


def _compare(
    name: str,
    source: Iterator[tuple[int, str]],
    target: Iterator[tuple[int, str, bool]],
) -> dict[str, Any]:
    src_hash, tgt_hash = hashlib.sha256(), hashlib.sha256()
    missing: list[int] = []
    mismatched: list[int] = []
    drifted: list[int] = []
    counts = {"missing": 0, "mismatched": 0, "drifted": 0, "extra": 0, "rows": 0}
    t = next(target, None)
    for legacy_id, digest in source:
        counts["rows"] += 1
        src_hash.update(digest.encode())
        while t is not None and t[0] < legacy_id:
            counts["extra"] += 1
            t = next(target, None)
        if t is None or t[0] != legacy_id:
            counts["missing"] += 1
            if len(missing) < NAMED:
                missing.append(legacy_id)
            continue
        tgt_hash.update(t[1].encode())
        if t[1] != digest:
            if t[2]:
                counts["mismatched"] += 1
                if len(mismatched) < NAMED:
                    mismatched.append(legacy_id)
            else:
                counts["drifted"] += 1
                if len(drifted) < NAMED:
                    drifted.append(legacy_id)
        t = next(target, None)
    while t is not None:
        counts["extra"] += 1
        t = next(target, None)
    return {
        **counts,
        "source_checksum": src_hash.hexdigest(),
        "target_checksum": tgt_hash.hexdigest(),
        "ok": counts["missing"] == 0 and counts["mismatched"] == 0,
        "missing_legacy_ids": missing,
        "mismatched_legacy_ids": mismatched,
        "drifted_legacy_ids": drifted,
    }


def verify(
    source: Source,
    conn: psycopg.Connection[Any],
    box: SecretBox,
    run_id: int,
    expected_integrations: dict[int, str],
    skipped: dict[str, set[int]],
) -> dict[str, Any]:
    """Per table: counts and checksums of source vs target, and the rows that differ."""
    params = {"run": run_id}
    results: dict[str, Any] = {}
    # Whole-table scans: plan the server-side cursors for all rows, not the first 10 %
    # (the default fast-start plans re-scan the journal per row: quadratic).
    conn.execute("SET LOCAL cursor_tuple_fraction = 1.0")
    conn.execute("SET LOCAL enable_seqscan = on")

    def users_src() -> Iterator[tuple[int, str]]:
        for raw in source.select("users", pl.USER_COLS, "ORDER BY id"):
            u, _ = pl.user_row(raw)
            if u is not None and u.legacy_id not in skipped.get("users", ()):
                yield u.legacy_id, cv.digest(*u.content())

    results["users"] = _compare(
        "users",
        users_src(),
        _target(
            conn,
            "users",
            """SELECT u.legacy_id, u.email, u.name, u.password_hash, u.base_currency, u.two_factor_secret_enc,
                  u.two_factor_enabled, coalesce(m.run_id = %(run)s, false)
             FROM users u LEFT JOIN migration_rows m ON m.entity = 'users' AND m.legacy_id = u.legacy_id
            WHERE u.legacy_id IS NOT NULL ORDER BY u.legacy_id""",
            params,
            lambda r: (
                r[0],
                cv.digest(r[1], r[2], r[3], r[4], _dec(box, r[5]), r[6]),
                r[7],
            ),
        ),
    )

    def accounts_src() -> Iterator[tuple[int, str]]:
        for raw in source.select("accounts", pl.ACCOUNT_COLS, "ORDER BY id"):
            a, _ = pl.account_row(raw)
            if a is not None and a.legacy_id not in skipped.get("accounts", ()):
                yield (
                    a.legacy_id,
                    cv.digest(*a.content(), expected_integrations.get(a.legacy_id)),
                )

    results["accounts"] = _compare(
        "accounts",
        accounts_src(),
        _target(
            conn,
            "accounts",
            """SELECT a.legacy_id, u.legacy_id, a.name, a.currency, a.account_type, a.account_number,
                  a.original_capital, a.current_balance, a.integration_type,
                  coalesce(m.run_id = %(run)s, false) OR coalesce(i.run_id = %(run)s, false)
             FROM accounts a JOIN users u ON u.id = a.user_id
             LEFT JOIN migration_rows m ON m.entity = 'accounts' AND m.legacy_id = a.legacy_id
             LEFT JOIN migration_rows i ON i.entity = 'integration' AND i.legacy_id = a.legacy_id
            WHERE a.legacy_id IS NOT NULL ORDER BY a.legacy_id""",
            params,
            lambda r: (
                r[0],
                cv.digest(r[1], r[2], r[3], r[4], r[5], str(r[6]), str(r[7]), r[8]),
                r[9],
            ),
        ),
    )

    def history_src() -> Iterator[tuple[int, str]]:
        for raw in source.select(
            "account_balance_history", pl.HISTORY_COLS, "ORDER BY id"
        ):
            h, _ = pl.history_row(raw)
            if h is not None and h[0] not in skipped.get("account_balance_history", ()):
                yield h[0], cv.digest(h[1], h[2].isoformat(), str(h[3]), h[4])

    results["account_balance_history"] = _compare(
        "history",
        history_src(),
        _target(
            conn,
            "history",
            """WITH written AS (
                SELECT unnest(ids) AS id FROM migration_journal
                 WHERE run_id = %(run)s AND table_name = 'account_balance_history' AND op = 'insert'
                UNION SELECT (before->>'id')::bigint FROM migration_journal
                 WHERE run_id = %(run)s AND table_name = 'account_balance_history' AND op = 'update')
           SELECT h.legacy_id, a.legacy_id, h.date, h.balance, h.note, w.id IS NOT NULL
             FROM account_balance_history h JOIN accounts a ON a.id = h.account_id
             LEFT JOIN written w ON w.id = h.id
            WHERE h.legacy_id IS NOT NULL ORDER BY h.legacy_id""",
            params,
            lambda r: (r[0], cv.digest(r[1], r[2].isoformat(), str(r[3]), r[4]), r[5]),
        ),
    )

    def ib_src() -> Iterator[tuple[int, str]]:
        for r in source.select("ib_connections", pl.IB_COLS, "ORDER BY id"):
            yield int(r[0]), cv.digest(_i(r[1]), r[2], r[3], _i(r[4]), _i(r[5]))

    results["ib_connections"] = _compare(
        "ib",
        ib_src(),
        _target(
            conn,
            "ib",
            """SELECT l.id, l.user_legacy_id, l.name, l.host, l.port, l.client_id, coalesce(m.run_id = %(run)s, false)
             FROM legacy_ib_connections l
             LEFT JOIN migration_rows m ON m.entity = 'ib_connections' AND m.legacy_id = l.id ORDER BY l.id""",
            params,
            lambda r: (r[0], cv.digest(r[1], r[2], r[3], r[4], r[5]), r[6]),
        ),
    )

    def schwab_src() -> Iterator[tuple[int, str]]:
        for r in source.select("schwab_settings", pl.SCHWAB_COLS, "ORDER BY id"):
            yield (
                int(r[0]),
                cv.digest(_i(r[1]), r[2], _s(r[3]), _s(r[4]), _s(r[5]), _i(r[6])),
            )

    results["schwab_settings"] = _compare(
        "schwab",
        schwab_src(),
        _target(
            conn,
            "schwab",
            """SELECT l.id, l.user_legacy_id, l.app_key, l.app_secret_enc, l.access_token_enc, l.refresh_token_enc,
                  l.token_expires_at, coalesce(m.run_id = %(run)s, false)
             FROM legacy_schwab_settings l
             LEFT JOIN migration_rows m ON m.entity = 'schwab_settings' AND m.legacy_id = l.id ORDER BY l.id""",
            params,
            lambda r: (
                r[0],
                cv.digest(
                    r[1], r[2], _dec(box, r[3]), _dec(box, r[4]), _dec(box, r[5]), r[6]
                ),
                r[7],
            ),
        ),
    )
    return results


def _i(value: Any) -> int | None:
    try:
        return None if value is None else int(value)
    except (TypeError, ValueError):
        return None


def _s(value: Any) -> str | None:
    return None if value is None or value == "" else str(value)
