"""the outbox relay polls instead of being NOTIFYed on every insert

PostgreSQL serialises the commits of transactions that sent a NOTIFY (a database-wide lock
held across the commit's WAL flush), so a trigger on every outbox insert capped every
command-staging transaction at one fsync at a time.

Revision ID: 0004_i18
Revises: 0004_i15
Create Date: 2026-12-01 14:00:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0004_i18"
down_revision: str | None = "0004_i19"  # chained after i19 on merge
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute(
        "DROP TRIGGER IF EXISTS outbox_notify ON outbox; DROP FUNCTION IF EXISTS outbox_notify()"
    )


def downgrade() -> None:
    op.execute(
        """
        CREATE FUNCTION outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN PERFORM pg_notify('brokerlink_outbox', ''); RETURN NULL; END $$;
        CREATE TRIGGER outbox_notify AFTER INSERT ON outbox
            FOR EACH STATEMENT EXECUTE FUNCTION outbox_notify();
        """
    )
