"""`ConsumerClaim`: which of a replica's uvicorn workers runs the bus consumers.

Balances are group-committed per process, so every consuming worker splits the batches: with two
workers of one replica consuming, `bench/ib_refresh.py` (500/s, 2 cores) measured account-api at
1.76 ms CPU per refresh and p99 1,346 ms; with one of the two consuming, 1.51 ms and 404 ms
(2026-12-03). Every worker still serves HTTP.

A worker claims by binding an abstract Unix socket named after its supervisor (the uvicorn
process whose workers it shares). The kernel drops the name when the worker exits, however it
exits, and the worker uvicorn starts in its place claims it: there is no lease to expire and no
file to clean up. Abstract names are Linux's; elsewhere every worker consumes, as before.
"""

from __future__ import annotations

import logging
import socket
import sys

log = logging.getLogger(__name__)


class ConsumerClaim:
    def __init__(self, name: str) -> None:
        self._name = name
        self._socket: socket.socket | None = None

    @classmethod
    def of_supervisor(cls, supervisor_pid: int, namespace: str) -> ConsumerClaim:
        return cls(f"brokerlink-account-api-consumers-{namespace}-{supervisor_pid}")

    @property
    def name(self) -> str:
        return self._name

    def take(self) -> bool:
        """True when this worker runs the consumers (it holds the claim until `release`)."""
        if not sys.platform.startswith("linux"):
            return True
        if self._socket is not None:
            return True
        claim = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            claim.bind("\0" + self._name)
        except OSError:
            claim.close()
            return False
        self._socket = claim
        log.info("this worker runs the bus consumers", extra={"claim": self._name})
        return True

    def release(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None
