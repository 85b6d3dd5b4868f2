"""Tables written by the legacy-data migrator (`brokerlink-migrate`, services/migrator).

They mirror Alembic revision 0002 (`migrations/versions/..._0002_legacy_copies.py`) and live on
the same `Base` as `tables.py`, so importing this module adds them to `Base.metadata`.

- `legacy_ib_connections` / `legacy_schwab_settings`: copies of the legacy tracker's user-level
  integration tables, kept for backward compatibility and rollback (secrets encrypted with the
  shared SecretBox). `id` is the legacy row id; `outcome` says what the migrator did with the row
  (`linked`, `pending`, `conflict`, `skipped`).
- `migration_runs`: one row per apply of the migrator (status `running`, `applied`, `failed`).
- `migration_journal`: what a run inserted (`op='insert'`, `ids`) and the before-image of each
  row it updated (`op='update'`, `before`), so `--rollback` restores the state before the run.
- `migration_rows`: checksum of the source-derived content of each migrated legacy row, so a
  rerun skips rows that did not change (idempotency without comparing ciphertexts).
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.orm import Mapped, mapped_column

from account_api.tables import MONEY, BalanceHistory, Base


class LegacyIBConnection(Base):
    __tablename__ = "legacy_ib_connections"
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    user_legacy_id: Mapped[int] = mapped_column(BigInteger)
    user_id: Mapped[int | None] = mapped_column(BigInteger, index=True)
    name: Mapped[str | None] = mapped_column(Text)
    host: Mapped[str | None] = mapped_column(Text)
    port: Mapped[int | None] = mapped_column(Integer)
    client_id: Mapped[int | None] = mapped_column(Integer)
    target_account_legacy_id: Mapped[int | None] = mapped_column(BigInteger)
    target_account_id: Mapped[int | None] = mapped_column(BigInteger)
    is_connected: Mapped[bool | None] = mapped_column(Boolean)
    last_connected: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    account_balance: Mapped[Decimal | None] = mapped_column(MONEY)
    account_currency: Mapped[str | None] = mapped_column(Text)
    error: Mapped[str | None] = mapped_column(Text)
    outcome: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    migrated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )


class LegacySchwabSettings(Base):
    __tablename__ = "legacy_schwab_settings"
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    user_legacy_id: Mapped[int] = mapped_column(BigInteger)
    user_id: Mapped[int | None] = mapped_column(BigInteger, index=True)
    app_key: Mapped[str | None] = mapped_column(Text)
    app_secret_enc: Mapped[str | None] = mapped_column(Text)
    access_token_enc: Mapped[str | None] = mapped_column(Text)
    refresh_token_enc: Mapped[str | None] = mapped_column(Text)
    token_expires_at: Mapped[int | None] = mapped_column(BigInteger)
    outcome: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    migrated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )


class MigrationRun(Base):
    __tablename__ = "migration_runs"
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    status: Mapped[str] = mapped_column(String(16))
    source: Mapped[str] = mapped_column(Text)
    source_fingerprint: Mapped[str] = mapped_column(String(64))
    started_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    progress: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default="{}")
    report: Mapped[dict[str, Any] | None] = mapped_column(JSONB)


class MigrationJournal(Base):
    __tablename__ = "migration_journal"
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    run_id: Mapped[int] = mapped_column(
        ForeignKey("migration_runs.id", ondelete="CASCADE"), index=True
    )
    table_name: Mapped[str] = mapped_column(String(64))
    op: Mapped[str] = mapped_column(String(8))
    ids: Mapped[list[int] | None] = mapped_column(ARRAY(BigInteger))
    before: Mapped[dict[str, Any] | None] = mapped_column(JSONB)


class MigrationRow(Base):
    __tablename__ = "migration_rows"
    entity: Mapped[str] = mapped_column(String(32), primary_key=True)
    legacy_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    checksum: Mapped[str] = mapped_column(String(40))
    run_id: Mapped[int] = mapped_column(BigInteger, index=True)


# History rows are keyed by their legacy id (revision 0002 adds this index to a table of tables.py).
Index(
    "uq_history_legacy_id",
    BalanceHistory.__table__.c.legacy_id,
    unique=True,
    postgresql_where=text("legacy_id IS NOT NULL"),
)
