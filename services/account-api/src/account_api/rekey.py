"""`account-api rekey`: re-encrypt every stored secret under the newest key, in small committed
batches, while the service keeps running (old keys stay in the list until this finishes).

"Every" means wherever a ciphertext is stored: the users' TOTP secrets, integration configs,
pending links, the migrator's encrypted legacy copies and its journal's before-images (which
rollback writes back), and the outbox events not published yet. In JSON values every string
under a key ending in `_enc` is a ciphertext, at any depth. After this, the old key can go."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any

from brokerlink_shared.crypto import SecretBox, SecretDecryptionError
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Connection

from account_api.config import Settings

ENC_SUFFIX = "_enc"

# (table, key column, column, kind, filter): kind "text" is a ciphertext column, "jsonb" a
# JSON document, "body" the outbox's JSON bytes.
TARGETS: list[tuple[str, str, str, str, str]] = [
    (
        "users",
        "id",
        "two_factor_secret_enc",
        "text",
        "two_factor_secret_enc IS NOT NULL",
    ),
    ("accounts", "id", "integration_config", "jsonb", "integration_config IS NOT NULL"),
    ("pending_links", "id", "config", "jsonb", "TRUE"),
    (
        "legacy_schwab_settings",
        "id",
        "app_secret_enc",
        "text",
        "app_secret_enc IS NOT NULL",
    ),
    (
        "legacy_schwab_settings",
        "id",
        "access_token_enc",
        "text",
        "access_token_enc IS NOT NULL",
    ),
    (
        "legacy_schwab_settings",
        "id",
        "refresh_token_enc",
        "text",
        "refresh_token_enc IS NOT NULL",
    ),
    ("migration_journal", "id", "before", "jsonb", "before::text LIKE '%\\_enc\"%'"),
    ("outbox", "seq", "body", "body", "published_at IS NULL"),
]


def rotate_json(value: Any, rotate: Callable[[str], str]) -> tuple[Any, bool]:
    """`value` with every string under an `*_enc` key rotated; (new value, changed)."""
    if isinstance(value, dict):
        changed = False
        out: dict[str, Any] = {}
        for key, item in value.items():
            if key.endswith(ENC_SUFFIX) and isinstance(item, str) and item:
                out[key], changed = rotate(item), True
            else:
                out[key], inner = rotate_json(item, rotate)
                changed = changed or inner
        return out, changed
    if isinstance(value, list):
        items = [rotate_json(item, rotate) for item in value]
        return [i[0] for i in items], any(i[1] for i in items)
    return value, False


def _rekey_column(
    conn: Connection,
    secrets: SecretBox,
    table: str,
    key: str,
    column: str,
    kind: str,
    where: str,
    batch: int,
) -> int:
    count, last = 0, 0
    while rows := conn.execute(
        text(
            f"SELECT {key}, {column} FROM {table} WHERE {key} > :last AND ({where})"
            f" ORDER BY {key} LIMIT :batch FOR UPDATE"
        ),
        {"last": last, "batch": batch},
    ).all():
        for row_key, value in rows:
            last = row_key
            if kind == "text":
                new: Any = secrets.rotate(value)
            else:
                doc = json.loads(bytes(value)) if kind == "body" else value
                doc, changed = rotate_json(doc, secrets.rotate)
                if not changed:
                    continue
                new = (
                    json.dumps(doc, separators=(",", ":")).encode()
                    if kind == "body"
                    else json.dumps(doc)
                )
            cast = "CAST(:v AS jsonb)" if kind == "jsonb" else ":v"
            conn.execute(
                text(f"UPDATE {table} SET {column} = {cast} WHERE {key} = :k"),
                {"v": new, "k": row_key},
            )
            count += 1
        conn.commit()
    return count


def rekey(database_url: str, secrets: SecretBox, batch: int = 500) -> dict[str, int]:
    """Rotate every encrypted value; returns counts per table."""
    engine = create_engine(database_url)
    counts: dict[str, int] = {}
    try:
        with engine.connect() as conn:
            present = {
                r[0]
                for r in conn.execute(
                    text(
                        "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()"
                    )
                )
            }
            conn.commit()
            for table, key, column, kind, where in TARGETS:
                if table not in present:
                    continue
                counts[table] = counts.get(table, 0) + _rekey_column(
                    conn, secrets, table, key, column, kind, where, batch
                )
    finally:
        engine.dispose()
    return counts


def main() -> None:
    settings = Settings()
    try:
        secrets = SecretBox.from_setting(settings.encryption_keys.get_secret_value())
        counts = rekey(settings.database_url, secrets)
    except SecretDecryptionError:
        sys.stderr.write(
            "rekey: a stored secret matches none of BROKERLINK_ENCRYPTION_KEYS; keep the old key in the list\n"
        )
        sys.exit(2)
    sys.stdout.write(f"rekey: re-encrypted {counts}\n")
