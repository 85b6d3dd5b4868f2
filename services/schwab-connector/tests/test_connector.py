"""The Schwab connector end to end: real NATS, real schwab-py, the simulator over HTTP.

One world per module (simulator, connector, a bus spy on `>`); the tests run in order and build on
each other's state like a user's week: sign in, refresh, an hour later, six days later, re-auth.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import httpx
import nats
import orjson
import pytest
from brokerlink_devkit.testing import wait_until
from brokerlink_shared.contracts.events import (
    HealthReply,
    IntegrationConfigured,
    IntegrationRemoved,
    IntegrationTestReply,
    IntegrationTestRequest,
    RefreshRequested,
    SchwabOAuthExchangeReply,
    SchwabOAuthExchangeRequest,
)
from brokerlink_shared.contracts.values import SchwabConnection
from brokerlink_shared.crypto import SecretBox
from brokerlink_shared.messaging import EventPublisher, make_broker, request_model
from brokerlink_shared.subjects import (
    INTEGRATION_TEST,
    SCHWAB_OAUTH_EXCHANGE,
    Broker,
    Topology,
)
from brokerlink_simulators.schwab_api import SchwabApiSimulator
from brokerlink_simulators.schwab_api.scenario import (
    Scenario,
    SimAccount,
    SimApp,
    SimLogin,
    SimPosition,
)
from nats.aio.client import Client as Nats
from nats.aio.msg import Msg
from schwab_connector.config import SERVICE, Settings
from schwab_connector.domain.clock import OffsetClock
from schwab_connector.main import ConnectorRuntime

CALLBACK = "https://brokerlink.test/api/integrations/schwab/callback"
SECRETS = {"app-alice": "alice-app-secret-123", "app-bob": "bob-app-secret-456"}
DAY = 24 * 3600


def _scenario() -> Scenario:
    return Scenario(
        apps=[
            SimApp(
                app_key="app-alice",
                app_secret=SECRETS["app-alice"],
                default_login="alice",
            ),
            SimApp(
                app_key="app-bob", app_secret=SECRETS["app-bob"], default_login="bob"
            ),
        ],
        logins=[
            SimLogin(
                login_id="alice",
                accounts=[
                    SimAccount(
                        account_number="11111111",
                        liquidation_value=1000.5,
                        cash_balance=100.25,
                        positions=[
                            SimPosition(
                                symbol="AAPL",
                                quantity=5,
                                average_price=150,
                                market_value=900.25,
                            )
                        ],
                    ),
                    SimAccount(
                        account_number="22222222",
                        type="CASH",
                        liquidation_value=2000,
                        cash_balance=2000,
                    ),
                ],
            ),
            SimLogin(  # alice's partner, signing in through alice's registered app
                login_id="carol",
                accounts=[
                    SimAccount(
                        account_number="44444444",
                        liquidation_value=4444,
                        cash_balance=4,
                    )
                ],
            ),
            SimLogin(
                login_id="bob",
                accounts=[
                    SimAccount(
                        account_number="33333333",
                        liquidation_value=3333.33,
                        cash_balance=3,
                    )
                ],
            ),
        ],
    )


@dataclass
class World:
    sim: SchwabApiSimulator
    runtime: ConnectorRuntime
    clock: OffsetClock
    topology: Topology
    box: SecretBox
    publisher: EventPublisher
    broker: Any
    spy: Nats
    http: httpx.AsyncClient
    seen: list[Msg] = field(default_factory=list)
    codes: list[str] = field(default_factory=list)
    tokens: dict[int, str] = field(
        default_factory=dict
    )  # account id -> latest token_enc
    logins: dict[int, str] = field(default_factory=dict)  # account id -> login id

    def events(self, type_: str, account_id: int | None = None) -> list[dict[str, Any]]:
        out = []
        for msg in list(self.seen):
            if not msg.subject.startswith(self.topology.namespace + "."):
                continue
            try:
                body = orjson.loads(msg.data)
            except orjson.JSONDecodeError:
                continue
            if (
                isinstance(body, dict)
                and body.get("type") == type_
                and account_id in (None, body.get("account_id"))
            ):
                out.append(body)
        return out

    async def counters(self) -> dict[str, Any]:
        return dict((await self.http.get("/admin/counters")).json())

    async def advance(self, seconds: float) -> None:
        await self.http.post("/admin/clock", json={"advance_s": seconds})
        self.clock.advance(seconds)

    async def code(self, app_key: str, login_id: str) -> str:
        consent = (
            await self.http.post(
                "/admin/consent",
                json={
                    "app_key": app_key,
                    "login_id": login_id,
                    "redirect_uri": CALLBACK,
                },
            )
        ).json()
        self.codes.append(consent["code"])
        return str(consent["code"])

    def config(
        self, account_id: int, app_key: str, number: str | None
    ) -> SchwabConnection:
        return SchwabConnection(
            app_key=app_key,
            app_secret_enc=self.box.encrypt(SECRETS[app_key]),
            token_enc=self.tokens.get(account_id),
            account_number=number,
            login=self.logins.get(account_id),
        )

    async def exchange(
        self,
        user_id: int,
        account_id: int,
        app_key: str,
        login: str,
        number: str | None,
    ) -> SchwabOAuthExchangeReply:
        request = SchwabOAuthExchangeRequest(
            user_id=user_id,
            account_id=account_id,
            app_key=app_key,
            app_secret_enc=self.box.encrypt(SECRETS[app_key]),
            code_enc=self.box.encrypt(await self.code(app_key, login)),
            redirect_uri=CALLBACK,
            account_number=number,
        )
        subject = self.topology.subject(SCHWAB_OAUTH_EXCHANGE)
        reply = await request_model(
            self.broker, subject, request, SchwabOAuthExchangeReply, timeout_s=15
        )
        if reply.success and reply.login:
            # what account-api does: the login's accounts (by number) now belong to it
            for ours, theirs in NUMBERS.items():
                if theirs in reply.visible_accounts or ours == account_id:
                    self.logins[ours] = reply.login
        return reply

    async def configure(
        self, user_id: int, account_id: int, app_key: str, number: str | None
    ) -> None:
        event = IntegrationConfigured(
            user_id=user_id,
            account_id=account_id,
            payload={
                "broker": Broker.SCHWAB,
                "config": self.config(account_id, app_key, number),
                "version": 1,
            },
        )
        await self.publisher.publish(event)

    async def refresh(
        self,
        user_id: int,
        account_id: int,
        app_key: str,
        number: str | None,
        job: uuid.UUID | None = None,
    ) -> uuid.UUID:
        refresh_id = uuid.uuid4()
        event = RefreshRequested(
            user_id=user_id,
            account_id=account_id,
            payload={
                "broker": Broker.SCHWAB,
                "refresh_id": refresh_id,
                "job_id": job,
                "config": self.config(account_id, app_key, number),
            },
        )
        await self.publisher.publish(event)
        return refresh_id

    async def refresh_account(
        self, account_id: int, job: uuid.UUID | None = None
    ) -> uuid.UUID:
        user_id, app_key = OWNER[account_id]
        return await self.refresh(
            user_id, account_id, app_key, NUMBERS[account_id], job
        )

    def outcome(self, refresh_id: uuid.UUID) -> dict[str, Any] | None:
        for type_ in ("balance.updated", "refresh.failed"):
            for event in self.events(type_):
                if event["payload"].get("refresh_id") == str(refresh_id):
                    return event
        return None

    def last_status(self, account_id: int) -> str | None:
        statuses = self.events("integration.status", account_id)
        return statuses[-1]["payload"]["status"] if statuses else None


ALICE, BOB = 1, 2
A1, A2, B1 = 101, 102, 201  # our account ids
C1 = 103  # alice's partner carol's account, on alice's app key
NUMBERS = {A1: "11111111", A2: "22222222", B1: "33333333", C1: "44444444"}
OWNER = {A1: (ALICE, "app-alice"), A2: (ALICE, "app-alice"), B1: (BOB, "app-bob")}


@pytest.fixture(scope="module")
async def world(infra: Any) -> AsyncIterator[World]:
    sim = SchwabApiSimulator(_scenario())
    await sim.start()
    topology = Topology(f"{infra.namespace}sc")
    clock = OffsetClock()
    settings = Settings(
        nats_url=infra.nats_url,
        namespace=topology.namespace,
        encryption_keys=infra.encryption_keys,
        api_base_url=sim.base_url,
        health_port=0,
        health_host="127.0.0.1",
        lifecycle_check_interval_s=0.2,
        backoff_base_s=0.05,
        backoff_cap_s=0.5,
    )
    runtime = ConnectorRuntime(settings, clock)
    spy = await nats.connect(infra.nats_url)
    seen: list[Msg] = []

    async def capture(msg: Msg) -> None:
        seen.append(msg)

    await spy.subscribe(">", cb=capture)
    await runtime.app.start()
    broker = make_broker(infra.nats_url, topology, "test-driver")
    await broker.start()
    http = httpx.AsyncClient(base_url=sim.base_url)
    world = World(
        sim,
        runtime,
        clock,
        topology,
        SecretBox.from_setting(infra.encryption_keys),
        EventPublisher(broker, topology),
        broker,
        spy,
        http,
        seen,
    )
    try:
        yield world
    finally:
        await http.aclose()
        await broker.stop()
        await runtime.app.stop()
        await spy.close()
        await sim.stop()


async def test_code_exchange_resolves_account_hash(world: World) -> None:
    reply = await world.exchange(ALICE, A1, "app-alice", "alice", NUMBERS[A1])
    assert reply.success, reply.message
    assert reply.account_hash == SimAccount(account_number=NUMBERS[A1]).account_hash()
    assert reply.token_enc and reply.access_expires_at and reply.refresh_expires_at
    token = orjson.loads(world.box.decrypt(reply.token_enc))
    assert {"creation_timestamp", "token"} <= token.keys()
    assert token["token"]["access_token"] in world.sim.state.access_tokens
    assert (
        reply.refresh_expires_at - reply.access_expires_at
    ).total_seconds() == pytest.approx(7 * DAY - 1800, abs=5)
    world.tokens[A1] = world.tokens[A2] = reply.token_enc

    only_one = await world.exchange(BOB, B1, "app-bob", "bob", None)
    assert (
        only_one.success
        and only_one.account_hash
        == SimAccount(account_number=NUMBERS[B1]).account_hash()
    )
    world.tokens[B1] = only_one.token_enc or ""

    ambiguous = await world.exchange(ALICE, A2, "app-alice", "alice", None)
    assert ambiguous.success and ambiguous.account_hash is None
    assert "2 accounts" in ambiguous.message
    world.tokens[A1] = world.tokens[A2] = ambiguous.token_enc or ""

    forged = SchwabOAuthExchangeRequest(
        user_id=ALICE,
        account_id=A1,
        app_key="app-alice",
        app_secret_enc=world.box.encrypt(SECRETS["app-alice"]),
        code_enc=world.box.encrypt("C0.forged@"),
        redirect_uri=CALLBACK,
        account_number=NUMBERS[A1],
    )
    bad = await request_model(
        world.broker,
        world.topology.subject(SCHWAB_OAUTH_EXCHANGE),
        forged,
        SchwabOAuthExchangeReply,
        15,
    )
    assert not bad.success and "invalid_grant" in bad.message

    test = IntegrationTestRequest(
        broker=Broker.SCHWAB,
        account_id=A1,
        user_id=ALICE,
        config=world.config(A1, "app-alice", NUMBERS[A1]),
    )
    answer = await request_model(
        world.broker,
        world.topology.subject(INTEGRATION_TEST, Broker.SCHWAB),
        test,
        IntegrationTestReply,
        15,
    )
    assert answer.success, answer.message
    assert answer.code is None


async def test_refresh_of_three_accounts_costs_one_call_per_login(world: World) -> None:
    for account_id, (user, app) in OWNER.items():
        await world.configure(user, account_id, app, NUMBERS[account_id])
    await world.http.post("/admin/counters/reset")
    job = uuid.uuid4()
    ids = {a: await world.refresh_account(a, job=job) for a in OWNER}
    await wait_until(
        lambda: all(world.outcome(r) for r in ids.values()),
        timeout_s=20,
        message="three balances",
    )
    counters = await world.counters()
    assert sum(counters["requests"]["accounts"].values()) == 2
    outcomes = {a: world.outcome(r) for a, r in ids.items()}
    assert all(o and o["type"] == "balance.updated" for o in outcomes.values()), (
        outcomes
    )
    a1 = outcomes[A1]["payload"]  # type: ignore[index]
    assert (Decimal(a1["balance"]), Decimal(a1["cash_balance"]), a1["currency"]) == (
        Decimal("1000.5"),
        Decimal("100.25"),
        "USD",
    )
    assert [(c["currency"], Decimal(c["amount"])) for c in a1["cash"]] == [
        ("USD", Decimal("100.25"))
    ]
    assert (
        a1["positions"][0]["symbol"] == "AAPL"
        and Decimal(a1["positions"][0]["quantity"]) == 5
    )
    assert a1["job_id"] == str(job) and a1["broker_account"] == NUMBERS[A1]
    assert Decimal(outcomes[A2]["payload"]["balance"]) == Decimal(2000)  # type: ignore[index]
    assert Decimal(outcomes[B1]["payload"]["balance"]) == Decimal("3333.33")  # type: ignore[index]
    msg_ids = {
        m.headers.get("Nats-Msg-Id")
        for m in world.seen
        if m.headers and m.subject.endswith("balance.updated.schwab")
    }
    assert {f"{a}:{r}" for a, r in ids.items()} <= msg_ids
    await wait_until(
        lambda: all(world.last_status(a) == "connected" for a in OWNER),
        message="connected",
    )


async def test_expired_access_token_is_refreshed_before_the_call(world: World) -> None:
    await world.advance(31 * 60)
    await world.http.post("/admin/counters/reset")
    rotated_before = len(world.events("schwab.tokens.rotated"))
    ids = [await world.refresh_account(a) for a in (A1, A2)]
    await wait_until(
        lambda: all(world.outcome(r) for r in ids),
        timeout_s=20,
        message="balances after 31 min",
    )
    assert all(world.outcome(r)["type"] == "balance.updated" for r in ids)  # type: ignore[index]
    counters = await world.counters()
    assert counters["responses"]["token"]["app-alice"] == {
        "200": 1
    }  # single flight: one refresh
    assert counters["responses"]["accounts"]["app-alice"] == {
        "200": 1
    }  # no 401 on the way
    await wait_until(
        lambda: len(world.events("schwab.tokens.rotated")) > rotated_before,
        message="rotated",
    )
    rotated = world.events("schwab.tokens.rotated")[-1]
    assert rotated["user_id"] == ALICE and rotated["payload"]["account_ids"] == [A1, A2]
    world.tokens[A1] = world.tokens[A2] = rotated["payload"]["token_enc"]


async def test_5xx_and_429_are_retried_and_other_errors_reported(world: World) -> None:
    await world.http.post("/admin/counters/reset")
    await world.http.post(
        "/admin/faults",
        json={"endpoint": "accounts", "app_key": "app-bob", "status": 503, "count": 2},
    )
    first = await world.refresh_account(B1)
    await wait_until(
        lambda: world.outcome(first), timeout_s=20, message="refresh after 503s"
    )
    assert world.outcome(first)["type"] == "balance.updated"  # type: ignore[index]
    await world.http.post(
        "/admin/faults",
        json={
            "endpoint": "accounts",
            "app_key": "app-bob",
            "status": 429,
            "retry_after_s": 1,
        },
    )
    second = await world.refresh_account(B1)
    await wait_until(
        lambda: world.outcome(second), timeout_s=20, message="refresh after 429"
    )
    assert world.outcome(second)["type"] == "balance.updated"  # type: ignore[index]
    assert (await world.counters())["responses"]["accounts"]["app-bob"] == {
        "503": 2,
        "429": 1,
        "200": 2,
    }

    await world.http.post(
        "/admin/faults",
        json={"endpoint": "accounts", "app_key": "app-bob", "status": 403},
    )
    third = await world.refresh_account(B1)
    await wait_until(
        lambda: world.outcome(third), timeout_s=20, message="refresh.failed"
    )
    failed = world.outcome(third)
    assert (
        failed["type"] == "refresh.failed" and failed["payload"]["code"] == "http_403"
    )  # type: ignore[index]
    await wait_until(lambda: world.last_status(B1) == "error", message="error status")
    fourth = await world.refresh_account(B1)
    await wait_until(lambda: world.outcome(fourth), timeout_s=20, message="recovered")
    await wait_until(
        lambda: world.last_status(B1) == "connected", message="connected again"
    )


async def test_300_refreshes_in_a_minute_never_hit_429(world: World) -> None:
    await world.http.post("/admin/counters/reset")
    ids = [await world.refresh_account(a) for _ in range(150) for a in (A1, A2)]
    await wait_until(
        lambda: all(world.outcome(r) for r in ids), timeout_s=60, message="300 outcomes"
    )
    assert all(world.outcome(r)["type"] == "balance.updated" for r in ids)  # type: ignore[index]
    counters = await world.counters()
    assert "429" not in counters["responses"]["accounts"]["app-alice"]
    assert counters["requests"]["accounts"]["app-alice"] <= 96


async def test_expiring_soon_then_reauth_required_then_recovery(world: World) -> None:
    await world.advance(6 * DAY)
    await wait_until(
        lambda: all(world.last_status(a) == "expiring_soon" for a in OWNER),
        timeout_s=10,
        message="expiring_soon",
    )
    await world.advance(DAY)
    await wait_until(
        lambda: all(world.last_status(a) == "reauth_required" for a in OWNER),
        timeout_s=10,
        message="reauth",
    )
    dead = await world.refresh_account(A1)
    await wait_until(
        lambda: world.outcome(dead), timeout_s=20, message="refresh of a dead login"
    )
    assert world.outcome(dead)["payload"]["code"] == "reauth_required"  # type: ignore[index]

    reply = await world.exchange(ALICE, A1, "app-alice", "alice", NUMBERS[A1])
    assert reply.success, reply.message
    world.tokens[A1] = world.tokens[A2] = reply.token_enc or ""
    await wait_until(
        lambda: all(world.last_status(a) == "connected" for a in (A1, A2)),
        timeout_s=10,
        message="recovered",
    )
    assert world.last_status(B1) == "reauth_required"
    again = await world.refresh_account(A2)
    await wait_until(
        lambda: world.outcome(again), timeout_s=20, message="refresh after re-auth"
    )
    assert world.outcome(again)["type"] == "balance.updated"  # type: ignore[index]


async def test_health_and_no_plaintext_secret_on_the_bus(world: World) -> None:
    reply = await world.broker.request(
        b"", world.topology.health_subject(SERVICE), timeout=5
    )
    health = HealthReply.model_validate_json(reply.body)
    assert health.status == "ok" and health.detail["dead_letters"] == 0
    async with httpx.AsyncClient() as http:
        base = f"http://127.0.0.1:{world.runtime.health_port}"
        probes = [
            (await http.get(base + path)) for path in ("/healthz", "/readyz", "/livez")
        ]
        missing = await http.get(base + "/nope")
    assert [p.status_code for p in probes] == [200, 200, 200]
    assert probes[2].json() == {"status": "alive"} and missing.status_code == 404

    state = world.sim.state
    secrets = [
        *SECRETS.values(),
        *state.access_tokens,
        *state.refresh_tokens,
        *state.issued_codes,
    ]
    assert len(secrets) > 10
    payloads = [
        m.data + b"".join(f"{k}:{v}".encode() for k, v in (m.headers or {}).items())
        for m in world.seen
    ]
    assert len(payloads) > 300
    leaks = [s for s in secrets for p in payloads if s.encode() in p]
    assert not leaks


async def test_a_refresh_that_cannot_be_bound_is_answered_failed(world: World) -> None:
    refresh_id = uuid.uuid4()
    await world.publisher.publish(
        RefreshRequested(
            user_id=None,  # no user: the connector cannot bind the login
            account_id=A1,
            payload={
                "broker": Broker.SCHWAB,
                "refresh_id": refresh_id,
                "config": world.config(A1, "app-alice", NUMBERS[A1]),
            },
        )
    )
    outcome = await wait_until(
        lambda: world.outcome(refresh_id), timeout_s=15, message="refresh answered"
    )
    assert outcome["type"] == "refresh.failed"
    assert outcome["payload"]["code"] == "bad_config"


async def test_configure_then_remove_delivered_in_reverse_order(world: World) -> None:
    account_id = 301
    config = world.config(B1, "app-bob", NUMBERS[B1])
    await world.publisher.publish(
        IntegrationRemoved(
            user_id=BOB,
            account_id=account_id,
            payload={"broker": Broker.SCHWAB, "config": config, "version": 3},
        )
    )
    connector = world.runtime.connector()
    await wait_until(
        lambda: connector.order.held(account_id) == 3, message="removal applied"
    )
    await world.publisher.publish(
        IntegrationConfigured(
            user_id=BOB,
            account_id=account_id,
            payload={"broker": Broker.SCHWAB, "config": config, "version": 2},
        )
    )
    refresh_id = uuid.uuid4()
    await world.publisher.publish(
        RefreshRequested(
            user_id=BOB,
            account_id=account_id,
            payload={
                "broker": Broker.SCHWAB,
                "refresh_id": refresh_id,
                "config": config,
                "version": 2,
            },
        )
    )
    outcome = await wait_until(
        lambda: world.outcome(refresh_id), timeout_s=15, message="refresh answered"
    )
    assert (outcome["type"], outcome["payload"]["code"]) == ("refresh.failed", "stale")
    assert account_id not in connector.accounts
    assert world.events("integration.status", account_id) == []


async def test_a_refresh_finishing_after_a_new_consent_keeps_the_new_consent(
    world: World,
) -> None:
    """Replica A refreshes alice's old token slowly; meanwhile the user signs in again and
    replica B exchanges the code. The new consent must survive A finishing last."""
    replica_b = ConnectorRuntime(world.runtime.settings, world.clock)
    # Its connector only (no subscribers): the test drives both replicas by hand.
    await replica_b.start()
    try:
        a, b = world.runtime.connector(), replica_b.connector()
        await world.advance(31 * 60)  # alice's access token is due for a refresh
        await world.http.post(
            "/admin/faults",
            json={"endpoint": "token", "app_key": "app-alice", "delay_s": 2.0},
        )
        refresh_id = uuid.uuid4()
        slow = asyncio.create_task(
            a.on_refresh(
                RefreshRequested(
                    user_id=ALICE,
                    account_id=A1,
                    payload={
                        "broker": Broker.SCHWAB,
                        "refresh_id": refresh_id,
                        "config": world.config(A1, "app-alice", NUMBERS[A1]),
                    },
                )
            )
        )

        async def refresh_in_flight() -> bool:
            return not (await world.http.get("/admin/state")).json()["faults"]

        await wait_until(
            refresh_in_flight, timeout_s=15, message="token refresh started"
        )
        consent = await b.exchange_code(
            SchwabOAuthExchangeRequest(
                user_id=ALICE,
                account_id=A1,
                app_key="app-alice",
                app_secret_enc=world.box.encrypt(SECRETS["app-alice"]),
                code_enc=world.box.encrypt(await world.code("app-alice", "alice")),
                redirect_uri=CALLBACK,
                account_number=NUMBERS[A1],
            )
        )
        assert consent.success, consent.message
        await slow
        assert world.outcome(refresh_id)["type"] == "balance.updated"  # type: ignore[index]

        login = a.vault.logins[(ALICE, "app-alice", consent.login)].login_id
        assert await b.vault._coordinator.latest_token(login) == consent.token_enc
        # A picks the consent up instead of using (or refreshing) the old login again.
        await world.advance(31 * 60)
        again = await world.refresh_account(A1)
        await wait_until(lambda: world.outcome(again), timeout_s=20, message="again")
        assert world.outcome(again)["type"] == "balance.updated"  # type: ignore[index]
        for connector in (a, b):
            state = connector.vault.logins.get((ALICE, "app-alice", consent.login))
            if state is not None and state.times is not None:
                assert state.times.refresh_expires_at >= _refresh_expiry(world, consent)
    finally:
        await replica_b.stop()
        await replica_b.broker.stop()


def _refresh_expiry(world: World, reply: SchwabOAuthExchangeReply) -> Any:
    assert reply.refresh_expires_at is not None
    return reply.refresh_expires_at


async def test_two_logins_under_one_app_key_refresh_and_reauthenticate_independently(
    world: World,
) -> None:
    carol = await world.exchange(ALICE, C1, "app-alice", "carol", NUMBERS[C1])
    assert carol.success, carol.message
    alice_login = world.logins[A1]
    assert carol.login and carol.login != alice_login
    assert (
        world.logins[A2] == alice_login
    )  # carol's sign-in did not take alice's accounts
    world.tokens[C1] = carol.token_enc or ""
    await world.configure(ALICE, C1, "app-alice", NUMBERS[C1])

    async def refreshed(account_id: int) -> dict[str, Any]:
        user, _ = OWNER.get(account_id, (ALICE, "app-alice"))
        refresh_id = await world.refresh(
            user, account_id, "app-alice", NUMBERS[account_id]
        )
        return await wait_until(  # type: ignore[no-any-return]
            lambda: world.outcome(refresh_id), timeout_s=20, message="refresh"
        )

    both = [await refreshed(C1), await refreshed(A1)]
    assert [(o["type"], Decimal(o["payload"]["balance"])) for o in both] == [
        ("balance.updated", Decimal(4444)),
        ("balance.updated", Decimal("1000.5")),
    ]

    # Carol revokes brokerlink at Schwab: only her account needs signing in again.
    await world.http.post(
        "/admin/tokens/revoke", json={"app_key": "app-alice", "login_id": "carol"}
    )
    dead = await refreshed(C1)
    assert (dead["type"], dead["payload"]["code"]) == (
        "refresh.failed",
        "reauth_required",
    )
    await wait_until(
        lambda: world.last_status(C1) == "reauth_required", message="carol reauth"
    )
    alive = await refreshed(A1)
    assert alive["type"] == "balance.updated"
    assert world.last_status(A1) != "reauth_required"
    rotated = [
        e["payload"]
        for e in world.events("schwab.tokens.rotated")
        if e["payload"].get("login") == carol.login
    ]
    assert all(C1 in r["account_ids"] and A1 not in r["account_ids"] for r in rotated)

    # Carol signs in again; alice's login is untouched.
    again = await world.exchange(ALICE, C1, "app-alice", "carol", NUMBERS[C1])
    assert again.success and again.login == carol.login
    world.tokens[C1] = again.token_enc or ""
    back = await refreshed(C1)
    assert back["type"] == "balance.updated", back["payload"]
    assert world.logins[A1] == alice_login
