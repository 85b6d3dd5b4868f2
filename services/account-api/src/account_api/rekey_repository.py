"""The rows `account-api rekey` re-encrypts, in id-ordered batches (synchronous: the rekey
command is a one-shot CLI, not part of the async service)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.orm import Session

from account_api.tables import Account, User


class SecretRowsRepository:
    def __init__(self, session: Session) -> None:
        self._session = session

    def integrated_accounts_after(self, last_id: int, limit: int) -> Sequence[Account]:
        """The next batch of accounts with an integration config, locked."""
        return (
            self._session.execute(
                select(Account)
                .where(Account.id > last_id, Account.integration_config.is_not(None))
                .order_by(Account.id)
                .limit(limit)
                .with_for_update()
            )
            .scalars()
            .all()
        )

    def users_with_2fa_after(self, last_id: int, limit: int) -> Sequence[User]:
        """The next batch of users with a TOTP secret, locked."""
        return (
            self._session.execute(
                select(User)
                .where(User.id > last_id, User.two_factor_secret_enc.is_not(None))
                .order_by(User.id)
                .limit(limit)
                .with_for_update()
            )
            .scalars()
            .all()
        )

    def pending_link_configs(self) -> list[tuple[int, dict[str, Any]]]:
        rows = self._session.execute(text("SELECT id, config FROM pending_links"))
        return [(row.id, row.config) for row in rows.all()]

    def set_pending_link_config(self, link_id: int, config: dict[str, Any]) -> None:
        self._session.execute(
            text("UPDATE pending_links SET config = CAST(:c AS jsonb) WHERE id = :id"),
            {"c": json.dumps(config), "id": link_id},
        )
