"""The source side of a chunked comparison: rows as canonical text lines, their md5 per chunk
of legacy ids. Pure (no database client), so the process that converts the balance history
takes them without loading what verification needs."""

from __future__ import annotations

import hashlib
from typing import Any

CHUNK = 20_000  # legacy ids per chunk of the set-based comparison


def chunk_of(legacy_id: int) -> int:
    """The chunk of a legacy id: truncating division, as PostgreSQL's bigint `/`."""
    q = abs(legacy_id) // CHUNK
    return q if legacy_id >= 0 else -q


def chunk_bounds(chunk: int) -> tuple[int, int]:
    """The inclusive legacy-id range of a chunk."""
    if chunk > 0:
        return chunk * CHUNK, chunk * CHUNK + CHUNK - 1
    if chunk < 0:
        return chunk * CHUNK - CHUNK + 1, chunk * CHUNK
    return -CHUNK + 1, CHUNK - 1


def canon(*values: Any) -> str:
    """One row as text, the same as `_canon_sql` builds in PostgreSQL: each value as
    `<length>:<text>` (NULL as `~`), joined by `|`."""
    parts = []
    for v in values:
        if v is None:
            parts.append("~")
        else:
            t = str(v)
            parts.append(f"{len(t)}:{t}")
    return "|".join(parts)


def canon_history(h: tuple[Any, ...]) -> str:
    """The canonical line of a converted history row (`plan.history_row`)."""
    return canon(h[0], h[1], h[2].isoformat(), h[3], h[4])


class ChunkDigests:
    """Per chunk of legacy ids, the count and md5 of the rows' canonical lines joined by
    newlines, fed one row at a time in legacy-id order: what `_chunked` computes from a source
    iterator, for a caller that sees the rows anyway."""

    def __init__(self) -> None:
        self._chunks: dict[int, tuple[list[int], Any]] = {}

    def add(self, legacy_id: int, line: str) -> None:
        c = chunk_of(legacy_id)
        entry = self._chunks.get(c)
        if entry is None:
            self._chunks[c] = (
                [1],
                hashlib.md5(line.encode(), usedforsecurity=False),
            )
        else:
            entry[0][0] += 1
            entry[1].update(b"\n" + line.encode())

    def result(self) -> dict[int, tuple[int, str]]:
        return {c: (n[0], h.hexdigest()) for c, (n, h) in self._chunks.items()}
