"""`IBGatewaySimulator`: many simulated gateways plus the admin API, in one event loop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Iterator
from types import TracebackType
from typing import Any

import port_for
import uvicorn

from brokerlink_simulators.ib_gateway.scenario import GatewaySpec, Scenario
from brokerlink_simulators.ib_gateway.server import SimulatedGateway

log = logging.getLogger(__name__)


class _EmbeddedUvicorn(uvicorn.Server):
    """uvicorn without its signal handlers: the host process (CLI, pytest) owns the signals."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class IBGatewaySimulator:
    """Serves the scenario's gateways (one TCP port each) and the JSON admin API.

    `admin_port=None` runs without the admin API (tests can drive the Python API directly).
    """

    def __init__(
        self,
        scenario: Scenario | None = None,
        *,
        host: str = "127.0.0.1",
        admin_port: int | None = 0,
    ) -> None:
        self.host = host
        self.scenario = scenario or Scenario()
        self.gateways: dict[str, SimulatedGateway] = {}
        self._admin_port = admin_port
        self._admin_server: _EmbeddedUvicorn | None = None
        self._admin_task: asyncio.Task[None] | None = None
        self._admin_url: str | None = None

    async def start(self) -> None:
        """Open every gateway's port and the admin API."""
        for spec in self.scenario.gateways:
            await self.add_gateway(spec)
        if self._admin_port is not None:
            await self._start_admin(self._admin_port)

    async def stop(self) -> None:
        """Drop every session and stop listening."""
        for gateway in list(self.gateways.values()):
            await gateway.close()
        self.gateways.clear()
        if self._admin_server is not None and self._admin_task is not None:
            self._admin_server.should_exit = True
            with contextlib.suppress(asyncio.CancelledError):
                await self._admin_task
            self._admin_server = None
            self._admin_task = None

    async def __aenter__(self) -> IBGatewaySimulator:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    @property
    def admin_url(self) -> str:
        """Base URL of the admin API, e.g. `http://127.0.0.1:54321`."""
        if self._admin_url is None:
            raise RuntimeError("the admin API is not running")
        return self._admin_url

    def gateway(self, name: str) -> SimulatedGateway:
        """The running gateway called `name` (KeyError when unknown)."""
        return self.gateways[name]

    def gateway_port(self, name: str) -> int:
        """The TCP port gateway `name` listens on."""
        return self.gateways[name].port

    def ports(self) -> dict[str, int]:
        return {name: gw.port for name, gw in self.gateways.items()}

    async def add_gateway(self, spec: GatewaySpec) -> SimulatedGateway:
        """Create and start a gateway; port 0 picks a free one (kept across restarts)."""
        if spec.name in self.gateways:
            raise ValueError(f"gateway {spec.name!r} exists")
        gateway = SimulatedGateway(spec, self.host)
        if spec.faults.refuse_connections and spec.port == 0:
            # a known port that refuses until the fault clears; outside the ephemeral range, so
            # no outgoing connection takes it meanwhile
            gateway.port = port_for.select_random()
        await gateway.start()
        self.gateways[spec.name] = gateway
        return gateway

    async def remove_gateway(self, name: str) -> None:
        gateway = self.gateways.pop(name)
        await gateway.close()

    def counters(self) -> dict[str, Any]:
        return {name: gw.counters_dict() for name, gw in self.gateways.items()}

    async def _start_admin(self, port: int) -> None:
        from brokerlink_simulators.ib_gateway.admin import create_admin_app

        sock = socket.socket(socket.AF_INET6 if ":" in self.host else socket.AF_INET)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, port))
        sock.listen(128)
        sock.setblocking(False)
        actual = sock.getsockname()[1]
        config = uvicorn.Config(
            create_admin_app(self),
            log_level="warning",
            access_log=False,
            lifespan="off",
            log_config=None,
        )
        self._admin_server = _EmbeddedUvicorn(config)
        self._admin_task = asyncio.create_task(self._admin_server.serve(sockets=[sock]))
        while not self._admin_server.started:
            if self._admin_task.done():
                await self._admin_task
                raise RuntimeError("admin API failed to start")
            await asyncio.sleep(0.01)
        host = f"[{self.host}]" if ":" in self.host else self.host
        self._admin_url = f"http://{host}:{actual}"
        log.info("admin API listening", extra={"url": self._admin_url})
