"""Composition root: build the broker, the connector and the health server; wiring only."""

from __future__ import annotations

import asyncio
import logging

import httpx
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

from ibflex_connector.adapters.flex_http import FlexWebService, RetryPolicy
from ibflex_connector.adapters.statement_share import KvStatementShare
from ibflex_connector.config import SERVICE, Settings
from ibflex_connector.handlers.subscribers import register_handlers
from ibflex_connector.service import FlexConnector

log = logging.getLogger(__name__)


class ConnectorRuntime:
    """The running service: broker, connector, HTTP client and health server."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.topology = Topology(settings.namespace)
        self.box = SecretBox.from_setting(settings.encryption_keys.get_secret_value())
        self.broker: NatsBroker = connector_broker(settings, self.topology, SERVICE)
        self._connector: FlexConnector | None = None
        self._http: httpx.AsyncClient | None = None
        self._health: asyncio.Server | None = None
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
        # after the broker stopped: refreshes still running use the HTTP client until then
        self.app.after_shutdown(self.close)

    def connector(self) -> FlexConnector:
        """The connector (built at start-up, once NATS KV is reachable)."""
        if self._connector is None:
            raise RuntimeError("ib flex connector not started")
        return self._connector

    @property
    def health_port(self) -> int | None:
        return int(self._health.sockets[0].getsockname()[1]) if self._health else None

    async def start(self) -> None:
        """Connect, declare streams and the budget bucket, build the connector."""
        s = self.settings
        await self.broker.connect()
        await ensure_streams(self.broker, self.topology, replicas=s.stream_replicas)
        await await_consumers(self.broker)
        js = self.broker.connection.jetstream()
        statements_kv = await open_bucket(
            js,
            f"{s.namespace}_ibflex_statements",
            ttl_s=s.statement_reuse_s,
            replicas=s.stream_replicas,
        )
        rate_kv = await open_bucket(
            js,
            f"{s.namespace}_ibflex_rate",
            ttl_s=max(120.0, 2 * s.rate_window_s),
            replicas=s.stream_replicas,
        )
        plan = RatePlan(
            s.rate_limit, s.rate_slices, s.rate_window_s, s.rate_min_spacing_s
        )
        self._http = httpx.AsyncClient(timeout=httpx.Timeout(s.http_timeout_s))
        service = FlexWebService(
            s.send_request_url,
            KvRateBudget(rate_kv, plan),
            self._http,
            RetryPolicy(
                not_ready_attempts=s.not_ready_attempts,
                throttled_attempts=s.throttled_attempts,
                transport_attempts=s.transport_attempts,
                backoff_base_s=s.backoff_base_s,
                backoff_cap_s=s.backoff_cap_s,
            ),
        )
        self._connector = FlexConnector(
            self.box,
            service,
            KvStatementShare(statements_kv, self.box, s.fetch_lease_ttl_s),
            EventPublisher(self.broker, self.topology),
            expiring_soon_days=s.expiring_soon_days,
            batch_window_s=s.batch_window_s,
            batch_max_wait_s=s.batch_max_wait_s,
        )
        self._health = await serve_http_health(s.health_host, s.health_port, self.probe)
        log.info("ib flex connector started", extra={"health_port": self.health_port})

    async def stop(self) -> None:
        if self._health is not None:
            self._health.close()
            await self._health.wait_closed()
        log.info("ib flex connector stopped")

    async def close(self) -> None:
        if self._http is not None:
            await self._http.aclose()

    async def probe(self) -> HealthReply:
        """Health for the bus responder and /healthz."""
        connected = await bus_connected(self.broker)
        detail: dict[str, object] = {"nats": connected}
        if connected:
            detail["dead_letters"] = await dead_letter_count(
                self.broker, self.topology, SERVICE
            )
        if self._connector is not None:
            detail.update(
                accounts=len(self._connector.accounts),
                flex_requests=self._connector.service.requests,
                statements_fetched=self._connector.share.fetched,
                statements_adopted=self._connector.share.adopted,
            )
        ok = connected and self._connector is not None
        return HealthReply(
            service=SERVICE, status="ok" if ok else "degraded", detail=detail
        )


def create_app(settings: Settings | None = None) -> FastStream:
    """The FastStream application of the IB Flex connector."""
    settings = settings or Settings()
    configure_logging(SERVICE, settings.log_level)
    return ConnectorRuntime(settings).app


def run() -> None:
    """Console entry point: `ibflex-connector`."""
    app = create_app()
    prepare_server_heap()
    asyncio.run(app.run())
