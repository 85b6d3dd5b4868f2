"""What the web UI relies on, through the real API: dry tests of unsaved settings, IB backups
kept unless named, a first refresh on save, one set of sync facts everywhere, totals."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import httpx
import pytest
from account_api.integrations.rules import last_attempt
from brokerlink_devkit.testing import wait_until
from brokerlink_shared.contracts.events import BalanceUpdated, RefreshFailed
from brokerlink_shared.messaging import EventPublisher, make_broker
from brokerlink_shared.subjects import Topology

from .conftest import gateway_port, ib_integration


@pytest.fixture
async def account(client: httpx.AsyncClient, new_user) -> tuple[dict[str, str], int]:  # type: ignore[no-untyped-def]
    h = await new_user(client)
    r = await client.post(
        "/api/accounts", headers=h, json={"name": "Broker", "currency": "USD"}
    )
    return h, r.json()["id"]


def _parsed(sync: dict) -> dict:
    """Times compared as instants (the read model and pydantic spell UTC differently)."""
    return {
        k: datetime.fromisoformat(v) if k.endswith("_at") and v else v
        for k, v in sync.items()
    }


async def _backups(client: httpx.AsyncClient, h: dict[str, str], aid: int) -> list:
    r = await client.get(f"/api/accounts/{aid}/integration", headers=h)
    return [(b["host"], b["port"]) for b in r.json()["config"]["backups"]]


async def test_backups_absent_keeps_them_a_list_replaces_them_empty_clears(
    client, account
) -> None:  # type: ignore[no-untyped-def]
    h, aid = account
    url = f"/api/accounts/{aid}/integration"
    IB = ib_integration()
    b, c = gateway_port(), gateway_port()
    backups = [{"host": "127.0.0.1", "port": b}, {"host": "127.0.0.1", "port": c}]
    body = {"type": "IB", "config": {**IB["config"], "backups": backups}}
    assert (await client.put(url, headers=h, json=body)).status_code == 200
    moved = {"type": "IB", "config": {**IB["config"], "client_id": 8}}
    assert (await client.put(url, headers=h, json=moved)).status_code == 200
    assert await _backups(client, h, aid) == [("127.0.0.1", b), ("127.0.0.1", c)]
    reordered = {"type": "IB", "config": {**moved["config"], "backups": backups[::-1]}}
    assert (await client.put(url, headers=h, json=reordered)).status_code == 200
    assert await _backups(client, h, aid) == [("127.0.0.1", c), ("127.0.0.1", b)]
    cleared = {"type": "IB", "config": {**moved["config"], "backups": []}}
    assert (await client.put(url, headers=h, json=cleared)).status_code == 200
    assert await _backups(client, h, aid) == []
    bad = {"type": "IB", "config": {**IB["config"], "backups": [{"host": "x y"}]}}
    r = await client.put(url, headers=h, json=bad)
    assert r.status_code == 422 and "backups" in r.text


async def test_test_takes_unsaved_settings_and_saves_nothing(client, account) -> None:  # type: ignore[no-untyped-def]
    h, aid = account
    url = f"/api/accounts/{aid}/integration"
    IB = ib_integration()
    r = await client.post(f"{url}/test", headers=h, json=IB)
    # no connector runs in this suite: the dry test still reaches the bus and says so
    assert r.status_code == 200, r.text
    assert r.json()["success"] is False and r.json()["code"] == "no_connector"
    assert (await client.get(url, headers=h)).json()["type"] is None
    bad = {"type": "IB", "config": {**IB["config"], "port": 70000}}
    r = await client.post(f"{url}/test", headers=h, json=bad)
    assert r.status_code == 422 and r.json()["detail"][0]["loc"][-1] == "port"
    audit = (await client.get(f"/api/accounts/{aid}/audit", headers=h)).json()
    assert [(e["action"], e["detail"]) for e in audit] == [
        ("integration.test", {"success": False, "unsaved": True}),
        ("account.create", None),
    ]


async def test_save_starts_a_first_refresh_and_every_view_shares_the_sync_facts(
    client, api, account, infra
) -> None:  # type: ignore[no-untyped-def]
    h, aid = account
    IB = ib_integration()
    r = await client.put(f"/api/accounts/{aid}/integration", headers=h, json=IB)
    first = r.json()["refresh_id"]
    assert first is not None and r.json()["sync"]["last_attempt"] == "pending"
    state = await client.get(
        f"/api/accounts/{aid}/integration/refresh/{first}", headers=h
    )
    assert state.json()["status"] == "pending"
    user_id = (await client.get("/api/auth/me", headers=h)).json()["id"]
    topology = Topology(api.settings.namespace)
    broker = make_broker(infra.nats_url, topology, "fake-connector")
    await broker.connect()
    publisher = EventPublisher(broker, topology)

    async def views() -> list[dict]:
        listed = (await client.get("/api/accounts", headers=h)).json()
        one = (await client.get(f"/api/accounts/{aid}", headers=h)).json()
        integration = (
            await client.get(f"/api/accounts/{aid}/integration", headers=h)
        ).json()
        health = (await client.get("/api/integrations/health", headers=h)).json()
        return [listed[0]["sync"], one["sync"], integration["sync"], health[0]["sync"]]

    async def agreed(outcome: str) -> list[dict] | None:
        seen = [_parsed(v) for v in await views()]
        return (
            seen
            if all(v == seen[0] for v in seen) and seen[0]["last_attempt"] == outcome
            else None
        )

    try:
        await publisher.publish(
            RefreshFailed(
                user_id=user_id,
                account_id=aid,
                payload={
                    "broker": "IB",
                    "refresh_id": first,
                    "code": "502",
                    "message": "connection refused by 127.0.0.1:4001",
                },
            )
        )
        failed = (
            await wait_until(lambda: agreed("failed"), timeout_s=10, message="failed")
        )[0]
        assert failed["last_error_code"] == "502" and failed["last_success_at"] is None
        assert failed["last_failure_at"] is not None

        again = await client.post(
            f"/api/accounts/{aid}/integration/refresh?wait=0", headers=h
        )
        await publisher.publish(
            BalanceUpdated(
                user_id=user_id,
                account_id=aid,
                payload={
                    "broker": "IB",
                    "refresh_id": again.json()["refresh_id"],
                    "as_of": datetime.now(UTC),
                    "currency": "USD",
                    "balance": "100",
                },
            )
        )
        ok = (
            await wait_until(lambda: agreed("succeeded"), timeout_s=10, message="ok")
        )[0]
        assert ok["last_success_at"] is not None and ok["last_error"] is None
        assert ok["signed_in"] is None  # IB has no sign-in
    finally:
        await broker.stop()


async def test_a_save_through_the_account_route_starts_the_first_refresh_too(
    client, account
) -> None:  # type: ignore[no-untyped-def]
    h, aid = account
    IB = ib_integration()
    r = await client.put(f"/api/accounts/{aid}", headers=h, json={"integration": IB})
    assert r.status_code == 200, r.text
    assert r.json()["sync"]["last_attempt"] == "pending"
    same = await client.put(f"/api/accounts/{aid}", headers=h, json={"integration": IB})
    assert same.json()["sync"]["last_attempt_at"] == r.json()["sync"]["last_attempt_at"]


async def test_schwab_without_sign_in_starts_no_refresh(client, account) -> None:  # type: ignore[no-untyped-def]
    h, aid = account
    body = {
        "type": "SCHWAB",
        "config": {"app_key": "app-key-1", "app_secret": "s3cret-xyz"},
    }
    r = await client.put(f"/api/accounts/{aid}/integration", headers=h, json=body)
    assert r.status_code == 200 and r.json()["refresh_id"] is None
    assert r.json()["sync"]["last_attempt"] is None
    assert r.json()["sync"]["signed_in"] is False


async def test_an_empty_field_keeps_its_rule_in_the_422(client, new_user) -> None:  # type: ignore[no-untyped-def]
    """The UI words a 422 from its rule ("at least 1 character" -> "Can't be empty."): an
    empty input quotes nothing, so the rule's message stays."""
    h = await new_user(client)
    r = await client.post(
        "/api/accounts", headers=h, json={"name": "", "currency": "USD"}
    )
    assert r.status_code == 422
    assert r.json()["detail"][0]["msg"] == "String should have at least 1 character"


async def test_totals_only_where_currencies_agree(client, new_user) -> None:  # type: ignore[no-untyped-def]
    h = await new_user(client)
    for name, currency, balance in (("A", "USD", "100.10"), ("B", "USD", "0.20")):
        await client.post(
            "/api/accounts",
            headers=h,
            json={"name": name, "currency": currency, "current_balance": balance},
        )
    totals = (await client.get("/api/accounts/totals", headers=h)).json()
    assert (totals["net_worth"], totals["net_worth_currency"]) == ("100.3000", "USD")
    await client.post(
        "/api/accounts",
        headers=h,
        json={"name": "C", "currency": "EUR", "current_balance": "5"},
    )
    totals = (await client.get("/api/accounts/totals", headers=h)).json()
    assert totals["net_worth"] is None
    assert [(t["currency"], t["accounts"]) for t in totals["by_currency"]] == [
        ("EUR", 1),
        ("USD", 2),
    ]


T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
LATER = T0 + timedelta(minutes=5)


@pytest.mark.parametrize(
    ("asked", "succeeded", "failed", "outcome"),
    [
        (None, None, None, None),
        (T0, None, None, "pending"),
        (T0, LATER, None, "succeeded"),
        (T0, None, LATER, "failed"),
        (LATER, T0, None, "pending"),
        (T0, LATER, T0, "succeeded"),
        (T0, T0, LATER, "failed"),
        (None, T0, None, "succeeded"),  # a balance the connector sent unasked
    ],
)
def test_last_attempt(asked, succeeded, failed, outcome) -> None:  # type: ignore[no-untyped-def]
    assert last_attempt(asked, succeeded, failed) == outcome
