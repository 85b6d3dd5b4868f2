"""The Flex Web Service simulator over HTTP: IB's answers for each scenario, reports ibflex parses."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator

import httpx
import pytest
from brokerlink_simulators.ib_flex import (
    FlexAccount,
    FlexLimits,
    FlexQuery,
    FlexToken,
    IbFlexSimulator,
    Scenario,
)
from ibflex import parser as flex_parser

GOOD, EXPIRED, FAST = "1111111111", "2222222222", "3333333333"


@pytest.fixture
async def sim() -> AsyncIterator[IbFlexSimulator]:
    scenario = Scenario(
        tokens=[
            FlexToken(token=GOOD, expires_in_days=9),
            FlexToken(token=EXPIRED, expired=True),
            FlexToken(token=FAST),
        ],
        queries=[
            FlexQuery(query_id="1", token=GOOD, accounts=["U1234567", "U7654321"]),
            FlexQuery(
                query_id="2", token=FAST, accounts=["U1234567"], not_ready_polls=0
            ),
        ],
        accounts=[FlexAccount(account_id="U7654321", base_currency="CHF", nav=10.5)],
        limits=FlexLimits(per_window=4, window_s=30, min_interval_s=0),
    )
    async with IbFlexSimulator(scenario) as simulator:
        yield simulator


async def _call(url: str, token: str, q: str) -> ET.Element:
    async with httpx.AsyncClient() as http:
        response = await http.get(url, params={"t": token, "q": q, "v": "3"})
    assert response.status_code == 200
    return ET.fromstring(response.content)


def _code(answer: ET.Element) -> str | None:
    return answer.findtext("ErrorCode")


async def test_send_request_then_not_ready_then_the_report(
    sim: IbFlexSimulator,
) -> None:
    sent = await _call(sim.send_request_url, GOOD, "1")
    assert sent.tag == "FlexStatementResponse" and sent.findtext("Status") == "Success"
    assert "expires in 9 days" in (sent.findtext("Warning") or "")
    url, code = sent.findtext("Url"), sent.findtext("ReferenceCode")
    assert url and code
    assert _code(await _call(url, GOOD, code)) == "1019"  # generation in progress
    report = await _call(url, GOOD, code)
    assert report.tag == "FlexQueryResponse"
    parsed = flex_parser.parse(ET.tostring(report))
    assert [s.accountId for s in parsed.FlexStatements] == ["U1234567", "U7654321"]
    chf = parsed.FlexStatements[1]
    assert chf.AccountInformation.currency == "CHF"
    assert str(chf.EquitySummaryInBase[0].total) == "10.5"
    assert (
        _code(await _call(url, GOOD, code)) == "1017"
    )  # a reference code is used once


async def test_error_scenarios(sim: IbFlexSimulator) -> None:
    assert _code(await _call(sim.send_request_url, EXPIRED, "1")) == "1012"
    assert _code(await _call(sim.send_request_url, "9999999999", "1")) == "1015"
    assert (
        _code(await _call(sim.send_request_url, GOOD, "2")) == "1014"
    )  # not its query


async def test_throttle_per_token(sim: IbFlexSimulator) -> None:
    for _ in range(4):
        assert (await _call(sim.send_request_url, FAST, "2")).findtext(
            "Status"
        ) == "Success"
    assert _code(await _call(sim.send_request_url, FAST, "2")) == "1018"
    assert (await _call(sim.send_request_url, GOOD, "1")).findtext(
        "Status"
    ) == "Success"
    counters = sim.state.counters
    assert (counters[FAST].throttled, counters[FAST].max_in_window(30)) == (1, 4)
