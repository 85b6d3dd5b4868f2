"""`--rollback`: restore the state before the last apply, in one transaction.

The last run (applied, failed or interrupted) is undone from its journal: updated rows get their
before-images back, inserted rows are deleted (children first), its checksums are restored,
its outbox events are withdrawn, and the run's own journal rows go too, so the tables are as
they were. Events the relay had already published cannot be withdrawn: for accounts the run
created, an `integration.removed` goes out instead so connectors forget them."""

from __future__ import annotations

from typing import Any

import orjson
import psycopg
from account_api.outbox.repository import OutboxRepository
from brokerlink_shared.contracts.events import IntegrationRemoved
from brokerlink_shared.messaging import EventPublisher

from migrator.target import JOURNALLED, Target, correlation


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
    params = {"run": run_id}
    summary: dict[str, Any] = {
        "rolled_back": run_id,
        "status_was": status,
        "source": source,
        "started_at": str(started),
    }

    created_accounts = {
        r[0]
        for r in conn.execute(
            "SELECT unnest(ids) FROM migration_journal WHERE run_id = %(run)s AND table_name = 'accounts' AND op = 'insert'",
            params,
        ).fetchall()
    }
    withdrawn = conn.execute(
        "DELETE FROM outbox WHERE correlation_id = %s RETURNING published_at, body",
        (correlation(run_id),),
    ).fetchall()
    staged: list[Any] = []

    class _Session:
        def add(self, obj: Any) -> None:
            staged.append(obj)

    outbox = OutboxRepository(_Session(), publisher)  # type: ignore[arg-type]
    for published_at, body in withdrawn:
        event = orjson.loads(body)
        if published_at is not None and event.get("account_id") in created_accounts:
            payload = event["payload"]
            outbox.add(
                IntegrationRemoved(
                    user_id=event.get("user_id"),
                    account_id=event["account_id"],
                    correlation_id=f"{correlation(run_id)}-rollback",
                    payload={
                        "broker": payload["broker"],
                        "config": payload["config"],
                        "version": int(payload.get("version") or 0) + 1,
                    },
                )
            )
    summary["events_withdrawn"] = len(withdrawn) - len(staged)
    summary["removal_events"] = len(staged)

    restored: dict[str, int] = {}
    for table in reversed(JOURNALLED):  # parents first
        cols = [c for c in _columns(conn, table) if c != "id"]
        sets = ", ".join(f"{c} = r.{c}" for c in cols)
        restored[table] = conn.execute(
            f"""UPDATE {table} t SET {sets}
                  FROM (SELECT DISTINCT ON ((j.before->>'id')::bigint) r.*
                          FROM migration_journal j, jsonb_populate_record(NULL::{table}, j.before) r
                         WHERE j.run_id = %(run)s AND j.table_name = '{table}' AND j.op = 'update'
                         ORDER BY (j.before->>'id')::bigint, j.id) r
                 WHERE t.id = r.id""",
            params,
        ).rowcount
    deleted: dict[str, int] = {}
    for table in JOURNALLED:  # children first
        deleted[table] = conn.execute(
            f"""DELETE FROM {table} WHERE id IN (
                  SELECT unnest(ids) FROM migration_journal
                   WHERE run_id = %(run)s AND table_name = '{table}' AND op = 'insert')""",
            params,
        ).rowcount
    conn.execute("DELETE FROM migration_rows WHERE run_id = %(run)s", params)
    conn.execute(
        """INSERT INTO migration_rows (entity, legacy_id, checksum, run_id)
           SELECT DISTINCT ON (r.entity, r.legacy_id) r.entity, r.legacy_id, r.checksum, r.run_id
             FROM migration_journal j, jsonb_populate_record(NULL::migration_rows, j.before) r
            WHERE j.run_id = %(run)s AND j.table_name = 'migration_rows' AND j.op = 'update'
            ORDER BY r.entity, r.legacy_id, j.id""",
        params,
    )
    if staged:
        target.write_outbox(staged)
    conn.execute("DELETE FROM migration_runs WHERE id = %(run)s", params)
    conn.commit()
    summary["restored"] = restored
    summary["deleted"] = deleted
    return summary
