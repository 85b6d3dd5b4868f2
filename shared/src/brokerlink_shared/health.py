"""Health answers for connectors: on the bus (request/reply) and as a tiny HTTP `/healthz`
for container probes. Both call the same probe."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import orjson

from brokerlink_shared.contracts.events import HealthReply

HealthProbe = Callable[[], Awaitable[HealthReply]]


async def serve_http_health(host: str, port: int, probe: HealthProbe) -> asyncio.Server:
    """Serve `GET /healthz` (200 when ok, 503 when degraded) with the probe's JSON."""

    async def handle(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        try:
            request_line = await asyncio.wait_for(reader.readline(), 5)
            while (await asyncio.wait_for(reader.readline(), 5)) not in (
                b"\r\n",
                b"\n",
                b"",
            ):
                pass
            parts = request_line.decode("latin-1").split()
            if len(parts) >= 2 and parts[1].split("?")[0] in (
                "/healthz",
                "/livez",
                "/readyz",
            ):
                reply = await probe()
                status = "200 OK" if reply.status == "ok" else "503 Service Unavailable"
                body = orjson.dumps(reply.model_dump(mode="json"))
            else:
                status, body = "404 Not Found", b'{"detail":"not found"}'
            writer.write(
                f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                + body
            )
            await writer.drain()
        except (TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    return await asyncio.start_server(handle, host, port)
