"""Probes and the health report.

- `GET /livez`: 200 while this worker can serve requests; touches neither PostgreSQL nor NATS,
  so an outage of either never gets a working pod restarted.
- `GET /readyz`: 200 while requests can be served: PostgreSQL answers. NATS is reported but does
  not fail readiness: writes go through the transactional outbox, which keeps accepting them
  while NATS is down and relays them when it is back.
- `GET /healthz`: the full report (database, bus, outbox backlog, parked messages); 200 only when
  both PostgreSQL and NATS are up.
"""

from __future__ import annotations

import asyncio

from brokerlink_shared.messaging import bus_connected, dead_letter_count
from fastapi import APIRouter

from account_api.deps import ContainerDep
from account_api.outbox.repository import OutboxQueue
from account_api.responses import JSONBytes

router = APIRouter(tags=["health"])


@router.get("/livez")
async def livez() -> JSONBytes:
    return JSONBytes({"service": "account-api", "status": "alive"})


async def _report(c: ContainerDep) -> dict[str, object]:
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
    return body


@router.get("/readyz")
async def readyz(c: ContainerDep) -> JSONBytes:
    body = await _report(c)
    ready = body["database"] == "ok"
    body["status"] = "ready" if ready else "not ready"
    return JSONBytes(body, status_code=200 if ready else 503)


@router.get("/healthz")
async def healthz(c: ContainerDep) -> JSONBytes:
    body = await _report(c)
    ok = body["database"] == "ok" and body["bus"] == "connected"
    body["status"] = "ok" if ok else "degraded"
    return JSONBytes(body, status_code=200 if ok else 503)
