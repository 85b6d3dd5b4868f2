"""The pull fetch every consumer uses (real NATS): a message is handed over as soon as the
server has it, even when the first thing the fetch reads back is a status left over from an
earlier request, or the message comes under an earlier request still open — either made
nats-py 2.16's own fetch hold the message until its timeout."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import nats
import nats.errors
import pytest
from brokerlink_shared.messaging import make_broker
from brokerlink_shared.messaging.pull_fetch import (
    ERROR_PAUSE_S,
    _nats_fetch_n,
    prompt_fetch,
    use_prompt_fetch,
)
from brokerlink_shared.subjects import Topology
from nats.aio.client import Client as NatsClient
from nats.js.client import JetStreamContext
from nats.js.errors import ServiceUnavailableError

LONG_S = 60.0  # a fetch timeout no answer here may wait for


async def _consumer(
    nats_client: NatsClient, infra: Any
) -> tuple[str, JetStreamContext.PullSubscription]:
    name = f"{infra.namespace}FETCH{time.monotonic_ns()}"
    subject = f"{name}.x"
    js = nats_client.jetstream()
    await js.add_stream(name=name, subjects=[f"{name}.>"])
    return subject, await js.pull_subscribe(subject, durable="d", stream=name)


async def _stray_status(nats_client: NatsClient, psub: Any) -> None:
    """What the server sends when it ends a pull request (here: an earlier one) by expiry."""
    await nats_client.publish(
        psub._deliver, b"", headers={"Status": "408", "Description": "Request Timeout"}
    )


async def _earlier_request(nats_client: NatsClient, psub: Any) -> None:
    """A pull request an earlier fetch left open (nats-py's lingering one: no `no_wait`)."""
    request = {"batch": 64, "expires": int(LONG_S * 1e9)}
    await nats_client.publish(psub._nms, json.dumps(request).encode(), psub._deliver)
    await nats_client.flush()


async def _fetch_one_refresh(
    nats_client: NatsClient,
    psub: Any,
    subject: str,
    fetch: Any,
    timeout_s: float,
    before: Any,
) -> tuple[list[Any], float]:
    started = time.monotonic()
    fetching = asyncio.create_task(
        fetch(psub, 64, int(timeout_s * 1e9) - 100_000, timeout_s)
    )
    # The fetch has drained its queue and asked by the time these reach it through the server.
    await before(nats_client, psub)
    await nats_client.jetstream().publish(subject, b"refresh")
    msgs = await asyncio.wait_for(fetching, LONG_S)
    return msgs, time.monotonic() - started


@pytest.mark.parametrize("left_over", [_stray_status, _earlier_request])
async def test_a_message_is_handed_over_at_once_whatever_an_earlier_fetch_left(
    nats_client: NatsClient, infra: Any, left_over: Any
) -> None:
    subject, psub = await _consumer(nats_client, infra)
    msgs, _ = await asyncio.wait_for(
        _fetch_one_refresh(nats_client, psub, subject, prompt_fetch, LONG_S, left_over),
        10,
    )
    assert [m.data for m in msgs] == [b"refresh"]


async def test_nats_py_own_fetch_still_holds_that_message_until_its_timeout(
    nats_client: NatsClient, infra: Any
) -> None:
    """The defect `prompt_fetch` works around. When a nats-py release fixes it, this fails:
    then `pull_fetch` can go."""
    subject, psub = await _consumer(nats_client, infra)
    msgs, took_s = await _fetch_one_refresh(
        nats_client, psub, subject, _nats_fetch_n, 2.0, _earlier_request
    )
    assert [m.data for m in msgs] == [b"refresh"]
    assert took_s >= 1.5


async def _fetched(
    nats_client: NatsClient, infra: Any, count: int, batch: int
) -> list[list[bytes]]:
    """Publish `count` messages, then fetch `batch` at a time until all came: each fetch's
    messages (a fetch that waited for a full batch would exceed the 10 s bound)."""
    subject, psub = await _consumer(nats_client, infra)
    for i in range(count):
        await nats_client.jetstream().publish(subject, str(i).encode())
    fetches: list[list[bytes]] = []
    while sum(map(len, fetches)) < count:
        msgs = await asyncio.wait_for(
            prompt_fetch(psub, batch, int(LONG_S * 1e9), LONG_S), 10
        )
        fetches.append([m.data for m in msgs])
        for m in msgs:
            await m.ack()
    return fetches


async def test_messages_already_waiting_are_returned_without_waiting_for_a_full_batch(
    nats_client: NatsClient, infra: Any
) -> None:
    """Each fetch returns what has arrived (on a busy machine the first read may hold only the
    first message); none waits for the 64 it asked for."""
    fetches = await _fetched(nats_client, infra, 3, 64)
    assert [m for f in fetches for m in f] == [b"0", b"1", b"2"]


async def test_fetches_of_a_small_batch_take_every_message_once_in_order(
    nats_client: NatsClient, infra: Any
) -> None:
    fetches = await _fetched(nats_client, infra, 5, 2)
    assert all(1 <= len(f) <= 2 for f in fetches)
    assert [m for f in fetches for m in f] == [b"0", b"1", b"2", b"3", b"4"]


async def test_an_empty_fetch_ends_with_nats_timeout_after_its_timeout(
    nats_client: NatsClient, infra: Any
) -> None:
    """FastStream's pull loop expects nats' own TimeoutError from an empty fetch (the builtin
    one made it log an error and restart the loop)."""
    subject, psub = await _consumer(nats_client, infra)
    started = time.monotonic()
    with pytest.raises(nats.errors.TimeoutError):
        await prompt_fetch(psub, 64, int(0.5e9) - 100_000, 0.5)
    assert time.monotonic() - started >= 0.45
    # The next fetch may read the expired request's 408 first; it still gets the message.
    fetching = asyncio.create_task(prompt_fetch(psub, 64, int(LONG_S * 1e9), LONG_S))
    await nats_client.jetstream().publish(subject, b"after")
    msgs = await asyncio.wait_for(fetching, 10)
    assert [m.data for m in msgs] == [b"after"]


async def test_a_deleted_consumer_is_asked_about_once_a_second_not_in_a_loop(
    nats_client: NatsClient, infra: Any
) -> None:
    """The server answers every request for a deleted consumer at once (no responders), and
    FastStream's pull loop fetches again as soon as a fetch raises: nats-py's fetch, raising
    at once, had it ask thousands of times a second."""
    _, psub = await _consumer(nats_client, infra)
    await nats_client.jetstream().delete_consumer(psub._stream, psub._consumer)
    started = time.monotonic()
    with pytest.raises(ServiceUnavailableError):
        await prompt_fetch(psub, 64, int(5e9), 5.0)
    assert time.monotonic() - started >= ERROR_PAUSE_S * 0.9


async def test_every_service_broker_fetches_promptly(infra: Any) -> None:
    make_broker(infra.nats_url, Topology(infra.namespace), "fetch-test")
    assert JetStreamContext.PullSubscription._fetch_n is prompt_fetch
    use_prompt_fetch()  # idempotent
    assert JetStreamContext.PullSubscription._fetch_n is prompt_fetch
