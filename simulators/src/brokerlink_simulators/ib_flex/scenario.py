"""What the Flex Web Service simulator serves: tokens, saved Flex Queries and the accounts they cover.

A scenario is plain JSON (see `simulators/scenarios/ibflex_demo.json`). Account values left unset
come from the ibflex test-suite samples the reports are built from (see `reports.py`).
"""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

# The Flex Query sections the simulator can put in a statement (IB's element names).
SECTIONS = (
    "AccountInformation",
    "EquitySummaryInBase",
    "ChangeInNAV",
    "CashReport",
    "OpenPositions",
)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FlexPosition(_Model):
    """One open position (values in the position's currency)."""

    symbol: str
    quantity: float
    mark_price: float
    cost_basis_price: float = 0.0
    currency: str = "USD"
    asset_category: str = "STK"
    fx_rate_to_base: float = 1.0
    description: str = ""


class FlexAccount(_Model):
    """One IB account as a statement reports it; unset values keep the sample's."""

    account_id: str = Field(pattern=r"^[A-Z]{1,3}\d{4,10}$")
    base_currency: str = "USD"
    nav: float | None = Field(
        default=None, description="net liquidation in base currency"
    )
    cash: dict[str, float] | None = Field(
        default=None, description="ending cash per currency"
    )
    positions: list[FlexPosition] | None = None


class FlexToken(_Model):
    """A Flex Web Service token as IB knows it."""

    token: str
    expired: bool = False
    expires_in_days: int | None = Field(
        default=None, description="when set, answers warn that the token expires soon"
    )


class FlexQuery(_Model):
    """A saved Activity Flex Query: which token may run it, which accounts and sections it has."""

    query_id: str = Field(pattern=r"^\d{1,12}$")
    token: str
    accounts: list[str]
    sections: list[str] = list(SECTIONS)
    not_ready_polls: int = Field(
        default=1, ge=0, description="GetStatement answers 1019 this many times first"
    )


class FlexLimits(_Model):
    """IB's throttle per token: at most `per_window` requests in any `window_s`, and
    `min_interval_s` between two requests (both endpoints count)."""

    per_window: int = 10
    window_s: float = 60.0
    min_interval_s: float = 1.0


class Scenario(_Model):
    tokens: list[FlexToken] = []
    queries: list[FlexQuery] = []
    accounts: list[FlexAccount] = []
    limits: FlexLimits = FlexLimits()
    report_date: date | None = Field(
        default=None,
        description="the statements' date; by default the last business day before today",
    )

    @classmethod
    def from_file(cls, path: str | Path) -> Scenario:
        return cls.model_validate(json.loads(Path(path).read_text()))
