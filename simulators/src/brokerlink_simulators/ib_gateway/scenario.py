"""Scenario models: the gateways a simulator serves, their accounts and their faults.

The same models are read from a scenario JSON file and accepted by the admin API.
"""

from __future__ import annotations

import zlib
from decimal import Decimal
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, model_validator

Currency = Annotated[str, Field(pattern=r"^[A-Z]{3}$")]
AccountCode = Annotated[str, Field(pattern=r"^[A-Z]{1,3}\d{4,10}$")]
GatewayName = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _cents(amount: Decimal) -> Decimal:
    return amount.quantize(_CENT)


_CENT = Decimal("0.01")


class PositionSpec(_Model):
    """One holding; market value and unrealized P&L are derived when not given."""

    symbol: str
    sec_type: str = "STK"
    currency: Currency = "USD"
    primary_exchange: str = ""
    quantity: Decimal
    average_cost: Decimal
    market_price: Decimal
    market_value: Decimal | None = None
    unrealized_pnl: Decimal | None = None
    realized_pnl: Decimal = Decimal(0)
    con_id: int | None = None

    @property
    def contract_id(self) -> int:
        """The contract id sent on the wire (stable per symbol/type/currency when not given)."""
        if self.con_id is not None:
            return self.con_id
        return (
            zlib.crc32(f"{self.symbol}:{self.sec_type}:{self.currency}".encode())
            & 0x3FFFFFFF
        )

    @property
    def value(self) -> Decimal:
        """Market value in the position's currency."""
        return (
            self.market_value
            if self.market_value is not None
            else _cents(self.quantity * self.market_price)
        )

    @property
    def pnl(self) -> Decimal:
        """Unrealized P&L in the position's currency."""
        if self.unrealized_pnl is not None:
            return self.unrealized_pnl
        return _cents(self.value - self.quantity * self.average_cost)


class AccountSpec(_Model):
    """One managed account. Totals are derived from cash, positions and `fx_rates` when not given."""

    code: AccountCode
    base_currency: Currency = "USD"
    account_type: str = "INDIVIDUAL"
    cash: dict[Currency, Decimal] = {}
    fx_rates: dict[Currency, Decimal] = Field(
        default={}, description="value of one unit of a currency in the base currency"
    )
    net_liquidation: Decimal | None = None
    total_cash_value: Decimal | None = None
    positions: list[PositionSpec] = []

    def to_base(self, amount: Decimal, currency: str) -> Decimal:
        """Convert an amount into the base currency (rate 1 for the base and unknown currencies)."""
        if currency == self.base_currency:
            return amount
        return _cents(amount * self.fx_rates.get(currency, Decimal(1)))

    @property
    def total_cash(self) -> Decimal:
        if self.total_cash_value is not None:
            return self.total_cash_value
        return sum((self.to_base(a, c) for c, a in self.cash.items()), Decimal(0))

    @property
    def stock_market_value(self) -> Decimal:
        return sum(
            (self.to_base(p.value, p.currency) for p in self.positions), Decimal(0)
        )

    @property
    def unrealized_pnl(self) -> Decimal:
        return sum(
            (self.to_base(p.pnl, p.currency) for p in self.positions), Decimal(0)
        )

    @property
    def net_liq(self) -> Decimal:
        if self.net_liquidation is not None:
            return self.net_liquidation
        return self.total_cash + self.stock_market_value


class AccountValuesPatch(_Model):
    """A partial update of an account's values (admin API `PATCH`)."""

    base_currency: Currency | None = None
    account_type: str | None = None
    cash: dict[Currency, Decimal] | None = None
    fx_rates: dict[Currency, Decimal] | None = None
    net_liquidation: Decimal | None = None
    total_cash_value: Decimal | None = None
    positions: list[PositionSpec] | None = None


class FaultSpec(_Model):
    """Faults a gateway shows on demand; the defaults behave like a healthy real gateway."""

    refuse_connections: bool = Field(
        default=False, description="stop listening: connects are refused"
    )
    drop_after_s: float | None = Field(
        default=None, gt=0, description="close each session this long after it opens"
    )
    allow_duplicate_client_id: bool = Field(
        default=False,
        description="accept a second session with a client id already connected (real IB answers 326)",
    )
    delay_ms: int = Field(
        default=0, ge=0, le=600_000, description="delay every answer by this much"
    )


class FaultPatch(_Model):
    """A partial update of a gateway's faults; `drop_after_s: 0` clears the drop timer."""

    refuse_connections: bool | None = None
    drop_after_s: float | None = Field(default=None, ge=0)
    allow_duplicate_client_id: bool | None = None
    delay_ms: int | None = Field(default=None, ge=0, le=600_000)
    max_clients: int | None = Field(default=None, ge=1, le=100_000)


class GatewaySpec(_Model):
    """One simulated IB Gateway: a listening port, its managed accounts and its faults."""

    name: GatewayName
    port: int = Field(default=0, ge=0, le=65535, description="0 picks a free port")
    max_clients: int = Field(
        default=32, ge=1, le=100_000, description="real IB accepts 32"
    )
    accounts: list[AccountSpec] = Field(min_length=1)
    faults: FaultSpec = FaultSpec()

    @model_validator(mode="after")
    def _unique_accounts(self) -> GatewaySpec:
        codes = [a.code for a in self.accounts]
        if len(set(codes)) != len(codes):
            raise ValueError("account codes must be unique within a gateway")
        return self


class Scenario(_Model):
    """What a simulator serves at start-up."""

    gateways: list[GatewaySpec] = []

    @model_validator(mode="after")
    def _unique_names(self) -> Scenario:
        names = [g.name for g in self.gateways]
        if len(set(names)) != len(names):
            raise ValueError("gateway names must be unique")
        return self

    @classmethod
    def load(cls, path: str | Path) -> Scenario:
        """Read a scenario JSON file."""
        return cls.model_validate_json(Path(path).read_bytes())
