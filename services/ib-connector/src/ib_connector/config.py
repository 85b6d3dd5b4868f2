"""ib-connector settings (environment variables prefixed `IB_CONNECTOR_`)."""

from __future__ import annotations

import os
import secrets
import socket

from brokerlink_shared.reach import PRIVATE_RANGES, NetworkReach, parse_networks
from brokerlink_shared.settings import BusSettings
from pydantic import Field, field_validator
from pydantic_settings import SettingsConfigDict

SERVICE = "ib-connector"


def _replica_id() -> str:
    host = socket.gethostname().split(".")[0].lower()
    safe = "".join(c if c.isalnum() or c in "-_" else "-" for c in host)[:40]
    return f"{safe}-{os.getpid()}-{secrets.token_hex(3)}"


class Settings(BusSettings):
    """Everything the connector reads at start-up; factories take it as a parameter.

    It holds no encryption keys: nothing it handles is secret (IB configs carry none)."""

    model_config = SettingsConfigDict(
        env_prefix="IB_CONNECTOR_", extra="ignore", populate_by_name=True
    )

    health_host: str = Field(
        default="0.0.0.0",  # noqa: S104 - the health server only, for the kubelet's probes
        description="probes arrive on the pod's address; `make run` binds loopback",
    )
    health_port: int = Field(
        default=8081, ge=0, le=65535, description="0 picks a free port"
    )
    health_enabled: bool = True

    connect_timeout_s: float = Field(default=10.0, gt=0)
    request_timeout_s: float = Field(
        default=10.0,
        gt=0,
        description="per refresh, including the wait for a connection",
    )
    idle_close_s: float = Field(
        default=900.0, gt=0, description="close sessions nobody used for this long"
    )
    backoff_initial_s: float = Field(default=0.5, gt=0)
    backoff_max_s: float = Field(default=30.0, gt=0)
    primary_retry_s: float = Field(
        default=20.0,
        gt=0,
        description="how often a session on a backup tries the primary",
    )
    subscription_max_age_s: float = Field(
        default=60.0,
        ge=0,
        description="re-download an account whose live subscription is older than this",
    )

    max_concurrent_connects: int = Field(default=64, ge=1)
    max_concurrent_requests: int = Field(
        default=256, ge=1, description="messages handled at once per subscriber"
    )

    max_in_flight_refreshes: int = Field(
        default=256,
        ge=1,
        description="refreshes worked on at once; past this, refreshes are answered busy",
    )
    max_queued_s: float = Field(
        default=110.0,
        ge=0,
        description="a refresh that waited longer than this in the stream is answered busy "
        "(just under account-api's refresh deadline, after which nobody waits for it; 0: never)",
    )

    replica_id: str = Field(
        default_factory=_replica_id, pattern=r"^[A-Za-z0-9_-]{1,80}$"
    )
    lease_ttl_s: float = Field(
        # longer than a NATS stream's leader election (followers wait 4-9 s) with room to spare:
        # a shorter lease made a surviving replica give its sessions up when a NATS node died
        default=20.0,
        ge=1.0,
        description="a replica silent this long loses its sessions",
    )
    forward_timeout_s: float = Field(
        default=15.0, gt=0, description="wait for the owning replica's answer"
    )
    allowed_networks: str = Field(
        default=PRIVATE_RANGES,
        description="comma-separated CIDRs gateways may be in (`make run`: loopback)",
    )
    denied_networks: str = Field(
        default="",
        description="CIDRs never to connect to beyond the built-in link-local/metadata set "
        "(e.g. the cluster's own service range)",
    )

    @field_validator("allowed_networks", "denied_networks")
    @classmethod
    def _cidrs(cls, value: str) -> str:
        parse_networks(value)
        return value

    @property
    def reach(self) -> NetworkReach:
        return NetworkReach.from_settings(self.allowed_networks, self.denied_networks)
