"""API models of the integration routes. Tokens are never accepted from clients: unknown
fields are rejected, so `access_token` in a request is a 422."""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any, Literal

from brokerlink_shared.contracts.values import (
    IB_ACCOUNT_CODE,
    ClientId,
    GatewayAddress,
    Port,
    validate_host,
)
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class IBConfigIn(_In):
    host: Annotated[str, Field(min_length=1, max_length=253)]
    port: Port
    client_id: ClientId
    account_code: Annotated[str, Field(pattern=IB_ACCOUNT_CODE)] | None = None
    read_only: bool = True
    backups: (
        Annotated[
            list[GatewayAddress],
            Field(
                max_length=8,
                description="tried in order when the main gateway is down; "
                "absent keeps the stored list, [] clears it",
            ),
        ]
        | None
    ) = None

    @field_validator("host")
    @classmethod
    def _host(cls, value: str) -> str:
        return validate_host(value)

    @field_validator("read_only")
    @classmethod
    def _read_only(cls, value: bool) -> bool:
        if not value:
            raise ValueError("brokerlink only uses the IB API read-only")
        return value


class SchwabConfigIn(_In):
    app_key: (
        Annotated[
            str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._-]+$")
        ]
        | None
    ) = None
    app_secret: Annotated[SecretStr, Field(min_length=1, max_length=256)] | None = None
    account_number: Annotated[str, Field(pattern=r"^\d{4,12}$")] | None = None
    account_hash: (
        Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9]+$")]
        | None
    ) = None


class IBIntegrationIn(_In):
    type: Literal["IB"]
    config: IBConfigIn


class SchwabIntegrationIn(_In):
    type: Literal["SCHWAB"]
    config: SchwabConfigIn


IntegrationIn = Annotated[
    IBIntegrationIn | SchwabIntegrationIn, Field(discriminator="type")
]


class SyncOut(BaseModel):
    """One account's sync facts, identical in the account list, its integration and the
    health page: the UI words them with one formatter."""

    status: str
    last_success_at: datetime | None = Field(description="newest balance recorded")
    last_attempt_at: datetime | None = Field(description="newest refresh asked for")
    last_failure_at: datetime | None = Field(description="newest refresh that failed")
    last_attempt: Literal["pending", "succeeded", "failed"] | None = Field(
        description="how the newest refresh ended (pending: still running)"
    )
    last_error: str | None
    last_error_code: str | None
    signed_in: bool | None = Field(
        description="Schwab: tokens are stored; null for other brokers"
    )


class IntegrationOut(BaseModel):
    type: Literal["IB", "SCHWAB"] | None
    config: dict[str, Any] | None
    status: str
    sync: SyncOut | None = None
    refresh_id: uuid.UUID | None = Field(
        default=None,
        description="the first refresh this change started (poll "
        "/integration/refresh/{refresh_id}); null when none was needed",
    )
    last_error: str | None = None
    last_error_code: str | None = None
    last_refresh_at: datetime | None = None
    last_success_at: datetime | None = None
    last_connected_at: datetime | None = None
    token_access_expires_at: datetime | None = None
    token_refresh_expires_at: datetime | None = None


class TestResultOut(BaseModel):
    success: bool
    message: str
    code: str | None = Field(
        default=None, description="the broker's or connector's error code on failure"
    )


class RefreshOut(BaseModel):
    refresh_id: uuid.UUID
    status: Literal["pending", "succeeded", "failed"]
    balance: Decimal | None = None
    updated_at: datetime | None = None
    message: str | None = None


class RefreshJobOut(BaseModel):
    job_id: uuid.UUID
    total: int
    done: int
    failed: int
    pending: int
    created_at: datetime


class HealthRowOut(BaseModel):
    account_id: int
    account_name: str
    type: str
    status: str
    sync: SyncOut
    last_success_at: datetime | None
    last_refresh_at: datetime | None
    last_error: str | None
    last_error_code: str | None
    token_access_expires_at: datetime | None
    token_refresh_expires_at: datetime | None


class PositionOut(BaseModel):
    symbol: str
    sec_type: str
    currency: str
    quantity: Decimal
    average_cost: Decimal | None
    market_price: Decimal | None
    market_value: Decimal | None
    unrealized_pnl: Decimal | None
    as_of: datetime


class CashOut(BaseModel):
    currency: str
    amount: Decimal
    as_of: datetime


class OAuthStartOut(BaseModel):
    authorize_url: str
    expires_at: datetime
