"""`--rollback`: take the last apply back out, in one transaction, without undoing anyone's work.

Only what is unchanged since the import is restored or removed; what a person changed since (an
account renamed, an integration configured, a balance-history row edited, a history row or an
account added) is kept, and listed in the summary. The journal says what the run wrote
(`insert` ids, `update` before-images), the state it left rows in (`after` digests, see
`target.STATE_SQL`) and the transactions that wrote history (`xid`: an unchanged row still has
that `xmin`).

Integration versions never go backwards: an account whose integration rollback changes gets the
next version, and connectors hear about it (`integration.configured` with the restored config,
or `integration.removed`) through the outbox, in the same transaction. The run's events the relay
has not published yet are withdrawn."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import psycopg
from account_api.migrator_facade import bus_connection, outbox_row
from brokerlink_shared.contracts.events import IntegrationRemoved
from brokerlink_shared.messaging import EventPublisher

from migrator.events import EventBatch
from migrator.target import STATE_SQL, Target, correlation

NAMED = 200  # ids listed per kind of kept row


def _columns(conn: psycopg.Connection[Any], table: str) -> list[str]:
    rows = conn.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_schema = current_schema() AND table_name = %s ORDER BY ordinal_position",
        (table,),
    ).fetchall()
    return [r[0] for r in rows]


def rollback(target: Target, publisher: EventPublisher) -> dict[str, Any]:
    conn = target.conn
    row = conn.execute(
        "SELECT id, status, source, started_at FROM migration_runs WHERE status IN ('running', 'applied', 'failed') ORDER BY id DESC LIMIT 1"
    ).fetchone()
    if row is None:
        return {
            "rolled_back": None,
            "message": "nothing to roll back: no migration run is recorded",
        }
    run_id, status, source, started = row
    target.run_id = run_id
    p = {"run": run_id}
    summary: dict[str, Any] = {
        "rolled_back": run_id,
        "status_was": status,
        "source": source,
        "started_at": str(started),
    }
    _plan(conn, p)
    kept = {
        table: [
            r[0]
            for r in conn.execute(
                "SELECT id FROM rb_rows WHERE table_name = %s AND NOT unchanged ORDER BY id",
                (table,),
            ).fetchall()
        ]
        for table in ("users", "accounts", "account_balance_history")
    }
    summary["kept_changed_since_import"] = {
        t: {"count": len(ids), "ids": ids[:NAMED]} for t, ids in kept.items()
    }

    # The run's events not published yet are withdrawn; connectors hear about every
    # integration rollback changes (below).
    withdrawn = conn.execute(
        "DELETE FROM outbox WHERE correlation_id = %s AND published_at IS NULL",
        (correlation(run_id),),
    ).rowcount
    events = _Events(publisher, run_id)

    restored: dict[str, int] = {}
    deleted: dict[str, int] = {}
    # accounts: updated ones get their before-image back (with the next version), inserted
    # ones go (their history with them), unless changed since.
    # (and when the account's user goes too, connectors let go of what they kept for the user)
    for acc_id, user_id, itype, iconfig, owner_deleted in conn.execute(
        """SELECT a.id, a.user_id, a.integration_type, a.integration_config,
                  EXISTS (SELECT 1 FROM rb_rows u WHERE u.table_name = 'users' AND u.id = a.user_id
                                                    AND u.op = 'insert' AND u.unchanged)
             FROM accounts a
             JOIN rb_rows r ON r.table_name = 'accounts' AND r.id = a.id AND r.op = 'insert' AND r.unchanged"""
    ).fetchall():
        if itype:
            events.removed(user_id, acc_id, itype, iconfig, owner_deleted=owner_deleted)
    before_cols = [c for c in _columns(conn, "accounts") if c not in ACCOUNT_LIVE]
    changed_integrations = conn.execute(
        f"""WITH b AS (SELECT r.* FROM rb_rows x JOIN migration_journal j ON j.id = x.journal_id,
                              jsonb_populate_record(NULL::accounts, j.before) r
                        WHERE x.table_name = 'accounts' AND x.op = 'update' AND x.unchanged),
                 u AS (UPDATE accounts t SET {", ".join(f"{c} = b.{c}" for c in before_cols if c not in ("id", "integration_version"))},
                         integration_version = t.integration_version
                             + CASE WHEN (t.integration_type, t.integration_config) IS DISTINCT FROM (b.integration_type, b.integration_config)
                                    THEN 1 ELSE 0 END,
                         integration_status = CASE WHEN (t.integration_type, t.integration_config) IS DISTINCT FROM (b.integration_type, b.integration_config)
                                    THEN coalesce(b.integration_status, 'not_configured') ELSE t.integration_status END,
                         updated_at = now()
                       FROM b WHERE t.id = b.id
                       RETURNING t.id, t.user_id, t.integration_type, t.integration_config, t.integration_version,
                                 (t.integration_version > (SELECT integration_version FROM accounts o WHERE o.id = t.id)) AS bumped)
            SELECT u.id, u.user_id, u.integration_type, u.integration_config, u.integration_version, u.bumped,
                   a.integration_type, a.integration_config
              FROM u JOIN accounts a ON a.id = u.id""",
    ).fetchall()
    restored["accounts"] = len(changed_integrations)
    for (
        acc_id,
        user_id,
        itype,
        iconfig,
        version,
        bumped,
        old_type,
        old_config,
    ) in changed_integrations:
        if not bumped:
            continue
        if itype:
            events.configured(itype, iconfig, user_id, acc_id, version)
        elif old_type:
            events.removed(user_id, acc_id, old_type, old_config)

    for table in (
        "users",
        "account_balance_history",
        "pending_links",
        "legacy_ib_connections",
        "legacy_schwab_settings",
    ):
        # the password hash is never put back: the newest one (changed in the legacy app, or
        # rehashed at a login since) is the one its owner uses
        cols = [c for c in _columns(conn, table) if c not in ("id", "password_hash")]
        sets = ", ".join(f"{c} = r.{c}" for c in cols)
        restored[table] = conn.execute(
            f"""UPDATE {table} t SET {sets}
                  FROM rb_rows x JOIN migration_journal j ON j.id = x.journal_id,
                       jsonb_populate_record(NULL::{table}, j.before) r
                 WHERE x.table_name = '{table}' AND x.op = 'update' AND x.unchanged AND t.id = x.id""",
        ).rowcount
    _restate_earlier_runs(conn, p)
    for table in (
        "pending_links",
        "legacy_ib_connections",
        "legacy_schwab_settings",
        "account_balance_history",
        "accounts",
        "users",
    ):
        deleted[table] = conn.execute(
            f"""DELETE FROM {table} t USING rb_rows x
                 WHERE x.table_name = '{table}' AND x.op = 'insert' AND x.unchanged AND t.id = x.id""",
        ).rowcount

    # What stays keeps its checksums, so a later import does not overwrite it.
    conn.execute(
        """DELETE FROM migration_rows m WHERE m.run_id = %(run)s AND NOT EXISTS (
               SELECT 1 FROM rb_rows x JOIN users u ON x.table_name = 'users' AND u.id = x.id
                WHERE NOT x.unchanged AND m.entity = 'users' AND m.legacy_id = u.legacy_id
               UNION ALL
               SELECT 1 FROM rb_rows x JOIN accounts a ON x.table_name = 'accounts' AND a.id = x.id
                WHERE NOT x.unchanged AND m.entity IN ('accounts', 'integration') AND m.legacy_id = a.legacy_id)""",
        p,
    )
    conn.execute(
        """INSERT INTO migration_rows (entity, legacy_id, checksum, run_id)
           SELECT DISTINCT ON (r.entity, r.legacy_id) r.entity, r.legacy_id, r.checksum, r.run_id
             FROM migration_journal j, jsonb_populate_record(NULL::migration_rows, j.before) r
            WHERE j.run_id = %(run)s AND j.table_name = 'migration_rows' AND j.op = 'update'
            ORDER BY r.entity, r.legacy_id, j.id
           ON CONFLICT (entity, legacy_id) DO NOTHING""",
        p,
    )
    target.write_outbox(events.rows)
    conn.execute("DELETE FROM migration_runs WHERE id = %(run)s", p)
    conn.commit()
    summary["events_withdrawn"] = withdrawn
    summary["events"] = len(events.rows)
    summary["restored"] = restored
    summary["deleted"] = deleted
    return summary


# Columns of accounts that live on after the import (refreshes write them): never restored.
ACCOUNT_LIVE = {
    "current_balance",
    "last_updated",
    "last_refresh_at",
    "last_error",
    "last_error_code",
    "integration_status",
    "integration_status_at",
    "last_connected_at",
    "token_access_expires_at",
    "token_refresh_expires_at",
    "created_at",
    "updated_at",
}


def _restate_earlier_runs(conn: psycopg.Connection[Any], p: dict[str, Any]) -> None:
    """Rows restored to an earlier run's result count as that run left them (their version
    moved on), so rolling that run back later still recognises them as unchanged."""
    for table, digest in STATE_SQL.items():
        conn.execute(
            f"""WITH prev AS (
                    SELECT x.id, (SELECT max(j.run_id) FROM migration_journal j
                                   WHERE j.table_name = '{table}' AND j.op = 'after'
                                     AND j.run_id < %(run)s AND x.id = ANY(j.ids)) AS run_id
                      FROM rb_rows x WHERE x.table_name = '{table}' AND x.op = 'update' AND x.unchanged)
                INSERT INTO migration_journal (run_id, table_name, op, ids, before)
                SELECT prev.run_id, '{table}', 'after', array_agg(t.id ORDER BY t.id),
                       jsonb_build_object('digests', jsonb_agg({digest} ORDER BY t.id))
                  FROM prev JOIN {table} t ON t.id = prev.id
                 WHERE prev.run_id IS NOT NULL GROUP BY prev.run_id""",
            p,
        )
    # history rows restored now carry this transaction's id
    conn.execute(
        """INSERT INTO migration_journal (run_id, table_name, op, before)
           SELECT r.id, 'account_balance_history', 'xid', jsonb_build_object('xid', pg_current_xact_id()::text)
             FROM migration_runs r WHERE r.id < %(run)s
              AND EXISTS (SELECT 1 FROM rb_rows x WHERE x.table_name = 'account_balance_history'
                                                   AND x.op = 'update' AND x.unchanged)""",
        p,
    )


def _plan(conn: psycopg.Connection[Any], p: dict[str, Any]) -> None:
    """`rb_rows`: every row the run wrote (op insert/update, the journal row of a before-image)
    and whether it is unchanged since; then what changed since keeps what it hangs off."""
    conn.execute("DROP TABLE IF EXISTS rb_rows")
    conn.execute(
        """CREATE TEMP TABLE rb_rows (table_name text, id bigint, op text, journal_id bigint,
                                      unchanged boolean DEFAULT true) ON COMMIT DROP"""
    )
    conn.execute(
        """INSERT INTO rb_rows (table_name, id, op)
           SELECT table_name, unnest(ids), 'insert' FROM migration_journal WHERE run_id = %(run)s AND op = 'insert'""",
        p,
    )
    conn.execute(
        """INSERT INTO rb_rows (table_name, id, op, journal_id)
           SELECT DISTINCT ON (table_name, (before->>'id')::bigint) table_name, (before->>'id')::bigint, 'update', id
             FROM migration_journal WHERE run_id = %(run)s AND op = 'update' AND table_name <> 'migration_rows'
            ORDER BY table_name, (before->>'id')::bigint, id""",
        p,
    )
    conn.execute("CREATE INDEX ON rb_rows (table_name, id)")
    conn.execute("ANALYZE rb_rows")
    # users and accounts: compare with the state the run left them in
    for table, digest in STATE_SQL.items():
        conn.execute(
            f"""WITH after AS (
                    SELECT DISTINCT ON (a.id) a.id, a.digest FROM migration_journal j,
                           unnest(j.ids, ARRAY(SELECT jsonb_array_elements_text(j.before->'digests'))) AS a(id, digest)
                     WHERE j.run_id = %(run)s AND j.table_name = '{table}' AND j.op = 'after'
                     ORDER BY a.id, j.id DESC)
                UPDATE rb_rows x SET unchanged = ({digest} = after.digest)
                  FROM {table} t, after WHERE x.table_name = '{table}' AND t.id = x.id AND after.id = x.id""",
            p,
        )
    # history: a row the run wrote still carries the writing transaction's id
    conn.execute(
        """UPDATE rb_rows x SET unchanged = (h.xmin::text IN (
                  SELECT ((before->>'xid')::bigint %% 4294967296)::text FROM migration_journal
                   WHERE run_id = %(run)s AND op = 'xid'))
             FROM account_balance_history h WHERE x.table_name = 'account_balance_history' AND h.id = x.id""",
        p,
    )
    # an account keeps if its history changed or gained rows by hand; a user keeps if any of its
    # accounts stays (changed, or created since)
    conn.execute(
        """UPDATE rb_rows x SET unchanged = false
            WHERE x.table_name = 'accounts' AND x.unchanged AND (
                  EXISTS (SELECT 1 FROM account_balance_history h JOIN rb_rows y
                            ON y.table_name = 'account_balance_history' AND y.id = h.id AND NOT y.unchanged
                           WHERE h.account_id = x.id)
               OR EXISTS (SELECT 1 FROM account_balance_history h
                           WHERE h.account_id = x.id AND h.source = 'MANUAL' AND h.legacy_id IS NULL))"""
    )
    conn.execute(
        """UPDATE rb_rows x SET unchanged = false
            WHERE x.table_name = 'users' AND x.op = 'insert' AND x.unchanged AND EXISTS (
                  SELECT 1 FROM accounts a WHERE a.user_id = x.id AND NOT EXISTS (
                         SELECT 1 FROM rb_rows y WHERE y.table_name = 'accounts' AND y.id = a.id
                                                   AND y.op = 'insert' AND y.unchanged))"""
    )
    # what hangs off a kept account or user stays with it: its history, its pending items
    conn.execute(
        """UPDATE rb_rows x SET unchanged = false
             FROM account_balance_history h, rb_rows y
            WHERE x.table_name = 'account_balance_history' AND x.unchanged AND h.id = x.id
              AND y.table_name = 'accounts' AND y.id = h.account_id AND NOT y.unchanged"""
    )
    conn.execute(
        """UPDATE rb_rows x SET unchanged = false
             FROM pending_links l, rb_rows y
            WHERE x.table_name = 'pending_links' AND x.unchanged AND l.id = x.id
              AND y.table_name = 'users' AND y.id = l.user_id AND NOT y.unchanged"""
    )


class _Events:
    """The outbox rows rollback adds, built as account-api builds them."""

    def __init__(self, publisher: EventPublisher, run_id: int) -> None:
        self.correlation_id = f"{correlation(run_id)}-rollback"
        self.publisher = publisher
        self._configured = EventBatch(publisher, self.correlation_id, datetime.now(UTC))
        self._removed: list[tuple[Any, ...]] = []

    @property
    def rows(self) -> list[tuple[Any, ...]]:
        return [*self._configured.rows, *self._removed]

    def configured(
        self,
        kind: str,
        stored: dict[str, Any],
        user_id: int,
        account_id: int,
        version: int,
    ) -> None:
        self._configured.add(kind, stored, user_id, account_id, version)

    def removed(
        self,
        user_id: int,
        account_id: int,
        kind: str,
        stored: dict[str, Any] | None,
        *,
        owner_deleted: bool = False,
    ) -> None:
        config = None
        if stored:
            try:
                config = bus_connection(kind, stored)
            except (
                Exception
            ):  # a config that no longer validates: the removal still goes out
                config = None
        row = outbox_row(
            self.publisher,
            IntegrationRemoved(
                user_id=user_id,
                account_id=account_id,
                correlation_id=self.correlation_id,
                payload={
                    "broker": kind,
                    "config": config,
                    "owner_deleted": owner_deleted,
                },
            ),
        )
        self._removed.append(row)
