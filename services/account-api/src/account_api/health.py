"""`GET /healthz`: the state of the database and bus connections, outbox backlog and parked messages."""

from __future__ import annotations

import asyncio

from brokerlink_shared.messaging import bus_connected, dead_letter_count
from fastapi import APIRouter

from account_api.deps import ContainerDep
from account_api.outbox.repository import OutboxQueue
from account_api.responses import JSONBytes

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz(c: ContainerDep) -> JSONBytes:
    body: dict[str, object] = {"service": "account-api"}
    try:
        async with c.sessionmaker() as session:
            outbox = OutboxQueue(session)
            await asyncio.wait_for(outbox.ping(), 3)
            body["outbox_pending"] = await outbox.pending_count()
        body["database"] = "ok"
    except Exception as exc:
        body["database"] = f"error: {type(exc).__name__}"
    connected = await bus_connected(c.broker)
    body["bus"] = "connected" if connected else "disconnected"
    if connected:
        try:
            body["dead_letters"] = await asyncio.wait_for(
                dead_letter_count(c.broker, c.topology, "account-api"), 2
            )
        except Exception:
            body["dead_letters"] = None
    body["outbox_relay_leader"] = c.relay.is_leader
    ok = body["database"] == "ok" and connected
    body["status"] = "ok" if ok else "degraded"
    return JSONBytes(body, status_code=200 if ok else 503)
