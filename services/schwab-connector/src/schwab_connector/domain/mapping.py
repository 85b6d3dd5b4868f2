"""From Schwab's account JSON to our values: matching accounts and mapping balances/positions."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from brokerlink_shared.contracts.values import CashBalance, Position

_SEC_TYPES = {
    "EQUITY": "STK",
    "OPTION": "OPT",
    "MUTUAL_FUND": "FUND",
    "COLLECTIVE_INVESTMENT": "FUND",
    "FIXED_INCOME": "BOND",
    "CASH_EQUIVALENT": "CASH",
    "FUTURE": "FUT",
    "FOREX": "CASH",
}


class AccountDataError(ValueError):
    """Schwab's answer lacked something we need (a reason fit for a status message)."""


@dataclass(frozen=True, slots=True)
class AccountSnapshot:
    """What a refresh reports for one account."""

    account_number: str
    balance: Decimal
    cash_balance: Decimal | None
    positions: list[Position]

    @property
    def cash(self) -> list[CashBalance]:
        """Cash per currency: a Schwab account holds US dollars only."""
        if self.cash_balance is None:
            return []
        return [CashBalance(currency="USD", amount=self.cash_balance)]


def _dec(value: Any) -> Decimal | None:
    if value is None:
        return None
    try:
        return Decimal(str(value))
    except InvalidOperation:
        return None


def map_position(raw: dict[str, Any]) -> Position | None:
    """One Schwab position to a `Position`; None if it has no symbol."""
    instrument = raw.get("instrument") or {}
    symbol = instrument.get("symbol")
    if not symbol:
        return None
    quantity = (_dec(raw.get("longQuantity")) or Decimal(0)) - (
        _dec(raw.get("shortQuantity")) or Decimal(0)
    )
    market_value = _dec(raw.get("marketValue"))
    price = market_value / quantity if market_value is not None and quantity else None
    pnl = (
        _dec(raw.get("longOpenProfitLoss"))
        if quantity > 0
        else _dec(raw.get("shortOpenProfitLoss"))
    )
    return Position(
        symbol=str(symbol),
        sec_type=_SEC_TYPES.get(
            str(instrument.get("assetType", "EQUITY")), str(instrument.get("assetType"))
        ),
        currency="USD",
        quantity=quantity,
        average_cost=_dec(raw.get("averagePrice")),
        market_price=price.quantize(Decimal("0.0001")) if price is not None else None,
        market_value=market_value,
        unrealized_pnl=pnl,
    )


def snapshot(element: dict[str, Any]) -> AccountSnapshot:
    """Map one element of `GET /trader/v1/accounts?fields=positions`."""
    sa = element.get("securitiesAccount")
    if not isinstance(sa, dict) or not sa.get("accountNumber"):
        raise AccountDataError("account entry without securitiesAccount.accountNumber")
    balances = sa.get("currentBalances") or {}
    balance = _dec(balances.get("liquidationValue"))
    if balance is None:
        balance = _dec((element.get("aggregatedBalance") or {}).get("liquidationValue"))
    if balance is None:
        raise AccountDataError("account entry without currentBalances.liquidationValue")
    positions = [
        p
        for p in (map_position(raw) for raw in sa.get("positions") or [])
        if p is not None
    ]
    # Margin accounts report `cashBalance`; cash accounts `totalCash`.
    cash = _dec(balances.get("cashBalance"))
    if cash is None:
        cash = _dec(balances.get("totalCash"))
    return AccountSnapshot(str(sa["accountNumber"]), balance, cash, positions)


def pick_account(
    elements: list[dict[str, Any]],
    account_number: str | None,
    account_hash: str | None = None,
    numbers_by_hash: dict[str, str] | None = None,
) -> dict[str, Any] | str:
    """Find the configured account in a login's accounts; returns the element or why it failed.

    `account_number` is used when known; otherwise the hash is translated via `numbers_by_hash`
    (from accountNumbers); a login that sees exactly one account needs neither.
    """
    by_number = {
        str(e["securitiesAccount"]["accountNumber"]): e
        for e in elements
        if isinstance(e.get("securitiesAccount"), dict)
        and e["securitiesAccount"].get("accountNumber")
    }
    if account_number:
        found = by_number.get(account_number)
        return (
            found
            if found is not None
            else "this Schwab login does not see the configured account"
        )
    if account_hash and numbers_by_hash and account_hash in numbers_by_hash:
        found = by_number.get(numbers_by_hash[account_hash])
        return (
            found
            if found is not None
            else "this Schwab login does not see the configured account"
        )
    if len(by_number) == 1:
        return next(iter(by_number.values()))
    return "account number unknown and the login sees several accounts"


def resolve_hash(
    numbers: list[dict[str, Any]], account_number: str | None
) -> tuple[str | None, str]:
    """Match accountNumbers (`[{accountNumber, hashValue}]`) to our account: (hash or None, message)."""
    pairs = [
        (str(n.get("accountNumber")), str(n.get("hashValue")))
        for n in numbers
        if n.get("hashValue")
    ]
    if account_number:
        for number, hash_value in pairs:
            if number == account_number:
                return hash_value, "connected"
        return (
            None,
            f"the Schwab login sees {len(pairs)} account(s) but not the configured account number",
        )
    if len(pairs) == 1:
        return pairs[0][1], "connected"
    if not pairs:
        return None, "the Schwab login sees no accounts"
    return (
        None,
        f"the Schwab login sees {len(pairs)} accounts: set the account number to choose one",
    )
