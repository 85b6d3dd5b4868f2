"""An apply (or dry run): users with their accounts and integrations in batches of users, then
balance history in batches of rows; each batch is one transaction with its journal entries,
its outbox events and its progress, so a crash loses at most the batch in flight."""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime, tzinfo
from typing import Any

from brokerlink_shared.crypto import SecretBox
from brokerlink_shared.messaging import EventPublisher

from migrator import convert as cv
from migrator import plan as pl
from migrator.digests import chunk_of
from migrator.events import EventBatch
from migrator.history import HistoryPiece, HistoryProcess
from migrator.planner import PlannerProcess, grouped
from migrator.report import Progress, Report
from migrator.sealed import SealedUser, config_json, seal
from migrator.source import Source
from migrator.target import Target, correlation
from migrator.verify import ROW_DIGESTS, RowDigests, history_chunks

CRASH_ENV = "BROKERLINK_MIGRATE_CRASH_AFTER_BATCHES"  # test hook: os._exit(137) after N committed batches


TABLES = ("users", "accounts", "ib_connections", "schwab_settings")


class Migration:
    def __init__(
        self,
        source: Source,
        target: Target,
        box: SecretBox,
        publisher: EventPublisher,
        report: Report,
        progress: Progress,
        *,
        batch_users: int = 5000,
        batch_history: int = 100_000,
        nats_url: str | None = None,
        namespace: str = "brokerlink",
        local: tzinfo = UTC,
    ) -> None:
        self.source = source
        self.target = target
        self.box = box
        self.publisher = publisher
        self.report = report
        self.progress = progress
        self.batch_users = batch_users
        self.batch_history = batch_history
        self.nats_url = nats_url
        self.local = local
        self.namespace = namespace
        self.now = datetime.now(UTC)
        self.expected_integrations: dict[
            int, str
        ] = {}  # account legacy id -> type, for verification
        # legacy ids that were not imported; a non-integer id is kept as (the start of) its text
        self.skipped: dict[str, set[int | str]] = defaultdict(set)
        self.schwab_seen: pl.SchwabSeen = {}
        # the source side of history's verification: per chunk of legacy ids
        self.history_digests: dict[int, tuple[int, str]] = {}
        # the source side of the users', accounts' and legacy copies' verification, taken
        # while planning
        self.rows_source = {table: RowDigests() for table in ROW_DIGESTS} | {
            "accounts": RowDigests(width=16)
        }
        self._batches = 0
        self._crash_after = int(os.environ.get(CRASH_ENV, "0") or 0)

    # ---- driver ----------------------------------------------------------------------------

    def run(self, after_users: Callable[[], None] | None = None) -> None:
        """Users with their accounts and integrations, then `after_users()` (everything so far
        is committed), then balance history."""
        src, rep = self.source, self.report
        # Reading and planning run in a process of their own (started first: its interpreter
        # starts while this one counts and asks schwab-connector); this process writes batch N
        # while that one plans batch N+1, with one writer thread, which alone uses the
        # connection during this phase (as for history).
        planner = PlannerProcess(src, self.box, self.batch_users, self.now, self.local)
        try:
            totals = {
                t: src.count(t)
                for t in (
                    "users",
                    "accounts",
                    "account_balance_history",
                    "ib_connections",
                    "schwab_settings",
                )
            }
            for table, n in totals.items():
                rep.tables[table].read = n
            users_total = totals["users"]
            self._ask_schwab()
            with ThreadPoolExecutor(
                max_workers=1, thread_name_prefix="users"
            ) as writer:
                pending: Future[None] | None = None
                done = 0
                batch: list[SealedUser] = []

                def submit() -> None:
                    nonlocal pending, done, batch
                    done += len(batch)
                    if pending is not None:
                        pending.result()
                    pending = writer.submit(self._user_batch, batch, done, users_total)
                    batch = []

                for piece in planner.pieces(self.schwab_seen):
                    for table, legacy_id, reason in piece.bad:
                        self._bad_row(table, legacy_id, reason)
                    for table, taken in piece.rows_source.items():
                        self.rows_source[table].extend(taken)
                    batch.extend(piece.sealed)
                    if len(batch) >= self.batch_users:
                        submit()
                if batch:
                    submit()
                if pending is not None:
                    pending.result()
        finally:
            planner.close()
        self.progress.step("users and accounts", users_total, users_total)
        # Started now, once the planning process has ended (the two never hold their memory
        # at the same time); its interpreter starts while `after_users` runs.
        history = HistoryProcess(src, self.batch_history)
        try:
            if after_users is not None:
                after_users()
            self._history(history, totals["account_balance_history"])
        finally:
            history.close()

    def _ask_schwab(self) -> None:
        """Ask schwab-connector which accounts each legacy Schwab login sees (see schwab_probe)."""
        if not self.nats_url or not self.source.has("schwab_settings"):
            if self.source.count("schwab_settings"):
                self.report.notes.append(
                    "Schwab logins not verified: no bus to ask schwab-connector on (NATS_URL unset)"
                )
            return
        from migrator.schwab_probe import ask_all

        self.progress.line(
            "asking schwab-connector which accounts the legacy Schwab logins see"
        )
        self.schwab_seen, summary = ask_all(
            self.source.select("schwab_settings", pl.SCHWAB_COLS, "ORDER BY id"),
            self.box,
            self.nats_url,
            self.namespace,
        )
        self.report.notes.append(summary)
        self.progress.line(summary)

    def _bad_row(self, table: str, legacy_id: Any, reason: str) -> None:
        """A row that cannot be placed at all: quarantined in the report (there is no user to
        show it to), never imported, never a reason to stop."""
        shown = cv.legacy_id(legacy_id)
        key: int | str = shown if shown is not None else str(legacy_id)[:40]
        self.report.skip(table, key, reason)
        self.skipped[table].add(key)
        if table in ("ib_connections", "schwab_settings"):
            self.report.tables[table].outcomes["quarantined"] += 1

    def _committed(self, progress: dict[str, Any]) -> None:
        self.target.set_progress(progress)
        self.target.commit()
        self._batches += 1
        if self._crash_after and self._batches >= self._crash_after:
            os._exit(137)

    # ---- users, accounts, integrations -----------------------------------------------------

    def _user_batch(
        self,
        sealed: list[SealedUser],
        done: int,
        total: int,
    ) -> None:
        """Write one sealed batch in one transaction (writer thread: it alone uses the
        connection while the users phase runs)."""
        target, rep = self.target, self.report
        owners = target.email_owners([s[1] for s in sealed if s[1]])
        if owners:
            sealed = [self._recheck(s, owners) for s in sealed]

        users = [s[2] for s in sealed if s[2] is not None]
        accounts = [a for s in sealed for a in s[3]]
        pending = [x for s in sealed for x in s[4]]
        copies = [c for s in sealed for c in s[5]]
        for s in sealed:
            for table, legacy_id, reason in s[6]:
                rep.skip(table, legacy_id, reason)
                self.skipped[table].add(legacy_id)
            for conflict in s[7]:
                rep.conflict(conflict)

        sums = {
            "users": target.checksums("users", [u[0] for u in users]),
            "accounts": target.checksums("accounts", [a[0] for a in accounts]),
            "integration": target.checksums(
                "integration", [a[0] for a in accounts if a[4] is not None]
            ),
            **{
                table: target.checksums(table, [c[1] for c in copies if c[0] == table])
                for table in ("ib_connections", "schwab_settings")
            },
            **{
                f"pending:{table}": target.checksums(
                    f"pending:{table}", [x[1] for x in pending if x[0] == table]
                )
                for table in ("ib_connections", "schwab_settings", "accounts")
            },
        }
        marks: list[tuple[str, int, str]] = []

        # users
        known = sums["users"]
        rows: list[tuple[Any, ...]] = []
        for legacy_id, digest, row in users:
            if known.get(legacy_id) == digest:
                continue
            marks.append(("users", legacy_id, digest))
            rows.append(row)
        target.write_users(rows)
        user_ids = target.id_map("users", [u[0] for u in users])
        target.journal_state("users", [user_ids[r[6]] for r in rows])

        # accounts with their integrations
        rows, stored_of = [], {}
        known, known_int = sums["accounts"], sums["integration"]
        for (
            legacy_id,
            user_legacy,
            d_acc,
            d_int,
            kind,
            origin,
            stored,
            head,
            tail,
        ) in accounts:
            if kind is not None:
                self.expected_integrations[legacy_id] = kind
                rep.integrations[f"{kind} from {origin.split('#')[0]}"] += 1
            w_acc = known.get(legacy_id) != d_acc
            w_int = kind is not None and known_int.get(legacy_id) != d_int
            if not (w_acc or w_int):
                continue
            if w_acc:
                marks.append(("accounts", legacy_id, d_acc))
            config = None
            if w_int:
                marks.append(("integration", legacy_id, d_int))
                stored_of[legacy_id] = (kind, stored)
                config = config_json(stored)
            rows.append(
                (
                    legacy_id,
                    user_ids.get(user_legacy),
                    *head,
                    w_acc,
                    w_int,
                    kind,
                    config,
                    *tail,
                )
            )
        updated, inserted = target.write_accounts(rows)
        target.journal_state("accounts", [r[1] for r in [*updated, *inserted]])
        staged = EventBatch(
            self.publisher, correlation(target.run_id), datetime.now(UTC)
        )
        for legacy_id, account_id, user_id, version in [*updated, *inserted]:
            if legacy_id not in stored_of:
                continue
            kind, stored = stored_of[legacy_id]
            staged.add(kind, stored, user_id, account_id, version)
        # The ids of the accounts just written came back with them; only the others are
        # looked up (none in a first import).
        account_ids = {r[0]: r[1] for r in [*updated, *inserted]}
        account_ids |= target.id_map(
            "accounts", [a[0] for a in accounts if a[0] not in account_ids]
        )

        # pending links (whatever could not be linked with certainty)
        rows = []
        for (
            legacy_table,
            legacy_id,
            user_legacy,
            kind,
            how,
            reason,
            suggested,
            confirmed,
            digest,
            config,
        ) in pending:
            entity = f"pending:{legacy_table}"
            suggestions = [account_ids[s] for s in suggested if s in account_ids]
            verified = [account_ids[s] for s in confirmed if s in account_ids]
            rep.pending(
                {
                    "legacy_table": legacy_table,
                    "legacy_id": legacy_id,
                    "user_legacy_id": user_legacy,
                    "user_id": user_ids.get(user_legacy),
                    "type": kind,
                    "kind": how,
                    "reason": reason,
                    "suggested_account_ids": suggestions,
                    "suggested_account_legacy_ids": suggested,
                    "verified_account_ids": verified,
                }
            )
            if sums[entity].get(legacy_id) == digest or user_legacy not in user_ids:
                continue
            marks.append((entity, legacy_id, digest))
            rows.append(
                (
                    user_ids[user_legacy],
                    kind,
                    config,
                    reason,
                    suggestions,
                    legacy_table,
                    legacy_id,
                    how,
                    verified,
                )
            )
        target.write_pending(rows)

        # copies of the legacy integration tables
        ib_rows, schwab_rows = [], []
        for (
            table,
            legacy_id,
            digest,
            outcome,
            user_legacy,
            target_legacy,
            row,
        ) in copies:
            rep.tables[table].outcomes[outcome] += 1
            if sums[table].get(legacy_id) == digest:
                continue
            marks.append((table, legacy_id, digest))
            user_id = user_ids.get(user_legacy) if user_legacy is not None else None
            if table == "ib_connections":
                account_id = (
                    account_ids.get(target_legacy)
                    if target_legacy is not None
                    else None
                )
                ib_rows.append((*row[:2], user_id, *row[3:8], account_id, *row[9:]))
            else:
                schwab_rows.append((*row[:2], user_id, *row[3:]))
        target.write_legacy_ib(ib_rows)
        target.write_legacy_schwab(schwab_rows)
        target.write_outbox(staged.rows)
        rep.events += len(staged)
        target.write_rows(marks)
        self._committed({"phase": "users", "last_user_legacy_id": sealed[-1][0]})
        if done < total:
            self.progress.step("users and accounts", done, total)

    def _recheck(
        self, sealed: SealedUser, owners: dict[str, tuple[int, int | None]]
    ) -> SealedUser:
        """A user whose email someone else holds in the target already is skipped, with
        everything hanging off it: its rows are read again and planned here (it is rare)."""
        uid, lower = sealed[0], sealed[1]
        owner = owners.get(lower) if lower else None
        if owner is None or owner[1] == uid:
            return sealed
        for group in grouped(self.source, lambda *_: None, after_user=uid - 1):
            if group[0] == uid:
                _uid, user, accounts, ibs, schwabs = group
                break
            if group[0] > uid:
                raise RuntimeError("a planned user is missing from the source")
        else:
            raise RuntimeError("a planned user is missing from the source")
        plan = pl.plan_user(
            user,
            accounts,
            ibs,
            schwabs,
            self.now,
            user_skip_reason=f"email already registered in the target (user #{owner[0]})",
        )
        return seal(uid, None, plan, self.box)

    # ---- balance history -------------------------------------------------------------------

    def _history(self, history: HistoryProcess, total: int) -> None:
        """The history process reads and converts batch N+1 (COPY text, and the source side
        of the history's verification) while the writer thread loads batch N: the writer
        alone uses the connection during this phase (psycopg releases the GIL while
        PostgreSQL works)."""
        rep = self.report
        left_out: set[int] = set()

        def flush(piece: HistoryPiece) -> None:
            for legacy_id, reason in piece.invalid:
                rep.skip("account_balance_history", legacy_id, reason)
                self.skipped["account_balance_history"].add(legacy_id)
            if not piece.text:
                return
            _updated, _inserted, skipped = self.target.write_history(piece.text)
            for legacy_id, reason in skipped:
                rep.skip("account_balance_history", legacy_id, reason)
                self.skipped["account_balance_history"].add(legacy_id)
                left_out.add(legacy_id)
            self._committed(
                {"phase": "history", "last_history_legacy_id": piece.last_legacy_id}
            )

        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="history") as writer:
            pending: Future[None] | None = None
            for piece in history.batches():
                if pending is not None:
                    pending.result()
                pending = writer.submit(flush, piece)
                self.progress.step("balance history", piece.read, total)
            if pending is not None:
                pending.result()
        # The digests cover every converted row; a chunk with rows that did not land is
        # taken again from the source without them (rare: rows of accounts not imported).
        dirty = {chunk_of(i) for i in left_out}
        self.history_digests = {
            c: v for c, v in history.chunks.items() if c not in dirty
        } | history_chunks(self.source, dirty, self.skipped["account_balance_history"])
        self.progress.step("balance history", total, total)
