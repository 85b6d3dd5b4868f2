"""Settings of the IB Flex connector (environment prefix `IBFLEX_CONNECTOR_`)."""

from __future__ import annotations

from brokerlink_shared.settings import ServiceSettings
from pydantic import Field, field_validator
from pydantic_settings import SettingsConfigDict

SERVICE = "ibflex-connector"
IB_SEND_REQUEST_URL = (
    "https://ndcdyn.interactivebrokers.com/AccountManagement/FlexWebService/SendRequest"
)


class Settings(ServiceSettings):
    """Everything the connector needs; the base class brings NATS, namespace, logging and keys."""

    model_config = SettingsConfigDict(
        env_prefix="IBFLEX_CONNECTOR_", extra="ignore", populate_by_name=True
    )

    send_request_url: str = Field(
        default=IB_SEND_REQUEST_URL,
        description="IB's SendRequest endpoint; the simulator's in demo mode and tests "
        "(GetStatement's URL comes in SendRequest's answer)",
    )
    rate_limit: int = Field(
        default=10,
        ge=1,
        description="requests per token per rate window (IB: about 10/min)",
    )
    rate_window_s: float = Field(default=60.0, gt=0)
    rate_slices: int = Field(
        default=8,
        ge=1,
        description="budget granularity; see brokerlink_shared.rate_budget for the arithmetic",
    )
    rate_min_spacing_s: float = Field(
        default=1.5,
        ge=0,
        description="least time between two requests of one token (IB: ~1 s)",
    )
    not_ready_attempts: int = Field(
        default=10,
        ge=1,
        description="GetStatement polls while IB generates the statement",
    )
    throttled_attempts: int = Field(default=4, ge=1)
    transport_attempts: int = Field(default=3, ge=1)
    backoff_base_s: float = Field(default=2.0, ge=0)
    backoff_cap_s: float = Field(default=30.0, ge=0)
    http_timeout_s: float = Field(default=30.0, gt=0)
    expiring_soon_days: int = Field(
        default=14,
        ge=0,
        description="report expiring_soon when IB says the token ends sooner",
    )
    batch_window_s: float = Field(
        default=0.5,
        ge=0,
        description="refreshes of one (token, query) arriving this close together share one "
        "statement",
    )
    batch_max_wait_s: float = Field(default=2.0, ge=0)
    statement_reuse_s: float = Field(
        default=120.0,
        ge=15,
        description="a statement fetched by any replica serves refreshes this long (it reports "
        "the last business day)",
    )
    fetch_lease_ttl_s: float = Field(
        default=30.0,
        gt=0,
        description="a crashed replica's fetch lease lapses after this",
    )
    refresh_workers: int = Field(default=200, ge=1, le=1000)
    # the health server only: probes arrive on the pod's address; `make run` binds loopback
    health_host: str = "0.0.0.0"  # noqa: S104

    @field_validator("send_request_url")
    @classmethod
    def _default_when_empty(cls, value: str) -> str:
        """Compose and the config map pass an empty value for "IB's own service"."""
        return value.strip() or IB_SEND_REQUEST_URL

    health_port: int = Field(
        default=8083, ge=0, le=65535, description="0 picks a free port"
    )
