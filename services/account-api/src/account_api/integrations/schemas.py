"""API models of the integration routes. The request body of each integration type comes from its
declaration (brokerlink_shared.contracts.plugins). Tokens are never accepted from clients:
unknown fields are rejected, so `access_token` in a request is a 422."""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Annotated, Any, Literal, Union

from brokerlink_shared.contracts.plugins import (
    PLUGINS,
    IBConfigIn,
    IntegrationPlugin,
    SchwabConfigIn,
)
from brokerlink_shared.subjects import Broker
from pydantic import BaseModel, Field, create_model

from account_api.inputs import InputModel

__all__ = [
    "IBConfigIn",
    "SchwabConfigIn",
]  # the legacy routes build IB and Schwab configs


class IntegrationRequest(InputModel):
    """Body of `PUT …/integration`: a `type` and that type's config (its declaration's
    `config_in`, which holds the validation). One subclass per declared type."""

    type: str
    config: BaseModel


def _request_model(plugin: IntegrationPlugin) -> type[IntegrationRequest]:
    name = plugin.short_label.replace(" ", "") + "IntegrationIn"
    return create_model(
        name,
        __base__=IntegrationRequest,
        # a Literal built at run time from the declaration: no static type to check
        type=(Literal[plugin.integration_type.value], ...),  # type: ignore[arg-type]
        config=(plugin.config_in, ...),
    )


REQUEST_MODELS: dict[Broker, type[IntegrationRequest]] = {
    kind: _request_model(plugin) for kind, plugin in PLUGINS.items()
}
IBIntegrationIn = REQUEST_MODELS[Broker.IB]
SchwabIntegrationIn = REQUEST_MODELS[Broker.SCHWAB]

if TYPE_CHECKING:
    IntegrationIn = IntegrationRequest
else:
    IntegrationIn = Annotated[
        Union[tuple(REQUEST_MODELS.values())],  # noqa: UP007 (a union built at run time)
        Field(discriminator="type"),
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
    type: Broker | None
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
