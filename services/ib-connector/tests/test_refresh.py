"""Refreshes through the whole pipeline: real NATS, the real ib_async client, the simulator over TCP."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from brokerlink_devkit.testing import wait_until
from brokerlink_shared.contracts.values import IntegrationStatus
from brokerlink_simulators.ib_gateway import IBGatewaySimulator, PositionSpec

from .conftest import Bus, account, add_gateway


async def test_shared_and_separate_sessions(
    sim: IBGatewaySimulator, bus: Bus, connector: Any
) -> None:
    aapl = PositionSpec(
        symbol="AAPL",
        quantity=Decimal(10),
        average_cost=Decimal(100),
        market_price=Decimal(150),
    )
    multi = await add_gateway(
        sim,
        "multi",
        account("U1000001", "1000", "5000", [aapl]),
        account("U1000002", "2000"),
    )
    single = await add_gateway(sim, "single", account("U3000003", "3000"))
    a1 = multi.model_copy(update={"account_code": "U1000001"})
    a2 = multi.model_copy(update={"account_code": "U1000002"})
    a3 = multi.model_copy(update={"account_code": "U1000002", "client_id": 2})

    b1 = await bus.refreshed(1, a1)
    b2 = await bus.refreshed(2, a2)
    b3 = await bus.refreshed(3, a3)
    b4 = await bus.refreshed(4, single)

    assert b1.payload.broker_account == "U1000001"
    assert b1.payload.currency == "USD"
    assert b1.payload.balance == Decimal(
        "3140.00"
    )  # 1000 USD + 5000 HKD * 0.128 + 10 AAPL * 150
    assert b1.payload.cash_balance == Decimal("1640.00")
    assert {(c.currency, c.amount) for c in b1.payload.cash} == {
        ("USD", Decimal(1000)),
        ("HKD", Decimal(5000)),
    }
    [position] = b1.payload.positions
    assert (position.symbol, position.quantity, position.market_value, position.unrealized_pnl) == (
        "AAPL", Decimal(10), Decimal(1500), Decimal(500),
    )  # fmt: skip
    assert (
        b2.payload.balance == Decimal(2000) and b2.payload.broker_account == "U1000002"
    )
    assert b3.payload.balance == Decimal(2000)
    assert (
        b4.payload.balance == Decimal(3000) and b4.payload.broker_account == "U3000003"
    )
    # accounts 1 and 2 share one session (client id 1); account 3 has its own (client id 2)
    assert sorted(sim.gateway("multi").client_ids) == [1, 2]
    assert sim.gateway("multi").api_session_count() == 2
    assert sim.gateway("single").api_session_count() == 1
    for account_id in (1, 2, 3, 4):
        await wait_until(
            lambda a=account_id: (
                bus.status_trail(a) == [(IntegrationStatus.CONNECTED, None)]
            ),
            message=f"connected status of {account_id}",
        )


async def test_several_accounts_without_code_is_an_error(
    sim: IBGatewaySimulator, bus: Bus, connector: Any
) -> None:
    multi = IBConnectionFor(sim, "multi", client_id=5)
    refresh_id = await bus.refresh(5, multi)
    failed = await wait_until(
        lambda: bus.failure_for(refresh_id), message="refresh.failed"
    )
    assert failed.payload.message == "gateway manages 2 accounts: set account_code"
    status = await wait_until(lambda: bus.last_status(5), message="status")
    assert status.payload.status is IntegrationStatus.ERROR
    assert status.payload.message == "gateway manages 2 accounts: set account_code"


def IBConnectionFor(
    sim: IBGatewaySimulator, gateway: str, client_id: int = 1, **extra: Any
) -> Any:
    from brokerlink_shared.contracts.values import IBConnection

    return IBConnection(
        host="127.0.0.1", port=sim.gateway_port(gateway), client_id=client_id, **extra
    )
