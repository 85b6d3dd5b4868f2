"""account-api settings: one class, environment variables prefixed `ACCOUNT_API_` (plus the
shared unprefixed ones such as `DATABASE_URL`, `NATS_URL`)."""

from __future__ import annotations

from brokerlink_shared.settings import ServiceSettings
from pydantic import AliasChoices, Field, SecretStr, field_validator


class Settings(ServiceSettings):
    model_config = ServiceSettings.model_config | {"env_prefix": "ACCOUNT_API_"}

    database_url: str = Field(
        default="postgresql+psycopg://postgres@127.0.0.1:5432/brokerlink",
        validation_alias=AliasChoices("DATABASE_URL", "database_url"),
    )
    host: str = Field(
        default="127.0.0.1", validation_alias=AliasChoices("API_HOST", "host")
    )
    port: int = Field(
        default=8000, ge=1, le=65535, validation_alias=AliasChoices("API_PORT", "port")
    )
    workers: int = Field(default=2, ge=1, le=64)
    public_url: str = "http://127.0.0.1:8000"
    jwt_secret: SecretStr = SecretStr("")
    access_token_minutes: int = Field(default=15, ge=1, le=1440)
    refresh_token_days: int = Field(default=7, ge=1, le=90)
    refresh_wait_default_s: float = Field(default=5.0, ge=0, le=60)
    integration_test_timeout_s: float = Field(default=10.0, gt=0, le=60)
    scheduled_refresh_interval_s: float = Field(
        default=900.0,
        ge=0,
        description="0 disables the scheduled refresh of every integrated account",
    )
    refresh_deadline_s: float = Field(
        default=120.0,
        ge=0,
        description="a refresh with no answer after this long is ended as failed "
        "(timed out, or connector unavailable); 0 never ends one",
    )
    schwab_authorize_url: str = "https://api.schwabapi.com/v1/oauth/authorize"
    oauth_state_ttl_s: int = Field(default=600, ge=30, le=3600)
    db_pool_size: int = Field(default=10, ge=1, le=100)
    outbox_batch_size: int = Field(default=200, ge=1, le=5000)

    @field_validator("jwt_secret")
    @classmethod
    def _jwt_secret_strong(cls, value: SecretStr) -> SecretStr:
        raw = value.get_secret_value()
        if raw and (len(raw) < 32 or raw in {"changethis", "secret"}):
            raise ValueError(
                "ACCOUNT_API_JWT_SECRET must be at least 32 random characters"
            )
        return value

    @property
    def libpq_url(self) -> str:
        """The database URL in libpq form, for psycopg's own pool."""
        return self.database_url.replace("postgresql+psycopg://", "postgresql://", 1)
