"""Request and answer shapes of the legacy routes (as old clients send and read them)."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from account_api.inputs import InputModel


class _LegacyIn(InputModel):
    # Old clients send extra fields (name, is_connected, ...): ignored, as the legacy app did.
    model_config = ConfigDict(extra="ignore")


class IBSettingsIn(_LegacyIn):
    host: str
    port: int
    client_id: int
    target_account_id: int | None = Field(
        default=None, ge=1, le=9_223_372_036_854_775_807
    )


class IBSettingsOut(BaseModel):
    configured: bool
    host: str | None = None
    port: int | None = None
    client_id: int | None = None
    target_account_id: int | None = Field(
        default=None, ge=1, le=9_223_372_036_854_775_807
    )
    is_connected: bool = False
    status: str | None = None
    last_connected: datetime | None = None
    account_balance: Decimal | None = None
    account_currency: str | None = None
    error: str | None = None
    accounts: list[dict[str, Any]] = []


class IBBalanceOut(BaseModel):
    balance: Decimal | None
    currency: str | None
    account_id: int | None
    last_updated: datetime | None
    accounts: list[dict[str, Any]]


class SchwabSettingsIn(_LegacyIn):
    app_key: str
    app_secret: str


class SchwabSettingsOut(BaseModel):
    configured: bool
    app_key: str | None = None
    has_tokens: bool = False
    token_expires_at: int | None = None
    accounts: list[dict[str, Any]] = []


class SchwabTokenStatusOut(BaseModel):
    configured: bool
    has_tokens: bool
    is_expired: bool
    needs_reauth: bool
    token_expires_at: int | None
    refresh_token_expires_at: int | None
    status: str | None
