"""refreshes remember the integration version they were asked for

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-24 14:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "refreshes", sa.Column("integration_version", sa.Integer(), nullable=True)
    )


def downgrade() -> None:
    op.drop_column("refreshes", "integration_version")
