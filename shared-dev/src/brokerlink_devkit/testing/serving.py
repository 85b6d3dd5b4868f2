"""Serve an ASGI app with uvicorn inside the test's event loop (real HTTP, real lifespan)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import uvicorn


@contextlib.asynccontextmanager
async def serving(app: Any, port: int, host: str = "127.0.0.1") -> AsyncIterator[str]:
    """Run `app` on host:port until the block ends; yields its base URL once it accepts requests."""
    server = uvicorn.Server(
        uvicorn.Config(app, host=host, port=port, log_config=None, lifespan="on")
    )
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            if task.done():
                task.result()  # start-up failed: raise its error
            await asyncio.sleep(
                0.02
            )  # polling uvicorn's own flag; it has no event to await
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        await task
