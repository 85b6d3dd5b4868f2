"""The legacy database, opened read-only: a SQLite file (opened as `file:...?mode=ro`) or any
SQLAlchemy URL (read through a streaming, read-only connection). Rows come out as tuples in
the column order asked for; missing optional columns read as NULL."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import sqlite3
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

SQLITE_MAGIC = b"SQLite format 3\x00"
REQUIRED = ("users", "accounts")
OPTIONAL = ("account_balance_history", "ib_connections", "schwab_settings")
FETCH = 5000


class SourceError(Exception):
    """The source cannot be used; the message names the problem (exit code 2)."""


class Source:
    """Read-only access to the legacy tables."""

    def __init__(self, location: str) -> None:
        self.location = location
        self._sqlite: sqlite3.Connection | None = None
        self._uri = ""
        self._engine: Any = None
        self._conn: Any = None
        self._copy_dir: tempfile.TemporaryDirectory[str] | None = None
        self.path: Path | None = None  # the SQLite file, when the source is one
        self.columns: dict[str, set[str]] = {}
        if "://" in location and not location.startswith("sqlite"):
            self._open_sqlalchemy(location)
        else:
            path = location
            if location.startswith("sqlite"):
                path = location.split(":///", 1)[1] if ":///" in location else ""
            self._open_sqlite(path)
        self._inspect()

    # ---- opening --------------------------------------------------------------------------

    def _open_sqlite(self, path: str) -> None:
        file = Path(path)
        if not path or not file.exists():
            raise SourceError(f"source file not found: {path or self.location}")
        if not file.is_file():
            raise SourceError(f"source is not a file: {path}")
        try:
            with file.open("rb") as fh:
                head = fh.read(len(SQLITE_MAGIC))
        except OSError as exc:
            raise SourceError(
                f"source file cannot be read: {path} ({exc.strerror})"
            ) from None
        if head != SQLITE_MAGIC:
            raise SourceError(f"source is not a SQLite database: {path}")
        self.path = file.resolve()
        wal = self.path.with_name(self.path.name + "-wal")
        try:
            if wal.exists() and wal.stat().st_size > 0:
                # Content not yet checkpointed lives in the -wal file: read a private copy of
                # the three files (opening the original would write a -shm next to it).
                self._copy_dir = tempfile.TemporaryDirectory(
                    prefix="brokerlink-legacy-"
                )
                copy = Path(self._copy_dir.name) / self.path.name
                for suffix in ("", "-wal", "-shm"):
                    original = self.path.with_name(self.path.name + suffix)
                    if original.exists():
                        shutil.copyfile(original, copy.with_name(copy.name + suffix))
                uri = f"file:{quote(str(copy))}"
            else:
                # Checkpointed (the header may still say WAL): immutable, so nothing is
                # written next to the user's file, not even a -shm.
                uri = f"file:{quote(str(self.path))}?mode=ro&immutable=1"
            self._uri = uri
            self._sqlite = sqlite3.connect(uri, uri=True, check_same_thread=False)
            self._sqlite.execute("PRAGMA query_only = ON")
            self._sqlite.execute("SELECT count(*) FROM sqlite_master").fetchone()
        except OSError as exc:
            raise SourceError(
                f"source file cannot be copied for reading: {path} ({exc.strerror})"
            ) from None
        except sqlite3.DatabaseError as exc:
            raise SourceError(
                f"source is not a readable SQLite database: {path} ({exc})"
            ) from None

    def _open_sqlalchemy(self, url: str) -> None:
        from sqlalchemy import create_engine
        from sqlalchemy.exc import SQLAlchemyError

        try:
            self._engine = create_engine(url)
            self._conn = self._engine.connect().execution_options(
                stream_results=True, yield_per=FETCH
            )
            if self._engine.dialect.name == "postgresql":
                self._conn.exec_driver_sql("SET TRANSACTION READ ONLY")
        except (SQLAlchemyError, ImportError, ValueError) as exc:
            raise SourceError(
                f"source database unreachable: {_one_line(exc)}"
            ) from None

    def _inspect(self) -> None:
        if self._sqlite is not None:
            names = {
                r[0]
                for r in self._sqlite.execute(
                    "SELECT name FROM sqlite_master WHERE type = 'table'"
                )
            }
            for name in (*REQUIRED, *OPTIONAL):
                if name in names:
                    self.columns[name] = {
                        r[1]
                        for r in self._sqlite.execute(f'PRAGMA table_info("{name}")')
                    }
        else:
            from sqlalchemy import inspect

            inspector = inspect(self._conn)
            names = set(inspector.get_table_names())
            for name in (*REQUIRED, *OPTIONAL):
                if name in names:
                    self.columns[name] = {
                        c["name"] for c in inspector.get_columns(name)
                    }
        missing = [name for name in REQUIRED if name not in self.columns]
        if missing:
            raise SourceError(
                f"source has no legacy tables ({', '.join(missing)} missing): {self.location}"
            )

    # ---- reading --------------------------------------------------------------------------

    def has(self, table: str, column: str | None = None) -> bool:
        cols = self.columns.get(table)
        return cols is not None and (column is None or column in cols)

    def select(
        self,
        table: str,
        columns: Sequence[str],
        tail: str = "",
        params: Sequence[Any] = (),
    ) -> Iterator[tuple[Any, ...]]:
        """Stream `SELECT columns FROM table tail`; absent columns read as NULL."""
        if table not in self.columns:
            return iter(())
        have = self.columns[table]
        exprs = ", ".join(f'"{c}"' if c in have else "NULL" for c in columns)
        sql = f'SELECT {exprs} FROM "{table}" {tail}'
        return self._stream(sql, params)

    def scalar(self, sql: str) -> Any:
        if self._sqlite is not None:
            return self._sqlite.execute(sql).fetchone()[0]
        from sqlalchemy import text

        return self._conn.execute(text(sql)).scalar()

    def _stream(self, sql: str, params: Sequence[Any]) -> Iterator[tuple[Any, ...]]:
        if self._sqlite is not None:
            cursor = self._sqlite.execute(sql, tuple(params))
            while rows := cursor.fetchmany(FETCH):
                yield from rows
            return
        from sqlalchemy import text

        named = sql
        binds: dict[str, Any] = {}
        for i, value in enumerate(params):
            named = named.replace("?", f":p{i}", 1)
            binds[f"p{i}"] = value
        for row in self._conn.execute(text(named), binds):
            yield tuple(row)

    def count(self, table: str) -> int:
        return (
            int(self.scalar(f'SELECT count(*) FROM "{table}"'))
            if table in self.columns
            else 0
        )

    def fingerprint(self) -> str:
        """Identifies the source's content cheaply: row counts and max ids of every legacy table
        and, for a file, its size and modification time."""
        parts = [self.location]
        for table in (*REQUIRED, *OPTIONAL):
            if table in self.columns:
                top = self.scalar(f'SELECT max(id) FROM "{table}"')
                parts.append(f"{table}:{self.count(table)}:{top}")
        if self.path is not None:
            for suffix in ("", "-wal"):
                with contextlib.suppress(FileNotFoundError):
                    stat = os.stat(self.path.with_name(self.path.name + suffix))
                    parts.append(f"{suffix}{stat.st_size}:{stat.st_mtime_ns}")
        return hashlib.sha256("|".join(parts).encode()).hexdigest()

    def handle(self) -> tuple[str, str]:
        """What `reopen` needs to open this source again in another process: its location and,
        for a SQLite file, the URI this one reads (the private copy, if one was taken)."""
        return self.location, self._uri

    @classmethod
    def reopen(cls, location: str, uri: str) -> Source:
        """The source of `handle()` in another process; the private copy, if any, stays the
        opener's to delete (it outlives this reader)."""
        if not uri:
            return cls(location)
        other = object.__new__(cls)
        other.location, other._uri, other.path = location, uri, None
        other._engine = other._conn = other._copy_dir = None
        other.columns = {}
        other._sqlite = sqlite3.connect(uri, uri=True, check_same_thread=False)
        other._sqlite.execute("PRAGMA query_only = ON")
        other._inspect()
        return other

    def twin(self) -> Source:
        """Another connection to the same source (the same private copy, if one was taken),
        for a second thread; closing it leaves this one and the copy alone."""
        if self._sqlite is None:
            return Source(self.location)
        other = object.__new__(Source)
        other.__dict__.update(self.__dict__)
        other._copy_dir = None
        other._sqlite = sqlite3.connect(self._uri, uri=True, check_same_thread=False)
        other._sqlite.execute("PRAGMA query_only = ON")
        return other

    def close(self) -> None:
        if self._sqlite is not None:
            self._sqlite.close()
        if self._copy_dir is not None:
            self._copy_dir.cleanup()
        if self._conn is not None:
            self._conn.close()
            self._engine.dispose()


def _one_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
