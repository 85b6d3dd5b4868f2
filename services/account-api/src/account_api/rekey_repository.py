"""The rows `account-api rekey` re-encrypts, in key-ordered, locked batches (synchronous: the
rekey command is a one-shot CLI, not part of the async service)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import text
from sqlalchemy.orm import Session


@dataclass(frozen=True, slots=True)
class SecretColumn:
    """A column holding ciphertexts: a ciphertext itself (`text`), a JSON document (`jsonb`) or
    the outbox's JSON bytes (`body`); `where` picks the rows that may hold one."""

    table: str
    key: str
    column: str
    kind: Literal["text", "jsonb", "body"]
    where: str


SECRET_COLUMNS: tuple[SecretColumn, ...] = (
    SecretColumn(
        "users",
        "id",
        "two_factor_secret_enc",
        "text",
        "two_factor_secret_enc IS NOT NULL",
    ),
    SecretColumn(
        "accounts",
        "id",
        "integration_config",
        "jsonb",
        "integration_config IS NOT NULL",
    ),
    SecretColumn("pending_links", "id", "config", "jsonb", "TRUE"),
    SecretColumn(
        "legacy_schwab_settings",
        "id",
        "app_secret_enc",
        "text",
        "app_secret_enc IS NOT NULL",
    ),
    SecretColumn(
        "legacy_schwab_settings",
        "id",
        "access_token_enc",
        "text",
        "access_token_enc IS NOT NULL",
    ),
    SecretColumn(
        "legacy_schwab_settings",
        "id",
        "refresh_token_enc",
        "text",
        "refresh_token_enc IS NOT NULL",
    ),
    SecretColumn(
        "migration_journal", "id", "before", "jsonb", "before::text LIKE '%\\_enc\"%'"
    ),
    SecretColumn("outbox", "seq", "body", "body", "published_at IS NULL"),
)


class SecretRowsRepository:
    def __init__(self, session: Session) -> None:
        self._session = session

    def tables(self) -> set[str]:
        rows = self._session.execute(
            text("SELECT tablename FROM pg_tables WHERE schemaname = current_schema()")
        )
        return {r[0] for r in rows}

    def after(self, c: SecretColumn, last: int, limit: int) -> list[tuple[int, Any]]:
        """The next batch of (key, value) after `last`, locked until the commit."""
        rows = self._session.execute(
            text(
                f"SELECT {c.key}, {c.column} FROM {c.table} WHERE {c.key} > :last AND ({c.where})"
                f" ORDER BY {c.key} LIMIT :limit FOR UPDATE"
            ),
            {"last": last, "limit": limit},
        )
        return [(r[0], r[1]) for r in rows.all()]

    def set(self, c: SecretColumn, key: int, value: Any) -> None:
        cast = "CAST(:v AS jsonb)" if c.kind == "jsonb" else ":v"
        self._session.execute(
            text(f"UPDATE {c.table} SET {c.column} = {cast} WHERE {c.key} = :k"),
            {"v": json.dumps(value) if c.kind == "jsonb" else value, "k": key},
        )
