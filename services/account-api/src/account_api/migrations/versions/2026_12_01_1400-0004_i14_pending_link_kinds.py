"""pending links say what kind of item they are and which suggestions the broker verified

Revision ID: 0004_i14
Revises: 0004_i18
Create Date: 2026-12-01 14:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0004_i14"
down_revision: str | None = "0004_i18"  # chained after main's head on merging
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # link: nothing says where it belongs; conflict: it disagrees with an account's own
    # settings (which were kept); quarantine: malformed, kept so a person can act on it.
    op.add_column(
        "pending_links",
        sa.Column("kind", sa.String(16), nullable=False, server_default="link"),
    )
    op.add_column(
        "pending_links",
        sa.Column(
            "verified_suggestions",
            postgresql.ARRAY(sa.BigInteger()),
            nullable=False,
            server_default="{}",
        ),
    )


def downgrade() -> None:
    op.drop_column("pending_links", "verified_suggestions")
    op.drop_column("pending_links", "kind")
