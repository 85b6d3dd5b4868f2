"""`account-api rekey`: re-encrypt every stored secret under the newest key, in small committed
batches, while the service keeps running (old keys stay in the list until this finishes)."""

from __future__ import annotations

import json
import sys

from brokerlink_shared.crypto import SecretBox, SecretDecryptionError
from sqlalchemy import create_engine, select, text
from sqlalchemy.orm import Session

from account_api.config import Settings
from account_api.integrations import lifecycle
from account_api.tables import Account, User


def rekey(database_url: str, secrets: SecretBox, batch: int = 500) -> dict[str, int]:
    """Rotate every encrypted field; returns counts per table."""
    engine = create_engine(database_url.replace("+psycopg", "+psycopg"))
    counts = {"accounts": 0, "users": 0, "pending_links": 0}
    with Session(engine) as session:
        last = 0
        while (
            rows := session.execute(
                select(Account)
                .where(Account.id > last, Account.integration_config.is_not(None))
                .order_by(Account.id)
                .limit(batch)
                .with_for_update()
            )
            .scalars()
            .all()
        ):
            for account in rows:
                config = lifecycle.secrets_reencrypted(
                    account.integration_config or {}, secrets.rotate
                )
                if config is not None:
                    account.integration_config = config
                    counts["accounts"] += 1
                last = account.id
            session.commit()
        last = 0
        while (
            users := session.execute(
                select(User)
                .where(User.id > last, User.two_factor_secret_enc.is_not(None))
                .order_by(User.id)
                .limit(batch)
                .with_for_update()
            )
            .scalars()
            .all()
        ):
            for user in users:
                assert user.two_factor_secret_enc is not None
                user.two_factor_secret_enc = secrets.rotate(user.two_factor_secret_enc)
                counts["users"] += 1
                last = user.id
            session.commit()
        for row in session.execute(text("SELECT id, config FROM pending_links")).all():
            config = lifecycle.secrets_reencrypted(row.config, secrets.rotate)
            if config is not None:
                session.execute(
                    text(
                        "UPDATE pending_links SET config = CAST(:c AS jsonb) WHERE id = :id"
                    ),
                    {"c": json.dumps(config), "id": row.id},
                )
                counts["pending_links"] += 1
        session.commit()
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
