"""account-api's PostgreSQL database as the migrator writes it: COPY into session-local staging
tables, then keyed `UPDATE ... FROM` / `INSERT ... SELECT ... WHERE NOT EXISTS` on legacy ids,
journalling what each run inserted (ids) and the before-image of what it updated, so a run can
be resumed (same run id, same journal) and rolled back."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, LiteralString

import psycopg
from psycopg.types.json import Jsonb

# pg advisory lock: one migrator at a time. Its own key: account-api's Alembic takes 727274 and
# its outbox relay holds 727275 for as long as it runs, and the migrator runs next to both.
LOCK_KEY = 727276

STAGING = {
    "stg_users": """legacy_id bigint, email text, name text, password_hash text, base_currency text,
        two_factor_secret_enc text, two_factor_enabled boolean, created_at timestamptz, updated_at timestamptz""",
    "stg_accounts": """legacy_id bigint, user_id bigint, name text, currency text, account_type text,
        account_number text, original_capital numeric, current_balance numeric, last_updated timestamptz,
        created_at timestamptz, updated_at timestamptz, w_acc boolean, w_int boolean, integration_type text,
        integration_config jsonb, integration_status text, last_connected_at timestamptz,
        token_access_expires_at timestamptz, token_refresh_expires_at timestamptz""",
    "stg_history": """legacy_id bigint, account_legacy_id bigint, date date, balance numeric, note text,
        as_of timestamptz, created_at timestamptz""",
    "stg_history_r": """legacy_id bigint, account_id bigint, date date, balance numeric, note text,
        as_of timestamptz, created_at timestamptz, existing_id bigint, changed boolean""",
    "stg_legacy_ib": """id bigint, user_legacy_id bigint, user_id bigint, name text, host text, port integer,
        client_id integer, target_account_legacy_id bigint, target_account_id bigint, is_connected boolean,
        last_connected timestamptz, account_balance numeric, account_currency text, error text, outcome text,
        created_at timestamptz, updated_at timestamptz""",
    "stg_legacy_schwab": """id bigint, user_legacy_id bigint, user_id bigint, app_key text, app_secret_enc text,
        access_token_enc text, refresh_token_enc text, token_expires_at bigint, outcome text,
        created_at timestamptz, updated_at timestamptz""",
    "stg_pending": """user_id bigint, integration_type text, config jsonb, reason text, suggestions bigint[],
        legacy_table text, legacy_id bigint, kind text, verified_suggestions bigint[]""",
    "stg_rows": "entity text, legacy_id bigint, checksum text",
}

USER_COLS = [
    "email",
    "name",
    "password_hash",
    "base_currency",
    "two_factor_secret_enc",
    "two_factor_enabled",
    "legacy_id",
    "created_at",
    "updated_at",
]
ACCOUNT_FIELDS = [
    "user_id",
    "name",
    "currency",
    "account_type",
    "account_number",
    "original_capital",
    "current_balance",
    "last_updated",
]
INTEGRATION_FIELDS = [
    "integration_type",
    "integration_config",
    "integration_status",
    "last_connected_at",
    "token_access_expires_at",
    "token_refresh_expires_at",
]
LEGACY_IB_COLS = [
    "id",
    "user_legacy_id",
    "user_id",
    "name",
    "host",
    "port",
    "client_id",
    "target_account_legacy_id",
    "target_account_id",
    "is_connected",
    "last_connected",
    "account_balance",
    "account_currency",
    "error",
    "outcome",
    "created_at",
    "updated_at",
]
LEGACY_SCHWAB_COLS = [
    "id",
    "user_legacy_id",
    "user_id",
    "app_key",
    "app_secret_enc",
    "access_token_enc",
    "refresh_token_enc",
    "token_expires_at",
    "outcome",
    "created_at",
    "updated_at",
]
PENDING_COLS = [
    "user_id",
    "integration_type",
    "config",
    "reason",
    "suggestions",
    "legacy_table",
    "legacy_id",
    "kind",
    "verified_suggestions",
]
# Tables a run writes, children first (the order rollback deletes in).
JOURNALLED = [
    "pending_links",
    "legacy_ib_connections",
    "legacy_schwab_settings",
    "account_balance_history",
    "accounts",
    "users",
]


# What "changed since the import" means, per table: the columns a person changes (or the API
# changes on their behalf). Balances, statuses, ciphertexts (token rotation, rekey) and password
# rehashes at login move without anyone meaning to change the row: they are not looked at. A
# user's integration change always bumps `integration_version`.
STATE_SQL = {
    "users": "md5(concat_ws('|', t.email, t.name, t.base_currency, t.two_factor_enabled::text))",
    "accounts": """md5(concat_ws('|', t.user_id::text, t.name, t.currency, t.account_type,
        t.account_number, t.original_capital::text, t.integration_type, t.integration_version::text,
        (t.integration_config - 'app_secret_enc' - 'token_enc' - 'unverified' - 'account_hash')::text))""",
}


# The tables whose whole content tells whether the target is still as a verified run left it
# (`Target.state`): anything anyone changed in them since sends a rerun down the full path.
STATE_TABLES = (
    "users",
    "accounts",
    "account_balance_history",
    "legacy_ib_connections",
    "legacy_schwab_settings",
    "pending_links",
    "migration_rows",
)


def libpq_url(url: str) -> str:
    for prefix in ("postgresql+psycopg://", "postgresql+psycopg2://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql://" + url[len(prefix) :]
    return url


# A first import's history batch, straight from the staging table (`Target._history_fresh`).
# The batch's legacy account ids go in as one array (computed once): as a semi-join under
# ORDER BY id, the planner may walk every account in id order and scan the unanalysed staging
# table for each (seen: a batch still running after 10 minutes).
HISTORY_FRESH_INSERT: LiteralString = """WITH a AS (SELECT id, legacy_id FROM accounts
                   WHERE legacy_id = ANY (ARRAY(SELECT DISTINCT account_legacy_id FROM stg_history))
                   ORDER BY id FOR KEY SHARE),
            ins AS (INSERT INTO account_balance_history (account_id, date, balance, note, source, as_of, legacy_id, created_at, updated_at)
              SELECT a.id, h.date, h.balance, h.note, 'MANUAL', h.as_of, h.legacy_id,
                     coalesce(h.created_at, now()), coalesce(h.created_at, now())
                FROM stg_history h JOIN a ON a.legacy_id = h.account_legacy_id
               ORDER BY h.legacy_id RETURNING id, xmin),
            j AS (INSERT INTO migration_journal (run_id, table_name, op, ids)
                  SELECT %(run)s, 'account_balance_history', 'insert', array_agg(id) FROM ins HAVING count(*) > 0),
            -- rows written in a savepoint carry its own transaction id
            x AS (INSERT INTO migration_journal (run_id, table_name, op, before)
                  SELECT %(run)s, 'account_balance_history', 'xid', jsonb_build_object('xid', xmin::text)
                    FROM (SELECT xmin FROM ins LIMIT 1) one)
       SELECT count(*) FROM ins"""


class Target:
    """One connection, one run id. `commit()` ends a batch (a no-op in a dry run)."""

    def __init__(self, conn: psycopg.Connection[Any], *, dry_run: bool = False) -> None:
        self.conn = conn
        self.dry_run = dry_run
        self.run_id = 0
        # A new run on a target without any `migration_rows`: nothing was migrated before, so
        # every legacy id is looked up and recorded once, by this run (see `write_rows`).
        self.fresh = False
        self._row_checks_skippable: bool | None = None  # see `_skip_row_checks`

    # ---- session ---------------------------------------------------------------------------

    def prepare(self) -> None:
        # Every write joins a small staging table to a large, fast-growing target table whose
        # statistics lag behind (autovacuum analyses later): without this, the planner seq-scans
        # the target for every batch, which makes the import quadratic. Verification turns it
        # back on for its whole-table scans.
        self.conn.execute("SET enable_seqscan = off")
        # Each history batch sorts 100,000 staged rows: in memory, not in temporary files.
        self.conn.execute("SET work_mem = '64MB'")
        with self.conn.cursor() as cur:
            for name, cols in STAGING.items():
                cur.execute(f"CREATE TEMP TABLE IF NOT EXISTS {name} ({cols})")

    def lock(self) -> bool:
        return bool(self.value("SELECT pg_try_advisory_lock(%s)", (LOCK_KEY,)))

    def value(
        self, query: LiteralString, params: Sequence[Any] | Mapping[str, Any] = ()
    ) -> Any:
        """The first column of the one row `query` returns."""
        row = self.conn.execute(query, params).fetchone()
        if row is None:
            raise RuntimeError(f"no row from: {query.split()[0]} ...")
        return row[0]

    def unlock(self) -> None:
        """Release the lock now: a closed connection's server process may linger (and keep
        it) for a moment on a busy server, and the next run must not find it taken."""
        if self.conn.closed:
            return
        if self.conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            self.conn.rollback()
        self.conn.execute("SELECT pg_advisory_unlock(%s)", (LOCK_KEY,))
        self.conn.commit()

    def commit(self) -> None:
        if not self.dry_run:
            self.conn.commit()

    # ---- runs ------------------------------------------------------------------------------

    def open_run(
        self, source: str, fingerprint: str
    ) -> tuple[int, dict[str, Any], bool]:
        """(run id, progress, resumed): continue an interrupted run, else start one."""
        row = self.conn.execute(
            "SELECT id, progress, source_fingerprint FROM migration_runs WHERE status = 'running' ORDER BY id DESC LIMIT 1"
        ).fetchone()
        if row is not None:
            run_id, progress, old_fp = row
            self.conn.execute(
                "UPDATE migration_runs SET source = %s, source_fingerprint = %s WHERE id = %s",
                (source, fingerprint, run_id),
            )
            self.run_id = run_id
            return run_id, (progress if old_fp == fingerprint else {}), True
        self.fresh = (
            self.conn.execute("SELECT 1 FROM migration_rows LIMIT 1").fetchone() is None
        )
        run_id = self.value(
            "INSERT INTO migration_runs (status, source, source_fingerprint) VALUES ('running', %s, %s) RETURNING id",
            (source, fingerprint),
        )
        self.run_id = run_id
        self.commit()
        return run_id, {}, False

    def set_progress(self, progress: dict[str, Any]) -> None:
        self.conn.execute(
            "UPDATE migration_runs SET progress = %s WHERE id = %s",
            (Jsonb(progress), self.run_id),
        )

    def finish_run(self, status: str, report: dict[str, Any]) -> None:
        self.conn.execute(
            "UPDATE migration_runs SET status = %s, finished_at = now(), report = %s WHERE id = %s",
            (status, Jsonb(report), self.run_id),
        )

    def run_changed_anything(self) -> bool:
        row = self.conn.execute(
            """SELECT EXISTS (SELECT 1 FROM migration_journal WHERE run_id = %(r)s AND op <> 'xid')
                   OR EXISTS (SELECT 1 FROM migration_rows WHERE run_id = %(r)s)
                   OR EXISTS (SELECT 1 FROM outbox WHERE correlation_id = %(c)s)""",
            {"r": self.run_id, "c": correlation(self.run_id)},
        ).fetchone()
        return bool(row and row[0])

    def state(self) -> dict[str, list[int]]:
        """Per `STATE_TABLES` table: [row count, XOR of a 64-bit hash of each row version's
        `xmin` and `ctid`]. Any row added, removed or written (by anyone, in any column)
        changes it (see `target_state`)."""
        return target_state(self.conn)

    def verified_unchanged(self, fingerprint: str) -> tuple[int, dict[str, Any]] | None:
        """(run id, stored report) when the newest run is an applied one that was verified
        against a source with this fingerprint and the target is still in the state it was
        verified in; else None."""
        row = self.conn.execute(
            "SELECT id, status, report FROM migration_runs ORDER BY id DESC LIMIT 1"
        ).fetchone()
        if row is None or row[1] != "applied" or not isinstance(row[2], dict):
            return None
        report: dict[str, Any] = row[2]
        if report.get("verified_fingerprint") != fingerprint:
            return None
        if report.get("target_state") != self.state():
            return None
        return int(row[0]), report

    def mark_verified(self, fingerprint: str, verified: dict[str, Any]) -> None:
        """A rerun that changed nothing verified the target again: remember it on the newest
        applied run (`verified`: the fingerprint, the state found, and that verification and
        its checksums), so the next rerun of the same source compares against it."""
        self.conn.execute(
            """UPDATE migration_runs SET report = coalesce(report, '{}'::jsonb) || %s
                WHERE id = (SELECT max(id) FROM migration_runs) AND status = 'applied'""",
            (Jsonb({**verified, "verified_fingerprint": fingerprint}),),
        )

    def drop_run(self) -> None:
        self.conn.execute("DELETE FROM migration_runs WHERE id = %s", (self.run_id,))

    # ---- reads -----------------------------------------------------------------------------

    def checksums(self, entity: str, legacy_ids: Sequence[int]) -> dict[int, str]:
        if not legacy_ids or self.fresh:
            return {}
        rows = self.conn.execute(
            "SELECT legacy_id, checksum FROM migration_rows WHERE entity = %s AND legacy_id = ANY(%s::bigint[])",
            (entity, list(legacy_ids)),
        ).fetchall()
        return dict(rows)

    def email_owners(self, emails: Sequence[str]) -> dict[str, tuple[int, int | None]]:
        """lower(email) -> (target user id, its legacy id) for existing target users."""
        if not emails:
            return {}
        rows = self.conn.execute(
            "SELECT lower(email), id, legacy_id FROM users WHERE lower(email) = ANY(%s::text[])",
            (list(emails),),
        ).fetchall()
        return {r[0]: (r[1], r[2]) for r in rows}

    def id_map(self, table: str, legacy_ids: Sequence[int]) -> dict[int, int]:
        if not legacy_ids:
            return {}
        rows = self.conn.execute(
            f"SELECT legacy_id, id FROM {table} WHERE legacy_id = ANY(%s::bigint[])",
            (list(legacy_ids),),
        ).fetchall()
        return dict(rows)

    # ---- writes ----------------------------------------------------------------------------

    def copy(
        self, table: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]
    ) -> None:
        with self.conn.cursor() as cur:
            cur.execute(f"TRUNCATE {table}")
            with cur.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)

    def _upsert(
        self,
        table: str,
        staging: str,
        key: Sequence[str],
        columns: Sequence[str],
        *,
        update_exprs: dict[str, str] | None = None,
        insert_exprs: dict[str, str] | None = None,
        returning: str = "t.id",
        pk: str = "id",
        insert_where: str = "TRUE",
    ) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
        """Rows of `staging` update their match in `table` by `key` (before-images journalled)
        or are inserted (ids journalled). Returns (updated rows, inserted rows) per `returning`.

        The `old` CTE must not say FOR UPDATE: a row the main UPDATE of the same statement has
        already changed is skipped by the lock, and its before-image would be lost. The snapshot
        read gives the before-image; the UPDATE itself takes the row locks."""
        update_exprs = update_exprs or {}
        insert_exprs = insert_exprs or {}
        match = " AND ".join(f"t.{k} = s.{k}" for k in key)
        sets = ", ".join(
            f"{c} = {update_exprs.get(c, 's.' + c)}" for c in columns if c not in key
        )
        params = {"run": self.run_id, "table": table}
        if self._range_free(table, staging, key):
            # Nothing in the target within the batch's key range (a first import, batch after
            # batch): nothing to update, nothing to look up before inserting.
            updated: list[tuple[Any, ...]] = []
            exists = "FALSE"
        else:
            exists = f"EXISTS (SELECT 1 FROM {table} t WHERE {match})"
            updated = self._update(table, staging, match, sets, returning, params)
        values = ", ".join(insert_exprs.get(c, "s." + c) for c in columns)
        inserted = self.conn.execute(
            f"""WITH ins AS (INSERT INTO {table} AS t ({", ".join(columns)})
                      SELECT {values} FROM {staging} s
                      WHERE {insert_where} AND NOT {exists} RETURNING t.{pk} AS pk_, {returning}),
                j AS (INSERT INTO migration_journal (run_id, table_name, op, ids)
                      SELECT %(run)s, %(table)s, 'insert', array_agg(pk_) FROM ins HAVING count(*) > 0)
                SELECT * FROM ins""",
            params,
        ).fetchall()
        return updated, [r[1:] for r in inserted]

    def _range_free(self, table: str, staging: str, key: Sequence[str]) -> bool:
        """No row of `table` has a key within the staged rows' range: its last column between
        the staged minimum and maximum, any others equal to a staged value (an index probe or
        a few)."""
        *same, k = key
        kinds = "".join(f" AND t.{c} IN (SELECT {c} FROM {staging})" for c in same)
        return not self.value(
            f"""SELECT EXISTS (SELECT 1 FROM {table} t
                                WHERE t.{k} BETWEEN (SELECT min({k}) FROM {staging})
                                                AND (SELECT max({k}) FROM {staging}){kinds})"""
        )

    def _update(
        self,
        table: str,
        staging: str,
        match: str,
        sets: str,
        returning: str,
        params: dict[str, Any],
    ) -> list[tuple[Any, ...]]:
        return self.conn.execute(
            f"""WITH old AS (SELECT t.* FROM {table} t JOIN {staging} s ON {match}),
                j AS (INSERT INTO migration_journal (run_id, table_name, op, before)
                      SELECT %(run)s, %(table)s, 'update', to_jsonb(old) FROM old)
                UPDATE {table} t SET {sets} FROM {staging} s WHERE {match} RETURNING {returning}""",
            params,
        ).fetchall()

    def journal_state(self, table: str, ids: Sequence[int]) -> None:
        """Journal the state this run left `ids` of `table` in (`op='after'`), so rollback can
        tell a row nobody touched since from one a person changed."""
        if not ids:
            return
        self.conn.execute(
            f"""INSERT INTO migration_journal (run_id, table_name, op, ids, before)
                SELECT %(run)s, %(table)s, 'after', array_agg(t.id ORDER BY t.id),
                       jsonb_build_object('digests', jsonb_agg({STATE_SQL[table]} ORDER BY t.id))
                  FROM {table} t WHERE t.id = ANY(%(ids)s::bigint[]) HAVING count(*) > 0""",
            {"run": self.run_id, "table": table, "ids": list(ids)},
        )

    def write_users(self, rows: list[tuple[Any, ...]]) -> tuple[int, int]:
        """Rows in USER_COLS order; returns (updated, inserted)."""
        if not rows:
            return 0, 0
        self.copy("stg_users", USER_COLS, rows)
        updated, inserted = self._upsert(
            "users",
            "stg_users",
            ["legacy_id"],
            USER_COLS,
            update_exprs={
                "created_at": "coalesce(s.created_at, t.created_at)",
                "updated_at": "coalesce(s.updated_at, now())",
            },
            insert_exprs={
                "created_at": "coalesce(s.created_at, now())",
                "updated_at": "coalesce(s.updated_at, s.created_at, now())",
            },
        )
        return len(updated), len(inserted)

    def write_accounts(
        self, rows: list[tuple[Any, ...]]
    ) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
        """Rows in stg_accounts order. Returns (updated, inserted) as
        (legacy_id, id, user_id, integration_version) tuples."""
        if not rows:
            return [], []
        cols = [
            "legacy_id",
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
            "w_acc",
            "w_int",
            *INTEGRATION_FIELDS,
        ]
        self.copy("stg_accounts", cols, rows)
        target_cols = [c for c in cols if c not in {"w_acc", "w_int"}] + [
            "integration_version",
            "integration_status_at",
            "last_error",
            "last_error_code",
        ]
        acc = {
            c: f"CASE WHEN s.w_acc THEN s.{c} ELSE t.{c} END" for c in ACCOUNT_FIELDS
        }
        integ = {
            c: f"CASE WHEN s.w_int THEN s.{c} ELSE t.{c} END"
            for c in INTEGRATION_FIELDS
        }
        updated, inserted = self._upsert(
            "accounts",
            "stg_accounts",
            ["legacy_id"],
            target_cols,
            update_exprs={
                **acc,
                **integ,
                "created_at": "coalesce(s.created_at, t.created_at)",
                "updated_at": "CASE WHEN s.w_acc THEN coalesce(s.updated_at, now()) ELSE now() END",
                "integration_version": "t.integration_version + CASE WHEN s.w_int THEN 1 ELSE 0 END",
                "integration_status_at": "CASE WHEN s.w_int THEN now() ELSE t.integration_status_at END",
                "last_error": "CASE WHEN s.w_int THEN NULL ELSE t.last_error END",
                "last_error_code": "CASE WHEN s.w_int THEN NULL ELSE t.last_error_code END",
            },
            insert_exprs={
                "created_at": "coalesce(s.created_at, now())",
                "updated_at": "coalesce(s.updated_at, s.created_at, now())",
                "integration_status": "coalesce(s.integration_status, 'not_configured')",
                "integration_version": "CASE WHEN s.integration_type IS NULL THEN 0 ELSE 1 END",
                "integration_status_at": "CASE WHEN s.integration_type IS NULL THEN NULL ELSE now() END",
                "last_error": "NULL",
                "last_error_code": "NULL",
            },
            returning="t.legacy_id, t.id, t.user_id, t.integration_version",
            insert_where="s.w_acc",  # an account deleted in the target since an earlier run stays deleted
        )
        return updated, inserted

    def write_legacy_ib(self, rows: list[tuple[Any, ...]]) -> tuple[int, int]:
        if not rows:
            return 0, 0
        self.copy("stg_legacy_ib", LEGACY_IB_COLS, rows)
        updated, inserted = self._upsert(
            "legacy_ib_connections",
            "stg_legacy_ib",
            ["id"],
            LEGACY_IB_COLS,
            update_exprs={"migrated_at": "now()"},
        )
        return len(updated), len(inserted)

    def write_legacy_schwab(self, rows: list[tuple[Any, ...]]) -> tuple[int, int]:
        if not rows:
            return 0, 0
        self.copy("stg_legacy_schwab", LEGACY_SCHWAB_COLS, rows)
        updated, inserted = self._upsert(
            "legacy_schwab_settings", "stg_legacy_schwab", ["id"], LEGACY_SCHWAB_COLS
        )
        return len(updated), len(inserted)

    def write_pending(self, rows: list[tuple[Any, ...]]) -> tuple[int, int]:
        if not rows:
            return 0, 0
        self.copy("stg_pending", PENDING_COLS, rows)
        updated, inserted = self._upsert(
            "pending_links", "stg_pending", ["legacy_table", "legacy_id"], PENDING_COLS
        )
        return len(updated), len(inserted)

    def write_outbox(self, messages: list[tuple[Any, ...]]) -> None:
        """(event_id, family, subject, partition_key, body, correlation_id) rows, as
        `OutboxRepository.add` builds them (see `migrator.events`), COPYed in."""
        if not messages:
            return
        with (
            self.conn.cursor() as cur,
            cur.copy(
                "COPY outbox (event_id, family, subject, partition_key, body, correlation_id) FROM STDIN"
            ) as copy,
        ):
            for m in messages:
                copy.write_row(m)

    def write_rows(self, rows: list[tuple[str, int, str]]) -> None:
        """Record (entity, legacy id, checksum) of what this run wrote."""
        if not rows:
            return
        if self.fresh:
            # Nothing to journal or to conflict with: each legacy id is in one batch only, and
            # a resumed run is never fresh. A duplicate would fail the primary key, loudly.
            # Entity names and hex checksums need no COPY escaping: the rows go as text.
            with (
                self.conn.cursor() as cur,
                cur.copy(
                    "COPY migration_rows (entity, legacy_id, checksum, run_id) FROM STDIN"
                ) as copy,
            ):
                copy.write(_rows_text(rows, f"\t{int(self.run_id)}\n"))
            return
        with self.conn.cursor() as cur:
            cur.execute("TRUNCATE stg_rows")
            with cur.copy(
                "COPY stg_rows (entity, legacy_id, checksum) FROM STDIN"
            ) as copy:
                copy.write(_rows_text(rows, "\n"))
        self.conn.execute(
            """WITH old AS (SELECT m.* FROM migration_rows m JOIN stg_rows s USING (entity, legacy_id)
                            WHERE m.run_id <> %(run)s),
                    j AS (INSERT INTO migration_journal (run_id, table_name, op, before)
                          SELECT %(run)s, 'migration_rows', 'update', to_jsonb(old) FROM old)
               INSERT INTO migration_rows (entity, legacy_id, checksum, run_id)
               SELECT entity, legacy_id, checksum, %(run)s FROM stg_rows
               ON CONFLICT (entity, legacy_id) DO UPDATE SET checksum = excluded.checksum, run_id = excluded.run_id""",
            {"run": self.run_id},
        )

    def write_history(self, text: str) -> tuple[int, int, list[tuple[int, str]]]:
        """Rows (legacy_id, account_legacy_id, date, balance, note, as_of, created_at) as COPY
        text (`plan.history_line` / `plan.history_text`): returns (updated, inserted,
        [(legacy id, skip reason)]); unchanged rows are left alone."""
        if not text:
            return 0, 0, []
        with self.conn.cursor() as cur:
            cur.execute("TRUNCATE stg_history")
            with cur.copy(
                "COPY stg_history (legacy_id, account_legacy_id, date, balance, note, as_of, created_at) FROM STDIN"
            ) as copy:
                copy.write(text)
        params = {"run": self.run_id}
        # Rows this transaction writes carry its id in `xmin` until someone changes them:
        # rollback restores or deletes only those.
        self.conn.execute(
            """INSERT INTO migration_journal (run_id, table_name, op, before)
               SELECT %(run)s, 'account_balance_history', 'xid', jsonb_build_object('xid', pg_current_xact_id()::text)
                WHERE NOT EXISTS (SELECT 1 FROM migration_journal WHERE run_id = %(run)s AND op = 'xid'
                                    AND before->>'xid' = pg_current_xact_id()::text)""",
            params,
        )
        fresh = self._history_fresh()
        if fresh is not None:
            return fresh
        # Resolve each staged row once (its account, the target row it already has), then
        # update the changed ones, insert the new ones and name the skipped ones from that.
        self.conn.execute("TRUNCATE stg_history_r")
        self.conn.execute(
            """INSERT INTO stg_history_r
               SELECT h.legacy_id, a.id, h.date, h.balance, h.note, h.as_of, h.created_at, t.id,
                      t.id IS NOT NULL AND (t.account_id, t.date, t.balance, t.note)
                                           IS DISTINCT FROM (a.id, h.date, h.balance, h.note)
                 FROM stg_history h
                 LEFT JOIN accounts a ON a.legacy_id = h.account_legacy_id
                 LEFT JOIN account_balance_history t ON t.legacy_id = h.legacy_id"""
        )
        self.conn.execute("ANALYZE stg_history_r")
        updated = self.conn.execute(
            """WITH s AS (SELECT * FROM stg_history_r WHERE changed AND account_id IS NOT NULL),
                    old AS (SELECT t.* FROM account_balance_history t JOIN s ON t.id = s.existing_id
                            WHERE NOT EXISTS (SELECT 1 FROM account_balance_history x
                                              WHERE x.account_id = s.account_id AND x.date = s.date AND x.id <> t.id)
                           ),
                    j AS (INSERT INTO migration_journal (run_id, table_name, op, before)
                          SELECT %(run)s, 'account_balance_history', 'update', to_jsonb(old) FROM old)
               UPDATE account_balance_history t
                  SET account_id = s.account_id, date = s.date, balance = s.balance, note = s.note, as_of = s.as_of, updated_at = now()
                 FROM s, old WHERE t.id = old.id AND t.id = s.existing_id RETURNING t.id""",
            params,
        ).rowcount
        skipped = self.conn.execute(
            """WITH ins AS (INSERT INTO account_balance_history (account_id, date, balance, note, source, as_of, legacy_id, created_at, updated_at)
                      SELECT r.account_id, r.date, r.balance, r.note, 'MANUAL', r.as_of, r.legacy_id,
                             coalesce(r.created_at, now()), coalesce(r.created_at, now())
                        FROM stg_history_r r
                       WHERE r.existing_id IS NULL AND r.account_id IS NOT NULL
                       ORDER BY r.legacy_id
                      ON CONFLICT (account_id, date) DO NOTHING RETURNING id, legacy_id),
                    j AS (INSERT INTO migration_journal (run_id, table_name, op, ids)
                          SELECT %(run)s, 'account_balance_history', 'insert', array_agg(id) FROM ins HAVING count(*) > 0)
               SELECT r.legacy_id, CASE WHEN r.account_id IS NULL THEN 'its account was not migrated'
                                        ELSE 'another balance exists for the same account and day' END
                 FROM stg_history_r r
                WHERE r.account_id IS NULL
                   OR (r.existing_id IS NULL AND NOT EXISTS (SELECT 1 FROM ins WHERE ins.legacy_id = r.legacy_id))
                ORDER BY r.legacy_id""",
            params,
        ).fetchall()
        new = self.value(
            "SELECT count(*) FROM stg_history_r WHERE existing_id IS NULL AND account_id IS NOT NULL"
        )
        inserted = int(new) - sum(1 for r in skipped if r[1].startswith("another"))
        return updated, int(inserted), [(r[0], r[1]) for r in skipped]

    def _history_fresh(self) -> tuple[int, int, list[tuple[int, str]]] | None:
        """The staged batch straight into the table, when none of its legacy-id range is there
        yet (a first import: every batch): nothing to compare or update, one plain INSERT.
        None when some of the range is there already, or when a row collides with a balance
        of the same account and day (then nothing of this attempt stays): the caller takes the
        row-by-row path, which updates, skips and names those rows. The attempt is a savepoint,
        whose rows carry a transaction id of their own: it is journalled (`xid`) with them."""
        taken = self.value(
            """SELECT EXISTS (SELECT 1 FROM account_balance_history t
                               WHERE t.legacy_id BETWEEN (SELECT min(legacy_id) FROM stg_history)
                                                     AND (SELECT max(legacy_id) FROM stg_history))"""
        )
        if taken:
            return None
        try:
            with self.conn.transaction():  # a savepoint
                skipping = self._skip_row_checks()
                # The foreign key's check, done for the whole batch: the accounts are locked
                # as the check's own trigger locks each one (FOR KEY SHARE, so nobody deletes
                # one or changes its id before this commits), and only rows whose account is
                # there are inserted. Where `_skip_row_checks` could turn the per-row trigger
                # off, that trigger would only repeat this, at ~40 % of the INSERT's time. The
                # locks are taken in id order, as account-api takes its own (`locked_many`), so
                # an import next to a running stack cannot deadlock with a balance being stored.
                inserted = self.value(
                    HISTORY_FRESH_INSERT,
                    {"run": self.run_id},
                )
                if skipping:
                    self.conn.execute("SET LOCAL session_replication_role = origin")
        except psycopg.errors.UniqueViolation:
            return None
        skipped = self.conn.execute(
            """SELECT h.legacy_id, 'its account was not migrated' FROM stg_history h
                WHERE NOT EXISTS (SELECT 1 FROM accounts a WHERE a.legacy_id = h.account_legacy_id)
                ORDER BY h.legacy_id"""
        ).fetchall()
        return 0, int(inserted), [(r[0], r[1]) for r in skipped]

    def _skip_row_checks(self) -> bool:
        """Turn per-row triggers off until `SET LOCAL session_replication_role = origin`, if
        this role may (a superuser, or one granted SET on that parameter) and the only
        triggers on the tables a history batch writes are foreign-key checks (a trigger or rule
        someone added there keeps firing: then nothing is turned off); False, and nothing
        changed, otherwise."""
        if self._row_checks_skippable is False:
            return False
        if self._row_checks_skippable is None and self.value(
            """SELECT current_setting('session_replication_role') <> 'origin'
                   OR EXISTS (SELECT 1 FROM pg_trigger t
                                LEFT JOIN pg_constraint c ON c.oid = t.tgconstraint
                               WHERE t.tgrelid IN ('account_balance_history'::regclass,
                                                   'migration_journal'::regclass)
                                 AND c.contype IS DISTINCT FROM 'f')
                   OR EXISTS (SELECT 1 FROM pg_rewrite
                               WHERE ev_class IN ('account_balance_history'::regclass,
                                                  'migration_journal'::regclass))"""
        ):
            self._row_checks_skippable = False
            return False
        try:
            with self.conn.transaction():
                self.conn.execute("SET LOCAL session_replication_role = replica")
        except psycopg.errors.InsufficientPrivilege:
            self._row_checks_skippable = False
            return False
        self._row_checks_skippable = True
        return True


def target_state(
    conn: psycopg.Connection[Any], tables: Iterable[str] = STATE_TABLES
) -> dict[str, list[int]]:
    """`Target.state` on any connection (one of its own sees what the import committed), of
    `tables` (all by default).

    Each row version is named by the transaction that wrote it and its place (`xmin`, `ctid`):
    PostgreSQL never rewrites a row of a user table in place, so any write to a row (even of
    the same values) gives it a new pair, and row locks, VACUUM and freezing (which keeps the
    raw `xmin`) keep it. What moves rows wholesale (VACUUM FULL, CLUSTER, a dump and restore)
    changes the state too: the next rerun then takes the full path, only slower. Hashing the
    pair instead of each row's text costs PostgreSQL about a sixth of the time (full size: 0.4
    against 2.2 s for the seven tables)."""
    conn.execute("SET LOCAL enable_seqscan = on")
    query = " UNION ALL ".join(
        f"SELECT '{t}', count(*),"
        f" coalesce(bit_xor(hashtextextended(t.xmin::text || ':' || t.ctid::text, 0)), 0) FROM {t} t"
        for t in tables
        if t in STATE_TABLES
    )
    rows = conn.execute(query).fetchall()
    return {r[0]: [int(r[1]), int(r[2])] for r in rows}


def _rows_text(rows: list[tuple[str, int, str]], tail: str) -> str:
    """(entity, legacy id, checksum) rows as COPY text, each line ending in `tail`: entity
    names (a handful) are checked to need no escaping; checksums are `convert.digest` hex."""
    if not all(_PLAIN.fullmatch(entity) for entity in {r[0] for r in rows}):
        raise ValueError("an entity name needs COPY escaping")
    return "".join(f"{e}\t{int(i)}\t{c}{tail}" for e, i, c in rows)


_PLAIN = re.compile(r"[a-z0-9_:]+")


def correlation(run_id: int) -> str:
    return f"migration-{run_id}"


def connect(url: str) -> psycopg.Connection[Any]:
    return psycopg.connect(libpq_url(url), connect_timeout=10)


def encode_jsonb(value: Any) -> Jsonb | None:
    return None if value is None else Jsonb(value)
