"""`GET /healthz`: the state of the database and bus connections, outbox backlog and parked messages."""

from __future__ import annotations

import asyncio

from brokerlink_shared.messaging import dead_letter_count
from fastapi import APIRouter
from sqlalchemy import text

from account_api.deps import ContainerDep
from account_api.outbox.repository import pending_count
from account_api.responses import JSONBytes

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz(c: ContainerDep) -> JSONBytes:
    body: dict[str, object] = {"service": "account-api"}
    try:
        async with c.sessionmaker() as session:
            await asyncio.wait_for(session.execute(text("SELECT 1")), 3)
            body["outbox_pending"] = await pending_count(session)
        body["database"] = "ok"
    except Exception as exc:
        body["database"] = f"error: {type(exc).__name__}"
    connected = c.broker.connection is not None and c.broker.connection.is_connected
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
