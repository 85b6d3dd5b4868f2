"""Per-account command ordering for connectors.

Commands for one account (configured, removed, refresh) travel on separate consumers with many
workers, so they can arrive in any order. Each carries the account's integration version
(account-api bumps it with every change); a connector remembers the newest version it applied
per account and drops anything older — a configure delivered after the remove that followed
it must not bring the session back. The same version again is a redelivery of a change already
applied, and applying it again is harmless.
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)


class CommandOrder:
    """The newest integration version applied per account, in this process."""

    def __init__(self) -> None:
        self._applied: dict[int, int] = {}

    def admits(self, account_id: int | None, version: int | None, kind: str) -> bool:
        """True unless the command is older than what this connector already applied."""
        if account_id is None or version is None:
            return True  # a command from before versions were sent: nothing to compare
        held = self._applied.get(account_id)
        if held is not None and version < held:
            log.debug(
                "older command dropped",
                extra={
                    "account_id": account_id,
                    "kind": kind,
                    "version": version,
                    "held": held,
                },
            )
            return False
        return True

    def applied(self, account_id: int | None, version: int | None) -> None:
        """Record that the command with `version` took effect."""
        if account_id is None or version is None:
            return
        if version > self._applied.get(account_id, 0):
            self._applied[account_id] = version

    def held(self, account_id: int) -> int | None:
        return self._applied.get(account_id)
