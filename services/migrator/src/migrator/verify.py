"""Verification after an apply: every migrated source row is in the target and its per-row
checksum (over the plaintext values, secrets decrypted) equals the source's.

A target row that differs although this run did not write it was changed in the target after
an earlier run (a login upgrading a password hash, a connector updating a balance): it is
reported as drift, not as a failure. Rows this run wrote must match exactly."""

from __future__ import annotations

import hashlib
from array import array
from collections.abc import Callable, Collection, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psycopg
from brokerlink_shared.crypto import SecretBox, SecretDecryptionError

from migrator import convert as cv
from migrator import plan as pl
from migrator.digests import (
    CHUNK,
    ChunkDigests,
    canon,
    canon_history,
    chunk_bounds,
)
from migrator.source import Source

NAMED = 20  # rows named per problem kind
TABLES = (
    "users",
    "accounts",
    "account_balance_history",
    "ib_connections",
    "schwab_settings",
)


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


def history_chunks(
    source: Source, chunks: Collection[int], skipped: Collection[int | str]
) -> dict[int, tuple[int, str]]:
    """The source side of the given history chunks (`ChunkDigests.result`), read from the
    source again, without the rows in `skipped`; a chunk none of whose rows are left is
    absent."""
    digests = ChunkDigests()
    for chunk in sorted(chunks):
        for raw in source.select(
            "account_balance_history",
            pl.HISTORY_COLS,
            "WHERE id BETWEEN ? AND ? ORDER BY id",
            chunk_bounds(chunk),
        ):
            h, _ = pl.history_row(raw)
            if h is not None and h[0] not in skipped:
                digests.add(h[0], canon_history(h))
    return digests.result()


def user_digest(
    raw: tuple[Any, ...], converted: pl.UserRow | None = None
) -> tuple[int, str] | None:
    """The source side of users' row-by-row comparison, for one legacy row (None: not a
    readable user, never compared). `converted`: what `pl.user_row` made of this very row
    already, when the caller has it (the planner does)."""
    u = converted if converted is not None else pl.user_row(raw)[0]
    return None if u is None else (u.legacy_id, cv.digest(*u.content()))


def ib_digest(r: tuple[Any, ...]) -> tuple[int, str] | None:
    """The source side of ib_connections' comparison, for one legacy row (`pl.IB_COLS`)."""
    if _quarantined(r):
        return None
    return int(r[0]), cv.digest(_i(r[1]), r[2], r[3], _i(r[4]), _i(r[5]))


def schwab_digest(r: tuple[Any, ...]) -> tuple[int, str] | None:
    """The source side of schwab_settings' comparison, for one legacy row (`pl.SCHWAB_COLS`)."""
    if _quarantined(r):
        return None
    return (
        int(r[0]),
        cv.digest(_i(r[1]), r[2], _s(r[3]), _s(r[4]), _s(r[5]), _i(r[6])),
    )


ROW_DIGESTS: dict[str, Callable[[tuple[Any, ...]], tuple[int, str] | None]] = {
    "users": user_digest,
    "ib_connections": ib_digest,
    "schwab_settings": schwab_digest,
}
"""The tables whose source side can be taken while the import reads them (`RowDigests`)."""


def account_line(
    raw: tuple[Any, ...],
    planned: dict[int, str],
    converted: pl.AccountRow | None = None,
) -> tuple[int, str] | None:
    """The source side of the accounts' chunked comparison for one legacy row: (legacy id,
    md5 of its canonical line, with the integration type the account must carry: see
    `_expected_kind`; `planned`: the plan's types, by legacy account id). `converted`: what
    `pl.account_row` made of this very row already, when the caller has it (the planner
    does: converting each account twice cost the import ~2 s)."""
    a = converted if converted is not None else pl.account_row(raw)[0]
    if a is None:
        return None
    line = canon(a.legacy_id, *a.content(), _expected_kind(a, raw, planned))
    return a.legacy_id, hashlib.md5(line.encode(), usedforsecurity=False).hexdigest()


class RowDigests:
    """(legacy id, checksum) pairs of source rows in any order, compactly (8 bytes and the
    checksum's `width` a row): the source side of a comparison, taken while the import reads
    the rows anyway, so verification does not read them again."""

    def __init__(self, width: int = 20) -> None:
        self.width = width
        self.ids = array("q")
        self.sums = bytearray()

    def add(self, row: tuple[int, str] | None) -> None:
        if row is not None:
            self.ids.append(row[0])
            self.sums += bytes.fromhex(row[1])

    def extend(self, other: RowDigests) -> None:
        self.ids.extend(other.ids)
        self.sums += other.sums

    def ordered(self) -> Iterator[tuple[int, str]]:
        """The pairs in legacy-id order, as the source iterators of `verify` yield them."""
        ids, sums, w = self.ids, self.sums, self.width
        for i in sorted(range(len(ids)), key=ids.__getitem__):
            yield ids[i], sums[w * i : w * i + w].hex()


def _canon_sql(*exprs: str) -> str:
    return " || '|' || ".join(
        f"coalesce(length(({e})::text) || ':' || ({e})::text, '~')" for e in exprs
    )


HISTORY_CHUNKS_SQL = f"""SELECT h.legacy_id / {CHUNK}, count(*), md5(string_agg({
    _canon_sql("h.legacy_id", "a.legacy_id", "h.date", "h.balance", "h.note")
}, E'\\n' ORDER BY h.legacy_id))
     FROM account_balance_history h JOIN accounts a ON a.id = h.account_id
    WHERE h.legacy_id IS NOT NULL GROUP BY 1"""


def _chunked(
    conn: psycopg.Connection[Any],
    source: Iterator[tuple[int, str]] | dict[int, tuple[int, str]],
    target_sql: str,
    params: dict[str, Any],
    drill: Callable[[int, int], dict[str, Any]],
) -> dict[str, Any]:
    """Compare per chunk of legacy ids: count and md5 of the rows' canonical text, the target's
    computed in PostgreSQL (on a worker thread, while this thread reads the source, unless the
    source's chunks come computed already: see `ChunkDigests`). Only a chunk that differs is
    compared row by row (`drill(lo, hi)`), which names the rows and tells mismatches from
    drift exactly as the row-by-row comparison does."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="verify") as pool:
        future = pool.submit(lambda: conn.execute(target_sql, params).fetchall())
        if isinstance(source, dict):
            src = source
        else:
            digests = ChunkDigests()
            for legacy_id, line in source:
                digests.add(legacy_id, line)
            src = digests.result()
        tgt = {int(r[0]): (int(r[1]), r[2]) for r in future.result()}
    counts = {"missing": 0, "mismatched": 0, "drifted": 0, "extra": 0, "rows": 0}
    named: dict[str, list[int]] = {"missing": [], "mismatched": [], "drifted": []}
    src_hash, tgt_hash = hashlib.sha256(), hashlib.sha256()
    for c in sorted(src.keys() | tgt.keys()):
        s, t = src.get(c), tgt.get(c)
        if s is not None:
            src_hash.update(f"{c}:{s[0]}:{s[1]};".encode())
        if t is not None:
            tgt_hash.update(f"{c}:{t[0]}:{t[1]};".encode())
        if s == t and s is not None:
            counts["rows"] += s[0]
            continue
        part = drill(*chunk_bounds(c))
        for k in counts:
            counts[k] += part[k]
        for k in named:
            named[k].extend(part[f"{k}_legacy_ids"][: NAMED - len(named[k])])
    return {
        **counts,
        "source_checksum": src_hash.hexdigest(),
        "target_checksum": tgt_hash.hexdigest(),
        "ok": counts["missing"] == 0 and counts["mismatched"] == 0,
        "missing_legacy_ids": named["missing"],
        "mismatched_legacy_ids": named["mismatched"],
        "drifted_legacy_ids": named["drifted"],
    }


def verify(
    source: Source,
    conn: psycopg.Connection[Any],
    box: SecretBox,
    run_id: int,
    expected_integrations: dict[int, str],
    skipped: dict[str, set[int | str]],
    history_source: dict[int, tuple[int, str]] | None = None,
    tables: Collection[str] = TABLES,
    rows_source: dict[str, RowDigests] | None = None,
) -> dict[str, Any]:
    """Per table: counts and checksums of source vs target, and the rows that differ.
    `history_source`: the source history's chunk digests when the import took them on its
    way (`ChunkDigests`); otherwise the source's history is read here. `rows_source`: the
    source sides of the `ROW_DIGESTS` tables and of accounts (`account_line`) when the import
    took them on its way. `tables`: the ones to verify (all by default), so history can be
    verified apart from the others."""
    params = {"run": run_id}
    results: dict[str, Any] = {}
    # Whole-table scans: plan the server-side cursors for all rows, not the first 10 %
    # (the default fast-start plans re-scan the journal per row: quadratic).
    conn.execute("SET LOCAL cursor_tuple_fraction = 1.0")
    conn.execute("SET LOCAL enable_seqscan = on")

    taken = rows_source or {}

    def source_rows(
        table: str, cols: tuple[str, ...]
    ) -> Iterator[tuple[int, str] | None]:
        if table in taken:
            yield from taken[table].ordered()
            return
        for raw in source.select(table, cols, "ORDER BY id"):
            yield ROW_DIGESTS[table](raw)

    def users_src() -> Iterator[tuple[int, str]]:
        for row in source_rows("users", pl.USER_COLS):
            if row is not None and row[0] not in skipped.get("users", ()):
                yield row

    if "users" in tables:
        results["users"] = _compare(
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

    conn.execute("SET LOCAL work_mem = '64MB'")
    conn.execute("SET LOCAL DateStyle = 'ISO, YMD'")

    def account_rows(tail: str = "", args: tuple[Any, ...] = ()) -> Iterator[Any]:
        for raw in source.select(
            "accounts", pl.ACCOUNT_COLS, f"{tail} ORDER BY id", args
        ):
            a, _ = pl.account_row(raw)
            if a is not None and a.legacy_id not in skipped.get("accounts", ()):
                yield a, _expected_kind(a, raw, expected_integrations)

    accounts_target = """SELECT a.legacy_id, u.legacy_id, a.name, a.currency, a.account_type, a.account_number,
                  a.original_capital, a.current_balance, a.integration_type,
                  coalesce(m.run_id = %(run)s, false) OR coalesce(i.run_id = %(run)s, false)
             FROM accounts a JOIN users u ON u.id = a.user_id
             LEFT JOIN migration_rows m ON m.entity = 'accounts' AND m.legacy_id = a.legacy_id
             LEFT JOIN migration_rows i ON i.entity = 'integration' AND i.legacy_id = a.legacy_id
            WHERE a.legacy_id BETWEEN %(lo)s AND %(hi)s ORDER BY a.legacy_id"""

    def accounts_drill(lo: int, hi: int) -> dict[str, Any]:
        return _compare(
            (
                (a.legacy_id, cv.digest(*a.content(), kind))
                for a, kind in account_rows("WHERE id BETWEEN ? AND ?", (lo, hi))
            ),
            _target(
                conn,
                "accounts",
                accounts_target,
                {**params, "lo": lo, "hi": hi},
                lambda r: (
                    r[0],
                    cv.digest(r[1], r[2], r[3], r[4], r[5], str(r[6]), str(r[7]), r[8]),
                    r[9],
                ),
            ),
        )

    def accounts_src() -> Iterator[tuple[int, str]]:
        rows: Iterator[tuple[int, str] | None] = (
            taken["accounts"].ordered()
            if "accounts" in taken
            else (
                account_line(raw, expected_integrations)
                for raw in source.select("accounts", pl.ACCOUNT_COLS, "ORDER BY id")
            )
        )
        for row in rows:
            if row is not None and row[0] not in skipped.get("accounts", ()):
                yield row

    if "accounts" in tables:
        # per chunk: md5 of the rows' md5s (each of its canonical line), so the source side
        # can be kept as 16 bytes a row
        results["accounts"] = _chunked(
            conn,
            accounts_src(),
            f"""SELECT a.legacy_id / {CHUNK}, count(*), md5(string_agg(md5({
                _canon_sql(
                    "a.legacy_id",
                    "u.legacy_id",
                    "a.name",
                    "a.currency",
                    "a.account_type",
                    "a.account_number",
                    "a.original_capital",
                    "a.current_balance",
                    "a.integration_type",
                )
            }), E'\\n' ORDER BY a.legacy_id))
                 FROM accounts a JOIN users u ON u.id = a.user_id
                WHERE a.legacy_id IS NOT NULL GROUP BY 1""",
            params,
            accounts_drill,
        )

    def history_rows(tail: str = "", args: tuple[Any, ...] = ()) -> Iterator[Any]:
        for raw in source.select(
            "account_balance_history", pl.HISTORY_COLS, f"{tail} ORDER BY id", args
        ):
            h, _ = pl.history_row(raw)
            if h is not None and h[0] not in skipped.get("account_balance_history", ()):
                yield h

    history_rows_target = """WITH written AS (
                SELECT unnest(ids) AS id FROM migration_journal
                 WHERE run_id = %(run)s AND table_name = 'account_balance_history' AND op = 'insert'
                UNION SELECT (before->>'id')::bigint FROM migration_journal
                 WHERE run_id = %(run)s AND table_name = 'account_balance_history' AND op = 'update')
           SELECT h.legacy_id, a.legacy_id, h.date, h.balance, h.note, w.id IS NOT NULL
             FROM account_balance_history h JOIN accounts a ON a.id = h.account_id
             LEFT JOIN written w ON w.id = h.id
            WHERE h.legacy_id BETWEEN %(lo)s AND %(hi)s ORDER BY h.legacy_id"""

    def history_drill(lo: int, hi: int) -> dict[str, Any]:
        return _compare(
            (
                (h[0], cv.digest(h[1], h[2].isoformat(), str(h[3]), h[4]))
                for h in history_rows("WHERE id BETWEEN ? AND ?", (lo, hi))
            ),
            _target(
                conn,
                "history",
                history_rows_target,
                {**params, "lo": lo, "hi": hi},
                lambda r: (
                    r[0],
                    cv.digest(r[1], r[2].isoformat(), str(r[3]), r[4]),
                    r[5],
                ),
            ),
        )

    if "account_balance_history" in tables:
        results["account_balance_history"] = _chunked(
            conn,
            history_source
            if history_source is not None
            else ((h[0], canon_history(h)) for h in history_rows()),
            HISTORY_CHUNKS_SQL,
            params,
            history_drill,
        )

    def ib_src() -> Iterator[tuple[int, str]]:
        for row in source_rows("ib_connections", pl.IB_COLS):
            if row is not None:
                yield row

    if "ib_connections" in tables:
        results["ib_connections"] = _compare(
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
        for row in source_rows("schwab_settings", pl.SCHWAB_COLS):
            if row is not None:
                yield row

    if "schwab_settings" in tables:
        results["schwab_settings"] = _compare(
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
                        r[1],
                        r[2],
                        _dec(box, r[3]),
                        _dec(box, r[4]),
                        _dec(box, r[5]),
                        r[6],
                    ),
                    r[7],
                ),
            ),
        )
    return results


def _expected_kind(
    account: pl.AccountRow, raw: tuple[Any, ...], planned: dict[int, str]
) -> str | None:
    """The integration type the account must carry, from the source: a valid per-account
    config always wins (whatever the plan says); otherwise what the user-level rows gave it."""
    kind = (cv.clean(raw[11]) or "").upper()
    if kind in ("IB", "SCHWAB") and cv.legacy_config(kind, raw[12])[0] is not None:
        integ, _bad, _note = pl.per_account_integration(
            account, raw[11], raw[12], pl.EPOCH
        )
        if integ is not None:
            return kind
    return planned.get(account.legacy_id)


def _quarantined(row: tuple[Any, ...]) -> bool:
    """A row that could not be placed (no whole-number id or user id): reported, not copied."""
    return cv.legacy_id(row[0]) is None or (
        row[1] is not None and cv.legacy_id(row[1]) is None
    )


def _i(value: Any) -> int | None:
    try:
        return None if value is None else int(value)
    except (TypeError, ValueError):
        return None


def _s(value: Any) -> str | None:
    return None if value is None or value == "" else str(value)
