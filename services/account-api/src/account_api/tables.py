"""Every table account-api owns. Alembic migrations are the source of the schema; these
declarations mirror them for queries (tests compare both)."""

from __future__ import annotations

import uuid
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Date,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    Numeric,
    String,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, UUID
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}
MONEY = Numeric(20, 4)
QTY = Numeric(24, 8)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


def _ts(nullable: bool = True) -> Mapped[datetime | None]:
    return mapped_column(DateTime(timezone=True), nullable=nullable)


class User(Base):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    email: Mapped[str] = mapped_column(String(254))
    name: Mapped[str] = mapped_column(String(200))
    password_hash: Mapped[str] = mapped_column(String(255))
    base_currency: Mapped[str] = mapped_column(String(3), server_default="USD")
    two_factor_secret_enc: Mapped[str | None] = mapped_column(Text)
    two_factor_enabled: Mapped[bool] = mapped_column(
        Boolean, server_default=text("false")
    )
    two_factor_last_step: Mapped[int | None] = mapped_column(BigInteger)
    legacy_id: Mapped[int | None] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )
    __table_args__ = (
        Index("uq_users_email_lower", func.lower(email), unique=True),
        Index("uq_users_legacy_id", legacy_id, unique=True),
    )


class Account(Base):
    __tablename__ = "accounts"
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    user_id: Mapped[int] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), index=True
    )
    name: Mapped[str] = mapped_column(String(200))
    currency: Mapped[str] = mapped_column(String(3))
    account_type: Mapped[str] = mapped_column(String(16), server_default="INVESTMENT")
    account_number: Mapped[str | None] = mapped_column(String(64))
    original_capital: Mapped[Decimal] = mapped_column(MONEY, server_default="0")
    current_balance: Mapped[Decimal] = mapped_column(MONEY, server_default="0")
    last_updated: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    balance_as_of: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    integration_type: Mapped[str | None] = mapped_column(String(16))
    integration_config: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    integration_version: Mapped[int] = mapped_column(Integer, server_default="0")
    integration_status: Mapped[str] = mapped_column(
        String(32), server_default="not_configured"
    )
    integration_status_at: Mapped[datetime | None] = mapped_column(
        DateTime(timezone=True)
    )
    last_error: Mapped[str | None] = mapped_column(Text)
    last_error_code: Mapped[str | None] = mapped_column(String(64))
    last_refresh_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_success_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_failure_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_connected_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    token_access_expires_at: Mapped[datetime | None] = mapped_column(
        DateTime(timezone=True)
    )
    token_refresh_expires_at: Mapped[datetime | None] = mapped_column(
        DateTime(timezone=True)
    )
    legacy_id: Mapped[int | None] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )
    __table_args__ = (
        Index(
            "ix_accounts_integrated",
            integration_type,
            postgresql_where=text("integration_type IS NOT NULL"),
        ),
        Index("uq_accounts_legacy_id", legacy_id, unique=True),
    )


class BalanceHistory(Base):
    __tablename__ = "account_balance_history"
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    account_id: Mapped[int] = mapped_column(
        ForeignKey("accounts.id", ondelete="CASCADE")
    )
    date: Mapped[date] = mapped_column(Date)
    balance: Mapped[Decimal] = mapped_column(MONEY)
    note: Mapped[str | None] = mapped_column(Text)
    source: Mapped[str] = mapped_column(String(16), server_default="MANUAL")
    as_of: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    legacy_id: Mapped[int | None] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )
    __table_args__ = (
        UniqueConstraint("account_id", "date", name="uq_history_account_day"),
    )


class PositionSnapshot(Base):
    __tablename__ = "positions"
    account_id: Mapped[int] = mapped_column(
        ForeignKey("accounts.id", ondelete="CASCADE"), primary_key=True
    )
    symbol: Mapped[str] = mapped_column(String(64), primary_key=True)
    sec_type: Mapped[str] = mapped_column(String(16), primary_key=True)
    currency: Mapped[str] = mapped_column(String(3), primary_key=True)
    quantity: Mapped[Decimal] = mapped_column(QTY)
    average_cost: Mapped[Decimal | None] = mapped_column(QTY)
    market_price: Mapped[Decimal | None] = mapped_column(QTY)
    market_value: Mapped[Decimal | None] = mapped_column(MONEY)
    unrealized_pnl: Mapped[Decimal | None] = mapped_column(MONEY)
    as_of: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class CashSnapshot(Base):
    __tablename__ = "cash_balances"
    account_id: Mapped[int] = mapped_column(
        ForeignKey("accounts.id", ondelete="CASCADE"), primary_key=True
    )
    currency: Mapped[str] = mapped_column(String(3), primary_key=True)
    amount: Mapped[Decimal] = mapped_column(MONEY)
    as_of: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class AuditEntry(Base):
    __tablename__ = "audit_log"
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )
    actor: Mapped[str] = mapped_column(String(254))
    user_id: Mapped[int | None] = mapped_column(BigInteger, index=True)
    account_id: Mapped[int | None] = mapped_column(BigInteger, index=True)
    action: Mapped[str] = mapped_column(String(64))
    changed_fields: Mapped[list[str]] = mapped_column(
        ARRAY(String), server_default="{}"
    )
    request_id: Mapped[str | None] = mapped_column(String(128))
    detail: Mapped[dict[str, Any] | None] = mapped_column(JSONB)


class OutboxMessage(Base):
    __tablename__ = "outbox"
    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    event_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), unique=True)
    family: Mapped[str] = mapped_column(String(64))
    subject: Mapped[str] = mapped_column(String(255))
    partition_key: Mapped[str] = mapped_column(String(64))
    body: Mapped[bytes] = mapped_column(LargeBinary)
    correlation_id: Mapped[str | None] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )
    published_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    attempts: Mapped[int] = mapped_column(Integer, server_default="0")
    __table_args__ = (
        Index(
            "ix_outbox_unpublished", seq, postgresql_where=text("published_at IS NULL")
        ),
    )


class ProcessedEvent(Base):
    __tablename__ = "processed_events"
    event_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    consumer: Mapped[str] = mapped_column(String(64), primary_key=True)
    processed_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )


class RefreshJob(Base):
    __tablename__ = "refresh_jobs"
    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    user_id: Mapped[int | None] = mapped_column(BigInteger, index=True)
    total: Mapped[int] = mapped_column(Integer)
    trigger: Mapped[str] = mapped_column(String(16), server_default="user")
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )


class Refresh(Base):
    __tablename__ = "refreshes"
    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    account_id: Mapped[int] = mapped_column(
        ForeignKey("accounts.id", ondelete="CASCADE"), index=True
    )
    job_id: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True), index=True)
    integration_version: Mapped[int | None] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16), server_default="pending")
    balance: Mapped[Decimal | None] = mapped_column(MONEY)
    message: Mapped[str | None] = mapped_column(Text)
    requested_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )
    completed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    __table_args__ = (
        # the sweeper's query: refreshes still waiting for an answer, oldest first
        Index(
            "ix_refreshes_pending",
            "requested_at",
            postgresql_where=text("status = 'pending'"),
        ),
    )


class OAuthState(Base):
    __tablename__ = "oauth_states"
    nonce: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[int] = mapped_column(BigInteger)
    account_id: Mapped[int] = mapped_column(
        ForeignKey("accounts.id", ondelete="CASCADE")
    )
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class PendingLink(Base):
    """An integration the migrator could not attach to an account with certainty."""

    __tablename__ = "pending_links"
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    user_id: Mapped[int] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), index=True
    )
    integration_type: Mapped[str] = mapped_column(String(16))
    config: Mapped[dict[str, Any]] = mapped_column(JSONB)
    reason: Mapped[str] = mapped_column(Text)
    suggestions: Mapped[list[int]] = mapped_column(
        ARRAY(BigInteger), server_default="{}"
    )
    legacy_table: Mapped[str | None] = mapped_column(String(64))
    legacy_id: Mapped[int | None] = mapped_column(BigInteger)
    kind: Mapped[str] = mapped_column(String(16), server_default="link")
    verified_suggestions: Mapped[list[int]] = mapped_column(
        ARRAY(BigInteger), server_default="{}"
    )
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )
    __table_args__ = (
        UniqueConstraint("legacy_table", "legacy_id", name="uq_pending_links_legacy"),
    )


class SchedulerState(Base):
    """One row per periodic job; the replica whose UPDATE moves `next_run_at` runs it."""

    __tablename__ = "scheduler_state"
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    next_run_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class GatewayEndpoint(Base):
    """An IB Gateway address and port, owned by the first user who configured it."""

    __tablename__ = "gateway_endpoints"
    address: Mapped[str] = mapped_column(String(253), primary_key=True)
    port: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), index=True
    )
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )


class AuthSession(Base):
    """One sign-in: a refresh-token family. Only the newest token's hash is kept; presenting
    an older one revokes the family."""

    __tablename__ = "auth_sessions"
    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    user_id: Mapped[int] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), index=True
    )
    token_hash: Mapped[bytes] = mapped_column(LargeBinary)
    generation: Mapped[int] = mapped_column(Integer, server_default="0")
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )
    last_used_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    revoked_reason: Mapped[str | None] = mapped_column(String(32))


class AuthRevocation(Base):
    """Access tokens every worker must stop accepting: one session's, or all of a user's
    issued before `not_before`. No foreign key: it outlives a deleted user."""

    __tablename__ = "auth_revocations"
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    user_id: Mapped[int] = mapped_column(BigInteger)
    session_id: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))
    not_before: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), index=True
    )


class AuthThrottle(Base):
    """A fixed-window counter per throttled key (hashed e-mail, client address, user)."""

    __tablename__ = "auth_throttle"
    key: Mapped[str] = mapped_column(String(128), primary_key=True)
    window_start: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    count: Mapped[int] = mapped_column(Integer)


class RecoveryCode(Base):
    """A two-factor recovery code, stored as a hash; usable once."""

    __tablename__ = "two_factor_recovery_codes"
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    user_id: Mapped[int] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), index=True
    )
    code_hash: Mapped[str] = mapped_column(String(64))
    used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
