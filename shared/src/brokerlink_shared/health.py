"""Health answers for connectors: on the bus (request/reply) and as a tiny HTTP server for
container probes.

- `/livez`: 200 while the process can serve (its event loop answers); never looks at NATS, so
  a NATS outage does not get a healthy process restarted.
- `/readyz` and `/healthz`: the probe's answer, 200 when it is ok and 503 when degraded (the
  bus answer calls the same probe)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import orjson

from brokerlink_shared.contracts.events import HealthReply

HealthProbe = Callable[[], Awaitable[HealthReply]]


async def serve_http_health(host: str, port: int, probe: HealthProbe) -> asyncio.Server:
    """Serve `/livez`, `/readyz` and `/healthz` (see the module docstring)."""

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
            path = parts[1].split("?")[0] if len(parts) >= 2 else ""
            if path == "/livez":
                status, body = "200 OK", b'{"status":"alive"}'
            elif path in ("/healthz", "/readyz"):
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
