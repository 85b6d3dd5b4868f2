"""find overdue refreshes without scanning every refresh ever asked

Revision ID: 0004_i17
Revises: 0004_i14
Create Date: 2026-12-01 14:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004_i17"
down_revision: str | None = "0004_i14"  # chained after i14 on merging main
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index(
        "ix_refreshes_pending",
        "refreshes",
        ["requested_at"],
        unique=False,
        postgresql_where=sa.text("status = 'pending'"),
    )


def downgrade() -> None:
    op.drop_index("ix_refreshes_pending", table_name="refreshes")
