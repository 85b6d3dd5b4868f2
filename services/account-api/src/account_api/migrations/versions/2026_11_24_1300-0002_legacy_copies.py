"""legacy integration copies, migration runs and journal

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24 13:00:00

Tables written by `brokerlink-migrate` (services/migrator): copies of the legacy tracker's
user-level integration tables (secrets encrypted), the run journal that makes an import
resumable and reversible, and per-row checksums that make it idempotent. Also a unique index
on account_balance_history.legacy_id so history rows are keyed by their legacy id.
Declarations mirroring these tables: account_api.legacy_tables.
"""

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _timestamps() -> list[sa.Column[Any]]:
    return [
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column(
            "migrated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
    ]


def upgrade() -> None:
    op.create_table(
        "migration_runs",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("source", sa.Text(), nullable=False),
        sa.Column("source_fingerprint", sa.String(length=64), nullable=False),
        sa.Column(
            "started_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column(
            "progress",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default="{}",
            nullable=False,
        ),
        sa.Column("report", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_migration_runs")),
    )
    op.create_table(
        "migration_journal",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("run_id", sa.BigInteger(), nullable=False),
        sa.Column("table_name", sa.String(length=64), nullable=False),
        sa.Column("op", sa.String(length=8), nullable=False),
        sa.Column("ids", postgresql.ARRAY(sa.BigInteger()), nullable=True),
        sa.Column("before", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.ForeignKeyConstraint(
            ["run_id"],
            ["migration_runs.id"],
            name=op.f("fk_migration_journal_run_id_migration_runs"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_migration_journal")),
    )
    op.create_index(
        op.f("ix_migration_journal_run_id"),
        "migration_journal",
        ["run_id"],
        unique=False,
    )
    op.create_table(
        "migration_rows",
        sa.Column("entity", sa.String(length=32), nullable=False),
        sa.Column("legacy_id", sa.BigInteger(), nullable=False),
        sa.Column("checksum", sa.String(length=40), nullable=False),
        sa.Column("run_id", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("entity", "legacy_id", name=op.f("pk_migration_rows")),
    )
    op.create_index(
        op.f("ix_migration_rows_run_id"), "migration_rows", ["run_id"], unique=False
    )
    op.create_table(
        "legacy_ib_connections",
        sa.Column("id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("user_legacy_id", sa.BigInteger(), nullable=False),
        sa.Column("user_id", sa.BigInteger(), nullable=True),
        sa.Column("name", sa.Text(), nullable=True),
        sa.Column("host", sa.Text(), nullable=True),
        sa.Column("port", sa.Integer(), nullable=True),
        sa.Column("client_id", sa.Integer(), nullable=True),
        sa.Column("target_account_legacy_id", sa.BigInteger(), nullable=True),
        sa.Column("target_account_id", sa.BigInteger(), nullable=True),
        sa.Column("is_connected", sa.Boolean(), nullable=True),
        sa.Column("last_connected", sa.DateTime(timezone=True), nullable=True),
        sa.Column("account_balance", sa.Numeric(precision=20, scale=4), nullable=True),
        sa.Column("account_currency", sa.Text(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        *_timestamps(),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_legacy_ib_connections")),
    )
    op.create_index(
        op.f("ix_legacy_ib_connections_user_id"),
        "legacy_ib_connections",
        ["user_id"],
        unique=False,
    )
    op.create_table(
        "legacy_schwab_settings",
        sa.Column("id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("user_legacy_id", sa.BigInteger(), nullable=False),
        sa.Column("user_id", sa.BigInteger(), nullable=True),
        sa.Column("app_key", sa.Text(), nullable=True),
        sa.Column("app_secret_enc", sa.Text(), nullable=True),
        sa.Column("access_token_enc", sa.Text(), nullable=True),
        sa.Column("refresh_token_enc", sa.Text(), nullable=True),
        sa.Column("token_expires_at", sa.BigInteger(), nullable=True),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        *_timestamps(),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_legacy_schwab_settings")),
    )
    op.create_index(
        op.f("ix_legacy_schwab_settings_user_id"),
        "legacy_schwab_settings",
        ["user_id"],
        unique=False,
    )
    op.create_index(
        "uq_history_legacy_id",
        "account_balance_history",
        ["legacy_id"],
        unique=True,
        postgresql_where=sa.text("legacy_id IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_index("uq_history_legacy_id", table_name="account_balance_history")
    op.drop_index(
        op.f("ix_legacy_schwab_settings_user_id"), table_name="legacy_schwab_settings"
    )
    op.drop_table("legacy_schwab_settings")
    op.drop_index(
        op.f("ix_legacy_ib_connections_user_id"), table_name="legacy_ib_connections"
    )
    op.drop_table("legacy_ib_connections")
    op.drop_index(op.f("ix_migration_rows_run_id"), table_name="migration_rows")
    op.drop_table("migration_rows")
    op.drop_index(op.f("ix_migration_journal_run_id"), table_name="migration_journal")
    op.drop_table("migration_journal")
    op.drop_table("migration_runs")
