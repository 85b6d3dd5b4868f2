"""The IB Gateway simulator driven by the real, unmodified ib_async client over TCP."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path

import httpx
import pytest
from brokerlink_devkit.testing import wait_until
from brokerlink_simulators.ib_gateway import (
    AccountSpec,
    GatewaySpec,
    IBGatewaySimulator,
    PositionSpec,
    Scenario,
)
from ib_async import IB

DEMO = Path(__file__).resolve().parents[1] / "scenarios" / "ib_demo.json"


def _account(
    code: str, cash: str = "1000", positions: list[PositionSpec] | None = None
) -> AccountSpec:
    return AccountSpec(
        code=code, cash={"USD": Decimal(cash)}, positions=positions or []
    )


@pytest.fixture
async def sim() -> AsyncIterator[IBGatewaySimulator]:
    scenario = Scenario.load(DEMO)
    scenario.gateways.append(
        GatewaySpec(name="solo", accounts=[_account("U1000001", "5000")])
    )
    simulator = IBGatewaySimulator(scenario)
    await simulator.start()
    try:
        yield simulator
    finally:
        await simulator.stop()


async def _connect(port: int, client_id: int = 1, timeout: float = 5) -> IB:
    ib = IB()
    await ib.connectAsync("127.0.0.1", port, client_id, readonly=True, timeout=timeout)
    return ib


async def test_connect_and_account_summary(sim: IBGatewaySimulator) -> None:
    ib = await _connect(sim.gateway_port("solo"))
    try:
        assert ib.managedAccounts() == ["U1000001"]
        summary = {
            (v.tag, v.currency): v.value
            for v in await ib.accountSummaryAsync("U1000001")
        }
        assert summary[("NetLiquidation", "USD")] == "5000"
        assert summary[("TotalCashValue", "USD")] == "5000"
        values = {(v.tag, v.currency) for v in ib.accountValues("U1000001")}
        assert ("NetLiquidation", "USD") in values
        assert ("CashBalance", "USD") in values
    finally:
        ib.disconnect()


async def test_positions_and_portfolio_multi_account(sim: IBGatewaySimulator) -> None:
    ib = await _connect(sim.gateway_port("demo"))
    try:
        assert ib.managedAccounts() == ["U1234567", "U7654321"]
        positions = await ib.reqPositionsAsync()
        by_account = {(p.account, p.contract.symbol): p for p in positions}
        assert by_account[("U1234567", "AAPL")].position == 150
        assert by_account[("U7654321", "VTI")].avgCost == pytest.approx(198.75)
        await ib.reqAccountUpdatesAsync("U7654321")
        items = {i.contract.symbol: i for i in ib.portfolio("U7654321")}
        assert set(items) == {"VTI", "BND"}
        assert items["VTI"].marketValue == pytest.approx(210 * 262.13)
        assert items["BND"].unrealizedPNL == pytest.approx(300 * (72.45 - 74.10))
        cash = {
            v.currency: v.value
            for v in ib.accountValues("U1234567")
            if v.tag == "CashBalance"
        }
        assert cash["HKD"] == "120000.00"
        net_liq = {
            v.account: v.value
            for v in await ib.accountSummaryAsync()
            if v.tag == "NetLiquidation"
        }
        assert set(net_liq) == {"U1234567", "U7654321"}
    finally:
        ib.disconnect()


async def test_many_clients_with_distinct_ids(sim: IBGatewaySimulator) -> None:
    clients = await asyncio.gather(
        *(_connect(sim.gateway_port("demo"), cid) for cid in range(10, 20))
    )
    try:
        assert sim.gateway("demo").api_session_count() == 10
    finally:
        for ib in clients:
            ib.disconnect()


async def test_second_session_with_same_client_id_gets_326(
    sim: IBGatewaySimulator,
) -> None:
    first = await _connect(sim.gateway_port("demo"), 7)
    codes: list[int] = []
    second = IB()
    second.errorEvent += lambda req_id, code, text, contract: codes.append(code)
    try:
        with pytest.raises((TimeoutError, ConnectionError)):
            await second.connectAsync(
                "127.0.0.1", sim.gateway_port("demo"), 7, readonly=True, timeout=1
            )
        assert 326 in codes
        assert first.isConnected()
        assert sim.gateway("demo").counters.rejected_client_id == 1
    finally:
        first.disconnect()


async def test_refused_connections_and_recovery(sim: IBGatewaySimulator) -> None:
    async with httpx.AsyncClient(base_url=sim.admin_url) as admin:
        r = await admin.patch(
            "/gateways/solo/faults", json={"refuse_connections": True}
        )
        assert r.status_code == 200
        with pytest.raises(ConnectionRefusedError):
            await _connect(sim.gateway_port("solo"))
        await admin.patch("/gateways/solo/faults", json={"refuse_connections": False})
        ib = await _connect(sim.gateway_port("solo"))
        ib.disconnect()


async def test_daily_restart_drops_every_session(sim: IBGatewaySimulator) -> None:
    ib = await _connect(sim.gateway_port("demo"), 3)
    other = await _connect(sim.gateway_port("demo"), 4)
    async with httpx.AsyncClient(base_url=sim.admin_url) as admin:
        r = await admin.post("/gateways/demo/restart", json={"down_for_s": 0.3})
        assert r.json() == {"dropped": 2}
        await wait_until(
            lambda: not ib.isConnected() and not other.isConnected(),
            message="sessions dropped",
        )
        with pytest.raises(ConnectionRefusedError):
            await _connect(sim.gateway_port("demo"), 3)
        again = await wait_until(
            lambda: _try_connect(sim.gateway_port("demo"), 3), message="gateway back"
        )
        again.disconnect()
        counters = (await admin.get("/gateways/demo/counters")).json()
        assert counters["restarts"] == 1
        assert counters["requests_by_type"]["START_API"] >= 3


async def _try_connect(port: int, client_id: int) -> IB | None:
    try:
        return await _connect(port, client_id, timeout=2)
    except (ConnectionRefusedError, TimeoutError):
        return None


async def test_drop_after_and_delay_faults(sim: IBGatewaySimulator) -> None:
    async with httpx.AsyncClient(base_url=sim.admin_url) as admin:
        await admin.patch(
            "/gateways/solo/faults", json={"drop_after_s": 0.5, "delay_ms": 50}
        )
        loop = asyncio.get_running_loop()
        started = loop.time()
        ib = await _connect(sim.gateway_port("solo"))
        assert loop.time() - started >= 0.1  # handshake and sync answers were delayed
        await wait_until(
            lambda: not ib.isConnected(), timeout_s=5, message="session dropped"
        )
        await admin.patch(
            "/gateways/solo/faults", json={"drop_after_s": 0, "delay_ms": 0}
        )


async def test_admin_changes_accounts_and_pushes_updates(
    sim: IBGatewaySimulator,
) -> None:
    ib = await _connect(sim.gateway_port("solo"))
    try:
        async with httpx.AsyncClient(base_url=sim.admin_url) as admin:
            r = await admin.patch(
                "/gateways/solo/accounts/U1000001",
                json={"cash": {"USD": "7000", "EUR": "10"}, "fx_rates": {"EUR": "1.1"}},
            )
            assert r.status_code == 200
            await wait_until(
                lambda: any(
                    v.tag == "NetLiquidation" and v.value == "7011.00"
                    for v in ib.accountValues("U1000001")
                ),
                message="pushed account update",
            )
            r = await admin.post(
                "/gateways", json={"name": "extra", "accounts": [{"code": "U2000002"}]}
            )
            assert r.status_code == 201
            extra = await _connect(r.json()["port"], 1)
            assert extra.managedAccounts() == ["U2000002"]
            extra.disconnect()
            assert (await admin.delete("/gateways/extra")).status_code == 204
            listing = (await admin.get("/gateways")).json()
            assert set(listing) == {"demo", "solo"}
    finally:
        ib.disconnect()


def test_cli_prints_ready_line_and_stops_on_sigterm(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "brokerlink_simulators.ib_gateway",
            "--scenario",
            str(DEMO),
            "--admin-port",
            "0",
        ],
        stdout=subprocess.PIPE,
        env=env,
    )
    try:
        assert proc.stdout is not None
        info = json.loads(proc.stdout.readline())
        assert info["admin_url"].startswith("http://127.0.0.1:")
        assert set(info["gateways"]) == {"demo"}
        health = httpx.get(info["admin_url"] + "/healthz", timeout=5).json()
        assert health["gateways"] == info["gateways"]
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
