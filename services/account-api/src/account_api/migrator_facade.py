"""What the legacy-data migrator (services/migrator) may use of account-api, and nothing else
(an import contract holds it to this module): the schema (Alembic), the bus form of a stored
integration config, and outbox rows built exactly as account-api builds them."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from account_api.migrate import alembic_config, downgrade, upgrade

if TYPE_CHECKING:
    from brokerlink_shared.contracts.events import Event
    from brokerlink_shared.messaging import EventPublisher
    from pydantic import BaseModel

__all__ = ["alembic_config", "bus_connection", "downgrade", "outbox_row", "upgrade"]

# The integration rules and the outbox (with the ORM, the event contracts and the bus client
# behind them) are imported when first used: a migrator run that writes no event (a rerun with
# nothing to change) spent most of its time importing them.


def bus_connection(kind: str, stored: dict[str, Any]) -> BaseModel:
    """The bus form of a stored integration config (`integrations.rules.bus_connection`)."""
    from account_api.integrations.rules import bus_connection as of_rules

    return of_rules(kind, stored)


class _Staged(list[Any]):
    """Stands in for a session: `OutboxRepository.add` stages its row here."""

    def add(self, obj: Any) -> None:
        self.append(obj)


def outbox_row(publisher: EventPublisher, event: Event) -> tuple[Any, ...]:
    """(event_id, family, subject, partition_key, body, correlation_id) of the outbox row
    account-api would write for `event` (validated and encoded the same way)."""
    from account_api.outbox.repository import OutboxRepository

    staged = _Staged()
    OutboxRepository(staged, publisher).add(event)  # type: ignore[arg-type]
    m = staged[0]
    return (m.event_id, m.family, m.subject, m.partition_key, m.body, m.correlation_id)
