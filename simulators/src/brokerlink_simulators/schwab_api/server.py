"""Run the simulator in-process (tests, benchmarks) on a uvicorn server bound to a free port."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path

import uvicorn

from brokerlink_simulators.schwab_api.app import create_app
from brokerlink_simulators.schwab_api.scenario import Scenario
from brokerlink_simulators.schwab_api.state import SimulatorState


class SchwabApiSimulator:
    """The Schwab API simulator as an object: `await start()`, use `.base_url`, `await stop()`."""

    def __init__(
        self,
        scenario: Scenario | str | Path | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        tls: tuple[str, str] | None = None,
    ) -> None:
        if isinstance(scenario, str | Path):
            scenario = Scenario.from_file(scenario)
        self.state = SimulatorState(scenario or Scenario())
        self.app = create_app(self.state)
        self._host = host
        self._port = port
        self._tls = tls  # (certificate file, key file): serve https
        self._server: uvicorn.Server | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def base_url(self) -> str:
        """`http(s)://host:port` once started."""
        return f"{'https' if self._tls else 'http'}://{self._host}:{self._port}"

    async def start(self) -> None:
        """Start serving; returns once the socket listens."""
        config = uvicorn.Config(
            self.app,
            host=self._host,
            port=self._port,
            log_level="warning",
            lifespan="off",
            access_log=False,
            ssl_certfile=self._tls[0] if self._tls else None,
            ssl_keyfile=self._tls[1] if self._tls else None,
        )
        self._server = uvicorn.Server(config)
        self._task = asyncio.create_task(self._server.serve())
        while not self._server.started:
            if self._task.done():
                self._task.result()
                raise RuntimeError("schwab simulator exited during start-up")
            await asyncio.sleep(0.01)
        sockets = self._server.servers[0].sockets
        self._port = int(sockets[0].getsockname()[1])
        logging.getLogger(__name__).info(
            "schwab simulator listening", extra={"base_url": self.base_url}
        )

    async def stop(self) -> None:
        """Stop serving and wait for the server task."""
        if self._server is None or self._task is None:
            return
        self._server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._server = None
        self._task = None

    async def __aenter__(self) -> SchwabApiSimulator:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
