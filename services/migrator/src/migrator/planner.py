"""Reading, planning and sealing the legacy users in a process of their own, so the writer has
the migrator's interpreter to itself: batch N+1 is read, planned and sealed (checksums,
encryption, text forms: `migrator.sealed`) on one core while batch N is written on the other.

`grouped` merge-joins the legacy streams by user; `BatchPlanner` plans a batch of groups
(pure: `plan.plan_user` per user, plus the duplicate-email rule across the whole source);
`PlannerProcess` runs both in a spawned process and hands the sealed batches back in order."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, tzinfo
from multiprocessing.connection import Connection
from typing import Any

from brokerlink_shared.crypto import SecretBox

from migrator import convert as cv
from migrator import plan as pl
from migrator.sealed import SealedUser, seal
from migrator.source import Source
from migrator.spawned import SpawnedProcess, run_child
from migrator.verify import ROW_DIGESTS, RowDigests, account_line, user_digest

Group = tuple[int, tuple[Any, ...] | None, list[Any], list[Any], list[Any]]
"""(user id, user row or None, account rows, ib rows, schwab rows) of one legacy user."""
BadRow = tuple[str, Any, str]
"""(table, legacy id as read, reason) of a row that cannot be placed at all."""
PIECE_USERS = 1000  # users per message from the planning process


def grouped(
    source: Source,
    bad: Callable[[str, Any, str], None],
    after_user: int = 0,
    seen: Callable[[str, tuple[Any, ...]], None] | None = None,
) -> Iterator[Group]:
    """Merge-join the four legacy streams by user id: (user id, user row or None, accounts, ib
    rows, schwab rows). A row whose id or user id is not a whole number cannot be placed: it
    goes to `bad(table, id, reason)` and the import goes on. `seen(table, row)` is shown every
    row as read, placeable or not."""
    streams = [
        _placeable(
            "users",
            source.select(
                "users", pl.USER_COLS, "WHERE id > ? ORDER BY id", (after_user,)
            ),
            0,
            bad,
            seen,
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
                seen,
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
    seen: Callable[[str, tuple[Any, ...]], None] | None = None,
) -> Iterator[tuple[int, tuple[Any, ...]]]:
    """(user id, row) for rows with whole-number ids; the others go to `bad`. NULL user ids
    (orphans) come as -1, first, as SQLite orders NULL first."""
    last = -2
    for row in rows:
        if seen is not None:
            seen(table, row)
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


@dataclass
class BatchPlanner:
    """Plans batches of groups without the database. Emails are unique case-insensitively
    across the whole source: the first user with an email keeps it, later ones are skipped."""

    now: datetime
    local: tzinfo
    schwab_seen: pl.SchwabSeen = field(default_factory=dict)
    emails: dict[str, int] = field(default_factory=dict)

    def plan(self, groups: list[Group]) -> list[tuple[pl.UserPlan, str | None]]:
        """(plan, lower email to check against the target's users, or None when the user is
        skipped already) per group."""
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


@dataclass
class SealedPiece:
    bad: list[BadRow]  # rows met while reading this piece that cannot be placed
    sealed: list[SealedUser]  # one per user, in source order
    rows_source: dict[str, RowDigests]  # verification's source side of the rows read


def _taken() -> dict[str, RowDigests]:
    """Verification's source sides a piece carries (see `verify.verify`'s `rows_source`)."""
    return {table: RowDigests() for table in ROW_DIGESTS} | {
        "accounts": RowDigests(width=16)
    }


class PlannerProcess:
    """`grouped` + `BatchPlanner` + `sealed.seal` in a spawned process. Users come back sealed,
    in source order, in pieces of at most `PIECE_USERS` through a pipe, with verification's
    source side of the rows read; a send blocks until the parent takes the piece, so the
    process plans at most a piece ahead of what the parent holds. Started early (its
    interpreter starts while the parent counts the source and asks schwab-connector), then
    given the Schwab answers; it ends after the last piece."""

    def __init__(
        self,
        source: Source,
        box: SecretBox,
        batch_users: int,
        now: datetime,
        local: tzinfo,
    ) -> None:
        self._process = SpawnedProcess(
            _serve, (source.handle(), box, batch_users, now, local), "planning"
        )

    def pieces(self, schwab_seen: pl.SchwabSeen) -> Iterator[SealedPiece]:
        self._process.send(schwab_seen)
        while (message := self._process.receive()) is not None:
            yield message

    def close(self) -> None:
        self._process.close()


def _serve(
    conn: Connection,
    handle: tuple[str, str],
    box: SecretBox,
    batch_users: int,
    now: datetime,
    local: tzinfo,
) -> None:
    """The planning process: read, plan, send; it ends when done or when the parent goes
    away."""

    def body() -> None:
        source = Source.reopen(*handle)
        planner = BatchPlanner(now, local, conn.recv())
        bad: list[BadRow] = []
        batch: list[Group] = []
        taken = _taken()
        users_read: list[tuple[Any, ...]] = []  # since the last send, placeable or not

        def send() -> None:
            nonlocal taken
            plans = planner.plan(batch)
            sealed = [
                seal(g[0], lower, plan, box)
                for g, (plan, lower) in zip(batch, plans, strict=True)
            ]
            # Each user row read gets its digest, from the plan's conversion of that very row
            # where there is one (a row read ahead, or one no group holds, is converted here).
            converted_users = {
                id(g[1]): plan.user
                for g, (plan, _lower) in zip(batch, plans, strict=True)
                if g[1] is not None
            }
            for row in users_read:
                taken["users"].add(user_digest(row, converted_users.get(id(row))))
            users_read.clear()
            for group, (plan, _lower) in zip(batch, plans, strict=True):
                planned = {
                    a.legacy_id: a.integration.type
                    for a in plan.accounts
                    if a.integration is not None
                }
                raws = group[2]
                # The plan holds one converted account per legacy row, in order, when every
                # row converted; otherwise each row is converted again on its own.
                converted = (
                    plan.accounts
                    if len(plan.accounts) == len(raws)
                    else [None] * len(raws)
                )
                for raw, account in zip(raws, converted, strict=True):
                    taken["accounts"].add(account_line(raw, planned, account))
            conn.send(SealedPiece(bad, sealed, taken))
            bad.clear()  # sent (pickled) already
            taken = _taken()

        def read(table: str, row: tuple[Any, ...]) -> None:
            if table == "users":  # digested with their plans (`send`): converted once
                users_read.append(row)
                return
            digest = ROW_DIGESTS.get(table)
            if digest is not None:
                taken[table].add(digest(row))

        # Sent in pieces smaller than a writer's batch: the pieces are what this process
        # holds at a time (the writer puts its batches together from them).
        piece = min(batch_users, PIECE_USERS)
        for group in grouped(source, lambda t, i, r: bad.append((t, i, r)), seen=read):
            batch.append(group)
            if len(batch) >= piece:
                send()
                batch = []
        if batch or bad or users_read:
            send()
        conn.send(None)
        source.close()

    run_child(conn, body)
