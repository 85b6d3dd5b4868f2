"""`SpawnedProcess`: a child process of the import, talking to it over one pipe. Spawned, not
forked: the parent holds a PostgreSQL connection and threads. `run_child` is the child's side:
an error there reaches the parent named by type and place, never by value (a value may be a
secret from the legacy file)."""

from __future__ import annotations

import multiprocessing
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from brokerlink_shared.heap import collect_less_often


class ChildFailed(RuntimeError):
    """A child process stopped with an error, or ended before it was done."""


class SpawnedProcess:
    def __init__(
        self, target: Callable[..., None], args: tuple[Any, ...], name: str
    ) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._name = name
        self._conn, child = ctx.Pipe()
        self._process = ctx.Process(
            target=target,
            args=(child, *args),
            name=f"brokerlink-migrate-{name}",
            daemon=True,
        )
        self._process.start()
        child.close()

    def send(self, message: Any) -> None:
        self._conn.send(message)

    def receive(self) -> Any:
        """The child's next message (a send there blocks until it is taken here)."""
        try:
            message = self._conn.recv()
        except (EOFError, ConnectionResetError):
            raise ChildFailed(
                f"the {self._name} process ended unexpectedly (exit code {self._process.exitcode})"
            ) from None
        if isinstance(message, _Failure):
            raise ChildFailed(f"{self._name} failed: {message.where}")
        return message

    def close(self) -> None:
        self._conn.close()
        self._process.join(timeout=10)
        if self._process.is_alive():
            self._process.kill()
            self._process.join()


@dataclass(frozen=True)
class _Failure:
    where: str


def run_child(conn: Connection, body: Callable[[], None]) -> None:
    """Run `body` in the child; it ends quietly when the parent goes away."""
    collect_less_often()  # a process of its own: its thresholds are nobody else's
    try:
        body()
    except (EOFError, BrokenPipeError, KeyboardInterrupt):
        return  # the parent is gone (or done with us): nothing to report to
    except Exception as exc:  # reported to the parent, which fails the run
        where = traceback.extract_tb(exc.__traceback__)[-1]
        conn.send(
            _Failure(
                f"{type(exc).__name__} at {where.filename.rsplit('/', 1)[-1]}:{where.lineno}"
            )
        )
