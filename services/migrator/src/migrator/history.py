"""Reading and converting the legacy balance history in a process of its own, so the writer
has the migrator's interpreter to itself: the next piece is read and converted (COPY text,
and the source side of the history's verification) on one core while PostgreSQL loads the
one before on the other.

The process is spawned once the users are written, after the planning process has ended: the
two never hold their memory at the same time. It imports only the conversions and the
digests."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection

from migrator import convert as cv
from migrator import plan as pl
from migrator.digests import ChunkDigests, canon
from migrator.source import Source
from migrator.spawned import SpawnedProcess, run_child

PIECE_ROWS = 25_000  # converted rows per message: what the process holds at a time


@dataclass
class HistoryPiece:
    text: str  # COPY text of the converted rows (`plan.history_line` / `plan.history_text`)
    rows: int  # lines in `text`
    last_legacy_id: int | None  # of the last line
    invalid: list[
        tuple[int | str, str]
    ]  # (legacy id, or the start of its text; reason)
    read: int  # source rows read so far


@dataclass
class HistoryRead:
    """The end of the history: verification's source side of every converted row, per chunk
    of legacy ids (`ChunkDigests.result`), whether it landed or not."""

    chunks: dict[int, tuple[int, str]]


def history_pieces(
    source: Source, batch: int, piece_rows: int = PIECE_ROWS
) -> Iterator[HistoryPiece | HistoryRead]:
    """The legacy balance history in legacy-id order, in pieces of at most `piece_rows`
    converted rows that add up to batches of exactly `batch` rows (the last may be smaller),
    then its `HistoryRead`."""
    digests = ChunkDigests()
    lines: list[str] = []
    invalid: list[tuple[int | str, str]] = []
    read = 0
    in_batch = 0  # rows sent in earlier pieces of the batch under way

    def piece() -> HistoryPiece:
        last = None
        for text in lines:
            last, fields = pl.history_copy_fields(text)
            digests.add(last, canon(*fields))
        return HistoryPiece("".join(lines), len(lines), last, invalid, read)

    for raw in source.select("account_balance_history", pl.HISTORY_COLS, "ORDER BY id"):
        read += 1
        fast = pl.history_line(raw)
        if fast is not None:
            lines.append(fast[1])
        else:
            row, reason = pl.history_row(raw)
            if row is None:
                key = cv.legacy_id(raw[0])
                invalid.append(
                    (key if key is not None else str(raw[0])[:40], reason or "invalid")
                )
                continue
            lines.append(pl.history_text(row))
        if len(lines) >= min(piece_rows, batch - in_batch):
            yield piece()
            in_batch = (in_batch + len(lines)) % batch
            lines, invalid = [], []
    if lines or invalid:
        yield piece()
    yield HistoryRead(digests.result())


class HistoryProcess:
    """`history_pieces` in a spawned process, which starts reading at once; a send there
    blocks until the parent takes the piece."""

    def __init__(self, source: Source, batch: int) -> None:
        self._batch = batch
        self._process = SpawnedProcess(_serve, (source.handle(), batch), "history")
        self.chunks: dict[int, tuple[int, str]] = {}

    def batches(self) -> Iterator[HistoryPiece]:
        """The pieces joined into batches of `batch` converted rows (the last may be
        smaller: pieces end on batch boundaries); once they are all taken, `chunks` holds the
        `HistoryRead`'s."""
        joined: list[HistoryPiece] = []
        while not isinstance(message := self._process.receive(), HistoryRead):
            joined.append(message)
            if sum(p.rows for p in joined) >= self._batch:
                yield _join(joined)
                joined = []
        if joined:
            yield _join(joined)
        self.chunks = message.chunks

    def close(self) -> None:
        self._process.close()


def _join(pieces: list[HistoryPiece]) -> HistoryPiece:
    return HistoryPiece(
        "".join(p.text for p in pieces),
        sum(p.rows for p in pieces),
        next(
            (
                p.last_legacy_id
                for p in reversed(pieces)
                if p.last_legacy_id is not None
            ),
            None,
        ),
        [x for p in pieces for x in p.invalid],
        pieces[-1].read,
    )


def _serve(conn: Connection, handle: tuple[str, str], batch: int) -> None:
    def body() -> None:
        source = Source.reopen(*handle)
        for message in history_pieces(source, batch):
            conn.send(message)
        source.close()

    run_child(conn, body)
