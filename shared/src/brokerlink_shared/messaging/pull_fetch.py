"""A JetStream pull fetch that hands over what the server has ready, without the stall in
nats-py 2.16's (the newest release).

nats-py's `PullSubscription.fetch(batch > 1)` first sends a no-wait request with `expires`,
which the server treats as "wait for a first message, then end with a 404 once nothing more is
ready". When the first thing it reads back is a status instead — most often the 408 that ended
the *previous* fetch's request, arriving just after that fetch gave up on the client side — it
sends a plain lingering request and, once a first message arrives on it, waits for the rest of
the batch until the whole fetch timeout has passed. An idle consumer met that after about
every expired fetch, so the next message waited up to the timeout (FastStream's pull loop: 5 s)
in the client: a refresh asked on a quiet system took 5 s longer in each consumer it passed
(`tests/test_pull_fetch.py` reproduces it on a real server).

It also waits when the first message arrives under an earlier fetch's request that is still
open (one nats-py sent without `no_wait`): no 404 follows that message, so the fetch waits for
the rest of its batch until its own request expires.

`prompt_fetch` asks the way nats-py's first request does, treats a status read before any
message as "ask again" (an end of an earlier request, or of ours; at a growing interval when
they keep coming), and returns as soon as it has a message, with whatever else has already
arrived; messages still on their way are in the subscription's queue for the next fetch, which
takes them without asking the server. It also paces a fetch that meets an error status (a
deleted consumer): nats-py's, raising at once, had FastStream's loop ask thousands of times a
second.
`use_prompt_fetch` installs it on nats-py's class; every service does that through
`make_broker`, since FastStream's pull loop calls `fetch` on subscriptions it creates itself.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import nats.errors
from nats.aio.msg import Msg
from nats.js.client import JetStreamContext
from nats.js.errors import APIError

# A request expires this long before the fetch's deadline, so the 408 that ends it on a quiet
# consumer is read by the same fetch instead of being left for the next one as a stray status.
EXPIRY_MARGIN_S = 0.02
# After a status ends a request before any message came, the fetch asks again at once the first
# time (an earlier request's end is the usual one), then after a pause that doubles up to the
# most: a server refusing every request ("408 Requests Pending" while ack-pending is at its
# limit) is neither asked in a loop nor left without a request of ours.
FIRST_PAUSE_S = 0.05
MAX_PAUSE_S = 0.5
# Any other status (the consumer deleted, no responders) ends the fetch only after this long, or
# the time left: FastStream's pull loop fetches again at once, thousands of times a second.
ERROR_PAUSE_S = 1.0

_nats_fetch_n = JetStreamContext.PullSubscription._fetch_n


async def prompt_fetch(
    self: JetStreamContext.PullSubscription,
    batch: int,
    expires: int | None,
    timeout: float | None,
    heartbeat: float | None = None,
) -> list[Msg]:
    """`PullSubscription._fetch_n` without the stall (see the module docstring)."""
    if timeout is None or heartbeat or timeout <= 2 * EXPIRY_MARGIN_S:
        return await _nats_fetch_n(self, batch, expires, timeout, heartbeat)
    sub: Any = self._sub
    queue: asyncio.Queue[Msg] = sub._pending_queue

    def ready() -> list[Msg]:
        """Messages already delivered (for this fetch's request or an earlier one), without
        `next_msg`'s task per message; statuses ended earlier requests."""
        msgs = []
        while not queue.empty():
            msg = queue.get_nowait()
            sub._pending_size -= len(msg.data)
            queue.task_done()
            if not JetStreamContext.is_status_msg(msg):
                msgs.append(msg)
        return msgs

    if msgs := ready():
        return msgs
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout

    async def ask() -> None:
        # `no_wait` with `expires`: the server waits for a first message, then ends the request
        # with a 404 once nothing more is ready, instead of holding it for a full batch.
        expires_s = deadline - loop.time() - EXPIRY_MARGIN_S
        request = {"batch": batch, "expires": int(expires_s * 1e9), "no_wait": True}
        await self._nc.publish(self._nms, json.dumps(request).encode(), self._deliver)

    await ask()
    pause = 0.0
    while (left := deadline - loop.time()) > 0:
        msg = await sub.next_msg(left)  # nats' TimeoutError when nothing came
        status = JetStreamContext.is_status_msg(msg)
        if not status:
            # Whatever else is here now comes along; more waits for the next fetch.
            return [msg, *ready()]
        if JetStreamContext._is_heartbeat(status):
            continue
        left = deadline - loop.time()
        if not JetStreamContext._is_temporary_error(status):
            await asyncio.sleep(min(ERROR_PAUSE_S, max(0.0, left)))
            raise APIError.from_msg(msg)
        if left <= 2 * EXPIRY_MARGIN_S:
            break  # our own request's end: nothing came in time
        if pause:
            await asyncio.sleep(min(pause, left - 2 * EXPIRY_MARGIN_S))
            if msgs := ready():  # delivered meanwhile under an earlier request
                return msgs
        # An earlier request's end, or ours ended early: ask again.
        await ask()
        pause = min(2 * pause, MAX_PAUSE_S) if pause else FIRST_PAUSE_S
    raise nats.errors.TimeoutError


def use_prompt_fetch() -> None:
    """Make every JetStream pull subscription of this process fetch with `prompt_fetch`."""
    JetStreamContext.PullSubscription._fetch_n = prompt_fetch  # type: ignore[method-assign]
