"""What the Schwab API simulator serves: apps, logins (Schwab users) and their accounts.

A scenario is plain JSON (see `simulators/scenarios/schwab_demo.json`); the admin API accepts the
same shapes at run time.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SimPosition(_Model):
    """One holding in a simulated account."""

    symbol: str
    quantity: float
    average_price: float = 0.0
    market_value: float | None = None
    asset_type: str = "EQUITY"
    cusip: str | None = None

    def value(self) -> float:
        """Market value, defaulting to quantity x average price."""
        return (
            self.market_value
            if self.market_value is not None
            else self.quantity * self.average_price
        )


class SimAccount(_Model):
    """One brokerage account a login can see."""

    account_number: str = Field(pattern=r"^\d{4,12}$")
    hash_value: str | None = Field(
        default=None, description="derived from the number when omitted"
    )
    type: str = "MARGIN"
    liquidation_value: float = 0.0
    cash_balance: float = 0.0
    positions: list[SimPosition] = []

    def account_hash(self) -> str:
        """The opaque hash Schwab uses in URLs instead of the number."""
        if self.hash_value:
            return self.hash_value
        return (
            hashlib.sha256(f"schwab-sim:{self.account_number}".encode())
            .hexdigest()
            .upper()
        )


class SimLogin(_Model):
    """A Schwab user: whoever consents on the authorize page; tokens see its accounts."""

    login_id: str = Field(min_length=1)
    accounts: list[SimAccount] = []


class SimApp(_Model):
    """A developer app (app key = OAuth client id, app secret = client secret)."""

    app_key: str = Field(min_length=1)
    app_secret: str = Field(min_length=1)
    default_login: str | None = Field(
        default=None, description="login preselected on the consent page"
    )


class Scenario(_Model):
    """The whole simulated world."""

    requests_per_minute: int = Field(
        default=120, ge=1, description="per app key, trader endpoints"
    )
    access_token_ttl_s: int = Field(default=1800, ge=1)
    refresh_token_ttl_s: int = Field(default=7 * 24 * 3600, ge=1)
    code_ttl_s: int = Field(default=600, ge=1)
    apps: list[SimApp] = []
    logins: list[SimLogin] = []

    @classmethod
    def from_file(cls, path: str | Path) -> Scenario:
        """Load a scenario from a JSON file."""
        return cls.model_validate(json.loads(Path(path).read_text()))
