"""Composition root of account-api: builds every long-lived object and wires the routes.

`account-api` serves HTTP; `account-api migrate` applies migrations; `account-api rekey`
re-encrypts every stored secret under the newest key."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
from collections.abc import AsyncIterator

from brokerlink_shared.backoff import backoff_delay
from brokerlink_shared.crypto import SecretBox
from brokerlink_shared.heap import prepare_server_heap
from brokerlink_shared.logging import configure_logging
from brokerlink_shared.messaging import (
    EventPublisher,
    await_consumers,
    ensure_streams,
    make_broker,
)
from brokerlink_shared.subjects import Topology
from fastapi import FastAPI
from faststream.nats import NatsBroker
from sqlalchemy.ext.asyncio import async_sessionmaker

from account_api import health
from account_api.accounts.routes import router as accounts_router
from account_api.auth.repository import RevocationFeed
from account_api.auth.revocations import RevocationList
from account_api.auth.routes import router as auth_router
from account_api.auth.service import AuthService
from account_api.auth.tokens import TokenIssuer
from account_api.bodylimit import BodySizeLimit
from account_api.compat.routes import router as compat_router
from account_api.config import Settings
from account_api.consumers.handlers import SERVICE, register_consumers
from account_api.consumers.worker_claim import (
    CLAIM_ENV,
    ClaimedConsumers,
    ConsumerClaim,
    stop_started,
)
from account_api.db import UnitOfWork, is_transient, make_engine, make_read_pool
from account_api.deps import Container, document_bearer_auth
from account_api.exception_handlers import add_exception_handlers
from account_api.history.routes import router as history_router
from account_api.integrations.routes import router as integrations_router
from account_api.integrations.service import IntegrationService
from account_api.integrations.sweeper import RefreshSweeper
from account_api.integrations.waiter import RefreshWaiter
from account_api.outbox.relay import OutboxRelay
from account_api.pending_links.routes import router as pending_links_router
from account_api.scheduling.retention import RetentionJob
from account_api.scheduling.scheduler import RefreshScheduler
from account_api.ui.routes import router as ui_router

log = logging.getLogger(__name__)


async def _connect_bus(broker: NatsBroker, topology: Topology, replicas: int) -> None:
    """Connect, declare streams and start consumers; retried in the background while NATS is down."""
    attempt = 0
    while True:
        try:
            await broker.connect()
            await ensure_streams(broker, topology, replicas=replicas)
            await await_consumers(broker)
            await broker.start()
            log.info("connected to NATS")
            return
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            attempt += 1
            # broker.start() starts every subscriber again, and one started twice stops
            # handling messages (FastStream 0.7.8): stop those a failed attempt started.
            await stop_started(broker)
            log.warning(
                "NATS not reachable yet; retrying",
                extra={"error": repr(exc), "attempt": attempt},
            )
            await asyncio.sleep(backoff_delay(attempt, cap=5.0))


def create_app(
    settings: Settings | None = None, consumers: ConsumerClaim | None = None
) -> FastAPI:
    """Build the FastAPI app; everything long-lived is created in its lifespan. With a
    `consumers` claim, the bus consumers run only while this process holds it."""
    settings = settings or Settings()
    if not settings.jwt_secret.get_secret_value():
        raise SystemExit(
            "ACCOUNT_API_JWT_SECRET is required (at least 32 random characters)"
        )
    secrets = SecretBox.from_setting(settings.encryption_keys.get_secret_value())
    topology = Topology(settings.namespace)
    engine = make_engine(settings)
    sessionmaker = async_sessionmaker(engine, expire_on_commit=False)
    read_pool = make_read_pool(settings)
    broker = make_broker(
        settings.nats_url,
        topology,
        SERVICE,
        max_deliver=settings.max_deliver,
        transient=is_transient,
        outage_budget_s=settings.outage_budget_s,
    )
    publisher = EventPublisher(broker, topology)
    waiter = RefreshWaiter(settings.libpq_url)
    integrations_service = IntegrationService.build(
        settings, secrets, broker, topology, waiter
    )
    relay = OutboxRelay(
        settings.libpq_url,
        sessionmaker,
        publisher,
        batch_size=settings.outbox_batch_size,
        poll_interval_s=settings.outbox_poll_interval_s,
    )
    relay.wake_on_commit()

    def new_uow() -> UnitOfWork:
        return UnitOfWork(sessionmaker, publisher)

    scheduler = RefreshScheduler(
        new_uow, integrations_service.refreshes, settings.scheduled_refresh_interval_s
    )
    sweeper = RefreshSweeper(new_uow, broker, topology, settings.refresh_deadline_s)
    retention = RetentionJob(new_uow, settings)
    revocations = RevocationList(
        RevocationFeed(read_pool),
        settings.token_revocation_poll_s,
        horizon_s=settings.access_token_minutes * 60 + 60,
    )
    issuer = TokenIssuer(
        settings.jwt_secret.get_secret_value(),
        settings.access_token_minutes,
        settings.refresh_token_days,
        revocations=revocations,
    )
    container = Container(
        settings=settings,
        sessionmaker=sessionmaker,
        read_pool=read_pool,
        issuer=issuer,
        secrets=secrets,
        broker=broker,
        topology=topology,
        integrations=integrations_service,
        relay=relay,
        auth=AuthService(settings, issuer, secrets, revocations),
    )

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        bus_consumers = ClaimedConsumers(
            broker,
            lambda: register_consumers(broker, topology, new_uow),
            consumers,
            prepare=await_consumers,
        )
        await read_pool.open()
        revocations.start()
        bus_consumers.before_start()
        bus = asyncio.create_task(
            _connect_bus(broker, topology, settings.stream_replicas)
        )
        bus_consumers.start(bus)
        waiter.start()
        relay.start()
        scheduler.start()
        retention.start()
        sweeper.start()
        try:
            yield
        finally:
            # first: a worker shutting down takes nothing over
            await bus_consumers.stop()
            await sweeper.stop()
            await revocations.stop()
            await retention.stop()
            await scheduler.stop()
            await relay.stop()
            await waiter.stop()
            bus.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await bus
            await broker.stop()
            await bus_consumers.aclose()
            await read_pool.close()
            await engine.dispose()

    app = FastAPI(
        title="brokerlink account-api",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.container = container
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_request_body_bytes)
    add_exception_handlers(app)
    document_bearer_auth(app)
    # A request is matched against the routers in this order, so the hot reads' router comes
    # first (no two routers share a path, so the order changes nothing else): a detail read
    # spent ~50 us of CPU walking the routers before it.
    for router in (
        accounts_router,
        health.router,
        auth_router,
        history_router,
        integrations_router,
        pending_links_router,
        compat_router,
        ui_router,
    ):
        app.include_router(router)
    return app


def app_factory() -> FastAPI:
    """Factory used by uvicorn's workers (each builds its own app from the environment)."""
    settings = Settings()
    configure_logging("account-api", settings.log_level)
    app = create_app(settings, ConsumerClaim.from_environment())
    prepare_server_heap()
    return app


def run() -> None:
    """Console entry point: `account-api [serve|migrate|rekey]`."""
    command = sys.argv[1] if len(sys.argv) > 1 else "serve"
    settings = Settings()
    configure_logging("account-api", settings.log_level)
    if command == "migrate":
        from account_api.migrate import upgrade

        upgrade(settings.database_url)
        log.info("database migrated to head")
    elif command == "rekey":
        from account_api.rekey import main as rekey_main

        rekey_main()
    elif command == "serve":
        import uvicorn

        # inherited by the workers uvicorn spawns: one of them runs the bus consumers
        if settings.workers > 1:
            os.environ[CLAIM_ENV] = ConsumerClaim.new_name()
        else:
            os.environ.pop(CLAIM_ENV, None)

        uvicorn.run(
            "account_api.main:app_factory",
            factory=True,
            host=settings.host,
            port=settings.port,
            workers=settings.workers,
            timeout_worker_healthcheck=settings.worker_healthcheck_timeout_s,
            log_config=None,
            access_log=False,
            loop="uvloop",
            http="httptools",
            proxy_headers=True,
            forwarded_allow_ips=settings.forwarded_allow_ips,
        )
    else:
        sys.stderr.write(
            f"account-api: unknown command {command!r} (serve, migrate, rekey)\n"
        )
        sys.exit(2)
