"""Failover order over a primary gateway and its backups."""

from __future__ import annotations

from collections.abc import Sequence

from ib_connector.domain.session_state import Endpoint


def failover_order(primary: Endpoint, backups: Sequence[Endpoint]) -> list[Endpoint]:
    """Endpoints to try in one connect round: the primary, then each distinct backup in order."""
    seen = {(primary.host, primary.port)}
    order = [primary]
    for backup in backups:
        if (backup.host, backup.port) not in seen:
            seen.add((backup.host, backup.port))
            order.append(Endpoint(backup.host, backup.port, backup=True))
    return order
