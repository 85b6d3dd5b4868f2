"""The history fast path (`plan.history_line`) gives exactly what the general conversion
(`plan.history_row`, written by `plan.history_text`, verified by `verify.canon_history`) gives,
and leaves every row it is not sure of to it."""

from __future__ import annotations

import random
from datetime import date, timedelta
from typing import Any

import pytest
from migrator import plan as pl
from migrator.digests import canon, canon_history
from migrator.history import HistoryPiece, HistoryProcess, history_pieces
from migrator.legacy_schema import create
from migrator.source import Source

pytestmark = pytest.mark.fast


def _rows() -> list[tuple[Any, ...]]:
    rnd = random.Random(3)  # noqa: S311  # seeded test data, not a secret
    balances: list[Any] = [
        0.0,
        -0.0,
        -0.5,
        1e-05,
        0.12345,
        0.00005,
        123.45,
        1e14,
        999999999999999.9,
        1e15,
        -1e16,
        float("nan"),
        float("inf"),
        7,
        "12.5",
        None,
        True,
    ]
    balances += [round(rnd.uniform(-1e6, 1e6), rnd.randint(0, 6)) for _ in range(300)]
    dates: list[Any] = [
        "2024-01-31 12:00:00",
        "2024-01-31T12:00:00",
        "2024-02-30 12:00:00",
        "2024-01-31",
        "2024-01-31T12:00:00Z",
        "2024-01-31T12:00:00.000Z",
        "2024-01-31T12:00:00.5Z",
        "2024-13-01",
        "2024-W05-3",
        "2024-W01-1T12:00:00",
        "2024-01-31T12+08:00",
        "2024-01-31 24:00:00",
        " 2024-01-31 12:00:0",
        "not a date at all!!",
        None,
        1706702400,
    ]
    notes: list[Any] = [
        None,
        "",
        "tab\there",
        "back\\slash",
        "Initial balance",
        "x" * 3000,
        5,
    ]
    rows = []
    for i, balance in enumerate(balances):
        for j, when in enumerate(dates):
            rows.append(
                (
                    i * 100 + j,
                    rnd.choice([5, "6", 7.0, None, 2**63]),
                    balance,
                    notes[(i + j) % len(notes)] if j % 3 == 0 else None,
                    when,
                    rnd.choice([None, "2024-01-01 00:00:00", "2024-01-01", "junk"]),
                )
            )
    return rows


def _parse(text: str) -> list[str | None]:
    assert text.endswith("\n")
    return [None if v == "\\N" else v for v in text[:-1].split("\t")]


def test_the_fast_path_agrees_with_the_general_conversion() -> None:
    taken = 0
    for raw in _rows():
        fast = pl.history_line(raw)
        row, _reason = pl.history_row(raw)
        if fast is None:
            continue
        taken += 1
        assert row is not None, raw
        legacy_id, text = fast
        assert legacy_id == row[0]
        # what verification digests: the same canonical line from either spelling
        for spelled in (text, pl.history_text(row)):
            assert pl.history_copy_fields(spelled)[0] == row[0]
            assert canon(*pl.history_copy_fields(spelled)[1]) == canon_history(row), raw
        got = _parse(text)
        want = _parse(pl.history_text(row))
        assert got[:5] == want[:5], raw
        # the same instants, spelled `+00` by one and `+00:00` by the other
        for a, b in zip(got[5:], want[5:], strict=True):
            assert (a is None) == (b is None), raw
            if a is not None and b is not None:
                assert a.replace("T", " ")[:19] == b.replace("T", " ")[:19], raw
    assert taken > 20  # the common shape does take the fast path


def test_text_and_notes_are_escaped_for_copy() -> None:
    row, _ = pl.history_row((1, 2, 3.0, "a\tb\\c\nd", "2024-01-01", None))
    assert row is not None
    assert pl.history_text(row).split("\t")[4] == "a\\tb\\\\c\\nd"
    assert pl.history_copy_fields(pl.history_text(row))[1][4] == "a\tb\\c\nd"


def test_rows_as_the_legacy_app_writes_them_take_the_fast_path() -> None:
    for when in ("2025-02-20", "2025-02-20T04:44:20.000Z", "2025-02-20 04:44:20"):
        raw = (1, 1, 340489.0, "Initial balance", when, "2025-02-20 04:44:20")
        assert pl.history_line(raw) is not None, when


def test_history_batches_are_as_asked_whatever_the_piece_size(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The history process sends pieces of at most 25,000 rows; they end on batch boundaries,
    so every transaction holds exactly `--batch-history` rows (the last one what is left)."""
    path = tmp_path / "history.db"
    conn = create(path, newer=True)
    conn.execute(
        "INSERT INTO users (id, email, password_hash, name) VALUES (1, 'a@b.c', 'x', 'A')"
    )
    conn.executemany(
        "INSERT INTO accounts (id, user_id, name, currency, original_capital, current_balance)"
        " VALUES (?, 1, 'A', 'USD', 1, 1)",
        ((a,) for a in range(1, 1001)),
    )
    start = date(2000, 1, 1)
    conn.executemany(
        "INSERT INTO account_balance_history (id, account_id, balance, date, created_at)"
        " VALUES (?, ?, 1.5, ?, '2024-01-01 00:00:00')",
        (
            (i, i % 1000 + 1, (start + timedelta(days=i // 1000)).isoformat())
            for i in range(1, 70_001)
        ),
    )
    conn.commit()
    conn.close()
    source = Source(str(path))
    for batch, sizes in ((30_000, [30_000, 30_000, 10_000]), (4, None)):
        pieces = [
            p
            for p in history_pieces(source, batch, piece_rows=25_000)
            if isinstance(p, HistoryPiece)
        ]
        assert all(p.rows <= 25_000 for p in pieces)
        if sizes is not None:
            history = HistoryProcess(source, batch)
            try:
                assert [b.rows for b in history.batches()] == sizes
                assert sum(n for n, _ in history.chunks.values()) == 70_000
            finally:
                history.close()
        else:
            assert {p.rows for p in pieces} == {4}
    source.close()
