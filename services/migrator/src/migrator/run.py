"""An apply (or dry run): users with their accounts and integrations in batches of users, then
balance history in batches of rows; each batch is one transaction with its journal entries,
its outbox events and its progress, so a crash loses at most the batch in flight."""

from __future__ import annotations

import json
import os
from collections import defaultdict
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime, tzinfo
from typing import Any

from brokerlink_shared.crypto import SecretBox
from brokerlink_shared.messaging import EventPublisher

from migrator import convert as cv
from migrator import plan as pl
from migrator.events import EventBatch
from migrator.report import Progress, Report
from migrator.source import Source
from migrator.target import Target, correlation, encode_jsonb
from migrator.verify import ChunkDigests, canon

CRASH_ENV = "BROKERLINK_MIGRATE_CRASH_AFTER_BATCHES"  # test hook: os._exit(137) after N committed batches


TABLES = ("users", "accounts", "ib_connections", "schwab_settings")


def grouped(
    source: Source,
    bad: Callable[[str, Any, str], None],
    after_user: int = 0,
) -> Iterator[tuple[int, tuple[Any, ...] | None, list[Any], list[Any], list[Any]]]:
    """Merge-join the four legacy streams by user id: (user id, user row or None, accounts, ib
    rows, schwab rows). A row whose id or user id is not a whole number cannot be placed: it
    goes to `bad(table, id, reason)` and the import goes on."""
    streams = [
        _placeable(
            "users",
            source.select(
                "users", pl.USER_COLS, "WHERE id > ? ORDER BY id", (after_user,)
            ),
            0,
            bad,
        ),
        *(
            _placeable(
                table,
                source.select(
                    table,
                    cols,
                    "WHERE user_id > ? OR user_id IS NULL ORDER BY user_id, id"
                    if after_user
                    else "ORDER BY user_id, id",
                    (after_user,) if after_user else (),
                ),
                1,
                bad,
            )
            for table, cols in (
                ("accounts", pl.ACCOUNT_COLS),
                ("ib_connections", pl.IB_COLS),
                ("schwab_settings", pl.SCHWAB_COLS),
            )
        ),
    ]
    heads: list[tuple[int, tuple[Any, ...]] | None] = [next(s, None) for s in streams]
    while any(h is not None for h in heads):
        uid = min(h[0] for h in heads if h is not None)
        parts: list[list[Any]] = [[], [], [], []]
        for i, stream in enumerate(streams):
            while (head := heads[i]) is not None and head[0] == uid:
                parts[i].append(head[1])
                heads[i] = next(stream, None)
        yield uid, (parts[0][0] if parts[0] else None), parts[1], parts[2], parts[3]


def _placeable(
    table: str,
    rows: Iterator[tuple[Any, ...]],
    key: int,
    bad: Callable[[str, Any, str], None],
) -> Iterator[tuple[int, tuple[Any, ...]]]:
    """(user id, row) for rows with whole-number ids; the others go to `bad`. NULL user ids
    (orphans) come as -1, first, as SQLite orders NULL first."""
    last = -2
    for row in rows:
        rid = cv.legacy_id(row[0])
        if rid is None:
            bad(table, row[0], "id is not a whole number")
            continue
        if row[key] is None:
            uid = -1
        else:
            parsed = cv.legacy_id(row[key])
            if parsed is None:
                bad(table, rid, "user_id is not a whole number")
                continue
            uid = parsed
        if (
            uid < last
        ):  # cannot happen with SQLite's ordering; never mis-group if it does
            bad(table, rid, "out of order in the source")
            continue
        last = uid
        yield uid, row


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
        self.emails: dict[str, int] = {}
        self.expected_integrations: dict[
            int, str
        ] = {}  # account legacy id -> type, for verification
        # legacy ids that were not imported; a non-integer id is kept as (the start of) its text
        self.skipped: dict[str, set[int | str]] = defaultdict(set)
        self.schwab_seen: pl.SchwabSeen = {}
        self.history_digests = (
            ChunkDigests()
        )  # the source side of history's verification
        self._batches = 0
        self._crash_after = int(os.environ.get(CRASH_ENV, "0") or 0)

    # ---- driver ----------------------------------------------------------------------------

    def run(self, after_users: Callable[[], None] | None = None) -> None:
        """Users with their accounts and integrations, then `after_users()` (everything so far
        is committed), then balance history."""
        src, rep = self.source, self.report
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
        # Plan batch N+1 while PostgreSQL writes batch N: a one-deep pipeline with one writer
        # thread, which alone uses the connection during this phase (as for history).
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="users") as writer:
            pending: Future[None] | None = None
            done = 0

            def submit(batch: list[Any]) -> None:
                nonlocal pending, done
                done += len(batch)
                plans = self._plan_users(batch)
                if pending is not None:
                    pending.result()
                pending = writer.submit(
                    self._user_batch, batch, plans, done, users_total
                )

            batch: list[Any] = []
            for group in grouped(src, self._bad_row):
                batch.append(group)
                if len(batch) >= self.batch_users:
                    submit(batch)
                    batch = []
            if batch:
                submit(batch)
            if pending is not None:
                pending.result()
        self.progress.step("users and accounts", users_total, users_total)
        if after_users is not None:
            after_users()
        self._history(totals["account_balance_history"])

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

    def _plan_users(
        self, groups: list[tuple[int, Any, list[Any], list[Any], list[Any]]]
    ) -> list[tuple[pl.UserPlan, str | None]]:
        """Plan a batch without the database (main thread): (plan, lower email to check
        against the target's users, or None when the user is skipped already)."""
        out: list[tuple[pl.UserPlan, str | None]] = []
        for uid, user, accounts, ibs, schwabs in groups:
            reason = lower = None
            if user is not None and user[1]:
                lower = str(user[1]).strip().lower()
                first = self.emails.setdefault(lower, uid)
                if first != uid:
                    reason = (
                        f"duplicate email (case-insensitive) of legacy user #{first}"
                    )
                    lower = None
            plan = pl.plan_user(
                user,
                accounts,
                ibs,
                schwabs,
                self.now,
                user_skip_reason=reason,
                schwab_seen=self.schwab_seen,
                local=self.local,
            )
            out.append((plan, lower))
        return out

    def _user_batch(
        self,
        groups: list[tuple[int, Any, list[Any], list[Any], list[Any]]],
        planned: list[tuple[pl.UserPlan, str | None]],
        done: int,
        total: int,
    ) -> None:
        """Write one planned batch in one transaction (writer thread: it alone uses the
        connection while the users phase runs)."""
        target, rep, box = self.target, self.report, self.box
        owners = target.email_owners([lower for _, lower in planned if lower])
        plans: list[pl.UserPlan] = []
        for (uid, user, accounts, ibs, schwabs), (plan, lower) in zip(
            groups, planned, strict=True
        ):
            owner = owners.get(lower) if lower else None
            if owner is not None and owner[1] != uid:
                plan = pl.plan_user(
                    user,
                    accounts,
                    ibs,
                    schwabs,
                    self.now,
                    user_skip_reason=f"email already registered in the target (user #{owner[0]})",
                )
            plans.append(plan)

        users = [p.user for p in plans if p.user is not None]
        accounts = [a for p in plans for a in p.accounts]
        pending = [x for p in plans for x in p.pending]
        copies = [c for p in plans for c in p.copies]
        for p in plans:
            for table, legacy_id, reason in p.skipped:
                rep.skip(table, legacy_id, reason)
                self.skipped[table].add(legacy_id)
            for conflict in p.conflicts:
                rep.conflict(conflict)

        sums = {
            "users": target.checksums("users", [u.legacy_id for u in users]),
            "accounts": target.checksums("accounts", [a.legacy_id for a in accounts]),
            "integration": target.checksums(
                "integration", [a.legacy_id for a in accounts if a.integration]
            ),
            "ib_connections": target.checksums(
                "ib_connections",
                [int(c.row[0]) for c in copies if c.table == "ib_connections"],
            ),
            "schwab_settings": target.checksums(
                "schwab_settings",
                [int(c.row[0]) for c in copies if c.table == "schwab_settings"],
            ),
            **{
                f"pending:{table}": target.checksums(
                    f"pending:{table}",
                    [x.legacy_id for x in pending if x.legacy_table == table],
                )
                for table in ("ib_connections", "schwab_settings", "accounts")
            },
        }
        marks: list[tuple[str, int, str]] = []

        # users
        rows: list[tuple[Any, ...]] = []
        for u in users:
            digest = u.checksum()
            if sums["users"].get(u.legacy_id) == digest:
                continue
            marks.append(("users", u.legacy_id, digest))
            secret = box.encrypt(u.two_factor_secret) if u.two_factor_secret else None
            rows.append(
                (
                    u.email,
                    u.name,
                    u.password_hash,
                    u.base_currency,
                    secret,
                    u.two_factor_enabled,
                    u.legacy_id,
                    u.created_at,
                    u.updated_at,
                )
            )
        target.write_users(rows)
        user_ids = target.id_map("users", [u.legacy_id for u in users])
        target.journal_state("users", [user_ids[r[6]] for r in rows])

        # accounts with their integrations
        rows, stored_of = [], {}
        for a in accounts:
            integ = a.integration
            if integ is not None:
                self.expected_integrations[a.legacy_id] = integ.type
                rep.integrations[f"{integ.type} from {integ.origin.split('#')[0]}"] += 1
            d_acc = a.checksum()
            d_int = integ.checksum() if integ else None
            w_acc = sums["accounts"].get(a.legacy_id) != d_acc
            w_int = integ is not None and sums["integration"].get(a.legacy_id) != d_int
            if not (w_acc or w_int):
                continue
            if w_acc:
                marks.append(("accounts", a.legacy_id, d_acc))
            stored = None
            if w_int:
                if integ is None or d_int is None:
                    raise RuntimeError("w_int implies an integration and its digest")
                marks.append(("integration", a.legacy_id, d_int))
                stored = self._stored(integ.type, integ.config)
                stored_of[a.legacy_id] = (integ.type, stored)
            rows.append(
                (
                    a.legacy_id,
                    user_ids.get(a.user_legacy_id),
                    a.name,
                    a.currency,
                    a.account_type,
                    a.account_number,
                    a.original_capital,
                    a.current_balance,
                    a.last_updated,
                    a.created_at,
                    a.updated_at,
                    w_acc,
                    w_int,
                    integ.type if integ else None,
                    encode_jsonb(stored),
                    integ.status if integ else None,
                    integ.last_connected_at if integ else None,
                    integ.access_expires_at if integ else None,
                    integ.refresh_expires_at if integ else None,
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
        account_ids = target.id_map("accounts", [a.legacy_id for a in accounts])

        # pending links (whatever could not be linked with certainty)
        rows = []
        for x in pending:
            entity = f"pending:{x.legacy_table}"
            suggestions = [account_ids[s] for s in x.suggestions if s in account_ids]
            verified = [account_ids[s] for s in x.verified if s in account_ids]
            rep.pending(
                {
                    "legacy_table": x.legacy_table,
                    "legacy_id": x.legacy_id,
                    "user_legacy_id": x.user_legacy_id,
                    "user_id": user_ids.get(x.user_legacy_id),
                    "type": x.integration_type,
                    "kind": x.kind,
                    "reason": x.reason,
                    "suggested_account_ids": suggestions,
                    "suggested_account_legacy_ids": x.suggestions,
                    "verified_account_ids": verified,
                }
            )
            digest = x.checksum()
            if (
                sums[entity].get(x.legacy_id) == digest
                or x.user_legacy_id not in user_ids
            ):
                continue
            marks.append((entity, x.legacy_id, digest))
            rows.append(
                (
                    user_ids[x.user_legacy_id],
                    x.integration_type,
                    encode_jsonb(
                        self._stored(x.integration_type, x.config, lenient=True)
                    ),
                    x.reason,
                    suggestions,
                    x.legacy_table,
                    x.legacy_id,
                    x.kind,
                    verified,
                )
            )
        target.write_pending(rows)

        # copies of the legacy integration tables
        ib_rows, schwab_rows = [], []
        for c in copies:
            digest = c.checksum()
            legacy_id = int(c.row[0])
            if sums[c.table].get(legacy_id) == digest:
                continue
            marks.append((c.table, legacy_id, digest))
            user_legacy = c.row[1]
            user_id = (
                user_ids.get(int(user_legacy)) if user_legacy is not None else None
            )
            if c.table == "ib_connections":
                r = c.row
                target_legacy = (
                    c.target_account_legacy_id
                    if c.target_account_legacy_id is not None
                    else _int(r[6])
                )
                ib_rows.append(
                    (
                        legacy_id,
                        _int(user_legacy) or 0,
                        user_id,
                        r[2],
                        r[3],
                        _int(r[4]),
                        _int(r[5]),
                        target_legacy,
                        account_ids.get(target_legacy)
                        if target_legacy is not None
                        else None,
                        None if r[7] is None else bool(r[7]),
                        cv.timestamp(r[8]),
                        cv.money(r[9]),
                        r[10],
                        r[11],
                        c.outcome,
                        cv.timestamp(r[12]),
                        cv.timestamp(r[13]),
                    )
                )
            else:
                r = c.row
                schwab_rows.append(
                    (
                        legacy_id,
                        _int(user_legacy) or 0,
                        user_id,
                        r[2],
                        self._enc(r[3]),
                        self._enc(r[4]),
                        self._enc(r[5]),
                        _int(r[6]),
                        c.outcome,
                        cv.timestamp(r[7]),
                        cv.timestamp(r[8]),
                    )
                )
        target.write_legacy_ib(ib_rows)
        target.write_legacy_schwab(schwab_rows)
        for c in copies:
            rep.tables[c.table].outcomes[c.outcome] += 1
        target.write_outbox(staged.rows)
        rep.events += len(staged)
        target.write_rows(marks)
        self._committed({"phase": "users", "last_user_legacy_id": groups[-1][0]})
        if done < total:
            self.progress.step("users and accounts", done, total)

    def _stored(
        self, kind: str, config: dict[str, Any], *, lenient: bool = False
    ) -> dict[str, Any]:
        """The stored (encrypted) form of a plaintext integration config."""
        if kind == "IB":
            return dict(config)
        stored: dict[str, Any] = {
            "app_key": config.get("app_key"),
            "app_secret_enc": self._enc(config.get("app_secret"))
            if config.get("app_secret") or not lenient
            else None,
            "token_enc": self.box.encrypt(json.dumps(config["token"]))
            if config.get("token")
            else None,
            "account_number": config.get("account_number"),
            "account_hash": config.get("account_hash"),
        }
        if config.get("unverified"):
            stored["unverified"] = True
        return stored

    def _enc(self, value: Any) -> str | None:
        return None if value is None or value == "" else self.box.encrypt(str(value))

    # ---- balance history -------------------------------------------------------------------

    def _history(self, total: int) -> None:
        """Read and convert batch N+1 while the database writes batch N: a one-deep pipeline
        with one writer thread, which alone uses the connection during this phase (psycopg
        releases the GIL while PostgreSQL works). Rows go to PostgreSQL as COPY text; the
        source side of the history verification (per-chunk digests of the rows that landed)
        is taken on the way, so verification does not read the source's history again."""
        rep, chunks = self.report, self.history_digests
        done = 0
        lines: list[str] = []
        invalid: list[tuple[int | str, str]] = []

        def flush(lines: list[str], invalid: list[tuple[int | str, str]]) -> None:
            for legacy_id, reason in invalid:
                rep.skip("account_balance_history", legacy_id, reason)
                self.skipped["account_balance_history"].add(legacy_id)
            if not lines:
                return
            _updated, _inserted, skipped = self.target.write_history("".join(lines))
            left_out = set()
            for legacy_id, reason in skipped:
                rep.skip("account_balance_history", legacy_id, reason)
                self.skipped["account_balance_history"].add(legacy_id)
                left_out.add(legacy_id)
            last = pl.history_copy_fields(lines[-1])[0]
            self._committed({"phase": "history", "last_history_legacy_id": last})
            # The lines themselves are the source side of the verification (only the rows
            # that landed), rather than keeping a second copy of the batch until now.
            for text in lines:
                legacy_id, fields = pl.history_copy_fields(text)
                if legacy_id not in left_out:
                    chunks.add(legacy_id, canon(*fields))

        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="history") as writer:
            pending: Future[None] | None = None
            for raw in self.source.select(
                "account_balance_history", pl.HISTORY_COLS, "ORDER BY id"
            ):
                done += 1
                fast = pl.history_line(raw)
                if fast is not None:
                    lines.append(fast[1])
                else:
                    row, reason = pl.history_row(raw)
                    if row is None:
                        key = cv.legacy_id(raw[0])
                        invalid.append(
                            (
                                key if key is not None else str(raw[0])[:40],
                                reason or "invalid",
                            )
                        )
                        continue
                    lines.append(pl.history_text(row))
                if len(lines) >= self.batch_history:
                    if pending is not None:
                        pending.result()
                    pending = writer.submit(flush, lines, invalid)
                    lines, invalid = [], []
                    self.progress.step("balance history", done, total)
            if pending is not None:
                pending.result()
            flush(lines, invalid)
        self.progress.step("balance history", total, total)


def _int(value: Any) -> int | None:
    try:
        return None if value is None else int(value)
    except (TypeError, ValueError):
        return None
