"""Benchmark: batched Schwab refreshes through the real connector, NATS and the simulator.

Starts an embedded nats-server, the Schwab API simulator and the schwab-connector in one process;
signs in L logins (one app key each), configures K accounts spread over them, then runs refresh
cycles (K refresh.requested each, waiting for all K balance.updated). Prints refreshes/s, Trader
API calls per cycle (must equal L), p50/p99 latency from publish to balance.updated, core count.

    uv run python bench/schwab_refresh.py --accounts 200 --logins 20 --cycles 8
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import nats
import orjson
from brokerlink_devkit.devstack.embedded import EmbeddedNats
from brokerlink_devkit.testing import wait_until
from brokerlink_shared.contracts.events import (
    IntegrationConfigured,
    RefreshRequested,
    SchwabOAuthExchangeReply,
    SchwabOAuthExchangeRequest,
)
from brokerlink_shared.contracts.values import SchwabConnection
from brokerlink_shared.crypto import SecretBox, generate_key
from brokerlink_shared.messaging import EventPublisher, make_broker, request_model
from brokerlink_shared.subjects import SCHWAB_OAUTH_EXCHANGE, Broker, Topology
from brokerlink_simulators.schwab_api import SchwabApiSimulator
from brokerlink_simulators.schwab_api.scenario import (
    Scenario,
    SimAccount,
    SimApp,
    SimLogin,
    SimPosition,
)
from nats.aio.msg import Msg
from schwab_connector.config import Settings
from schwab_connector.main import ConnectorRuntime

CALLBACK = "https://bench.local/callback"


def scenario(accounts: int, logins: int) -> Scenario:
    per_login: list[list[SimAccount]] = [[] for _ in range(logins)]
    for i in range(accounts):
        per_login[i % logins].append(
            SimAccount(
                account_number=f"{10_000_000 + i}",
                liquidation_value=10_000 + i,
                cash_balance=1_000 + i,
                positions=[SimPosition(symbol="VTI", quantity=10, average_price=200)],
            )
        )
    return Scenario(
        apps=[
            SimApp(
                app_key=f"bench-app-{j}",
                app_secret=f"bench-secret-{j}",
                default_login=f"user{j}",
            )
            for j in range(logins)
        ],
        logins=[
            SimLogin(login_id=f"user{j}", accounts=per_login[j]) for j in range(logins)
        ],
    )


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def run(accounts: int, logins: int, cycles: int, window_s: float) -> None:
    logging.basicConfig(level=logging.WARNING)
    workdir = Path(tempfile.mkdtemp(prefix="bench-schwab-"))
    embedded = EmbeddedNats(workdir / "nats")
    nats_url = embedded.start()
    sim = SchwabApiSimulator(scenario(accounts, logins))
    await sim.start()
    keys = generate_key()
    box = SecretBox.from_setting(keys)
    topology = Topology("bench")
    settings = Settings(
        nats_url=nats_url,
        namespace="bench",
        encryption_keys=keys,
        api_base_url=sim.base_url,
        health_port=0,
        log_level="WARNING",
        batch_window_s=window_s,
    )
    runtime = ConnectorRuntime(settings)
    await runtime.app.start()
    driver = make_broker(nats_url, topology, "bench-driver")
    await driver.start()
    publisher = EventPublisher(driver, topology)
    spy = await nats.connect(nats_url)
    arrived: dict[str, float] = {}

    async def on_event(msg: Msg) -> None:
        body = orjson.loads(msg.data)
        arrived[body["payload"]["refresh_id"]] = time.perf_counter()

    await spy.subscribe(topology.subject("balance.updated", Broker.SCHWAB), cb=on_event)
    await spy.subscribe(topology.subject("refresh.failed", Broker.SCHWAB), cb=on_event)
    try:
        configs: dict[int, tuple[int, SchwabConnection]] = {}
        for j in range(logins):
            app_key, secret = f"bench-app-{j}", f"bench-secret-{j}"
            code = sim.state.issue_code(app_key, f"user{j}", CALLBACK)
            request = SchwabOAuthExchangeRequest(
                user_id=j + 1,
                account_id=j + 1,
                app_key=app_key,
                app_secret_enc=box.encrypt(secret),
                code_enc=box.encrypt(code),
                redirect_uri=CALLBACK,
            )
            reply = await request_model(
                driver,
                topology.subject(SCHWAB_OAUTH_EXCHANGE),
                request,
                SchwabOAuthExchangeReply,
                30,
            )
            assert reply.success and reply.token_enc, reply.message
            for i in range(j, accounts, logins):
                configs[i + 1] = (
                    j + 1,
                    SchwabConnection(
                        app_key=app_key,
                        app_secret_enc=request.app_secret_enc,
                        token_enc=reply.token_enc,
                        account_number=f"{10_000_000 + i}",
                    ),
                )
        for account_id, (user_id, config) in configs.items():
            await publisher.publish(
                IntegrationConfigured(
                    user_id=user_id,
                    account_id=account_id,
                    payload={"broker": Broker.SCHWAB, "config": config, "version": 1},
                )
            )
        sim.state.reset_counters()
        latencies: list[float] = []
        calls_per_cycle: list[int] = []
        started = time.perf_counter()
        for _ in range(cycles):
            before = sum(sim.state.requests.get("accounts", {}).values())
            sent: dict[str, float] = {}
            events = []
            for account_id, (user_id, config) in configs.items():
                refresh_id = uuid.uuid4()
                sent[str(refresh_id)] = time.perf_counter()
                events.append(
                    RefreshRequested(
                        user_id=user_id,
                        account_id=account_id,
                        payload={
                            "broker": Broker.SCHWAB,
                            "refresh_id": refresh_id,
                            "config": config,
                        },
                    )
                )
            # a bulk refresh reaches the bus as a burst, as account-api's outbox relay sends it
            await asyncio.gather(*(publisher.publish(e) for e in events))
            await wait_until(
                lambda sent=sent: all(r in arrived for r in sent),  # type: ignore[misc]
                timeout_s=120,
                interval_s=0.002,
            )
            latencies += [(arrived[r] - t) * 1000 for r, t in sent.items()]
            calls_per_cycle.append(
                sum(sim.state.requests.get("accounts", {}).values()) - before
            )
        elapsed = time.perf_counter() - started
        counters = sim.state.counters()
        too_many = sum(
            c.get("429", 0) for c in counters["responses"].get("accounts", {}).values()
        )  # type: ignore[attr-defined]
        print(
            f"cores: {os.cpu_count()}  accounts K={accounts}  logins L={logins}  cycles={cycles}  window={window_s}s"
        )
        print(
            f"refreshes/s: {accounts * cycles / elapsed:.0f}  ({accounts * cycles} in {elapsed:.2f} s)"
        )
        print(f"API calls per cycle: {calls_per_cycle}  (expected {logins} each)")
        print(
            f"latency publish->balance.updated: p50 {percentile(latencies, 0.5):.1f} ms  p99 {percentile(latencies, 0.99):.1f} ms  mean {statistics.mean(latencies):.1f} ms"
        )
        print(f"429 answers: {too_many}  rate-budget waits: {_budget_waits(runtime)}")
    finally:
        await spy.close()
        await driver.stop()
        await runtime.app.stop()
        await sim.stop()
        embedded.stop()


def _budget_waits(runtime: ConnectorRuntime) -> Any:
    return getattr(runtime.connector().gateway._budget, "waits", "n/a")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--accounts", type=int, default=200, help="K")
    parser.add_argument("--logins", type=int, default=20, help="L")
    parser.add_argument("--cycles", type=int, default=8)
    parser.add_argument(
        "--window",
        type=float,
        default=Settings().batch_window_s,
        help="batch window, s",
    )
    args = parser.parse_args()
    asyncio.run(run(args.accounts, args.logins, args.cycles, args.window))


if __name__ == "__main__":
    main()
