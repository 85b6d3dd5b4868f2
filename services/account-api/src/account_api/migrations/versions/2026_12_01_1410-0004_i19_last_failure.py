"""accounts remember when their last refresh failed (the UI's "last attempt" needs it)

Revision ID: 0004_i19
Revises: 0004_i15
Create Date: 2026-12-01 14:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004_i19"
down_revision: str | None = "0004_i15"  # chained after i15 on merging main
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "accounts",
        sa.Column("last_failure_at", sa.DateTime(timezone=True), nullable=True),
    )


def downgrade() -> None:
    op.drop_column("accounts", "last_failure_at")
