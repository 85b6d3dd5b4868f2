"""`brokerlink-migrate`: import a legacy tracker database into account-api's PostgreSQL.

    brokerlink-migrate --source investment_tracker.db [--dry-run | --rollback] [--report PATH]

Target: DATABASE_URL (account-api's database; its migrations are applied first). Secrets are
encrypted with BROKERLINK_ENCRYPTION_KEYS; outbox subjects use BROKERLINK_NAMESPACE.
Exit codes: 0 done (or nothing to do), 1 verification failed or the run broke off (rerun to
resume), 2 bad input (nothing written)."""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, tzinfo
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import orjson
import psycopg
from brokerlink_shared.crypto import EncryptionKeyError, SecretBox
from brokerlink_shared.heap import collect_less_often

from migrator.report import JSON_OPTIONS, Progress, Report
from migrator.source import Source, SourceError

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2


class BadInput(Exception):
    pass


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="brokerlink-migrate",
        description="Import a legacy investment-tracker database into brokerlink (account-api's PostgreSQL, from DATABASE_URL).",
    )
    p.add_argument(
        "--source",
        help="legacy database: a SQLite file path or a SQLAlchemy URL (opened read-only)",
    )
    mode = p.add_mutually_exclusive_group()
    mode.add_argument(
        "--dry-run",
        action="store_true",
        help="plan, write and verify inside one transaction, then roll it back",
    )
    mode.add_argument(
        "--rollback",
        action="store_true",
        help="restore the state before the last apply",
    )
    mode.add_argument(
        "--schema-downgrade",
        metavar="REVISION",
        help="take account-api's schema back to REVISION (0003: the previous release's), "
        "after --rollback; the next import applies the migrations again",
    )
    p.add_argument("--report", type=Path, help="write the JSON report here")
    p.add_argument(
        "--stack",
        type=Path,
        metavar="DIR",
        help="import into the running `make run` stack whose data is in DIR (its database, "
        "bus and keys, unless DATABASE_URL / NATS_URL / BROKERLINK_ENCRYPTION_KEYS say otherwise)",
    )
    p.add_argument(
        "--batch-users",
        type=int,
        default=5000,
        help="users per transaction (default 5000)",
    )
    p.add_argument(
        "--batch-history",
        type=int,
        default=100_000,
        help="history rows per transaction (default 100000)",
    )
    p.add_argument(
        "--legacy-timezone",
        type=_zone,
        default=UTC,
        metavar="ZONE",
        help="the legacy server's time zone (e.g. Asia/Hong_Kong): the legacy app wrote "
        "updated_at / last_updated in local time without a zone (default UTC)",
    )
    p.add_argument(
        "--no-schwab-check",
        action="store_true",
        help="do not ask schwab-connector (on NATS_URL) which accounts the legacy Schwab "
        "logins see: every user-level Schwab setting becomes a pending link",
    )
    p.add_argument("--quiet", action="store_true", help="no progress output")
    return p


def _zone(name: str) -> tzinfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise argparse.ArgumentTypeError(f"unknown time zone {name[:40]!r}") from None


def _redact(url: str) -> str:
    head, sep, tail = url.partition("@")
    if not sep or "://" not in head:
        return url
    scheme, _, cred = head.partition("://")
    user = cred.split(":", 1)[0]
    return f"{scheme}://{user}:***@{tail}" if ":" in cred else url


def _say(text: str) -> None:
    """The run's outcome, on stdout (progress and problems go to stderr)."""
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _publisher(namespace: str) -> Any:
    from brokerlink_shared.messaging import EventPublisher
    from brokerlink_shared.subjects import Topology
    from faststream.nats import NatsBroker

    return EventPublisher(
        NatsBroker(), Topology(namespace)
    )  # only `encode` is used: nothing connects


def main(argv: list[str] | None = None) -> None:
    collect_less_often()
    sys.exit(run_cli(argv))


def run_cli(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.stack is not None:
            from migrator.stack import StackNotFound, stack_env

            try:
                os.environ.update(stack_env(args.stack, dict(os.environ)))
            except StackNotFound as exc:
                raise BadInput(str(exc)) from None
        return _run(args)
    except BadInput as exc:
        sys.stderr.write(f"brokerlink-migrate: {exc}\n")
        return EXIT_BAD_INPUT


def _target_url() -> str:
    url = os.environ.get("DATABASE_URL", "").strip()
    if not url:
        raise BadInput(
            "DATABASE_URL is not set: it names account-api's PostgreSQL database (the target)"
        )
    return url


def _connect(url: str) -> psycopg.Connection[Any]:
    from migrator.target import connect

    try:
        return connect(url)
    except (psycopg.Error, ValueError) as exc:
        raise BadInput(f"target database unreachable: {_one_line(exc)}") from None


def _run(args: argparse.Namespace) -> int:
    progress = Progress(quiet=args.quiet)
    namespace = os.environ.get("BROKERLINK_NAMESPACE", "brokerlink")
    if args.schema_downgrade:
        return _schema_downgrade(_target_url(), args.schema_downgrade, progress)
    if args.rollback:
        url = _target_url()
        conn = _connect(url)
        with conn:
            return _rollback(conn, url, namespace, args, progress)
    if not args.source:
        raise BadInput(
            "--source is required (a legacy SQLite file or a SQLAlchemy URL)"
        )
    try:
        source = Source(args.source)
    except SourceError as exc:
        raise BadInput(str(exc)) from None
    try:
        try:
            box = SecretBox.from_setting(
                os.environ.get("BROKERLINK_ENCRYPTION_KEYS", "")
            )
        except EncryptionKeyError as exc:
            raise BadInput(str(exc)) from None
        url = _target_url()
        _connect(url).close()
        report = Report(
            mode="dry-run" if args.dry_run else "apply",
            source=args.source,
            target=_redact(url),
        )
        if args.dry_run:
            return _dry_run(source, url, box, namespace, report, progress, args)
        return _apply(source, url, box, namespace, report, progress, args)
    finally:
        source.close()


def _rollback(
    conn: psycopg.Connection[Any],
    url: str,
    namespace: str,
    args: argparse.Namespace,
    progress: Progress,
) -> int:
    from migrator.rollback import rollback
    from migrator.target import Target

    if not _schema_has_journal(conn):
        progress.line("nothing to roll back: the target has no migration journal")
        return EXIT_OK
    target = Target(conn)
    if not target.lock():
        sys.stderr.write(
            "brokerlink-migrate: another brokerlink-migrate is running against this database\n"
        )
        return EXIT_FAILED
    try:
        summary = rollback(target, _publisher(namespace))
    finally:
        target.unlock()
    _write_report(args.report, {"mode": "rollback", "target": _redact(url), **summary})
    if summary["rolled_back"] is None:
        _say(summary["message"])
    else:
        _say(
            f"rolled back run {summary['rolled_back']}: deleted "
            + ", ".join(f"{n} {t}" for t, n in summary["deleted"].items() if n)
            + "; restored "
            + (
                ", ".join(f"{n} {t}" for t, n in summary["restored"].items() if n)
                or "nothing"
            )
        )
        kept = {
            t: k for t, k in summary["kept_changed_since_import"].items() if k["count"]
        }
        if kept:
            _say(
                "kept (changed since the import): "
                + "; ".join(
                    f"{k['count']} {t} (ids {', '.join(map(str, k['ids'][:20]))}"
                    + ("…)" if k["count"] > 20 else ")")
                    for t, k in kept.items()
                )
            )
    return EXIT_OK


def _schema_downgrade(url: str, revision: str, progress: Progress) -> int:
    from account_api.migrator_facade import downgrade
    from alembic.util import CommandError

    _connect(url).close()
    try:
        downgrade(url, revision)
    except CommandError:
        raise BadInput(
            "--schema-downgrade: no such revision below the database's current one"
        ) from None
    except Exception as exc:
        sys.stderr.write(
            f"brokerlink-migrate: the schema downgrade failed: {_one_line(exc)}\n"
        )
        return EXIT_FAILED
    progress.line(f"schema at revision {revision}")
    return EXIT_OK


def _schema_has_journal(conn: psycopg.Connection[Any]) -> bool:
    row = conn.execute("SELECT to_regclass('migration_runs') IS NOT NULL").fetchone()
    conn.rollback()
    return bool(row and row[0])


def _apply(
    source: Source,
    url: str,
    box: SecretBox,
    namespace: str,
    report: Report,
    progress: Progress,
    args: argparse.Namespace,
) -> int:
    from account_api.migrator_facade import upgrade

    from migrator.target import Target

    try:
        upgrade(url)
    except Exception as exc:
        sys.stderr.write(
            f"brokerlink-migrate: applying account-api's migrations failed: {_one_line(exc)}\n"
        )
        return EXIT_FAILED
    conn = _connect(url)
    with conn:
        target = Target(conn)
        if not target.lock():
            sys.stderr.write(
                "brokerlink-migrate: another brokerlink-migrate is running against this database\n"
            )
            return EXIT_FAILED
        try:
            return _execute(source, target, box, namespace, report, progress, args, url)
        finally:
            target.unlock()


def _dry_run(
    source: Source,
    url: str,
    box: SecretBox,
    namespace: str,
    report: Report,
    progress: Progress,
    args: argparse.Namespace,
) -> int:
    from sqlalchemy import create_engine, pool

    from migrator.target import Target

    engine = create_engine(
        url
        if "+" in url.split("://")[0]
        else url.replace("postgresql://", "postgresql+psycopg://", 1),
        poolclass=pool.NullPool,
    )
    try:
        with engine.connect() as sa_conn:
            tx = sa_conn.begin()
            try:
                applied = _migrate_in_transaction(sa_conn)
                if applied:
                    report.notes.append(
                        f"dry run: account-api migrations {', '.join(applied)} applied inside the rolled-back transaction"
                    )
                conn = sa_conn.connection.driver_connection
                if not isinstance(conn, psycopg.Connection):  # the +psycopg URL above
                    raise RuntimeError("the dry run needs a psycopg connection")
                target = Target(conn, dry_run=True)
                return _execute(
                    source, target, box, namespace, report, progress, args, url
                )
            finally:
                tx.rollback()
    finally:
        engine.dispose()


def _migrate_in_transaction(sa_conn: Any) -> list[str]:
    """Run account-api's pending Alembic revisions on this connection, inside its transaction."""
    from account_api.migrator_facade import alembic_config
    from alembic.operations import Operations
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(alembic_config())
    context = MigrationContext.configure(sa_conn)
    current = context.get_current_revision()
    head = script.get_current_head()
    if current == head:
        return []
    revisions = list(reversed(list(script.iterate_revisions(head, current or "base"))))
    with Operations.context(context):
        for rev in revisions:
            rev.module.upgrade()
    return [r.revision for r in revisions]


def _journal_counts(target: Any) -> dict[str, tuple[int, int]]:
    rows = target.conn.execute(
        """SELECT table_name,
                  coalesce(sum(cardinality(ids)) FILTER (WHERE op = 'insert'), 0),
                  count(DISTINCT before->>'id') FILTER (WHERE op = 'update')
             FROM migration_journal WHERE run_id = %s GROUP BY table_name""",
        (target.run_id,),
    ).fetchall()
    return {r[0]: (int(r[1]), int(r[2])) for r in rows}


def _execute(
    source: Source,
    target: Any,
    box: SecretBox,
    namespace: str,
    report: Report,
    progress: Progress,
    args: argparse.Namespace,
    url: str,
) -> int:
    target.prepare()
    nats_url = None if args.no_schwab_check else os.environ.get("NATS_URL", "").strip()
    asks_schwab = bool(nats_url) and source.count("schwab_settings") > 0
    fingerprint = _run_fingerprint(source, args.legacy_timezone)
    if not target.dry_run and source.path is not None and not asks_schwab:
        # The same file (size and modification time), read by the same code with the same
        # options, into a target nobody changed since that run was verified: nothing can
        # differ, and the earlier verification still holds. Anything else takes the full path.
        # (With a bus to ask, schwab-connector's answers may have changed: full path.)
        prior = target.verified_unchanged(fingerprint)
        if prior is not None:
            return _unchanged(target, report, prior, args)
    # Imported only now: a rerun with nothing to change (above) needs none of it, and the event
    # contracts, the bus client and the ORM they bring were most of that rerun's time.
    from migrator.run import Migration
    from migrator.target import STATE_TABLES, target_state
    from migrator.verify import TABLES, verify

    run_id, _progress, resumed = target.open_run(source.location, source.fingerprint())
    report.run_id, report.resumed = run_id, resumed
    if resumed:
        progress.line(f"resuming interrupted run {run_id}")
    migration = Migration(
        source,
        target,
        box,
        _publisher(namespace),
        report,
        progress,
        batch_users=max(1, args.batch_users),
        batch_history=max(1, args.batch_history),
        nats_url=nats_url,
        namespace=namespace,
        local=args.legacy_timezone,
    )
    # Everything the import writes is committed batch by batch (unless this is a dry run): once
    # the users phase is over, a second connection verifies users, accounts and the legacy
    # copies while this one imports the balance history, and takes the target's state of the
    # tables the history does not write; then that of the history, while this one verifies it.
    # (A state taken early can only differ from the end's by someone's change in between,
    # which makes the next rerun take the full path: never the quick one wrongly.)
    with (
        contextlib.ExitStack() as stack,  # closed last: after the pool's work on `side` ended
        ThreadPoolExecutor(max_workers=1, thread_name_prefix="verify-side") as pool,
    ):
        side: psycopg.Connection[Any] | None = None
        others: Future[dict[str, Any]] | None = None
        state_before: Future[dict[str, list[int]]] | None = None

        def verify_others() -> None:
            nonlocal side, others, state_before
            if target.dry_run:
                return
            side = stack.enter_context(_connect(url))
            twin = stack.enter_context(contextlib.closing(source.twin()))
            others = pool.submit(
                verify,
                twin,
                side,
                box,
                run_id,
                migration.expected_integrations,
                migration.skipped,
                tables=[t for t in TABLES if t != "account_balance_history"],
                rows_source=migration.rows_source,
            )
            state_before = pool.submit(
                target_state,
                side,
                [t for t in STATE_TABLES if t != "account_balance_history"],
            )

        migration.run(after_users=verify_others)

        counts = _journal_counts(target)
        names = {
            "users": "users",
            "accounts": "accounts",
            "account_balance_history": "account_balance_history",
            "legacy_ib_connections": "ib_connections",
            "legacy_schwab_settings": "schwab_settings",
        }
        for table, name in names.items():
            inserted, updated = counts.get(table, (0, 0))
            stats = report.tables[name]
            stats.inserted, stats.updated = inserted, updated
            if not stats.outcomes:
                stats.unchanged = max(
                    0, stats.read - sum(stats.skipped.values()) - inserted - updated
                )
        pending_new = sum(counts.get("pending_links", (0, 0)))
        changed = target.run_changed_anything()

        progress.line("verifying")
        state = (
            pool.submit(target_state, side, ["account_balance_history"])
            if side is not None
            else None
        )
        results = verify(
            source,
            target.conn,
            box,
            run_id,
            migration.expected_integrations,
            migration.skipped,
            migration.history_digests,
            tables=TABLES if others is None else ["account_balance_history"],
            rows_source=migration.rows_source,
        )
        if others is not None:
            results |= others.result()
        results = {t: results[t] for t in TABLES}
        ok = all(r["ok"] for r in results.values())
        target_after = (
            state_before.result() | state.result()
            if ok and state is not None and state_before is not None
            else None
        )
    report.checksums = {
        name: {k: r[k] for k in ("rows", "source_checksum", "target_checksum")}
        for name, r in results.items()
    }
    report.verification = {"ok": ok, "tables": results}
    verified: dict[str, Any] = {}
    if target_after is not None:
        verified = {"verified_fingerprint": fingerprint, "target_state": target_after}
    if not changed and not resumed:
        target.drop_run()
        report.run_id = None
        if verified:
            target.mark_verified(
                fingerprint,
                {
                    **verified,
                    "verification": report.as_dict()["verification"],
                    "checksums": report.checksums,
                },
            )
    else:
        target.finish_run(
            "applied" if ok else "failed",
            {
                k: v
                for k, v in report.as_dict().items()
                if k
                in ("tables", "integrations", "events", "verification", "checksums")
            }
            | {"ok": ok}
            | verified,
        )
    target.commit()
    _write_report(args.report, report.as_dict())

    verb = "would change" if target.dry_run else "changed"
    if not changed and not resumed:
        _say(
            "nothing to change: the target already holds everything from this source"
            + (" (dry run)" if target.dry_run else "")
        )
    else:
        parts = [
            f"{name} +{report.tables[name].inserted}/~{report.tables[name].updated}"
            for name in names.values()
        ]
        _say(
            f"{'dry run' if target.dry_run else f'run {run_id}'}: {verb} {', '.join(parts)}; "
            f"{report.events} integration events, {pending_new} pending links written, {len(report.conflicts)} conflicts"
        )
    if not ok:
        for name, r in results.items():
            if not r["ok"]:
                sys.stderr.write(
                    f"brokerlink-migrate: verification failed for {name}: {r['missing']} missing "
                    f"(legacy ids {r['missing_legacy_ids']}), {r['mismatched']} differing (legacy ids {r['mismatched_legacy_ids']})\n"
                )
        return EXIT_FAILED
    drift = {n: r["drifted"] for n, r in results.items() if r["drifted"]}
    if drift:
        progress.line(
            f"note: rows changed in the target since an earlier migration (kept): {drift}"
        )
    return EXIT_OK


def _run_fingerprint(source: Source, zone: tzinfo) -> str:
    """What decides a run's outcome besides the target: the source's content (its
    fingerprint), this migrator's code, and the options that change the plan."""
    code = hashlib.sha256()
    for module in sorted(Path(__file__).parent.glob("*.py")):
        code.update(module.read_bytes())
    parts = (source.fingerprint(), code.hexdigest(), str(zone))
    return hashlib.sha256("|".join(parts).encode()).hexdigest()


def _unchanged(
    target: Any,
    report: Report,
    prior: tuple[int, dict[str, Any]],
    args: argparse.Namespace,
) -> int:
    """The rerun of an unchanged source into an unchanged target: nothing to write, and the
    verification of the run that left the target in this state stands (named in the report)."""
    run_id, stored = prior
    target.commit()
    report.run_id = None
    report.checksums = stored.get("checksums", {})
    report.verification = {
        **stored.get("verification", {}),
        "unchanged_since_run": run_id,
    }
    report.notes.append(
        f"source unchanged since run {run_id} and the target unchanged since it was verified: "
        "nothing read row by row, that verification stands"
    )
    _write_report(args.report, report.as_dict())
    _say(
        "nothing to change: the target already holds everything from this source "
        f"(source and target unchanged since run {run_id} was verified)"
    )
    return EXIT_OK


def _write_report(path: Path | None, data: dict[str, Any]) -> None:
    if path is None:
        return
    with contextlib.suppress(FileNotFoundError):
        path.parent.mkdir(parents=True, exist_ok=True)
    # orjson: a full-size report (50,000 pending links: ~22 MB) took the stdlib's streaming
    # encoder 0.8 s at the end of the run; as bytes it is written in ~0.1 s, and the run's
    # peak memory is elsewhere (while the history imports).
    path.write_bytes(
        orjson.dumps(data, default=str, option=orjson.OPT_INDENT_2 | JSON_OPTIONS)
    )


if __name__ == "__main__":
    main()
