"""Value types shared by events and by the services' APIs."""

from __future__ import annotations

import functools
import ipaddress
import re
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

_HOSTNAME = re.compile(
    r"^(?=.{1,253}$)(?!-)[A-Za-z0-9-]{1,63}(?<!-)(\.(?!-)[A-Za-z0-9-]{1,63}(?<!-))*\.?$"
)
IB_ACCOUNT_CODE = r"^[A-Z]{1,3}\d{4,10}$"
# An IB Gateway whose accounts belong to another brokerlink user: the code of the connector's test
# reply, refresh failure and status, and of account-api's 409. The message names no account and
# no user, and reads the same whichever address the gateway was reached under.
GATEWAY_OWNED_ELSEWHERE = "gateway_owned_elsewhere"
GATEWAY_OWNED_ELSEWHERE_MESSAGE = (
    "this IB Gateway is registered to another brokerlink user; "
    "configure a gateway of your own"
)


class Strict(BaseModel):
    """Base for contract models: unknown fields rejected, instances immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)


@functools.lru_cache(maxsize=4096)
def validate_host(value: str) -> str:
    """Accept a hostname or an IPv4/IPv6 address; no scheme, path, port or spaces. Cached:
    a handful of gateway hosts recur in every config (parsing them as addresses each time
    was 8 % of planning a legacy import's users)."""
    candidate = value.strip()
    if not candidate:
        raise ValueError("host must not be empty")
    try:
        ipaddress.ip_address(candidate)
        return candidate
    except ValueError:
        pass
    if not _HOSTNAME.match(candidate):
        raise ValueError(
            "host must be a hostname or IP address, without scheme, path, port or spaces"
        )
    return candidate


Port = Annotated[int, Field(ge=1, le=65535, strict=True)]
ClientId = Annotated[int, Field(ge=0, le=2147483647, strict=True)]


class IntegrationStatus(StrEnum):
    """What an integration's badge shows."""

    NOT_CONFIGURED = "not_configured"
    PENDING = "pending"
    CONNECTED = "connected"
    DISCONNECTED = "disconnected"
    ERROR = "error"
    EXPIRING_SOON = "expiring_soon"
    REAUTH_REQUIRED = "reauth_required"


class GatewayAddress(Strict):
    """One IB Gateway/TWS endpoint."""

    host: Annotated[str, Field(max_length=253)]
    port: Port

    _host = field_validator("host")(classmethod(lambda _cls, v: validate_host(v)))


class IBConnection(Strict):
    """IB integration config as it travels on the bus (it holds no secrets)."""

    type: Literal["IB"] = "IB"
    host: Annotated[str, Field(max_length=253)]
    port: Port
    client_id: ClientId
    account_code: Annotated[str, Field(pattern=IB_ACCOUNT_CODE)] | None = None
    read_only: bool = True
    backups: Annotated[list[GatewayAddress], Field(max_length=8)] = []

    _host = field_validator("host")(classmethod(lambda _cls, v: validate_host(v)))

    @property
    def session_key(self) -> tuple[str, int, int]:
        """Accounts with the same key share one gateway session."""
        return (self.host.lower(), self.port, self.client_id)


class SchwabConnection(Strict):
    """Schwab integration config as it travels on the bus; secrets only as ciphertext."""

    type: Literal["SCHWAB"] = "SCHWAB"
    app_key: Annotated[str, Field(min_length=1, max_length=128)]
    app_secret_enc: str = Field(
        description="app secret, encrypted with the shared SecretBox"
    )
    token_enc: str | None = Field(
        default=None,
        description="schwab-py token object as JSON, encrypted; null before OAuth",
    )
    account_number: str | None = None
    account_hash: str | None = None
    login: str | None = Field(
        default=None,
        max_length=64,
        description="opaque id of the Schwab login (who signed in) the token belongs to; one "
        "app key can serve several logins of one user; null before the first sign-in",
    )


class Position(Strict):
    """One holding as reported by the broker."""

    symbol: str
    sec_type: str = "STK"
    currency: str = "USD"
    quantity: Decimal
    average_cost: Decimal | None = None
    market_price: Decimal | None = None
    market_value: Decimal | None = None
    unrealized_pnl: Decimal | None = None


class CashBalance(Strict):
    """Cash held in one currency."""

    currency: Annotated[str, Field(pattern=r"^[A-Z]{3}$")]
    amount: Decimal


class TokenTimes(Strict):
    """When a Schwab login's tokens run out."""

    access_expires_at: datetime
    refresh_expires_at: datetime
