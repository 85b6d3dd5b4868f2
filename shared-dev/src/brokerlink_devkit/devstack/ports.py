"""Ports of the dev stack: each one from its setting when given, else the one it had last time
(so URLs and the demo's gateway address survive a restart), else a preferred default, else any
free port. Remembered in `<data>/ports.json`.

A chosen port stays reserved (bound, not listening) until the stack is up: another `make run`
choosing its ports meanwhile sees it taken, while our own server, which binds with SO_REUSEADDR
as asyncio, uvicorn, nats-server and PostgreSQL all do, may still bind it."""

from __future__ import annotations

import json
import socket
from pathlib import Path

from brokerlink_devkit.devstack.embedded import free_port, port_is_free
from brokerlink_devkit.devstack.errors import StartupError


class PortBook:
    """Chooses and remembers the stack's ports."""

    def __init__(self, path: Path, host: str = "127.0.0.1") -> None:
        self.path = path
        self.host = host
        self.chosen: dict[str, int] = {}
        self._reserved: list[socket.socket] = []
        try:
            self._last: dict[str, int] = json.loads(path.read_text())
        except (OSError, ValueError):
            self._last = {}

    def take(
        self,
        name: str,
        *,
        setting: str,
        given: str | None,
        preferred: int | None = None,
    ) -> int:
        """The port for `name`: `given` (the value of `setting`) must be free; otherwise the last
        one, the preferred one or any free one. `given` "0" means any free port."""
        if given not in (None, "", "0"):
            try:
                port = int(str(given))
            except ValueError:
                raise StartupError(
                    f"{setting}={given!r} is not a port number",
                    f"set {setting} to a number between 1 and 65535, or unset it",
                ) from None
            if not port_is_free(port, self.host):
                raise StartupError(
                    f"port {port} ({setting}) is already in use by another program",
                    f"stop what uses it, or choose another port: {setting}=<port> make run "
                    f"({setting}=0 picks a free one)",
                )
        else:
            candidates = [] if given == "0" else [self._last.get(name), preferred]
            port = (
                next(
                    (
                        p
                        for p in candidates
                        if p
                        and p not in self.chosen.values()
                        and port_is_free(p, self.host)
                    ),
                    0,
                )
                or free_port()
            )
        self.chosen[name] = port
        self._reserve(port)
        return port

    def _reserve(self, port: int) -> None:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.host, port))
        except OSError:
            sock.close()  # taken since it was checked: the server's own bind will say so
            return
        self._reserved.append(sock)

    def release(self) -> None:
        """Drop the reservations: once every server listens, they protect nothing."""
        for sock in self._reserved:
            sock.close()
        self._reserved.clear()

    def save(self) -> None:
        self.path.write_text(json.dumps({**self._last, **self.chosen}, indent=1))
