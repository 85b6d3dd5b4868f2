"""account security: gateway endpoint owners, sign-in sessions (refresh-token families),
revocations, throttling windows, two-factor recovery codes and replay guard

Revision ID: 0004_i15
Revises: 0003
Create Date: 2026-12-01 14:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0004_i15"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "gateway_endpoints",
        sa.Column("address", sa.String(253), nullable=False),
        sa.Column("port", sa.Integer(), nullable=False),
        sa.Column(
            "user_id",
            sa.BigInteger(),
            sa.ForeignKey(
                "users.id",
                ondelete="CASCADE",
                name="fk_gateway_endpoints_user_id_users",
            ),
            nullable=False,
        ),
        sa.Column("created_at", _TS, server_default=sa.func.now(), nullable=False),
        sa.PrimaryKeyConstraint("address", "port", name="pk_gateway_endpoints"),
    )
    op.create_index("ix_gateway_endpoints_user_id", "gateway_endpoints", ["user_id"])
    op.create_table(
        "auth_sessions",
        sa.Column("id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column(
            "user_id",
            sa.BigInteger(),
            sa.ForeignKey(
                "users.id", ondelete="CASCADE", name="fk_auth_sessions_user_id_users"
            ),
            nullable=False,
        ),
        sa.Column("token_hash", sa.LargeBinary(), nullable=False),
        sa.Column("generation", sa.Integer(), server_default="0", nullable=False),
        sa.Column("created_at", _TS, server_default=sa.func.now(), nullable=False),
        sa.Column("last_used_at", _TS, server_default=sa.func.now(), nullable=False),
        sa.Column("expires_at", _TS, nullable=False),
        sa.Column("revoked_at", _TS, nullable=True),
        sa.Column("revoked_reason", sa.String(32), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_auth_sessions"),
    )
    op.create_index("ix_auth_sessions_user_id", "auth_sessions", ["user_id"])
    op.create_table(
        "auth_revocations",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("user_id", sa.BigInteger(), nullable=False),
        sa.Column("session_id", postgresql.UUID(as_uuid=True), nullable=True),
        sa.Column("not_before", _TS, nullable=True),
        sa.Column("created_at", _TS, server_default=sa.func.now(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_auth_revocations"),
    )
    op.create_index(
        "ix_auth_revocations_created_at", "auth_revocations", ["created_at"]
    )
    op.create_table(
        "auth_throttle",
        sa.Column("key", sa.String(128), nullable=False),
        sa.Column("window_start", _TS, nullable=False),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("key", name="pk_auth_throttle"),
    )
    op.create_table(
        "two_factor_recovery_codes",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column(
            "user_id",
            sa.BigInteger(),
            sa.ForeignKey(
                "users.id",
                ondelete="CASCADE",
                name="fk_two_factor_recovery_codes_user_id_users",
            ),
            nullable=False,
        ),
        sa.Column("code_hash", sa.String(64), nullable=False),
        sa.Column("used_at", _TS, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_two_factor_recovery_codes"),
    )
    op.create_index(
        "ix_two_factor_recovery_codes_user_id",
        "two_factor_recovery_codes",
        ["user_id"],
    )
    op.add_column(
        "users", sa.Column("two_factor_last_step", sa.BigInteger(), nullable=True)
    )
    # Every worker learns of revocations from auth_revocations; these triggers write it for
    # every path that ends a session (sign-out, reuse, password change) or a user (any delete).
    op.execute(
        """
        CREATE FUNCTION auth_session_revoked() RETURNS trigger AS $$
        BEGIN
            INSERT INTO auth_revocations (user_id, session_id) VALUES (NEW.user_id, NEW.id);
            RETURN NEW;
        END $$ LANGUAGE plpgsql;
        CREATE TRIGGER auth_session_revoked AFTER UPDATE OF revoked_at ON auth_sessions
            FOR EACH ROW WHEN (OLD.revoked_at IS NULL AND NEW.revoked_at IS NOT NULL)
            EXECUTE FUNCTION auth_session_revoked();
        CREATE FUNCTION auth_user_deleted() RETURNS trigger AS $$
        BEGIN
            INSERT INTO auth_revocations (user_id, not_before) VALUES (OLD.id, now());
            RETURN OLD;
        END $$ LANGUAGE plpgsql;
        CREATE TRIGGER auth_user_deleted AFTER DELETE ON users
            FOR EACH ROW EXECUTE FUNCTION auth_user_deleted();
        """
    )


def downgrade() -> None:
    op.execute(
        """
        DROP TRIGGER auth_user_deleted ON users;
        DROP FUNCTION auth_user_deleted();
        DROP TRIGGER auth_session_revoked ON auth_sessions;
        DROP FUNCTION auth_session_revoked();
        """
    )
    op.drop_column("users", "two_factor_last_step")
    op.drop_table("two_factor_recovery_codes")
    op.drop_table("auth_throttle")
    op.drop_table("auth_revocations")
    op.drop_table("auth_sessions")
    op.drop_table("gateway_endpoints")
