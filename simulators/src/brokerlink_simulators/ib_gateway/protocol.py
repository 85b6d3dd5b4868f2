"""TWS API wire protocol, server side, for exactly one server version (176).

After the client's `API\\0` prefix every message is a 4-byte big-endian length followed by
NUL-terminated text fields. Layouts follow `ib_async/decoder.py` and `ib_async/client.py`
for server version 176 (errors carry the advancedOrderRejectJson field, added in 166).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from datetime import UTC, datetime
from decimal import Decimal
from enum import IntEnum

from brokerlink_simulators.ib_gateway.scenario import AccountSpec, PositionSpec

SERVER_VERSION = 176
MIN_CLIENT_VERSION = 157
API_PREFIX = b"API\0"
_LENGTH = struct.Struct(">I")
MAX_MESSAGE = 16 * 1024 * 1024


class In(IntEnum):
    """Message ids the client sends (the ones this simulator answers)."""

    REQ_MKT_DATA = 1
    REQ_OPEN_ORDERS = 5
    REQ_ACCOUNT_UPDATES = 6
    REQ_EXECUTIONS = 7
    REQ_IDS = 8
    REQ_AUTO_OPEN_ORDERS = 15
    REQ_ALL_OPEN_ORDERS = 16
    REQ_MANAGED_ACCTS = 17
    REQ_CURRENT_TIME = 49
    REQ_MARKET_DATA_TYPE = 59
    REQ_POSITIONS = 61
    REQ_ACCOUNT_SUMMARY = 62
    CANCEL_ACCOUNT_SUMMARY = 63
    CANCEL_POSITIONS = 64
    START_API = 71
    REQ_POSITIONS_MULTI = 74
    CANCEL_POSITIONS_MULTI = 75
    REQ_ACCOUNT_UPDATES_MULTI = 76
    CANCEL_ACCOUNT_UPDATES_MULTI = 77
    REQ_COMPLETED_ORDERS = 99


class Out(IntEnum):
    """Message ids the server sends."""

    ERR_MSG = 4
    ACCT_VALUE = 6
    PORTFOLIO_VALUE = 7
    ACCT_UPDATE_TIME = 8
    NEXT_VALID_ID = 9
    MANAGED_ACCTS = 15
    CURRENT_TIME = 49
    OPEN_ORDER_END = 53
    ACCT_DOWNLOAD_END = 54
    EXECUTION_DATA_END = 55
    POSITION_DATA = 61
    POSITION_END = 62
    ACCOUNT_SUMMARY = 63
    ACCOUNT_SUMMARY_END = 64
    POSITION_MULTI = 71
    POSITION_MULTI_END = 72
    ACCOUNT_UPDATE_MULTI = 73
    ACCOUNT_UPDATE_MULTI_END = 74
    COMPLETED_ORDERS_END = 102


Field = str | int | float | Decimal


def frame(*fields: Field) -> bytes:
    """Encode one message: length prefix plus NUL-terminated fields."""
    body = "".join(f"{_text(f)}\0" for f in fields).encode()
    return _LENGTH.pack(len(body)) + body


def _text(value: Field) -> str:
    if isinstance(value, Decimal):
        return format(value, "f")
    return str(value)


def handshake_reply(now: datetime | None = None) -> bytes:
    """The server's answer to the version range: server version and connection time."""
    moment = (now or datetime.now(UTC)).strftime("%Y%m%d %H:%M:%S UTC")
    return frame(SERVER_VERSION, moment)


class FrameDecoder:
    """Splits the incoming byte stream into messages (lists of text fields)."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._prefix_seen = False

    def feed(self, data: bytes) -> list[list[str]]:
        """Add bytes; return every complete message. Raises ValueError on a malformed stream."""
        self._buffer += data
        if not self._prefix_seen:
            if len(self._buffer) < len(API_PREFIX):
                return []
            if bytes(self._buffer[: len(API_PREFIX)]) != API_PREFIX:
                raise ValueError("stream does not start with API\\0")
            del self._buffer[: len(API_PREFIX)]
            self._prefix_seen = True
        messages: list[list[str]] = []
        while len(self._buffer) >= _LENGTH.size:
            (size,) = _LENGTH.unpack_from(self._buffer)
            if size > MAX_MESSAGE:
                raise ValueError(f"message of {size} bytes is too large")
            end = _LENGTH.size + size
            if len(self._buffer) < end:
                break
            text = bytes(self._buffer[_LENGTH.size : end]).decode(errors="replace")
            del self._buffer[:end]
            fields = text.split("\0")
            if fields and fields[-1] == "":
                fields.pop()
            messages.append(fields)
        return messages


def parse_version_range(fields: list[str]) -> tuple[int, int]:
    """Parse the client's `v157..178 [options]` message."""
    if not fields or not fields[0].startswith("v"):
        raise ValueError(f"bad version range {fields!r}")
    low, _, high = fields[0][1:].split(" ")[0].partition("..")
    return int(low), int(high or low)


def error(req_id: int, code: int, text: str) -> bytes:
    return frame(Out.ERR_MSG, 2, req_id, code, text, "")


def managed_accounts(codes: Iterable[str]) -> bytes:
    return frame(Out.MANAGED_ACCTS, 1, ",".join(codes))


def next_valid_id(order_id: int) -> bytes:
    return frame(Out.NEXT_VALID_ID, 1, order_id)


def account_value_rows(account: AccountSpec) -> list[tuple[str, Field, str]]:
    """(key, value, currency) rows as `reqAccountUpdates` sends them."""
    base = account.base_currency
    rows: list[tuple[str, Field, str]] = [
        ("AccountCode", account.code, ""),
        ("AccountType", account.account_type, ""),
        ("Currency", base, base),
        ("Currency", "BASE", "BASE"),
        ("NetLiquidation", account.net_liq, base),
        ("NetLiquidationByCurrency", account.net_liq, "BASE"),
        ("TotalCashValue", account.total_cash, base),
        ("TotalCashBalance", account.total_cash, "BASE"),
        ("CashBalance", account.total_cash, "BASE"),
        ("StockMarketValue", account.stock_market_value, base),
        ("GrossPositionValue", account.stock_market_value, base),
        ("EquityWithLoanValue", account.net_liq, base),
        ("AvailableFunds", account.total_cash, base),
        ("UnrealizedPnL", account.unrealized_pnl, base),
        ("RealizedPnL", Decimal(0), base),
    ]
    for currency, amount in sorted(account.cash.items()):
        rows.append(("CashBalance", amount, currency))
        rows.append(("TotalCashBalance", amount, currency))
        rows.append(("ExchangeRate", account.to_base(Decimal(1), currency), currency))
    return rows


def summary_rows(account: AccountSpec, tags: set[str]) -> list[tuple[str, Field, str]]:
    """(tag, value, currency) rows as `reqAccountSummary` sends them for the requested tags."""
    base = account.base_currency
    known: dict[str, tuple[Field, str]] = {
        "AccountType": (account.account_type, ""),
        "NetLiquidation": (account.net_liq, base),
        "TotalCashValue": (account.total_cash, base),
        "SettledCash": (account.total_cash, base),
        "BuyingPower": (account.total_cash, base),
        "EquityWithLoanValue": (account.net_liq, base),
        "GrossPositionValue": (account.stock_market_value, base),
        "AvailableFunds": (account.total_cash, base),
        "ExcessLiquidity": (account.total_cash, base),
        "Cushion": (Decimal(1), ""),
        "Leverage": (Decimal(0), ""),
    }
    rows: list[tuple[str, Field, str]] = [(t, *known[t]) for t in tags if t in known]
    if "$LEDGER:ALL" in tags or "$LEDGER" in tags:
        rows.append(("Currency", "BASE", "BASE"))
        rows.append(("CashBalance", account.total_cash, "BASE"))
        rows.append(("NetLiquidationByCurrency", account.net_liq, "BASE"))
        for currency, amount in sorted(account.cash.items()):
            rows.append(("Currency", currency, currency))
            rows.append(("CashBalance", amount, currency))
    return rows


def account_updates(account: AccountSpec, now: datetime | None = None) -> bytes:
    """The full answer to `reqAccountUpdates`: values, portfolio, update time, download end."""
    parts = [
        frame(Out.ACCT_VALUE, 2, k, v, c, account.code)
        for k, v, c in account_value_rows(account)
    ]
    parts += [portfolio_value(account.code, p) for p in account.positions]
    parts.append(
        frame(Out.ACCT_UPDATE_TIME, 1, (now or datetime.now(UTC)).strftime("%H:%M"))
    )
    parts.append(frame(Out.ACCT_DOWNLOAD_END, 1, account.code))
    return b"".join(parts)


def portfolio_value(
    code: str, p: PositionSpec, quantity: Decimal | None = None
) -> bytes:
    """One `updatePortfolio` message (quantity 0 tells the client a holding is gone)."""
    qty = p.quantity if quantity is None else quantity
    return frame(
        Out.PORTFOLIO_VALUE, 8, p.contract_id, p.symbol, p.sec_type, "", 0.0, "", "",
        p.primary_exchange, p.currency, p.symbol, p.symbol, qty, p.market_price,
        p.value if quantity is None else Decimal(0), p.average_cost,
        p.pnl if quantity is None else Decimal(0), p.realized_pnl, code,
    )  # fmt: skip


def position(code: str, p: PositionSpec) -> bytes:
    """One `position` message (answer to reqPositions)."""
    return frame(
        Out.POSITION_DATA, 3, code, p.contract_id, p.symbol, p.sec_type, "", 0.0, "", "",
        "", p.currency, p.symbol, p.symbol, p.quantity, p.average_cost,
    )  # fmt: skip


def position_multi(req_id: int, code: str, model_code: str, p: PositionSpec) -> bytes:
    return frame(
        Out.POSITION_MULTI, 1, req_id, code, p.contract_id, p.symbol, p.sec_type, "", 0.0, "", "",
        "", p.currency, p.symbol, p.symbol, p.quantity, p.average_cost, model_code,
    )  # fmt: skip
