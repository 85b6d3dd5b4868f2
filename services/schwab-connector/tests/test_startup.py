"""Start-up without NATS: the connector is live (its probe answers) but not ready, retries, and
becomes ready once NATS is reachable — it does not crash into a restart loop."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

import httpx
from brokerlink_devkit.devstack.embedded import EmbeddedNats, free_port
from brokerlink_devkit.testing import wait_until
from schwab_connector.config import Settings
from schwab_connector.main import ConnectorRuntime


async def test_live_but_not_ready_until_nats_is_there(
    infra: Any, tmp_path: Path
) -> None:
    nats_server = EmbeddedNats(tmp_path / "nats", port=free_port())
    settings = Settings(
        nats_url=nats_server.url,
        namespace=f"{infra.namespace}st",
        encryption_keys=infra.encryption_keys,
        health_port=0,
        health_host="127.0.0.1",
    )
    runtime = ConnectorRuntime(settings)
    starting = asyncio.create_task(runtime.app.start())
    try:
        await wait_until(
            lambda: runtime.health_port is not None,
            timeout_s=20,
            message="health server up before NATS",
        )
        base = f"http://127.0.0.1:{runtime.health_port}"
        async with httpx.AsyncClient(base_url=base, timeout=5) as http:
            assert (await http.get("/livez")).status_code == 200
            assert (await http.get("/readyz")).status_code == 503
            assert not starting.done()  # still retrying, not crashed
            nats_server.start()

            async def ready() -> bool:
                return (await http.get("/readyz")).status_code == 200

            await wait_until(ready, timeout_s=60, message="ready once NATS is up")
        await asyncio.wait_for(starting, 30)
    finally:
        if not starting.done():
            starting.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await starting
        with contextlib.suppress(Exception):
            await runtime.app.stop()
        nats_server.stop()
