"""Turn IB account values and portfolio rows into the figures `balance.updated` carries."""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation

from brokerlink_shared.contracts.values import CashBalance, Position

# Pseudo-currencies IB uses for aggregate rows; they are not real currencies.
_NOT_CURRENCIES = {"", "BASE"}


@dataclass(frozen=True, slots=True)
class AccountValueRow:
    """One `updateAccountValue` row: tag, value text, currency."""

    tag: str
    value: str
    currency: str


@dataclass(frozen=True, slots=True)
class Holding:
    """One portfolio row, in the position's currency."""

    symbol: str
    sec_type: str
    currency: str
    quantity: Decimal
    average_cost: Decimal | None
    market_price: Decimal | None
    market_value: Decimal | None
    unrealized_pnl: Decimal | None


@dataclass(frozen=True, slots=True)
class AccountSnapshot:
    """What a refresh read for one account."""

    account_code: str
    currency: str
    net_liquidation: Decimal
    total_cash: Decimal | None
    cash: list[CashBalance] = field(default_factory=list)
    positions: list[Position] = field(default_factory=list)


class IncompleteAccountData(Exception):
    """The gateway answered without the values a balance needs."""

    code = "incomplete"


def to_decimal(value: str | float | None) -> Decimal | None:
    """Parse an IB number; IB sends floats, empty strings and the 'unset' max double."""
    if value is None or value == "":
        return None
    try:
        number = Decimal(str(value)) if isinstance(value, float) else Decimal(value)
    except InvalidOperation:
        return None
    if not number.is_finite() or abs(number) >= Decimal("1e300"):
        return None
    return number


def build_snapshot(
    account_code: str, rows: list[AccountValueRow], holdings: list[Holding]
) -> AccountSnapshot:
    """Balance = NetLiquidation in the account's base currency; cash per real currency."""
    net_liq = next(
        ((r.currency, v) for r in rows if r.tag == "NetLiquidation" and r.currency not in _NOT_CURRENCIES
         and (v := to_decimal(r.value)) is not None),
        None,
    )  # fmt: skip
    if net_liq is None:
        raise IncompleteAccountData(
            f"gateway sent no NetLiquidation for {account_code}"
        )
    base, balance = net_liq
    total_cash = next(
        (
            to_decimal(r.value)
            for r in rows
            if r.tag == "TotalCashValue" and r.currency == base
        ),
        None,
    )
    cash = {
        r.currency: amount
        for r in rows
        if r.tag == "CashBalance"
        and r.currency not in _NOT_CURRENCIES
        and (amount := to_decimal(r.value)) is not None
    }
    positions = [
        Position(
            symbol=h.symbol,
            sec_type=h.sec_type or "STK",
            currency=h.currency or base,
            quantity=h.quantity,
            average_cost=h.average_cost,
            market_price=h.market_price,
            market_value=h.market_value,
            unrealized_pnl=h.unrealized_pnl,
        )
        for h in holdings
        if h.quantity != 0
    ]
    return AccountSnapshot(
        account_code=account_code,
        currency=base,
        net_liquidation=balance,
        total_cash=total_cash,
        cash=[CashBalance(currency=c, amount=a) for c, a in sorted(cash.items())],
        positions=sorted(positions, key=lambda p: (p.symbol, p.sec_type, p.currency)),
    )
