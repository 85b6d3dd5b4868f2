"""Flex XML as IB writes it, assembled from the ibflex test-suite elements in `samples/`.

Every element of a statement is a copy of a sample element (all of IB's attributes as the sample
has them) with only the scenario's values changed: account id, dates, NAV, cash, positions.
"""

from __future__ import annotations

import copy
import functools
import xml.etree.ElementTree as ET
from datetime import datetime
from importlib import resources
from zoneinfo import ZoneInfo

from brokerlink_simulators.ib_flex.scenario import FlexAccount, FlexPosition, FlexQuery

_NEW_YORK = ZoneInfo("America/New_York")


@functools.cache
def samples() -> dict[str, ET.Element]:
    """The sample elements by tag (the first of each)."""
    text = (
        resources.files("brokerlink_simulators.ib_flex")
        .joinpath("samples/ibflex_elements.xml")
        .read_text()
    )
    root = ET.fromstring(text)  # noqa: S314 - expat >= 2.4.1 refuses entity bombs; ElementTree fetches no external entities
    out: dict[str, ET.Element] = {}
    for child in root:
        out.setdefault(child.tag, child)
    return out


def _sample(tag: str, **attrs: str) -> ET.Element:
    element = copy.deepcopy(samples()[tag])
    for child in list(element):
        element.remove(child)
    element.attrib.update(attrs)
    return element


def _num(value: float) -> str:
    text = repr(float(value))
    return text[:-2] if text.endswith(".0") else text


def _position(account: FlexAccount, pos: FlexPosition, day: str) -> ET.Element:
    value = pos.quantity * pos.mark_price
    cost = pos.quantity * pos.cost_basis_price
    return _sample(
        "OpenPosition",
        accountId=account.account_id,
        currency=pos.currency,
        fxRateToBase=_num(pos.fx_rate_to_base),
        assetCategory=pos.asset_category,
        symbol=pos.symbol,
        description=pos.description or pos.symbol,
        reportDate=day,
        position=_num(pos.quantity),
        markPrice=_num(pos.mark_price),
        positionValue=_num(round(value, 4)),
        openPrice=_num(pos.cost_basis_price),
        costBasisPrice=_num(pos.cost_basis_price),
        costBasisMoney=_num(round(cost, 4)),
        fifoPnlUnrealized=_num(round(value - cost, 4)),
        side="Long" if pos.quantity >= 0 else "Short",
    )


def statement(
    account: FlexAccount, sections: list[str], report_date: str, generated: datetime
) -> ET.Element:
    """One `<FlexStatement>` for an account with the query's sections."""
    stmt = _sample(
        "FlexStatement",
        accountId=account.account_id,
        fromDate=report_date,
        toDate=report_date,
        period="LastBusinessDay",
        whenGenerated=generated.astimezone(_NEW_YORK).strftime("%Y-%m-%d;%H%M%S"),
    )
    ids = {"accountId": account.account_id}
    if "AccountInformation" in sections:
        stmt.append(
            _sample("AccountInformation", **ids, currency=account.base_currency)
        )
    if "EquitySummaryInBase" in sections:
        summary = _sample(
            "EquitySummaryByReportDateInBase", **ids, reportDate=report_date
        )
        if account.nav is not None:
            summary.set("total", _num(account.nav))
        if account.cash is not None:
            summary.set("cash", _num(sum(account.cash.values())))
        container = ET.SubElement(stmt, "EquitySummaryInBase")
        container.append(summary)
    if "ChangeInNAV" in sections:
        nav = _sample(
            "ChangeInNAV",
            **ids,
            fromDate=report_date.replace("-", ""),
            toDate=report_date.replace("-", ""),
        )
        if account.nav is not None:
            nav.set("endingValue", _num(account.nav))
        else:  # the samples' two elements come from different reports: keep them consistent
            nav.set(
                "endingValue",
                samples()["EquitySummaryByReportDateInBase"].get("total", "0"),
            )
        stmt.append(nav)
    if "CashReport" in sections:
        container = ET.SubElement(stmt, "CashReport")
        sample_cash = samples()["CashReportCurrency"].get("endingCash", "0")
        cash = account.cash if account.cash is not None else {"USD": float(sample_cash)}
        rows = [("BASE_SUMMARY", sum(cash.values())), *sorted(cash.items())]
        for currency, amount in rows:
            container.append(
                _sample(
                    "CashReportCurrency",
                    **ids,
                    currency=currency,
                    fromDate=report_date,
                    toDate=report_date,
                    endingCash=_num(amount),
                    endingSettledCash=_num(amount),
                )
            )
    if "OpenPositions" in sections:
        container = ET.SubElement(stmt, "OpenPositions")
        if account.positions is None:
            sample = copy.deepcopy(samples()["OpenPosition"])
            sample.set("accountId", account.account_id)
            sample.set("reportDate", report_date)
            container.append(sample)
        else:
            for pos in account.positions:
                container.append(_position(account, pos, report_date))
    return stmt


def query_response(
    query: FlexQuery,
    accounts: list[FlexAccount],
    report_date: str,
    generated: datetime,
) -> bytes:
    """The `<FlexQueryResponse>` GetStatement returns once the statement is ready."""
    root = ET.Element(
        "FlexQueryResponse", queryName=f"brokerlink sim {query.query_id}", type="AF"
    )
    container = ET.SubElement(root, "FlexStatements", count=str(len(accounts)))
    for account in accounts:
        container.append(statement(account, query.sections, report_date, generated))
    return bytes(ET.tostring(root, encoding="utf-8", xml_declaration=True))


def _timestamp(now: datetime) -> str:
    local = now.astimezone(_NEW_YORK)
    return local.strftime("%d %B, %Y %I:%M %p ") + (local.tzname() or "EST")


def statement_response(now: datetime, **children: str) -> bytes:
    """A `<FlexStatementResponse>` (SendRequest's answer, and every error)."""
    root = ET.Element("FlexStatementResponse", timestamp=_timestamp(now))
    for tag, text in children.items():
        ET.SubElement(root, tag).text = text
    return bytes(ET.tostring(root, encoding="utf-8", xml_declaration=True))


# IB's error codes and texts for the cases the simulator plays (the ibflex client lists them all).
ERRORS = {
    "1012": "Token has expired.",
    "1014": "Query is invalid.",
    "1015": "Token is invalid.",
    "1017": "Reference code is invalid.",
    "1018": "Too many requests have been made from this token. Please try again shortly.",
    "1019": "Statement generation in progress. Please try again shortly.",
    "1020": "Invalid request or unable to validate request.",
}


def error_response(now: datetime, code: str) -> bytes:
    return statement_response(
        now, Status="Fail", ErrorCode=code, ErrorMessage=ERRORS[code]
    )
