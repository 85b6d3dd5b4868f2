"""Pure rules: token lifecycle, rate arithmetic, batching, mapping, retry delays (no network)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from brokerlink_shared.contracts.values import IntegrationStatus
from schwab_connector.domain.batching import LoginBatcher
from schwab_connector.domain.mapping import (
    AccountDataError,
    pick_account,
    resolve_hash,
    snapshot,
)
from schwab_connector.domain.rate import RatePlan
from schwab_connector.domain.retry import parse_retry_after, retry_delay
from schwab_connector.domain.tokens import (
    is_newer,
    is_reauth_error,
    lifecycle_status,
    needs_access_refresh,
    token_times,
)

pytestmark = pytest.mark.fast

T0 = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
WEEK = 7 * 24 * 3600


def _times(created: datetime = T0, access_s: int = 1800):  # type: ignore[no-untyped-def]
    token = {
        "creation_timestamp": int(created.timestamp()),
        "token": {"expires_at": int(created.timestamp()) + access_s},
    }
    return token_times(token, WEEK)


def test_access_token_refreshed_within_margin() -> None:
    times = _times()
    assert not needs_access_refresh(times, T0 + timedelta(minutes=19), margin_s=600)
    assert needs_access_refresh(times, T0 + timedelta(minutes=20), margin_s=600)
    assert needs_access_refresh(times, T0 + timedelta(hours=2), margin_s=600)


def test_lifecycle_connected_expiring_soon_reauth() -> None:
    times = _times()
    day = 24 * 3600
    assert (
        lifecycle_status(times, T0 + timedelta(days=5, hours=23), day)
        == IntegrationStatus.CONNECTED
    )
    assert (
        lifecycle_status(times, T0 + timedelta(days=6), day)
        == IntegrationStatus.EXPIRING_SOON
    )
    assert (
        lifecycle_status(times, T0 + timedelta(days=7), day)
        == IntegrationStatus.REAUTH_REQUIRED
    )


def test_newer_token_wins_and_reauth_errors() -> None:
    old, relogin = _times(), _times(T0 + timedelta(days=1))
    refreshed = _times(T0, access_s=3600)
    assert (
        is_newer(relogin, old)
        and is_newer(refreshed, old)
        and not is_newer(old, relogin)
    )
    assert is_newer(old, None)
    assert all(
        is_reauth_error(e)
        for e in ("invalid_grant", "unsupported_token_type", "invalid_client")
    )
    assert not is_reauth_error("server_error") and not is_reauth_error(None)


def test_rate_plan_never_exceeds_limit_on_any_window() -> None:
    plan = RatePlan(120, 12)
    assert (plan.slice_s, plan.per_slice) == (5.0, 8)
    assert (
        plan.worst_case_per_window(60.001) <= 120
    )  # a sliding window plus a little latency
    for limit in (1, 7, 60, 120, 1000):
        for slices in (1, 6, 12, 60):
            assert RatePlan(limit, slices).worst_case_per_window(60.001) <= max(
                limit, RatePlan(limit, slices).per_slice * (slices + 2)
            )
    assert plan.wait_for_next_slice(12.5) == pytest.approx(2.5)


async def test_batcher_coalesces_one_login_and_keeps_logins_apart() -> None:
    batcher: LoginBatcher[str, int] = LoginBatcher(window_s=0.05)
    calls: list[str] = []

    async def fetch(key: str) -> int:
        calls.append(key)
        await asyncio.sleep(0.01)
        return len(calls)

    results = await asyncio.gather(
        *(batcher.run(k, lambda k=k: fetch(k)) for k in ["a"] * 5 + ["b"] * 3)
    )
    assert sorted(calls) == ["a", "b"]
    assert len(set(results[:5])) == 1 and len(set(results[5:])) == 1
    later = await batcher.run("a", lambda: fetch("a"))
    assert later == 3  # a new batch after the first one closed


async def test_batcher_shares_failures() -> None:
    batcher: LoginBatcher[str, int] = LoginBatcher(window_s=0.01)

    async def boom() -> int:
        raise RuntimeError("schwab down")

    results = await asyncio.gather(
        *(batcher.run("a", boom) for _ in range(3)), return_exceptions=True
    )
    assert all(isinstance(r, RuntimeError) for r in results)


ELEMENT = {
    "securitiesAccount": {
        "accountNumber": "11111111",
        "positions": [
            {
                "longQuantity": 10.0,
                "shortQuantity": 0.0,
                "averagePrice": 100.0,
                "marketValue": 1250.0,
                "longOpenProfitLoss": 250.0,
                "instrument": {"symbol": "AAPL", "assetType": "EQUITY"},
            },
            {
                "longQuantity": 0.0,
                "shortQuantity": 2.0,
                "averagePrice": 5.0,
                "marketValue": -10.0,
                "instrument": {"symbol": "XYZ_C", "assetType": "OPTION"},
            },
            {"longQuantity": 1.0, "instrument": {}},
        ],
        "currentBalances": {"liquidationValue": 5000.5, "cashBalance": 3750.5},
    }
}


def test_snapshot_maps_balances_and_positions() -> None:
    snap = snapshot(ELEMENT)
    assert (snap.balance, snap.cash_balance) == (Decimal("5000.5"), Decimal("3750.5"))
    assert [(c.currency, c.amount) for c in snap.cash] == [("USD", Decimal("3750.5"))]
    aapl, option = snap.positions
    assert (
        aapl.symbol,
        aapl.sec_type,
        aapl.quantity,
        aapl.market_price,
        aapl.unrealized_pnl,
    ) == ("AAPL", "STK", Decimal("10.0"), Decimal("125.0000"), Decimal("250.0"))
    assert (option.sec_type, option.quantity) == ("OPT", Decimal("-2.0"))
    with pytest.raises(AccountDataError):
        snapshot({"securitiesAccount": {"accountNumber": "1"}})


def test_pick_account_and_resolve_hash() -> None:
    other = {"securitiesAccount": {"accountNumber": "22222222"}}
    assert pick_account([ELEMENT, other], "22222222") is other
    assert pick_account([ELEMENT, other], None, "H1", {"H1": "11111111"}) is ELEMENT
    assert pick_account([ELEMENT], None) is ELEMENT
    assert isinstance(pick_account([ELEMENT, other], None), str)
    assert isinstance(pick_account([ELEMENT], "99999999"), str)
    numbers = [
        {"accountNumber": "11111111", "hashValue": "H1"},
        {"accountNumber": "22222222", "hashValue": "H2"},
    ]
    assert resolve_hash(numbers, "22222222") == ("H2", "connected")
    assert resolve_hash(numbers[:1], None) == ("H1", "connected")
    assert resolve_hash(numbers, None)[0] is None
    assert resolve_hash(numbers, "3")[0] is None


def test_retry_delay_honours_retry_after() -> None:
    assert parse_retry_after("3", 0) == 3.0
    assert parse_retry_after(
        "Tue, 24 Nov 2026 12:00:10 GMT", T0.timestamp()
    ) == pytest.approx(10)
    assert parse_retry_after("soon", 0) is None and parse_retry_after(None, 0) is None
    assert retry_delay(1, 2.0, 0.5, 30) == 2.0
    assert 0.25 <= retry_delay(1, None, 0.5, 30) <= 0.5
    assert retry_delay(10, None, 0.5, 4) <= 4


def test_a_cash_account_reports_total_cash() -> None:
    element = {
        "securitiesAccount": {
            "type": "CASH",
            "accountNumber": "11112222",
            "currentBalances": {"liquidationValue": 900.0, "totalCash": 400.25},
        }
    }
    snap = snapshot(element)
    assert [(c.currency, c.amount) for c in snap.cash] == [("USD", Decimal("400.25"))]
    del element["securitiesAccount"]["currentBalances"]["totalCash"]
    assert snapshot(element).cash == []
