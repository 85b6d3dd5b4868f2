"""The IB Flex connector end to end: real NATS, real httpx, the Flex Web Service simulator serving
reports built from ibflex's own test-suite samples, two replicas sharing one token budget.

One world per module (simulator, two connector replicas, a bus spy on `>`); each test uses its
own accounts, tokens and queries.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import nats
import orjson
import pytest
from brokerlink_devkit.testing import wait_until
from brokerlink_shared.contracts.events import (
    IntegrationTestReply,
    IntegrationTestRequest,
    RefreshRequested,
)
from brokerlink_shared.contracts.plugins import IBFlexConnection
from brokerlink_shared.crypto import SecretBox
from brokerlink_shared.messaging import EventPublisher, make_broker, request_model
from brokerlink_shared.subjects import INTEGRATION_TEST, Broker, Topology
from brokerlink_simulators.ib_flex import (
    FlexAccount,
    FlexLimits,
    FlexPosition,
    FlexQuery,
    FlexToken,
    IbFlexSimulator,
    Scenario,
)
from ibflex_connector.config import Settings
from ibflex_connector.main import ConnectorRuntime
from nats.aio.client import Client as Nats
from nats.aio.msg import Msg

ONE, MULTI, EXPIRED, WARN, SHARED = (
    "101010101010101010101010",
    "202020202020202020202020",
    "303030303030303030303030",
    "404040404040404040404040",
    "505050505050505050505050",
)
LIMITS = FlexLimits(per_window=6, window_s=3.0, min_interval_s=0.1)


def _scenario() -> Scenario:
    return Scenario(
        tokens=[
            FlexToken(token=ONE),
            FlexToken(token=MULTI),
            FlexToken(token=EXPIRED, expired=True),
            FlexToken(token=WARN, expires_in_days=5),
            FlexToken(token=SHARED),
        ],
        queries=[
            FlexQuery(
                query_id="1001", token=ONE, accounts=["U1111111"], not_ready_polls=2
            ),
            FlexQuery(query_id="1002", token=MULTI, accounts=["U2222222", "U3333333"]),
            FlexQuery(
                query_id="1003",
                token=ONE,
                accounts=["U1111111"],
                sections=["AccountInformation", "EquitySummaryInBase"],
            ),
            FlexQuery(query_id="1004", token=EXPIRED, accounts=["U4444444"]),
            FlexQuery(query_id="1005", token=WARN, accounts=["U5555555"]),
            *(
                FlexQuery(query_id=f"20{i}", token=SHARED, accounts=[f"U600000{i}"])
                for i in range(4)
            ),
        ],
        accounts=[
            FlexAccount(
                account_id="U2222222",
                base_currency="EUR",
                nav=125000.5,
                cash={"EUR": 1000.25, "USD": 500},
                positions=[
                    FlexPosition(
                        symbol="SAP",
                        quantity=100,
                        mark_price=120.5,
                        cost_basis_price=100,
                        currency="EUR",
                    ),
                    FlexPosition(
                        symbol="AAPL", quantity=10, mark_price=190, currency="USD"
                    ),
                ],
            ),
            FlexAccount(
                account_id="U3333333", nav=777.77, cash={"USD": 777.77}, positions=[]
            ),
        ],
        limits=LIMITS,
    )


@dataclass
class World:
    sim: IbFlexSimulator
    replicas: list[ConnectorRuntime]
    topology: Topology
    box: SecretBox
    publisher: EventPublisher
    broker: Any
    spy: Nats
    seen: list[Msg] = field(default_factory=list)

    def events(self, type_: str, account_id: int | None = None) -> list[dict[str, Any]]:
        out = []
        for msg in list(self.seen):
            if not msg.subject.startswith(self.topology.namespace + "."):
                continue
            body = orjson.loads(msg.data)
            if body.get("type") == type_ and account_id in (
                None,
                body.get("account_id"),
            ):
                out.append(body)
        return out

    def config(
        self, token: str, query_id: str, account: str | None
    ) -> IBFlexConnection:
        return IBFlexConnection(
            token_enc=self.box.encrypt(token), query_id=query_id, account_code=account
        )

    def request(
        self,
        account_id: int,
        token: str,
        query_id: str,
        account: str | None,
        job: uuid.UUID | None = None,
    ) -> RefreshRequested:
        return RefreshRequested(
            user_id=7,
            account_id=account_id,
            payload={
                "broker": Broker.IB_FLEX,
                "refresh_id": uuid.uuid4(),
                "job_id": job,
                "config": self.config(token, query_id, account),
            },
        )

    async def refresh(self, *args: Any, **kwargs: Any) -> uuid.UUID:
        event = self.request(*args, **kwargs)
        await self.publisher.publish(event)
        return event.payload.refresh_id

    def outcome(self, refresh_id: uuid.UUID) -> dict[str, Any] | None:
        for type_ in ("balance.updated", "refresh.failed"):
            for event in self.events(type_):
                if event["payload"].get("refresh_id") == str(refresh_id):
                    return event
        return None

    async def wait_outcome(self, refresh_id: uuid.UUID) -> dict[str, Any]:
        return await wait_until(
            lambda: self.outcome(refresh_id), timeout_s=60, message="refresh outcome"
        )

    def last_status(self, account_id: int) -> dict[str, Any] | None:
        statuses = self.events("integration.status", account_id)
        return statuses[-1]["payload"] if statuses else None


def _settings(infra: Any, topology: Topology, sim: IbFlexSimulator) -> Settings:
    return Settings(
        nats_url=infra.nats_url,
        namespace=topology.namespace,
        encryption_keys=infra.encryption_keys,
        send_request_url=sim.send_request_url,
        health_port=0,
        health_host="127.0.0.1",
        # the simulator's throttle, scaled down: 6 per 3 s and 0.1 s apart; the plan spends
        # one request per 0.75 s slice (at most 5 in any 3 s) and keeps 0.15 s between two
        rate_limit=LIMITS.per_window,
        rate_window_s=LIMITS.window_s,
        rate_slices=4,
        rate_min_spacing_s=0.15,
        backoff_base_s=0.05,
        backoff_cap_s=0.3,
        batch_window_s=0.2,
    )


@pytest.fixture(scope="module")
async def world(infra: Any) -> AsyncIterator[World]:
    sim = IbFlexSimulator(_scenario())
    await sim.start()
    topology = Topology(f"{infra.namespace}fx")
    replicas = [ConnectorRuntime(_settings(infra, topology, sim)) for _ in range(2)]
    spy = await nats.connect(infra.nats_url)
    seen: list[Msg] = []

    async def capture(msg: Msg) -> None:
        seen.append(msg)

    await spy.subscribe(">", cb=capture)
    for runtime in replicas:
        await runtime.app.start()
    broker = make_broker(infra.nats_url, topology, "test-driver")
    await broker.start()
    world = World(
        sim,
        replicas,
        topology,
        SecretBox.from_setting(infra.encryption_keys),
        EventPublisher(broker, topology),
        broker,
        spy,
        seen,
    )
    try:
        yield world
    finally:
        await broker.stop()
        for runtime in replicas:
            await runtime.app.stop()
        await spy.close()
        await sim.stop()


async def test_one_account_query_with_statement_not_ready_at_first(
    world: World,
) -> None:
    refresh_id = await world.refresh(11, ONE, "1001", None)
    event = await world.wait_outcome(refresh_id)
    assert event["type"] == "balance.updated", event
    p = event["payload"]
    # the values of ibflex's sample elements, as IB wrote them
    assert p["broker"] == "IB_FLEX" and p["broker_account"] == "U1111111"
    assert p["currency"] == "USD" and Decimal(p["balance"]) == Decimal("40.1509097")
    assert Decimal(p["cash_balance"]) == Decimal("51.730897778")
    assert [(c["currency"], Decimal(c["amount"])) for c in p["cash"]] == [
        ("USD", Decimal("51.730897778"))
    ]
    [vxx] = p["positions"]
    assert (vxx["symbol"], vxx["sec_type"], Decimal(vxx["quantity"])) == (
        "VXX",
        "STK",
        -100,
    )
    assert Decimal(vxx["market_value"]) == Decimal("-3553")
    assert Decimal(vxx["unrealized_pnl"]) == Decimal("-112.5")
    report_date = world.sim.state.report_date().isoformat()
    assert p["as_of"].startswith(
        report_date
    )  # as of the report's date, not of the refresh
    counters = world.sim.state.counters[ONE]
    assert (counters.send_requests, counters.statements) == (1, 1)
    assert (
        counters.requests == 4
    )  # SendRequest + two "generation in progress" + the report
    status = await wait_until(lambda: world.last_status(11), message="status")
    assert status["status"] == "connected"


async def test_multi_account_query_is_fetched_once_for_a_bulk_refresh(
    world: World,
) -> None:
    job = uuid.uuid4()
    first = await world.refresh(21, MULTI, "1002", "U2222222", job)
    second = await world.refresh(22, MULTI, "1002", "U3333333", job)
    unnamed = await world.refresh(23, MULTI, "1002", None, job)
    eur, usd, failed = [await world.wait_outcome(r) for r in (first, second, unnamed)]
    assert (
        world.sim.state.counters[MULTI].statements == 1
    )  # one report for the whole job
    assert eur["type"] == "balance.updated" and usd["type"] == "balance.updated"
    e = eur["payload"]
    assert (e["currency"], Decimal(e["balance"]), e["broker_account"]) == (
        "EUR",
        Decimal("125000.5"),
        "U2222222",
    )
    assert [(c["currency"], Decimal(c["amount"])) for c in e["cash"]] == [
        ("EUR", Decimal("1000.25")),
        ("USD", Decimal("500")),
    ]
    assert Decimal(e["cash_balance"]) == Decimal("1500.25")
    sap = next(pos for pos in e["positions"] if pos["symbol"] == "SAP")
    assert (
        sap["currency"],
        Decimal(sap["market_value"]),
        Decimal(sap["average_cost"]),
    ) == (
        "EUR",
        Decimal("12050"),
        Decimal("100"),
    )
    assert Decimal(usd["payload"]["balance"]) == Decimal("777.77")
    assert usd["payload"]["positions"] == []
    assert failed["type"] == "refresh.failed"
    assert "U2222222, U3333333" in failed["payload"]["message"]
    assert "account code" in failed["payload"]["message"]


async def test_expired_token_needs_a_new_token(world: World) -> None:
    event = await world.wait_outcome(await world.refresh(41, EXPIRED, "1004", None))
    assert event["type"] == "refresh.failed"
    assert event["payload"]["code"] == "ib_1012"
    status = await wait_until(lambda: world.last_status(41), message="status")
    assert status["status"] == "reauth_required"
    assert "expired" in status["message"]
    assert (
        "Flex Web Service Configuration" in status["message"]
    )  # where to make a new one


async def test_query_without_needed_sections_fails_clearly(world: World) -> None:
    event = await world.wait_outcome(await world.refresh(31, ONE, "1003", None))
    assert event["type"] == "refresh.failed"
    payload = event["payload"]
    assert payload["code"] == "query_sections"
    assert (
        "Cash Report" in payload["message"] and "Open Positions" in payload["message"]
    )
    status = await wait_until(lambda: world.last_status(31), message="status")
    assert status["status"] == "error" and status["message"] == payload["message"]


async def test_token_expiring_soon_is_reported_with_its_days(world: World) -> None:
    event = await world.wait_outcome(await world.refresh(51, WARN, "1005", None))
    assert event["type"] == "balance.updated"
    status = await wait_until(lambda: world.last_status(51), message="status")
    assert status["status"] == "expiring_soon"
    assert "expires in 5 day(s)" in status["message"]


async def test_two_replicas_share_the_token_budget(world: World) -> None:
    # Each replica gets two refreshes of its own (a pull consumer decides who takes a message
    # from the bus, so they are handed over directly): four statements of one token, three
    # requests each, spent by two processes that only share the NATS KV budget.
    events = [world.request(60 + i, SHARED, f"20{i}", None) for i in range(4)]
    await asyncio.gather(
        *(
            world.replicas[i % 2].connector().on_refresh(event)
            for i, event in enumerate(events)
        )
    )
    outcomes = [await world.wait_outcome(e.payload.refresh_id) for e in events]
    assert all(o["type"] == "balance.updated" for o in outcomes), outcomes
    counters = world.sim.state.counters[SHARED]
    assert counters.requests == 12
    assert counters.throttled == 0  # IB never had to say "too many requests"
    assert counters.max_in_window(LIMITS.window_s) <= LIMITS.per_window
    assert (counters.min_gap() or 0) >= LIMITS.min_interval_s
    assert all(r.connector().service.requests > 0 for r in world.replicas)


async def test_integration_test_over_the_bus(world: World) -> None:
    request = IntegrationTestRequest(
        broker=Broker.IB_FLEX,
        account_id=12,
        user_id=7,
        config=world.config(MULTI, "1002", "U3333333"),
        timeout_s=30,
    )
    subject = world.topology.subject(INTEGRATION_TEST, Broker.IB_FLEX)
    reply = await request_model(
        world.broker, subject, request, IntegrationTestReply, 35
    )
    assert reply.success and "U3333333" in reply.message, reply.message
    bad = request.model_copy(update={"config": world.config(ONE, "9999", None)})
    reply = await request_model(world.broker, subject, bad, IntegrationTestReply, 35)
    assert not reply.success and "Query ID" in reply.message


async def test_tokens_never_travel_in_plaintext(world: World) -> None:
    assert world.seen
    for msg in world.seen:
        for token in (ONE, MULTI, EXPIRED, WARN, SHARED):
            assert token.encode() not in msg.data
