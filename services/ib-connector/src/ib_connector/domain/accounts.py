"""Which managed account of a gateway session an integration reads."""

from __future__ import annotations

from collections.abc import Sequence


class AccountSelectionError(Exception):
    """The session cannot serve this integration's account; the message is user-facing."""

    code = "account"


def select_account(managed: Sequence[str], account_code: str | None) -> str:
    """The account to read: the configured code, or the only managed account when no code is set."""
    # Errors count the managed accounts but never name them: the codes are the gateway owner's
    # to know, and an error text travels further (statuses, logs) than a successful read.
    if account_code:
        if account_code in managed:
            return account_code
        raise AccountSelectionError(
            f"gateway does not manage {account_code} (it manages {_count(managed)})"
        )
    if len(managed) == 1:
        return managed[0]
    if not managed:
        raise AccountSelectionError("gateway reports no managed accounts")
    raise AccountSelectionError(f"gateway manages {_count(managed)}: set account_code")


def _count(managed: Sequence[str]) -> str:
    n = len(managed)
    return "no accounts" if n == 0 else "1 account" if n == 1 else f"{n} accounts"
