"""A gateway's accounts belong to the first user whose session reached them, under whatever
address: ib-connector's account claims (real NATS KV, ib_async to the simulator over TCP)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from decimal import Decimal
from typing import Any

import orjson
import pytest
from brokerlink_devkit.testing import wait_until
from brokerlink_shared.contracts.events import Event
from brokerlink_shared.contracts.values import (
    GATEWAY_OWNED_ELSEWHERE,
    GATEWAY_OWNED_ELSEWHERE_MESSAGE,
    IBConnection,
    IntegrationStatus,
)
from brokerlink_shared.kv import bucket_keys
from brokerlink_simulators.ib_gateway import GatewaySpec, IBGatewaySimulator
from ib_connector.adapters.account_claims import AccountClaims
from nats.js.errors import KeyNotFoundError

from .conftest import Bus, account

# what every LogRecord has; the rest is a log line's message and its extras
_RECORD_FIELDS = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


def _mentions(
    events: list[Event], records: list[logging.LogRecord], *texts: str
) -> list[str]:
    found = [e.model_dump_json() for e in events]
    found += [f"{r.getMessage()} {r.__dict__}" for r in records]
    return [line for line in found if any(text in line for text in texts)]


async def test_a_gateway_under_another_address_stays_its_owners(
    all_addresses_sim: IBGatewaySimulator,
    bus: Bus,
    connector: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    owner, other = 551, 552
    gateway = await all_addresses_sim.add_gateway(
        GatewaySpec(
            name="two-addresses",
            accounts=[account("U5500001", "5501.37"), account("U5500002", "5502.91")],
        )
    )
    mine = IBConnection(
        host="127.0.0.1", port=gateway.port, client_id=1, account_code="U5500001"
    )
    assert (await bus.refreshed(61, mine, user_id=owner)).payload.balance == Decimal(
        "5501.37"
    )

    # The other user's integration names the same gateway under another address of this host
    # (account-api folds every loopback address into one endpoint; a LAN or Docker address, or
    # a name rebound after it was saved, reaches the connector just like this) and another
    # client id, so the gateway itself lets the connection in; it names an account the
    # owner's integration does not.
    theirs = IBConnection(
        host="127.0.0.2", port=gateway.port, client_id=2, account_code="U5500002"
    )
    caplog.clear()
    seen_before = len(bus.events)
    await bus.configure(62, theirs, user_id=other)
    refresh_id = await bus.refresh(62, theirs, user_id=other)
    failed = await wait_until(
        lambda: bus.failure_for(refresh_id), message="the other user's refresh fails"
    )
    assert (failed.user_id, failed.payload.code, failed.payload.message) == (
        other,
        GATEWAY_OWNED_ELSEWHERE,
        GATEWAY_OWNED_ELSEWHERE_MESSAGE,
    )
    status = await wait_until(lambda: bus.last_status(62), message="a status")
    assert (status.payload.status, status.payload.code, status.payload.message) == (
        IntegrationStatus.ERROR,
        GATEWAY_OWNED_ELSEWHERE,
        GATEWAY_OWNED_ELSEWHERE_MESSAGE,
    )
    # the test route, through the session and through a one-shot connection alike
    for config in (theirs, theirs.model_copy(update={"client_id": 3})):
        reply = await bus.test(config, timeout_s=4, user_id=other)
        assert (reply.success, reply.code, reply.message) == (
            False,
            GATEWAY_OWNED_ELSEWHERE,
            GATEWAY_OWNED_ELSEWHERE_MESSAGE,
        )
    assert not bus.balances(62)
    # nothing the other user's session produced names the owner's accounts or figures
    theirs_events = [e for e in bus.events[seen_before:] if e.user_id == other]
    theirs_logs = [
        r
        for r in caplog.records
        if str(getattr(r, "session", "")).startswith(f"u{other}@")
        or getattr(r, "account_id", None) == 62
    ]
    assert theirs_events and theirs_logs
    assert _mentions(theirs_events, theirs_logs, "U55000", "5501.37", "5502.91") == []
    # nor does anything the connector logged meanwhile (ib_async's wire dump aside: the
    # connector's entry point keeps only ib_async's critical messages)
    ours = [r for r in caplog.records if not r.name.startswith("ib_async")]
    assert _mentions(list(bus.events[seen_before:]), ours, "U55000") == []

    # the owner keeps working, unaffected, and adds a second integration on the same session
    assert (await bus.refreshed(61, mine, user_id=owner)).payload.balance == Decimal(
        "5501.37"
    )
    second = mine.model_copy(update={"account_code": "U5500002"})
    assert (await bus.refreshed(64, second, user_id=owner)).payload.balance == Decimal(
        "5502.91"
    )
    # the claims name no account code, and both integrations hold both accounts: through the
    # owner's gateway hold, which lists them and is the one holder of each account's claim
    claims, hold = await _owned(bus, owner)
    assert len(claims) == 2 and "U55" not in str((claims, hold))
    assert (hold["state"], set(hold["integrations"])) == (
        "held",
        {"acct:61", "acct:64"},
    )
    assert await _held_by(bus, owner, {"acct:61", "acct:64"})

    # Removing one of them releases nothing: the other still holds the accounts.
    await bus.remove(61, mine, user_id=owner)
    await wait_until(
        lambda: _held_by(bus, owner, {"acct:64"}),
        message="the first integration let go",
    )
    reply = await bus.test(theirs.model_copy(update={"client_id": 4}), user_id=other)
    assert (reply.success, reply.code) == (False, GATEWAY_OWNED_ELSEWHERE)

    # Removing the last one releases nothing either: the gateway stays the owner's (as
    # account-api keeps the endpoint its owner's), so the other user is still refused, by the
    # session that keeps retrying and by a one-shot test ...
    await bus.remove(64, second, user_id=owner)
    await wait_until(
        lambda: _held_by(bus, owner, set()), message="the last integration let go"
    )
    reply = await bus.test(theirs.model_copy(update={"client_id": 5}), user_id=other)
    assert (reply.success, reply.code) == (False, GATEWAY_OWNED_ELSEWHERE)
    refresh_id = await bus.refresh(62, theirs, user_id=other)
    failed = await wait_until(
        lambda: bus.failure_for(refresh_id), message="the other user is refused again"
    )
    assert failed.payload.code == GATEWAY_OWNED_ELSEWHERE
    assert not bus.balances(62)
    # ... and the owner's next integration behind that gateway reads through the same hold
    assert (await bus.refreshed(63, mine, user_id=owner)).payload.balance == Decimal(
        "5501.37"
    )
    assert await _held_by(bus, owner, {"acct:63"})

    # Only when the owner is deleted with their last integration (a migration rolled back)
    # are the accounts free: the other user's session, retrying with backoff, reads them.
    await bus.remove(63, mine, user_id=owner, owner_deleted=True)
    await wait_until(
        lambda: (
            (last := bus.last_status(62)) is not None
            and last.payload.status is IntegrationStatus.CONNECTED
        ),
        timeout_s=15,
        message="the other user's session connects once the owner is gone",
    )
    assert (await bus.refreshed(62, theirs, user_id=other)).payload.balance == Decimal(
        "5502.91"
    )


async def _entries(bus: Bus, user_id: int) -> dict[str, Any]:
    """The user's account claims and gateway holds as the bucket holds them."""
    bucket = f"{bus.topology.namespace}_ib_accounts"
    kv = await bus.nc.jetstream().key_value(bucket)
    found = {}
    for key in await bucket_keys(bus.nc, bucket):
        if key != "hash-key":
            with contextlib.suppress(KeyNotFoundError):  # deleted: nothing holds it
                entry = await kv.get(key)
                if entry.value:
                    found[key] = orjson.loads(entry.value)
    return {k: v for k, v in found.items() if v["user_id"] == user_id}


async def test_an_integration_removed_while_its_claim_is_written_is_not_left_in_the_hold(
    all_addresses_sim: IBGatewaySimulator,
    bus: Bus,
    connector: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The second integration's first refresh writes it into the owner's gateway hold; the
    owner removes it before the write lands. Once the owner removes the first one too, the hold
    lists no integration (its accounts stay the owner's, held by the hold alone)."""
    owner = 553
    gateway = await all_addresses_sim.add_gateway(
        GatewaySpec(
            name="removed-midway",
            accounts=[account("U5530001", "1.25"), account("U5530002", "2.50")],
        )
    )
    first = IBConnection(
        host="127.0.0.1", port=gateway.port, client_id=1, account_code="U5530001"
    )
    assert (await bus.refreshed(71, first, user_id=owner)).payload.balance == Decimal(
        "1.25"
    )
    second = first.model_copy(update={"account_code": "U5530002"})

    writing, resume, let_go = asyncio.Event(), asyncio.Event(), asyncio.Event()
    hold, leave = AccountClaims.hold, AccountClaims.leave

    async def paused_hold(
        self: AccountClaims, user_id: int, codes: Any, integrations: Any
    ) -> bool:
        integrations = list(integrations)
        if "acct:72" in integrations and not writing.is_set():
            writing.set()
            await resume.wait()
        return await hold(self, user_id, codes, integrations)

    async def observed_leave(
        self: AccountClaims, integration: str, **kwargs: Any
    ) -> int:
        deleted = await leave(self, integration, **kwargs)
        if integration == "acct:72":
            let_go.set()
        return deleted

    monkeypatch.setattr(AccountClaims, "hold", paused_hold)
    monkeypatch.setattr(AccountClaims, "leave", observed_leave)
    await bus.configure(72, second, user_id=owner)
    await bus.refresh(72, second, user_id=owner)
    await wait_until(writing.is_set, message="the second integration's claim underway")
    await bus.remove(72, second, user_id=owner)
    await wait_until(let_go.is_set, message="the removal let go of the integration")
    resume.set()

    await bus.remove(71, first, user_id=owner)
    await wait_until(
        lambda: _held_by(bus, owner, set()),
        message="the hold lists no integration and alone holds the accounts",
    )


async def _owned(bus: Bus, user_id: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """The user's account claims and their one gateway hold (with its `key`)."""
    found = await _entries(bus, user_id)
    [hold] = [{**v, "key": k} for k, v in found.items() if k.startswith("s")]
    claims = {k: v for k, v in found.items() if not k.startswith("s")}
    return claims, hold


async def _held_by(bus: Bus, user_id: int, integrations: set[str]) -> bool:
    claims, hold = await _owned(bus, user_id)
    holder = {f"g:{hold['key']}:{hold['generation']}"}
    return (
        bool(claims)
        and set(hold["integrations"]) == integrations
        and all(set(c["holders"]) == holder for c in claims.values())
    )
