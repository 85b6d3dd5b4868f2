"""Session keys and the failover order over a primary gateway and its backups."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from brokerlink_shared.contracts.values import IBConnection

from ib_connector.domain.session_state import Endpoint


class SessionKey(NamedTuple):
    """What identifies a gateway session: the user, the gateway and the client id. Users never
    share a session, so nothing read through one reaches another user."""

    user_id: int
    host: str
    port: int
    client_id: int


def session_key(config: IBConnection, user_id: int | None) -> SessionKey:
    host, port, client_id = config.session_key
    return SessionKey(user_id or 0, host, port, client_id)


def failover_order(primary: Endpoint, backups: Sequence[Endpoint]) -> list[Endpoint]:
    """Endpoints to try in one connect round: the primary, then each distinct backup in order."""
    seen = {(primary.host, primary.port)}
    order = [primary]
    for backup in backups:
        if (backup.host, backup.port) not in seen:
            seen.add((backup.host, backup.port))
            order.append(Endpoint(backup.host, backup.port, backup=True))
    return order
