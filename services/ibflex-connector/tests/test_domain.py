"""Pure rules: what IB's answers mean, and statements mapped to our values (no network)."""

from __future__ import annotations

import copy
import xml.etree.ElementTree as ET
from datetime import UTC, date, datetime
from decimal import Decimal

from brokerlink_simulators.ib_flex import FlexAccount, FlexPosition, FlexQuery
from brokerlink_simulators.ib_flex.reports import query_response, samples
from ibflex_connector.domain.answers import Verdict, expiry_days, read_answer
from ibflex_connector.domain.statement import (
    AccountStatement,
    pick_statement,
    read_report,
)

GENERATED = datetime(2026, 11, 27, 22, 5, tzinfo=UTC)


def _report(*accounts: FlexAccount, sections: list[str] | None = None) -> bytes:
    query = FlexQuery(
        query_id="1",
        token="t",
        accounts=[a.account_id for a in accounts],
        **({"sections": sections} if sections is not None else {}),
    )
    return query_response(query, list(accounts), "2026-11-27", GENERATED)


def test_answers_are_classified_by_ib_error_code() -> None:
    success = ET.tostring(samples()["FlexStatementResponse"])  # ibflex's own sample
    answer = read_answer(success)
    assert answer.verdict is Verdict.READY and answer.reference_code == "1234567890"
    assert answer.url and answer.url.endswith("/GetStatement")

    def fail(code: str, text: str = "x") -> Verdict:
        body = (
            "<FlexStatementResponse timestamp='1 May, 2026 10:00 AM EDT'><Status>Fail"
            f"</Status><ErrorCode>{code}</ErrorCode><ErrorMessage>{text}</ErrorMessage>"
            "</FlexStatementResponse>"
        )
        return read_answer(body.encode()).verdict

    assert fail("1012") is Verdict.REAUTH and fail("1015") is Verdict.REAUTH
    assert fail("1019") is Verdict.NOT_READY and fail("1009") is Verdict.NOT_READY
    assert fail("1018") is Verdict.THROTTLED
    assert fail("1014") is Verdict.QUERY
    assert fail("1017") is Verdict.RESTART
    assert fail("1013") is Verdict.FAILED
    assert read_answer(b"<html>oops").verdict is Verdict.FAILED
    assert read_answer(b"<FlexQueryResponse/>").verdict is Verdict.READY
    assert expiry_days("Your token expires in 12 days.") == 12
    assert expiry_days("Token is invalid.") is None


def test_statement_maps_the_sample_values() -> None:
    report = read_report(_report(FlexAccount(account_id="U123456")))
    stmt = pick_statement(report, None)
    assert isinstance(stmt, AccountStatement)
    assert (stmt.account_code, stmt.base_currency) == ("U123456", "USD")
    assert stmt.net_liquidation == Decimal("40.1509097")
    assert stmt.report_date == date(2026, 11, 27)
    # generated 17:05 New York, after the close: the statement is as of the close
    assert stmt.as_of == datetime(2026, 11, 27, 21, 0, tzinfo=UTC)
    assert [(p.symbol, p.quantity, p.average_cost) for p in stmt.positions] == [
        ("VXX", Decimal("-100"), Decimal("34.405"))
    ]


def test_lots_add_up_unless_the_query_has_summary_rows() -> None:
    account = FlexAccount(
        account_id="U1234567",
        positions=[
            FlexPosition(
                symbol="IBM", quantity=10, mark_price=150, cost_basis_price=100
            ),
            FlexPosition(
                symbol="IBM", quantity=5, mark_price=150, cost_basis_price=130
            ),
        ],
    )
    body = _report(account)
    [ibm] = pick_statement(read_report(body), None).positions  # type: ignore[union-attr]
    assert (ibm.quantity, ibm.market_value, ibm.average_cost) == (
        Decimal("15"),
        Decimal("2250"),
        Decimal("110"),
    )
    # with a SUMMARY row, lots are detail and are not added again
    root = ET.fromstring(body)
    positions = root.find(".//OpenPositions")
    assert positions is not None
    summary = copy.deepcopy(positions[0])
    summary.set("levelOfDetail", "SUMMARY")
    summary.set("position", "15")
    positions.append(summary)
    [ibm] = pick_statement(read_report(ET.tostring(root)), None).positions  # type: ignore[union-attr]
    assert ibm.quantity == Decimal("15")


def test_missing_sections_are_named_as_in_ibs_query_editor() -> None:
    report = read_report(
        _report(
            FlexAccount(account_id="U1234567"),
            sections=["AccountInformation", "ChangeInNAV", "OpenPositions"],
        )
    )
    reason = pick_statement(report, "U1234567")
    assert isinstance(reason, str)
    assert "Cash Report" in reason and "Open Positions" not in reason
    # ChangeInNAV stands in for the NAV summary
    assert "Net Asset Value" not in reason


def test_picking_an_account_of_a_multi_account_report() -> None:
    report = read_report(
        _report(FlexAccount(account_id="U1111111"), FlexAccount(account_id="U2222222"))
    )
    assert "set the account code" in str(pick_statement(report, None))
    assert "does not cover account U3333333" in str(pick_statement(report, "U3333333"))
    picked = pick_statement(report, "U2222222")
    assert isinstance(picked, AccountStatement) and picked.account_code == "U2222222"
