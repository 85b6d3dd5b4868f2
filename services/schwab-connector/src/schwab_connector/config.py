"""Settings of the Schwab connector (environment prefix `SCHWAB_CONNECTOR_`)."""

from __future__ import annotations

from brokerlink_shared.settings import ServiceSettings
from pydantic import Field, field_validator
from pydantic_settings import SettingsConfigDict

SERVICE = "schwab-connector"
SCHWAB_API = "https://api.schwabapi.com"


class Settings(ServiceSettings):
    """Everything the connector needs; the base class brings NATS, namespace, logging and keys."""

    model_config = SettingsConfigDict(
        env_prefix="SCHWAB_CONNECTOR_", extra="ignore", populate_by_name=True
    )

    api_base_url: str = Field(
        default=SCHWAB_API,
        description="Schwab API origin (an absolute http(s) URL); the simulator's in demo mode",
    )
    requests_per_minute: int = Field(
        default=120, ge=1, description="Trader API budget per app key"
    )
    rate_slices_per_minute: int = Field(
        default=12,
        ge=1,
        le=60,
        description="budget granularity; see brokerlink_shared.rate_budget for the arithmetic",
    )
    # the health server only: probes arrive on the pod's address; `make run` binds loopback
    health_host: str = "0.0.0.0"  # noqa: S104
    health_port: int = Field(
        default=8082, ge=0, le=65535, description="0 picks a free port"
    )
    access_refresh_margin_s: float = Field(
        default=600.0, ge=0, description="refresh this long before expiry"
    )
    refresh_token_ttl_s: float = Field(
        default=7 * 24 * 3600.0, gt=0, description="Schwab's refresh-token life"
    )
    expiring_soon_threshold_s: float = Field(default=24 * 3600.0, ge=0)
    lifecycle_check_interval_s: float = Field(default=300.0, gt=0)
    batch_window_s: float = Field(
        default=0.05,
        ge=0,
        description="a login's batch stays open while refreshes keep arriving this close together",
    )
    batch_max_wait_s: float = Field(
        default=1.0, ge=0, description="a batch waits at most this long before its call"
    )
    max_queued_s: float = Field(
        default=110.0,
        ge=0,
        description="a refresh that waited longer than this in the stream is answered busy "
        "(just under account-api's refresh deadline, after which nobody waits for it; 0: never)",
    )
    refresh_workers: int = Field(
        default=1000,
        ge=1,
        le=1000,
        description=(
            "refresh requests in flight at once (<= the consumer's max_ack_pending); they mostly "
            "wait for their login's batch, and a batch only coalesces requests already in flight"
        ),
    )
    http_timeout_s: float = Field(default=15.0, gt=0)
    max_attempts: int = Field(
        default=4, ge=1, description="per Schwab call, for 429/5xx/transport errors"
    )
    backoff_base_s: float = Field(default=0.5, ge=0)
    backoff_cap_s: float = Field(default=30.0, ge=0)
    lease_ttl_s: float = Field(
        default=30.0,
        gt=0,
        description="a crashed replica's refresh lease lapses after this",
    )

    @field_validator("api_base_url")
    @classmethod
    def _absolute_url(cls, value: str) -> str:
        # An empty value used to reach the HTTP client and turn every call into a relative URL.
        value = value.strip().rstrip("/")
        if not value:
            return SCHWAB_API
        if not value.startswith(("http://", "https://")) or value[-3:] == "://":
            raise ValueError(
                "must be an absolute http(s) URL such as https://api.schwabapi.com"
            )
        return value
