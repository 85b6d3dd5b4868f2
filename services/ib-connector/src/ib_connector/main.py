"""Composition root: build the broker, the session pool and the handlers from `Settings`."""

from __future__ import annotations

import asyncio
import logging

from brokerlink_shared.backoff import retry_until_done
from brokerlink_shared.contracts.events import HealthReply
from brokerlink_shared.health import serve_http_health
from brokerlink_shared.heap import prepare_server_heap
from brokerlink_shared.logging import configure_logging
from brokerlink_shared.messaging import (
    EventPublisher,
    await_consumers,
    bus_connected,
    dead_letter_count,
    ensure_streams,
)
from brokerlink_shared.refreshes import connector_broker
from brokerlink_shared.subjects import Topology
from faststream import FastStream

from ib_connector.adapters.account_claims import AccountClaims
from ib_connector.adapters.ib_gateway import IBGatewayClient
from ib_connector.adapters.ownership import SessionOwnership
from ib_connector.config import SERVICE, Settings
from ib_connector.domain.endpoints import SessionKey
from ib_connector.handlers.subscribers import register_handlers
from ib_connector.pool import GatewaySessionPool, PoolSettings, SessionSettings
from ib_connector.service import IBConnectorService
from ib_connector.statuses import StatusPublisher

log = logging.getLogger(__name__)


def create_app(settings: Settings) -> FastStream:
    """The connector as a FastStream app; `app.start()` / `app.stop()` run it inside any loop."""
    topology = Topology(settings.namespace)
    broker = connector_broker(settings, topology, SERVICE)
    publisher = EventPublisher(broker, topology)
    statuses = StatusPublisher(publisher)
    pool_settings = PoolSettings(
        session=SessionSettings(
            connect_timeout_s=settings.connect_timeout_s,
            request_timeout_s=settings.request_timeout_s,
            backoff_initial_s=settings.backoff_initial_s,
            backoff_max_s=settings.backoff_max_s,
            primary_retry_s=settings.primary_retry_s,
            subscription_max_age_s=settings.subscription_max_age_s,
        ),
        idle_close_s=settings.idle_close_s,
        max_concurrent_connects=settings.max_concurrent_connects,
    )

    def on_idle_close(key: SessionKey) -> None:
        if service.ownership is not None:
            asyncio.get_running_loop().create_task(service.ownership.release(key))

    reach = settings.reach
    pool = GatewaySessionPool(
        pool_settings,
        statuses.submit,
        client_factory=lambda notice, closed: IBGatewayClient(notice, closed, reach),
        on_idle_close=on_idle_close,
        claim_accounts=lambda key, codes, ids: service.claim_accounts(key, codes, ids),
    )
    service = IBConnectorService(settings, topology, broker, publisher, pool)
    health_server: list[asyncio.Server] = []
    started = asyncio.Event()  # ready only once start-up is through

    async def health() -> HealthReply:
        connected = await bus_connected(broker)
        try:
            parked = (
                await asyncio.wait_for(dead_letter_count(broker, topology, SERVICE), 2)
                if connected
                else -1
            )
        except Exception:
            parked = -1
        ownership = service.ownership
        return HealthReply(
            service=SERVICE,
            status="ok" if connected and started.is_set() else "degraded",
            detail={
                "replica": settings.replica_id,
                **pool.counts(),
                "owned_sessions": ownership.owned_count()
                if ownership
                else len(pool.sessions),
                "live_replicas": sorted(ownership.live_replicas())
                if ownership
                else [settings.replica_id],
                "refreshes_ok": service.refreshes_ok,
                "refreshes_failed": service.refreshes_failed,
                "statuses_published": statuses.published,
                "dead_letters": parked,
            },
        )

    register_handlers(broker, topology, settings, service, health)
    app = FastStream(broker, logger=log)

    @app.on_startup
    async def start_runtime() -> None:
        if (
            settings.health_enabled
        ):  # first: the process is live while it waits for NATS
            health_server.append(
                await serve_http_health(
                    settings.health_host, settings.health_port, health
                )
            )

        async def declare() -> None:
            await broker.connect()
            await ensure_streams(broker, topology, replicas=settings.stream_replicas)
            await await_consumers(broker)

        await retry_until_done(
            declare, what="connecting to NATS and declaring the streams", log=log
        )
        statuses.start()
        await pool.start()
        claims = AccountClaims(
            broker.connection, settings.namespace, replicas=settings.stream_replicas
        )
        await retry_until_done(
            claims.start, what="opening the account claims (NATS KV)", log=log
        )
        # before any session can connect (taking leases over adopts some)
        service.claims = claims
        service.ownership = SessionOwnership(
            broker.connection,
            settings.namespace,
            settings.replica_id,
            settings.lease_ttl_s,
            adopt=service.adopt,
            release=service.release,
            replicas=settings.stream_replicas,
            lose=service.lose_sessions,
        )
        await retry_until_done(
            service.ownership.start,
            what="opening the session leases (NATS KV)",
            log=log,
        )
        started.set()
        log.info(
            "ib-connector started",
            extra={"replica": settings.replica_id, "namespace": settings.namespace},
        )

    @app.on_shutdown
    async def stop_runtime() -> None:
        for server in health_server:
            server.close()
        if service.ownership is not None:
            await service.ownership.stop(release=True)
        await pool.aclose()
        await statuses.stop()
        log.info("ib-connector stopped", extra={"replica": settings.replica_id})

    return app


def run() -> None:
    """Console entry point: `ib-connector`."""
    settings = Settings()
    configure_logging(SERVICE, settings.log_level)
    # ib_async logs every failed connect and dropped socket at ERROR; the pool reports these
    # itself (one INFO line per state change), so keep only ib_async's critical messages.
    logging.getLogger("ib_async").setLevel(logging.CRITICAL)
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover - uvloop is optional
        pass
    app = create_app(settings)
    prepare_server_heap()
    asyncio.run(app.run())


if __name__ == "__main__":
    run()
