"""`account-api rekey`: re-encrypt every stored secret under the newest key, in small committed
batches, while the service keeps running (old keys stay in the list until this finishes)."""

from __future__ import annotations

import sys

from brokerlink_shared.crypto import SecretBox, SecretDecryptionError
from sqlalchemy import create_engine
from sqlalchemy.orm import Session

from account_api.config import Settings
from account_api.integrations import lifecycle
from account_api.rekey_repository import SecretRowsRepository


def rekey(database_url: str, secrets: SecretBox, batch: int = 500) -> dict[str, int]:
    """Rotate every encrypted field; returns counts per table."""
    engine = create_engine(database_url.replace("+psycopg", "+psycopg"))
    counts = {"accounts": 0, "users": 0, "pending_links": 0}
    with Session(engine) as session:
        rows_repo = SecretRowsRepository(session)
        last = 0
        while rows := rows_repo.integrated_accounts_after(last, batch):
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
        while users := rows_repo.users_with_2fa_after(last, batch):
            for user in users:
                assert user.two_factor_secret_enc is not None
                user.two_factor_secret_enc = secrets.rotate(user.two_factor_secret_enc)
                counts["users"] += 1
                last = user.id
            session.commit()
        for link_id, stored in rows_repo.pending_link_configs():
            config = lifecycle.secrets_reencrypted(stored, secrets.rotate)
            if config is not None:
                rows_repo.set_pending_link_config(link_id, config)
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
