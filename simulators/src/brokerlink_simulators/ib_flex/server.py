"""Run the Flex Web Service simulator in-process (tests, demo mode) on a free port."""

from __future__ import annotations

from pathlib import Path

from brokerlink_simulators.http_serving import AppServer
from brokerlink_simulators.ib_flex.app import BASE_PATH, create_app
from brokerlink_simulators.ib_flex.scenario import Scenario
from brokerlink_simulators.ib_flex.state import FlexState


class IbFlexSimulator(AppServer):
    """`async with IbFlexSimulator(scenario) as sim:` then point the connector at `sim.base_url`."""

    def __init__(
        self,
        scenario: Scenario | str | Path | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        if isinstance(scenario, str | Path):
            scenario = Scenario.from_file(scenario)
        self.state = FlexState(scenario or Scenario())
        super().__init__(create_app(self.state), host, port)

    @property
    def send_request_url(self) -> str:
        return f"{self.base_url}{BASE_PATH}/SendRequest"

    async def __aenter__(self) -> IbFlexSimulator:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
