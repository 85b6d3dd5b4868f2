"""API models of the account routes."""

from __future__ import annotations

import datetime as dt
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, field_validator

from account_api.currencies import validate_currency
from account_api.inputs import InputModel
from account_api.integrations.schemas import IntegrationIn, SyncOut

Money = Annotated[
    Decimal,
    Field(max_digits=20, decimal_places=4, ge=Decimal("-1e15"), le=Decimal("1e15")),
]


class AccountCreate(InputModel):
    name: Annotated[str, Field(min_length=1, max_length=200)]
    currency: Annotated[str, Field(min_length=3, max_length=3)]
    account_type: Literal["INVESTMENT", "BANK"] = "INVESTMENT"
    account_number: (
        Annotated[str, Field(max_length=64, pattern=r"^[A-Za-z0-9-]*$")] | None
    ) = None
    original_capital: Money = Decimal(0)
    current_balance: Money | None = None

    _currency = field_validator("currency")(
        classmethod(lambda _cls, v: validate_currency(v))
    )


class AccountUpdate(InputModel):
    name: Annotated[str, Field(min_length=1, max_length=200)] | None = None
    currency: Annotated[str, Field(min_length=3, max_length=3)] | None = None
    account_type: Literal["INVESTMENT", "BANK"] | None = None
    account_number: (
        Annotated[str, Field(max_length=64, pattern=r"^[A-Za-z0-9-]*$")] | None
    ) = None
    original_capital: Money | None = None
    current_balance: Money | None = None
    integration: IntegrationIn | None = Field(
        default=None, description="same body as PUT /api/accounts/{id}/integration"
    )
    remove_integration: bool = False

    @field_validator("currency")
    @classmethod
    def _currency(cls, value: str | None) -> str | None:
        return None if value is None else validate_currency(value)


class AccountOut(BaseModel):
    id: int
    name: str
    currency: str
    account_type: str
    account_number: str | None
    original_capital: Decimal
    current_balance: Decimal
    last_updated: datetime | None
    integration_type: str | None
    integration_config: dict[str, Any] | None
    integration_status: str
    last_error: str | None
    last_refresh_at: datetime | None
    sync: SyncOut | None = Field(
        description="sync facts of an integrated account (null without an integration)"
    )
    created_at: datetime
    updated_at: datetime


class CurrencyTotalOut(BaseModel):
    currency: str
    total: Decimal
    accounts: int


class TotalsOut(BaseModel):
    """Net worth across the user's accounts. No exchange rates are applied: `net_worth` is
    given only when every account is in one currency; otherwise read `by_currency`."""

    base_currency: str
    by_currency: list[CurrencyTotalOut]
    net_worth: Decimal | None = Field(
        description="the sum of all balances, when they share one currency"
    )
    net_worth_currency: str | None


class HistoryRowOut(BaseModel):
    """One balance history row, as `GET /api/accounts/{id}/history` shows it."""

    id: int
    account_id: int
    date: dt.date
    balance: Decimal
    note: str | None
    source: str
    updated_at: datetime


class AccountWithHistoryOut(AccountOut):
    history: list[HistoryRowOut] | None = Field(
        default=None, description="only with `include=history`"
    )
