"""The event envelope and one model per event type.

Every event has the same envelope (id, type, schema version, time, user, account, correlation)
and a typed payload. `EVENT_TYPES` maps a type name to its model; `parse_event` validates bytes.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from decimal import Decimal
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from brokerlink_shared.contracts.plugins import IntegrationConnection
from brokerlink_shared.contracts.values import (
    CashBalance,
    IntegrationStatus,
    Position,
    Strict,
)
from brokerlink_shared.subjects import (
    BALANCE_UPDATED,
    INTEGRATION_CONFIGURED,
    INTEGRATION_REMOVED,
    INTEGRATION_STATUS,
    REFRESH_FAILED,
    REFRESH_REQUESTED,
    SCHWAB_TOKENS_ROTATED,
    Broker,
)

__all__ = [
    "EVENT_TYPES",
    "BalanceUpdated",
    "BalanceUpdatedPayload",
    "Event",
    "HealthReply",
    "IntegrationConfigured",
    "IntegrationConfiguredPayload",
    "IntegrationRemoved",
    "IntegrationRemovedPayload",
    "IntegrationStatusChanged",
    "IntegrationStatusPayload",
    "IntegrationTestReply",
    "IntegrationTestRequest",
    "RefreshFailed",
    "RefreshFailedPayload",
    "RefreshRequested",
    "RefreshRequestedPayload",
    "SchwabAccountNumber",
    "SchwabAccountNumbersReply",
    "SchwabAccountNumbersRequest",
    "SchwabOAuthExchangeReply",
    "SchwabOAuthExchangeRequest",
    "SchwabTokensRotated",
    "SchwabTokensRotatedPayload",
    "parse_event",
]


def _now() -> datetime:
    return datetime.now(UTC)


class Event(BaseModel):
    """The envelope every event on the bus carries."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    family: ClassVar[str]

    event_id: uuid.UUID = Field(default_factory=uuid.uuid4)
    type: str
    schema_version: Literal[1] = 1
    occurred_at: datetime = Field(default_factory=_now)
    user_id: int | None = None
    account_id: int | None = None
    correlation_id: str | None = Field(default=None, max_length=128)
    payload: Any

    def subject_broker(self) -> Broker | None:
        """The broker token for the subject, when the payload names one."""
        broker = getattr(self.payload, "broker", None)
        return Broker(broker) if broker else None


# ---- account-api -> connectors (stream COMMANDS) -------------------------------------------


class IntegrationConfiguredPayload(Strict):
    broker: Broker
    config: IntegrationConnection
    version: int = Field(
        ge=1, description="increases with every change of this account's integration"
    )


class IntegrationConfigured(Event):
    family: ClassVar[str] = INTEGRATION_CONFIGURED
    type: Literal["integration.configured"] = "integration.configured"
    payload: IntegrationConfiguredPayload


class IntegrationRemovedPayload(Strict):
    broker: Broker
    config: IntegrationConnection | None = None
    version: int | None = Field(
        default=None,
        ge=1,
        description="the account's integration version after the removal; a connector "
        "drops commands with an older one",
    )
    owner_deleted: bool = Field(
        default=False,
        # left out when false: a connector of the release before, whose contract rejects
        # unknown fields, keeps taking every other removal during a rolling upgrade
        exclude_if=lambda deleted: not deleted,
        description="the account's user is deleted with it (a migration rolled back): a "
        "connector lets go of what it kept for that user, such as an IB gateway's accounts",
    )


class IntegrationRemoved(Event):
    family: ClassVar[str] = INTEGRATION_REMOVED
    type: Literal["integration.removed"] = "integration.removed"
    payload: IntegrationRemovedPayload


class RefreshRequestedPayload(Strict):
    broker: Broker
    refresh_id: uuid.UUID
    job_id: uuid.UUID | None = None
    config: IntegrationConnection = Field(
        description="the config in force when the refresh was asked"
    )
    version: int | None = Field(
        default=None,
        ge=1,
        description="the integration version of `config`; a connector that already applied "
        "a newer one answers the refresh as stale",
    )


class RefreshRequested(Event):
    family: ClassVar[str] = REFRESH_REQUESTED
    type: Literal["refresh.requested"] = "refresh.requested"
    payload: RefreshRequestedPayload


# ---- connectors -> account-api (stream CONNECTOR_EVENTS) -----------------------------------


class BalanceUpdatedPayload(Strict):
    broker: Broker
    refresh_id: uuid.UUID | None = None
    job_id: uuid.UUID | None = None
    as_of: datetime
    currency: Annotated[str, Field(pattern=r"^[A-Z]{3}$")]
    balance: Decimal = Field(description="net liquidation value")
    cash_balance: Decimal | None = None
    cash: list[CashBalance] = []
    positions: list[Position] = []
    broker_account: str | None = Field(
        default=None, description="IB account code / Schwab number"
    )


class BalanceUpdated(Event):
    family: ClassVar[str] = BALANCE_UPDATED
    type: Literal["balance.updated"] = "balance.updated"
    payload: BalanceUpdatedPayload


class RefreshFailedPayload(Strict):
    broker: Broker
    refresh_id: uuid.UUID | None = None
    job_id: uuid.UUID | None = None
    code: str | None = Field(default=None, max_length=64)
    message: str = Field(max_length=2000)


class RefreshFailed(Event):
    family: ClassVar[str] = REFRESH_FAILED
    type: Literal["refresh.failed"] = "refresh.failed"
    payload: RefreshFailedPayload


class IntegrationStatusPayload(Strict):
    broker: Broker
    status: IntegrationStatus
    code: str | None = Field(
        default=None, max_length=64, description="e.g. IB 326, 1100, 502"
    )
    message: str | None = Field(default=None, max_length=2000)
    last_connected: datetime | None = None
    access_expires_at: datetime | None = None
    refresh_expires_at: datetime | None = None
    account_hash: str | None = None


class IntegrationStatusChanged(Event):
    family: ClassVar[str] = INTEGRATION_STATUS
    type: Literal["integration.status"] = "integration.status"
    payload: IntegrationStatusPayload


class SchwabTokensRotatedPayload(Strict):
    broker: Literal[Broker.SCHWAB] = Broker.SCHWAB
    app_key: str
    login: str | None = Field(
        default=None, description="the Schwab login the token belongs to"
    )
    account_ids: list[int] = Field(
        description="accounts sharing this login that should store it"
    )
    token_enc: str = Field(description="schwab-py token object as JSON, encrypted")
    access_expires_at: datetime
    refresh_expires_at: datetime


class SchwabTokensRotated(Event):
    family: ClassVar[str] = SCHWAB_TOKENS_ROTATED
    type: Literal["schwab.tokens.rotated"] = "schwab.tokens.rotated"
    payload: SchwabTokensRotatedPayload


EVENT_TYPES: dict[str, type[Event]] = {
    cls.model_fields["type"].default: cls
    for cls in (
        IntegrationConfigured,
        IntegrationRemoved,
        RefreshRequested,
        BalanceUpdated,
        RefreshFailed,
        IntegrationStatusChanged,
        SchwabTokensRotated,
    )
}


def parse_event(data: bytes | str | dict[str, Any]) -> Event:
    """Validate raw event data against the model its `type` names."""
    import orjson

    obj = orjson.loads(data) if isinstance(data, bytes | str) else data
    kind = obj.get("type") if isinstance(obj, dict) else None
    model = EVENT_TYPES.get(kind or "")
    if model is None:
        raise ValueError(f"unknown event type: {kind!r}")
    return model.model_validate(obj)


# ---- request/reply (core NATS, not persisted) ----------------------------------------------


class IntegrationTestRequest(Strict):
    broker: Broker
    account_id: int
    user_id: int
    config: IntegrationConnection
    timeout_s: float = Field(default=10.0, gt=0, le=60)


class IntegrationTestReply(Strict):
    success: bool
    message: str
    code: str | None = Field(
        default=None,
        max_length=64,
        description="why it failed, for clients to word (e.g. IB 502, timeout, reauth_required)",
    )


class SchwabOAuthExchangeRequest(Strict):
    """Ask the Schwab connector to trade an authorization code for tokens."""

    user_id: int
    account_id: int
    app_key: str
    app_secret_enc: str
    code_enc: str = Field(description="the one-time authorization code, encrypted")
    redirect_uri: str
    account_number: str | None = None


class SchwabOAuthExchangeReply(Strict):
    success: bool
    message: str
    token_enc: str | None = None
    account_hash: str | None = None
    login: str | None = Field(
        default=None, description="opaque id of the Schwab login that signed in"
    )
    visible_accounts: dict[str, str] = Field(
        default={}, description="account number -> hash of every account the login sees"
    )
    access_expires_at: datetime | None = None
    refresh_expires_at: datetime | None = None


class SchwabAccountNumbersRequest(Strict):
    """Which account numbers does this Schwab login see? The migrator asks it with a legacy
    login's tokens, to link user-level Schwab settings only to accounts Schwab confirms."""

    app_key: Annotated[str, Field(min_length=1, max_length=128)]
    app_secret_enc: str = Field(
        description="app secret, encrypted with the shared SecretBox"
    )
    token_enc: str = Field(description="schwab-py token object as JSON, encrypted")
    timeout_s: float = Field(default=5.0, gt=0, le=30)


class SchwabAccountNumber(Strict):
    account_number: str
    account_hash: str


class SchwabAccountNumbersReply(Strict):
    success: bool
    message: str
    accounts: list[SchwabAccountNumber] = []
    token_enc: str | None = Field(
        default=None,
        description="the token object after a refresh made while asking (encrypted); keep it",
    )


class HealthReply(Strict):
    service: str
    status: Literal["ok", "degraded"]
    detail: dict[str, Any] = {}
