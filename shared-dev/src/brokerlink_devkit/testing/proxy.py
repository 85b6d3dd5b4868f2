"""`TcpProxy`: a loopback TCP relay a test puts between a client and a real server, to cut the
network under it (a partition), or to drop every n-th new connection (a flaky link)."""

from __future__ import annotations

import asyncio
import contextlib


class TcpProxy:
    """Relays 127.0.0.1:<port> to `upstream`; `cut()` drops every connection and refuses new
    ones until `restore()`; `drop_every(n)` closes every n-th new connection at once."""

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self._upstream = (upstream_host, upstream_port)
        self._server: asyncio.Server | None = None
        self._pipes: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._cut = False
        self._drop_every = 0
        self.accepted = 0
        self.dropped = 0

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the proxy is used before start()")
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> TcpProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        self._close_all()
        for task in list(self._pipes):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._server is not None:
            with contextlib.suppress(Exception):
                await self._server.wait_closed()

    def cut(self) -> None:
        """A partition: every open connection is dropped and new ones are closed at once."""
        self._cut = True
        self._close_all()

    def restore(self) -> None:
        self._cut = False

    def drop_every(self, n: int) -> None:
        """Close every n-th new connection right after it is accepted (0: none)."""
        self._drop_every = n

    def _close_all(self) -> None:
        for writer in list(self._writers):
            writer.close()
        self._writers.clear()

    async def _accept(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.accepted += 1
        if self._cut or (self._drop_every and self.accepted % self._drop_every == 0):
            self.dropped += 1
            writer.close()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self._upstream)
        except OSError:
            writer.close()
            return
        self._writers.update((writer, up_writer))
        for src, dst in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(self._pipe(src, dst))
            self._pipes.add(task)
            task.add_done_callback(self._pipes.discard)

    async def _pipe(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        try:
            while data := await src.read(65536):
                dst.write(data)
                await dst.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            dst.close()
            self._writers.discard(dst)
