"""The state of one gateway session and the status each attached integration shows.

Pure: callers feed what happened (connecting, connected, failed, lost, a gateway notice) and
read back the status; `status_for` adds the per-account part (which managed account to read).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from enum import StrEnum

from brokerlink_shared.contracts.values import IntegrationStatus

from ib_connector.domain.accounts import AccountSelectionError, select_account

# IB notices about the gateway's own link to IB's servers (the socket to us stays open).
CONNECTIVITY_LOST = 1100
RESTORED_DATA_LOST = 1101
RESTORED_DATA_KEPT = 1102


class Phase(StrEnum):
    """Where a session is in its life."""

    NEW = "new"
    CONNECTING = "connecting"
    CONNECTED = "connected"
    LOST = "lost"  # was connected, socket closed: reconnecting
    FAILED = "failed"  # connect attempt failed: backing off
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A gateway address; `backup` is False for the configured primary."""

    host: str
    port: int
    backup: bool = False

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class StatusView:
    """What an integration's badge should show."""

    status: IntegrationStatus
    code: str | None = None
    message: str | None = None
    last_connected: datetime | None = None

    def same_as(self, other: StatusView | None) -> bool:
        """Equal for the purpose of emitting (last_connected alone does not make a change)."""
        return other is not None and (self.status, self.code, self.message) == (
            other.status,
            other.code,
            other.message,
        )


@dataclass(frozen=True, slots=True)
class SessionState:
    """Immutable session state; every transition returns a new one."""

    phase: Phase = Phase.NEW
    endpoint: Endpoint | None = None
    managed_accounts: tuple[str, ...] = ()
    last_connected: datetime | None = None
    code: str | None = None
    message: str | None = None
    gateway_link_down: bool = False
    lost_message: str | None = (
        None  # set once a working session dropped, until it is back
    )

    def connecting(self, endpoint: Endpoint) -> SessionState:
        return replace(self, phase=Phase.CONNECTING, endpoint=endpoint)

    def connected(
        self, endpoint: Endpoint, managed: tuple[str, ...], at: datetime
    ) -> SessionState:
        where = (
            f"connected to backup gateway {endpoint}"
            if endpoint.backup
            else f"connected to {endpoint}"
        )
        return replace(
            self,
            phase=Phase.CONNECTED,
            endpoint=endpoint,
            managed_accounts=managed,
            last_connected=at,
            code=None,
            message=where,
            gateway_link_down=False,
            lost_message=None,
        )

    def failed(self, code: str, message: str) -> SessionState:
        return replace(self, phase=Phase.FAILED, code=code, message=message)

    def refused(self, code: str, message: str) -> SessionState:
        """The gateway's accounts belong to another user: the connection was closed unread, and
        nothing of it (its accounts, an earlier drop's reason) is kept."""
        return replace(
            self,
            phase=Phase.FAILED,
            managed_accounts=(),
            code=code,
            message=message,
            gateway_link_down=False,
            lost_message=None,
        )

    def lost(self, message: str) -> SessionState:
        return replace(
            self, phase=Phase.LOST, code=None, message=message, lost_message=message
        )

    def notice(self, code: int, text: str) -> SessionState:
        """A gateway notice: 1100 (its link to IB lost), 1101/1102 (restored)."""
        if self.phase is not Phase.CONNECTED:
            return self
        if code == CONNECTIVITY_LOST:
            return replace(self, gateway_link_down=True, code=str(code), message=text)
        if code in (RESTORED_DATA_LOST, RESTORED_DATA_KEPT):
            return replace(self, gateway_link_down=False, code=str(code), message=text)
        return self

    def closed(self) -> SessionState:
        return replace(self, phase=Phase.CLOSED)

    @property
    def usable(self) -> bool:
        """Requests can be sent now."""
        return self.phase is Phase.CONNECTED and not self.gateway_link_down


def status_for(state: SessionState, account_code: str | None) -> StatusView | None:
    """The status one integration on this session shows, or None before the first attempt ends."""
    if state.phase is Phase.CONNECTED:
        if state.gateway_link_down:
            return StatusView(
                IntegrationStatus.DISCONNECTED,
                state.code,
                state.message,
                state.last_connected,
            )
        try:
            select_account(state.managed_accounts, account_code)
        except AccountSelectionError as exc:
            return StatusView(
                IntegrationStatus.ERROR, exc.code, str(exc), state.last_connected
            )
        return StatusView(
            IntegrationStatus.CONNECTED, state.code, state.message, state.last_connected
        )
    if state.phase is Phase.FAILED:
        if state.lost_message is not None:
            # a session that worked and dropped (e.g. the gateway's daily restart) stays
            # "disconnected" while it retries; refreshes still report the precise reason
            return StatusView(
                IntegrationStatus.DISCONNECTED,
                None,
                state.lost_message,
                state.last_connected,
            )
        return StatusView(
            IntegrationStatus.ERROR, state.code, state.message, state.last_connected
        )
    if state.phase is Phase.LOST:
        return StatusView(
            IntegrationStatus.DISCONNECTED,
            state.code,
            state.message,
            state.last_connected,
        )
    return None
