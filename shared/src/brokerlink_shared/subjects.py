"""Every NATS subject and JetStream stream brokerlink uses, defined once.

Subjects are `<namespace>.<family>.<broker>`; the namespace lets test sessions and
deployments share one NATS server without seeing each other. Each stream has one owner,
which declares it at start-up; every other service binds to it without declaring.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Broker(StrEnum):
    """Integration types, as they appear in subjects (lower case) and in the API (upper case)."""

    IB = "IB"
    SCHWAB = "SCHWAB"
    IB_FLEX = "IB_FLEX"

    @property
    def token(self) -> str:
        return self.value.lower()

    @property
    def connector(self) -> str:
        """Name of the service that talks to this broker (its health subject, dead letters)."""
        return f"{self.token}-connector"


# Event families (the part of the subject after the namespace).
INTEGRATION_CONFIGURED = "integration.configured"
INTEGRATION_REMOVED = "integration.removed"
REFRESH_REQUESTED = "refresh.requested"
BALANCE_UPDATED = "balance.updated"
REFRESH_FAILED = "refresh.failed"
INTEGRATION_STATUS = "integration.status"
SCHWAB_TOKENS_ROTATED = "schwab.tokens.rotated"
# Core NATS request/reply (not persisted).
INTEGRATION_TEST = "integration.test"
SCHWAB_OAUTH_EXCHANGE = "schwab.oauth.exchange"
SCHWAB_ACCOUNT_NUMBERS = "schwab.account.numbers"
HEALTH = "health"
DEAD_LETTER = "deadletter"


@dataclass(frozen=True, slots=True)
class StreamSpec:
    """A JetStream stream: its name, the subject families it captures, and its owning service."""

    name: str
    families: tuple[str, ...]
    owner: str
    duplicate_window_s: float = 120.0
    max_age_s: float = 7 * 24 * 3600.0


COMMANDS = StreamSpec(
    name="COMMANDS",
    families=(INTEGRATION_CONFIGURED, INTEGRATION_REMOVED, REFRESH_REQUESTED),
    owner="account-api",
)
CONNECTOR_EVENTS = StreamSpec(
    name="CONNECTOR_EVENTS",
    families=(
        BALANCE_UPDATED,
        REFRESH_FAILED,
        INTEGRATION_STATUS,
        SCHWAB_TOKENS_ROTATED,
    ),
    owner="connectors",
)
DEAD_LETTERS = StreamSpec(
    name="DEAD_LETTERS",
    families=(DEAD_LETTER,),
    owner="every service",
    max_age_s=30 * 24 * 3600.0,
)
STREAMS: tuple[StreamSpec, ...] = (COMMANDS, CONNECTOR_EVENTS, DEAD_LETTERS)
STREAM_OF_FAMILY: dict[str, StreamSpec] = {
    f: spec for spec in STREAMS for f in spec.families
}


@dataclass(frozen=True, slots=True)
class Topology:
    """Concrete subject and stream names under one namespace."""

    namespace: str = "brokerlink"

    def subject(self, family: str, broker: Broker | str | None = None) -> str:
        """Full subject for a family, optionally narrowed to one broker (`*` for all)."""
        base = f"{self.namespace}.{family}"
        if broker is None:
            return base
        token = broker.token if isinstance(broker, Broker) else broker
        return f"{base}.{token}"

    def stream_name(self, spec: StreamSpec) -> str:
        return f"{self.namespace.upper()}_{spec.name}"

    def stream_for(self, family: str) -> str:
        """Name of the stream that captures a family."""
        return self.stream_name(STREAM_OF_FAMILY[family])

    def stream_subjects(self, spec: StreamSpec) -> list[str]:
        return [f"{self.namespace}.{family}.>" for family in spec.families]

    def dead_letter_subject(self, service: str) -> str:
        return f"{self.namespace}.{DEAD_LETTER}.{service}"

    def health_subject(self, service: str) -> str:
        return f"{self.namespace}.{HEALTH}.{service}"

    def durable(self, service: str, purpose: str) -> str:
        """Durable consumer name: stable per service and purpose, so replicas share it."""
        return f"{service}-{purpose}".replace(".", "-")
