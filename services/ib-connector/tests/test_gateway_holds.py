"""Gateway holds: a user's integrations behind one gateway hold its accounts together, so adding
one more costs one write rather than one per account the gateway manages; releases, refusals and
a release cut short leave no claim behind. Real nats-server and KV bucket."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import nats
import orjson
import pytest
from brokerlink_devkit.testing.plugin import Infra
from brokerlink_shared.kv import bucket_keys
from ib_connector.adapters.account_claims import AccountClaims
from ib_connector.domain.account_claims import (
    claim_key,
    integration_holder,
    transient_holder,
)
from nats.aio.client import Client as NatsClient
from nats.js.errors import KeyNotFoundError

CODES = [f"U{6_100_000 + n}" for n in range(95)]
OWNER, OTHER = 71, 72


@dataclass
class Bucket:
    nc: NatsClient
    namespace: str

    @property
    def name(self) -> str:
        return f"{self.namespace}_ib_accounts"


@pytest.fixture
async def nc(infra: Infra) -> AsyncIterator[Bucket]:
    client = await nats.connect(infra.nats_url)
    try:
        yield Bucket(client, f"holds{uuid.uuid4().hex[:8]}")
    finally:
        await client.close()


async def _claims(nc: Bucket) -> AccountClaims:
    claims = AccountClaims(nc.nc, nc.namespace)
    await claims.start()
    return claims


async def _entries(nc: Bucket) -> tuple[dict[str, Any], dict[str, Any]]:
    """(claims, holds) as the bucket holds them, deleted keys aside."""
    kv = await nc.nc.jetstream().key_value(nc.name)
    claims, holds = {}, {}
    for key in await bucket_keys(nc.nc, nc.name):
        if key == "hash-key":
            continue
        with contextlib.suppress(KeyNotFoundError):
            entry = await kv.get(key)
            if entry.value:
                (holds if key.startswith("s") else claims)[key] = orjson.loads(
                    entry.value
                )
    return claims, holds


async def _writes(nc: Bucket) -> int:
    info = await nc.nc.jetstream().stream_info(f"KV_{nc.name}")
    return int(info.state.last_seq)


def _acct(*ids: int) -> list[str]:
    return [integration_holder(i) for i in ids]


async def test_one_more_integration_behind_a_gateway_is_one_write(
    nc: Bucket,
) -> None:
    claims = await _claims(nc)
    assert await claims.hold(OWNER, CODES, _acct(1))
    for account_id in range(2, 12):
        before = await _writes(nc)
        assert await claims.hold(OWNER, CODES, _acct(account_id))
        assert await _writes(nc) - before == 1
    before = await _writes(nc)
    assert await claims.hold(OWNER, CODES, _acct(5))  # already holding: nothing written
    assert await _writes(nc) == before

    found, holds = await _entries(nc)
    [(key, hold)] = holds.items()
    assert (hold["user_id"], hold["state"], set(hold["integrations"])) == (
        OWNER,
        "held",
        set(_acct(*range(1, 12))),
    )
    assert sorted(hold["claims"]) == sorted(found) and len(found) == len(CODES)
    holder = f"g:{key}:{hold['generation']}"
    assert all(c == {"user_id": OWNER, "holders": [holder]} for c in found.values())
    assert not any(code in str((found, holds)) for code in CODES)


async def test_sessions_holding_at_once_all_land_in_one_hold(nc: Bucket) -> None:
    claims = await _claims(nc)
    # one session per client id of the same gateway, each with its first integration
    results = await asyncio.gather(
        *(claims.hold(OWNER, CODES, _acct(i)) for i in range(1, 5))
    )
    assert results == [True] * 4
    found, holds = await _entries(nc)
    [hold] = holds.values()
    assert hold["state"] == "held" and set(hold["integrations"]) == set(
        _acct(1, 2, 3, 4)
    )
    assert {len(c["holders"]) for c in found.values()} == {1}


async def _another_users_test_on_one_account(
    owner: AccountClaims, other: AccountClaims
) -> tuple[str, str]:
    """Another user's one-shot test holds one account of the gateway (the eleventh in the
    claims' order); returns that account and the test's holder."""
    keys = sorted(claim_key(owner._secret, c) for c in CODES)
    shared = next(c for c in CODES if claim_key(owner._secret, c) == keys[10])
    test_holder = transient_holder(time.time(), "other-test")
    assert await other.claim(OTHER, [shared], [test_holder])
    return shared, test_holder


async def _held_by_one_generation(nc: Bucket) -> dict[str, Any]:
    """The one gateway hold, every account's claim the owner's and held by its generation
    alone."""
    found, holds = await _entries(nc)
    [(key, hold)] = holds.items()
    assert len(found) == len(CODES) and all(
        c == {"user_id": OWNER, "holders": [f"g:{key}:{hold['generation']}"]}
        for c in found.values()
    )
    return dict(hold)


async def test_another_user_is_refused_and_leaves_nothing(nc: Bucket) -> None:
    claims = await _claims(nc)
    assert await claims.hold(OWNER, CODES, _acct(1))
    before = await _entries(nc)
    # the same gateway, or one sharing a single account with it
    assert await claims.hold(OTHER, CODES, _acct(2)) is False
    assert await claims.hold(OTHER, [CODES[50], "U6199999"], _acct(3)) is False
    assert await _entries(nc) == before


async def test_the_last_integration_going_keeps_the_accounts_their_users(
    nc: Bucket,
) -> None:
    claims = await _claims(nc)
    assert await claims.hold(OWNER, CODES, _acct(1, 2))
    held = await _entries(nc)
    assert await claims.leave(integration_holder(1)) == 0
    found, holds = await _entries(nc)
    assert found == held[0]
    assert [set(h["integrations"]) for h in holds.values()] == [set(_acct(2))]

    # the last one going releases nothing: another user is still refused, and writes nothing
    assert await claims.leave(integration_holder(2)) == 0
    found, holds = await _entries(nc)
    assert found == held[0]
    assert [(h["state"], h["integrations"]) for h in holds.values()] == [("held", [])]
    assert await claims.hold(OTHER, CODES, _acct(3)) is False
    assert await _entries(nc) == (found, holds)
    # the owner's next integration joins the same hold: one write, the claims as they were
    assert await claims.hold(OWNER, CODES, _acct(4))
    found, holds = await _entries(nc)
    assert found == held[0]
    assert [set(h["integrations"]) for h in holds.values()] == [set(_acct(4))]


async def test_the_last_integration_of_a_deleted_user_frees_the_accounts(
    nc: Bucket,
) -> None:
    claims = await _claims(nc)
    assert await claims.hold(OWNER, CODES, _acct(1, 2))
    assert await claims.leave(integration_holder(1), owner_deleted=True) == 0
    assert await claims.leave(integration_holder(2), owner_deleted=True) == len(CODES)
    assert await _entries(nc) == ({}, {})
    assert await claims.hold(OTHER, CODES, _acct(3))


async def test_a_refused_round_leaves_a_hold_another_round_proved_meanwhile(
    nc: Bucket,
) -> None:
    """One round of the owner is refused (another user's one-shot test holds an account) and
    pauses before taking its integrations off; meanwhile the test ends and another round of
    the owner proves the hold. The refused round must not release what that round proved."""
    first, second, other = [await _claims(nc) for _ in range(3)]
    shared, test_holder = await _another_users_test_on_one_account(first, other)

    refused, resume = asyncio.Event(), asyncio.Event()
    leave = second._leave

    async def paused_leave(*args: Any, **kwargs: Any) -> int:
        refused.set()
        await resume.wait()
        return await leave(*args, **kwargs)

    second._leave = paused_leave  # type: ignore[method-assign]
    holding = asyncio.create_task(second.hold(OWNER, CODES, _acct(1, 2)))
    await asyncio.wait_for(refused.wait(), 30)
    await other.release(test_holder, [shared])
    assert await first.hold(OWNER, CODES, _acct(1))
    resume.set()
    assert await holding is False

    assert (await _held_by_one_generation(nc))["state"] == "held"
    assert await other.hold(OTHER, CODES, _acct(9)) is False


async def test_a_release_cut_short_is_finished_and_its_leftovers_retired(
    nc: Bucket,
) -> None:
    claims = await _claims(nc)
    kv = await nc.nc.jetstream().key_value(nc.name)

    async def cut_short() -> tuple[str, str]:
        """A release began (a refused round's, or a deleted user's), and the process died
        before any claim was let go."""
        _, holds = await _entries(nc)
        [(key, hold)] = holds.items()
        hold.update(state="releasing", integrations=[])
        await kv.put(key, orjson.dumps(hold))
        return key, hold["generation"]

    # the user adds an integration again: a new generation, the old one's holders retired
    assert await claims.hold(OWNER, CODES, _acct(1))
    key, old = await cut_short()
    assert await claims.hold(OWNER, CODES, _acct(2))
    found, holds = await _entries(nc)
    new = holds[key]["generation"]
    assert new != old and holds[key]["retired"] == []
    assert all(c["holders"] == [f"g:{key}:{new}"] for c in found.values())

    # nobody comes back: the next integration leaving anything finishes it
    await cut_short()
    assert await claims.leave(integration_holder(99)) == len(CODES)
    assert await _entries(nc) == ({}, {})
    assert await claims.hold(OTHER, CODES, _acct(3))


async def test_a_session_refused_while_another_claims_takes_nothing_from_it(
    nc: Bucket,
) -> None:
    """Two sessions of the owner claim one new hold at once; one meets another user's one-shot
    test on an account and is refused, the test ends, the other session claims everything. The
    refused one must not let go of the claims they share."""
    first, second, other = [await _claims(nc) for _ in range(3)]
    shared, test_holder = await _another_users_test_on_one_account(first, other)

    refused, resume = asyncio.Event(), asyncio.Event()
    release_key = second._release_key

    async def paused_release(key: str, holder: str) -> bool:
        refused.set()
        await resume.wait()
        return await release_key(key, holder)

    second._release_key = paused_release  # type: ignore[method-assign]
    holding = asyncio.create_task(second.hold(OWNER, CODES, _acct(2)))
    with contextlib.suppress(
        TimeoutError
    ):  # refused without letting go: nothing to pause
        await asyncio.wait_for(asyncio.shield(holding), 5)
    await other.release(test_holder, [shared])
    assert await first.hold(OWNER, CODES, _acct(1))
    resume.set()
    assert await holding is False

    hold = await _held_by_one_generation(nc)
    assert (hold["state"], hold["integrations"]) == ("held", _acct(1))
    assert await other.hold(OTHER, [shared], _acct(9)) is False


async def test_a_removal_while_a_session_claims_leaves_one_holder_behind(
    nc: Bucket,
) -> None:
    connecting, remover, other = [await _claims(nc) for _ in range(3)]
    started, resume = asyncio.Event(), asyncio.Event()
    claim = connecting.claim

    async def paused_claim(*args: Any, **kwargs: Any) -> bool:
        if not started.is_set():
            started.set()
            await resume.wait()
        return await claim(*args, **kwargs)

    connecting.claim = paused_claim  # type: ignore[method-assign]
    holding = asyncio.create_task(connecting.hold(OWNER, CODES, _acct(1)))
    await asyncio.wait_for(started.wait(), 30)
    await remover.leave(
        integration_holder(1)
    )  # the user removes the integration meanwhile
    resume.set()
    await holding
    # the removal's redelivery (or the integration's own later removal) takes it off again:
    # the hold lists nothing, and its generation alone holds the accounts, for their user
    await remover.leave(integration_holder(1))
    hold = await _held_by_one_generation(nc)
    assert (hold["state"], hold["integrations"], hold["retired"]) == ("held", [], [])
    assert await other.hold(OTHER, CODES, _acct(9)) is False


async def test_a_release_cut_short_is_finished_when_a_replica_starts(
    nc: Bucket,
) -> None:
    claims = await _claims(nc)
    assert await claims.hold(OWNER, CODES, _acct(1))
    kv = await nc.nc.jetstream().key_value(nc.name)
    _, holds = await _entries(nc)
    [(key, hold)] = holds.items()
    hold.update(state="releasing", integrations=[])
    await kv.put(key, orjson.dumps(hold))

    await _claims(nc)  # another replica starting
    assert await _entries(nc) == ({}, {})
