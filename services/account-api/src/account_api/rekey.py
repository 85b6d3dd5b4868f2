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
from sqlalchemy import create_engine
from sqlalchemy.orm import Session

from account_api.config import Settings
from account_api.integrations import lifecycle
from account_api.rekey_repository import (
    SECRET_COLUMNS,
    SecretColumn,
    SecretRowsRepository,
)

ENC_SUFFIX = "_enc"


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


def _rotated(
    column: SecretColumn, value: Any, rotate: Callable[[str], str]
) -> Any | None:
    """The column's new value, or None when it holds no secret."""
    if column.kind == "text":
        return rotate(value)
    if (
        column.table == "accounts"
    ):  # an integration config: the lifecycle knows its secrets
        return lifecycle.secrets_reencrypted(value, rotate)
    doc = json.loads(bytes(value)) if column.kind == "body" else value
    doc, changed = rotate_json(doc, rotate)
    if not changed:
        return None
    return (
        json.dumps(doc, separators=(",", ":")).encode()
        if column.kind == "body"
        else doc
    )


def rekey(database_url: str, secrets: SecretBox, batch: int = 500) -> dict[str, int]:
    """Rotate every encrypted value; returns counts per table."""
    engine = create_engine(database_url)
    counts: dict[str, int] = {}
    try:
        with Session(engine) as session:
            rows = SecretRowsRepository(session)
            present = rows.tables()
            for column in SECRET_COLUMNS:
                if column.table not in present:
                    continue
                counts.setdefault(column.table, 0)
                last = 0
                while batch_rows := rows.after(column, last, batch):
                    for key, value in batch_rows:
                        last = key
                        new = _rotated(column, value, secrets.rotate)
                        if new is not None:
                            rows.set(column, key, new)
                            counts[column.table] += 1
                    session.commit()
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
