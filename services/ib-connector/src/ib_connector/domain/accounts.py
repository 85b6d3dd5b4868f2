"""Which managed account of a gateway session an integration reads."""

from __future__ import annotations

from collections.abc import Sequence


class AccountSelectionError(Exception):
    """The session cannot serve this integration's account; the message is user-facing."""

    code = "account"


def select_account(managed: Sequence[str], account_code: str | None) -> str:
    """The account to read: the configured code, or the only managed account when no code is set."""
    if account_code:
        if account_code in managed:
            return account_code
        listed = ", ".join(managed) or "no accounts"
        raise AccountSelectionError(
            f"gateway does not manage {account_code} (it manages {listed})"
        )
    if len(managed) == 1:
        return managed[0]
    if not managed:
        raise AccountSelectionError("gateway reports no managed accounts")
    raise AccountSelectionError(
        f"gateway manages {', '.join(managed)}: set account_code"
    )
