"""Composition root: build the broker, the connector and its background tasks; wiring only."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from brokerlink_shared.backoff import retry_until_done
from brokerlink_shared.contracts.events import HealthReply
from brokerlink_shared.crypto import SecretBox
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
from brokerlink_shared.rate_budget import KvRateBudget, RatePlan, open_bucket
from brokerlink_shared.refreshes import connector_broker
from brokerlink_shared.subjects import Topology
from faststream import FastStream
from faststream.nats import NatsBroker
from nats.js.kv import KeyValue

from schwab_connector.adapters.kv import KvLoginCoordinator
from schwab_connector.adapters.schwab_http import SchwabGateway
from schwab_connector.adapters.token_vault import LoginState, TokenVault
from schwab_connector.config import SERVICE, Settings
from schwab_connector.domain.clock import Clock, SystemClock
from schwab_connector.handlers.subscribers import register_handlers
from schwab_connector.service import SchwabConnector

log = logging.getLogger(__name__)


class ConnectorRuntime:
    """The running service: broker, connector, health server and lifecycle task."""

    def __init__(self, settings: Settings, clock: Clock | None = None) -> None:
        self.settings = settings
        self.clock = clock or SystemClock()
        self.topology = Topology(settings.namespace)
        self.box = SecretBox.from_setting(settings.encryption_keys.get_secret_value())
        self.broker: NatsBroker = connector_broker(settings, self.topology, SERVICE)
        self._connector: SchwabConnector | None = None
        self._health: asyncio.Server | None = None
        self._lifecycle: asyncio.Task[None] | None = None
        register_handlers(
            self.broker,
            self.topology,
            self.connector,
            self.probe,
            settings.refresh_workers,
        )
        self.app = FastStream(self.broker, logger=log)
        self.app.on_startup(self.start)
        self.app.on_shutdown(self.stop)

    def connector(self) -> SchwabConnector:
        """The connector (built at start-up, once NATS KV is reachable)."""
        if self._connector is None:
            raise RuntimeError("schwab connector not started")
        return self._connector

    @property
    def health_port(self) -> int | None:
        return int(self._health.sockets[0].getsockname()[1]) if self._health else None

    async def start(self) -> None:
        """Connect, declare streams and KV buckets, build the connector, start side tasks."""
        s = self.settings
        # first: the process is live (and says it is not ready) while it waits for NATS
        self._health = await serve_http_health(s.health_host, s.health_port, self.probe)

        async def declare() -> tuple[KeyValue, KeyValue]:
            await self.broker.connect()
            await ensure_streams(self.broker, self.topology, replicas=s.stream_replicas)
            await await_consumers(self.broker)
            js = self.broker.connection.jetstream()
            rate = await open_bucket(
                js,
                f"{s.namespace}_schwab_rate",
                ttl_s=120.0,
                replicas=s.stream_replicas,
            )
            logins = await open_bucket(
                js,
                f"{s.namespace}_schwab_logins",
                ttl_s=None,
                replicas=s.stream_replicas,
            )
            return rate, logins

        rate_kv, logins_kv = await retry_until_done(
            declare,
            what="connecting to NATS and declaring streams and buckets",
            log=log,
        )
        budget = KvRateBudget(
            rate_kv, RatePlan(s.requests_per_minute, s.rate_slices_per_minute)
        )
        coordinator = KvLoginCoordinator(logins_kv, s.lease_ttl_s)
        gateway = SchwabGateway(
            s.api_base_url,
            budget,
            timeout_s=s.http_timeout_s,
            max_attempts=s.max_attempts,
            backoff_base_s=s.backoff_base_s,
            backoff_cap_s=s.backoff_cap_s,
        )
        publisher = EventPublisher(self.broker, self.topology)
        holder: dict[str, SchwabConnector] = {}

        async def on_rotated(state: LoginState) -> None:
            await holder["c"].publish_rotated(state)

        vault = TokenVault(
            self.box,
            gateway,
            self.clock,
            coordinator,
            on_rotated,
            refresh_margin_s=s.access_refresh_margin_s,
            refresh_ttl_s=s.refresh_token_ttl_s,
            expiring_soon_s=s.expiring_soon_threshold_s,
        )
        holder["c"] = self._connector = SchwabConnector(
            self.box,
            vault,
            gateway,
            coordinator,
            publisher,
            self.clock,
            s.batch_window_s,
            s.batch_max_wait_s,
            s.max_queued_s,
        )
        self._lifecycle = asyncio.create_task(
            self._connector.run_lifecycle(s.lifecycle_check_interval_s)
        )
        log.info(
            "schwab connector started",
            extra={"api": s.api_base_url, "health_port": self.health_port},
        )

    async def stop(self) -> None:
        if self._lifecycle is not None:
            self._lifecycle.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._lifecycle
        if self._health is not None:
            self._health.close()
            await self._health.wait_closed()
        log.info("schwab connector stopped")

    async def probe(self) -> HealthReply:
        """Health for the bus responder and /healthz."""
        connected = await bus_connected(self.broker)
        detail: dict[str, object] = {"nats": connected}
        if connected:
            try:
                detail["dead_letters"] = await asyncio.wait_for(
                    dead_letter_count(self.broker, self.topology, SERVICE), 2
                )
            except Exception:
                detail["dead_letters"] = None
        if self._connector is not None:
            detail.update(
                logins=len(self._connector.vault.logins),
                accounts=len(self._connector.accounts),
                api_calls=self._connector.gateway.calls,
                token_refreshes=self._connector.vault.refreshes,
            )
        ok = connected and self._connector is not None
        return HealthReply(
            service=SERVICE, status="ok" if ok else "degraded", detail=detail
        )


def create_app(
    settings: Settings | None = None, *, clock: Clock | None = None
) -> FastStream:
    """The FastStream application of the Schwab connector."""
    settings = settings or Settings()
    configure_logging(SERVICE, settings.log_level)
    return ConnectorRuntime(settings, clock).app


def run() -> None:
    """Console entry point: `schwab-connector`."""
    app = create_app()
    prepare_server_heap()
    asyncio.run(app.run())
