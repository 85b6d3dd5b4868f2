"""Settings every service shares; each service subclasses `ServiceSettings` (or, when it must
not hold the field-encryption keys, `BusSettings`) in its own `config.py`."""

from __future__ import annotations

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class BusSettings(BaseSettings):
    """Common settings: bus location, namespace, logging, delivery and replication."""

    model_config = SettingsConfigDict(extra="ignore", populate_by_name=True)

    nats_url: str = Field(
        default="nats://127.0.0.1:4222",
        validation_alias=AliasChoices("NATS_URL", "nats_url"),
    )
    namespace: str = Field(
        default="brokerlink",
        validation_alias=AliasChoices("BROKERLINK_NAMESPACE", "namespace"),
        pattern=r"^[a-z][a-z0-9_]{0,39}$",
        description="Prefix of every subject and stream; tests use a fresh one per session.",
    )
    log_level: str = Field(
        default="INFO",
        validation_alias=AliasChoices("BROKERLINK_LOG_LEVEL", "log_level"),
    )
    max_deliver: int = Field(
        default=5,
        ge=1,
        le=100,
        validation_alias=AliasChoices("BROKERLINK_MAX_DELIVER", "max_deliver"),
    )
    outage_budget_s: float = Field(
        default=600.0,
        ge=0,
        validation_alias=AliasChoices("BROKERLINK_OUTAGE_BUDGET_S", "outage_budget_s"),
        description="How long a consumer keeps retrying a message through a database or bus "
        "outage before parking it",
    )

    stream_replicas: int = Field(
        default=1,
        ge=1,
        le=5,
        validation_alias=AliasChoices("BROKERLINK_STREAM_REPLICAS", "stream_replicas"),
        description="JetStream replicas per stream (3 on a clustered NATS)",
    )

    @field_validator("log_level")
    @classmethod
    def _upper(cls, value: str) -> str:
        return value.upper()


class ServiceSettings(BusSettings):
    """`BusSettings` plus the field-encryption keys (services that read or write secrets)."""

    encryption_keys: SecretStr = Field(
        default=SecretStr(""),
        validation_alias=AliasChoices("BROKERLINK_ENCRYPTION_KEYS", "encryption_keys"),
        description="Comma-separated Fernet keys, newest first; the first one encrypts.",
    )
