"""account-api settings: one class, environment variables prefixed `ACCOUNT_API_` (plus the
shared unprefixed ones such as `DATABASE_URL`, `NATS_URL`)."""

from __future__ import annotations

from brokerlink_shared.reach import PRIVATE_RANGES, NetworkReach, parse_networks
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
    worker_healthcheck_timeout_s: int = Field(
        default=120,
        ge=5,
        le=900,
        description=(
            "how long uvicorn lets a worker go without answering its health ping before it "
            "kills it; covers start-up, when importing the app takes seconds on a busy machine"
        ),
    )
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
    outbox_batch_size: int = Field(default=500, ge=1, le=5000)
    outbox_poll_interval_s: float = Field(
        default=0.02,
        gt=0,
        le=10,
        description="how often the relay looks for rows staged by other processes",
    )

    forwarded_allow_ips: str = Field(
        default="127.0.0.1",
        description="proxies whose X-Forwarded-For is trusted for the client address "
        "(sign-in throttling counts per client): the ingress/proxy addresses, or *",
    )
    login_account_max_failures: int = Field(
        default=5, ge=1, description="failed sign-ins per e-mail address per window"
    )
    login_account_window_s: int = Field(default=900, ge=1)
    login_client_max_failures: int = Field(
        default=30, ge=1, description="failed sign-ins per client address per window"
    )
    login_client_window_s: int = Field(default=300, ge=1)
    two_factor_max_failures: int = Field(
        default=5, ge=1, description="wrong codes when confirming/disabling two-factor"
    )
    two_factor_window_s: int = Field(default=300, ge=1)
    token_revocation_poll_s: float = Field(
        default=2.0,
        gt=0,
        le=60,
        description="how soon every worker refuses a signed-out session's access token",
    )

    max_accounts_per_user: int = Field(default=2000, ge=1)
    max_integrations_per_user: int = Field(default=2000, ge=1)
    tests_per_account_per_minute: int = Field(default=10, ge=1)
    refreshes_per_account_per_minute: int = Field(default=20, ge=1)
    bulk_refreshes_per_user_per_minute: int = Field(default=6, ge=1)
    max_request_body_bytes: int = Field(
        default=1_048_576, ge=1024, description="larger request bodies are a 413"
    )
    retention_interval_s: float = Field(
        default=3600.0, ge=0, description="how often old rows are purged; 0 disables"
    )
    retention_processed_events_days: int = Field(
        default=35, ge=1, description="longer than any stream keeps a message (30 days)"
    )
    retention_refreshes_days: int = Field(
        default=90, ge=1, description="finished refreshes and refresh jobs"
    )
    retention_sessions_days: int = Field(
        default=30, ge=1, description="signed-out or expired sign-in sessions"
    )
    retention_audit_days: int = Field(
        default=0, ge=0, description="audit entries; 0 keeps them forever"
    )

    # The connector's reach, read from the connector's own variables so both check the same.
    ib_allowed_networks: str = Field(
        default=PRIVATE_RANGES,
        validation_alias=AliasChoices(
            "IB_CONNECTOR_ALLOWED_NETWORKS", "ib_allowed_networks"
        ),
    )
    ib_denied_networks: str = Field(
        default="",
        validation_alias=AliasChoices(
            "IB_CONNECTOR_DENIED_NETWORKS", "ib_denied_networks"
        ),
    )

    @field_validator("ib_allowed_networks", "ib_denied_networks")
    @classmethod
    def _cidrs(cls, value: str) -> str:
        parse_networks(value)
        return value

    @property
    def ib_reach(self) -> NetworkReach:
        return NetworkReach.from_settings(
            self.ib_allowed_networks, self.ib_denied_networks
        )

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
