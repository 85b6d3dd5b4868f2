"""From a Flex report to our values: which sections a statement needs, and the mapping.

A report (`<FlexQueryResponse>`) holds one `<FlexStatement>` per account the query covers. We need:
Account Information (the base currency), Net Asset Value in base (`EquitySummaryInBase`, or
`ChangeInNAV`), Cash Report and Open Positions. An empty section is fine (no positions); a section
the query does not include is not, since "no positions" and "not asked" would look the same.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

from brokerlink_shared.contracts.values import CashBalance, Position
from ibflex import parser as flex_parser

_NEW_YORK = ZoneInfo("America/New_York")
_CLOSE = time(16, 0)

# (element names any of which satisfies the need, the section's name in IB's Flex Query editor)
NEEDED_SECTIONS: tuple[tuple[tuple[str, ...], str], ...] = (
    (("AccountInformation",), "Account Information"),
    (("EquitySummaryInBase", "ChangeInNAV"), "Net Asset Value (NAV) in Base"),
    (("CashReport",), "Cash Report"),
    (("OpenPositions",), "Open Positions"),
)


class ReportError(ValueError):
    """The report cannot be read at all (a reason fit for a status message)."""


@dataclass(frozen=True, slots=True)
class AccountStatement:
    """What one account's statement reports, in our values."""

    account_code: str
    base_currency: str
    report_date: date
    as_of: datetime
    net_liquidation: Decimal
    cash_balance: Decimal | None
    cash: list[CashBalance]
    positions: list[Position]


@dataclass(frozen=True, slots=True)
class Report:
    """A whole report: each account's statement, or why it cannot be used."""

    statements: dict[str, AccountStatement | str]

    @property
    def accounts(self) -> list[str]:
        return sorted(self.statements)


def missing_sections(statement: ET.Element) -> list[str]:
    present = {child.tag for child in statement}
    return [
        label for tags, label in NEEDED_SECTIONS if not any(t in present for t in tags)
    ]


def _as_of(report_date: date, generated: datetime | None) -> datetime:
    """The report date's market close in New York (as UTC), or when the report was generated if
    that was earlier: a statement never claims to be newer than it is, and stays on its date."""
    close = datetime.combine(report_date, _CLOSE, _NEW_YORK).astimezone(UTC)
    if generated is not None:
        made = generated.replace(tzinfo=_NEW_YORK).astimezone(UTC)
        if made.date() == close.date() and made < close:
            return made
    return close


def _positions(rows: tuple[Any, ...]) -> list[Position]:
    """Summary rows when the query has them; otherwise lots added up per contract."""
    summary = [
        r
        for r in rows
        if str(getattr(r, "levelOfDetail", "") or "").upper() == "SUMMARY"
    ]
    chosen = summary or list(rows)
    grouped: dict[tuple[str, str], list[Any]] = defaultdict(list)
    for row in chosen:
        grouped[(str(row.conid or row.symbol), str(row.currency or ""))].append(row)
    out = []
    for group in grouped.values():
        first = group[0]
        quantity = sum((r.position or Decimal(0) for r in group), Decimal(0))
        value = sum((r.positionValue or Decimal(0) for r in group), Decimal(0))
        cost = sum((r.costBasisMoney or Decimal(0) for r in group), Decimal(0))
        pnl = sum((r.fifoPnlUnrealized or Decimal(0) for r in group), Decimal(0))
        category = first.assetCategory
        out.append(
            Position(
                symbol=str(first.symbol),
                sec_type=str(category.value) if category is not None else "STK",
                currency=str(first.currency or "USD"),
                quantity=quantity,
                average_cost=(cost / quantity) if quantity else first.costBasisPrice,
                market_price=first.markPrice,
                market_value=value,
                unrealized_pnl=pnl,
            )
        )
    return sorted(out, key=lambda p: (p.symbol, p.currency))


def _map(stmt: Any) -> AccountStatement:
    info = stmt.AccountInformation
    base = str(info.currency or "").upper()
    if len(base) != 3:
        raise ReportError("the statement's Account Information has no base currency")
    summaries = sorted(
        (s for s in stmt.EquitySummaryInBase if s.total is not None and s.reportDate),
        key=lambda s: s.reportDate,
    )
    if summaries:
        nav, report_date = summaries[-1].total, summaries[-1].reportDate
    elif stmt.ChangeInNAV is not None and stmt.ChangeInNAV.endingValue is not None:
        nav = stmt.ChangeInNAV.endingValue
        report_date = stmt.ChangeInNAV.toDate or stmt.toDate
    else:
        raise ReportError("the statement has no net asset value")
    cash: dict[str, Decimal] = {}
    cash_balance = summaries[-1].cash if summaries else None
    for row in stmt.CashReport:
        currency = str(row.currency or "")
        if row.endingCash is None:
            continue
        if currency == "BASE_SUMMARY":
            cash_balance = row.endingCash
        elif len(currency) == 3 and currency not in cash:
            cash[currency] = row.endingCash
    return AccountStatement(
        account_code=str(stmt.accountId),
        base_currency=base,
        report_date=report_date,
        as_of=_as_of(report_date, stmt.whenGenerated),
        net_liquidation=nav,
        cash_balance=cash_balance,
        cash=[CashBalance(currency=c, amount=a) for c, a in sorted(cash.items())],
        positions=_positions(tuple(stmt.OpenPositions)),
    )


def read_report(body: bytes) -> Report:
    """Parse a `<FlexQueryResponse>` and map each account's statement."""
    try:
        root = ET.fromstring(body)  # noqa: S314 - expat >= 2.4.1 refuses entity bombs; ElementTree fetches no external entities
        parsed = flex_parser.parse(body)
    except (ET.ParseError, flex_parser.FlexParserError, ValueError, KeyError) as exc:
        raise ReportError(
            f"IB's report could not be read ({type(exc).__name__})"
        ) from None
    elements = {e.get("accountId", ""): e for e in root.iter("FlexStatement")}
    statements: dict[str, AccountStatement | str] = {}
    for stmt in parsed.FlexStatements:
        code = str(stmt.accountId)
        missing = missing_sections(elements.get(code, ET.Element("FlexStatement")))
        if missing:
            statements[code] = (
                "the Flex Query lacks the section(s) "
                + ", ".join(missing)
                + ": add them to the query in Client Portal → Performance & Reports → "
                "Flex Queries"
            )
            continue
        try:
            statements[code] = _map(stmt)
        except ReportError as exc:
            statements[code] = str(exc)
        except (TypeError, ValueError, AttributeError) as exc:
            statements[code] = (
                f"the statement could not be mapped ({type(exc).__name__})"
            )
    return Report(statements)


def pick_statement(report: Report, account_code: str | None) -> AccountStatement | str:
    """The configured account's statement, or why there is none."""
    if account_code:
        found = report.statements.get(account_code)
        if found is None:
            return (
                f"the Flex Query's report does not cover account {account_code} "
                f"(it covers {', '.join(report.accounts) or 'no account'})"
            )
        return found
    if len(report.statements) == 1:
        return next(iter(report.statements.values()))
    if not report.statements:
        return "the Flex Query's report covers no account"
    return (
        f"the Flex Query covers {len(report.statements)} accounts "
        f"({', '.join(report.accounts)}): set the account code to choose one"
    )
