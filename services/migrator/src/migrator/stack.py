"""`--stack DIR`: the database, bus and keys of the running `make run` stack whose data lives in
DIR (`.data` by default), for whatever the environment does not already name. Read-only: it reads
the files the supervisor writes (PostgreSQL's `postmaster.pid`, `ports.json`, `encryption.key`)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from urllib.parse import quote

DATABASE = "brokerlink"  # the database `make run` creates in its embedded PostgreSQL


class StackNotFound(Exception):
    """No running stack in that directory, and the environment names no database."""


def stack_env(data_dir: Path, env: dict[str, str]) -> dict[str, str]:
    """Settings to add to `env` (never overriding what it already says)."""
    out: dict[str, str] = {}
    if not env.get("DATABASE_URL", "").strip():
        out["DATABASE_URL"] = _database_url(data_dir)
    key = data_dir / "encryption.key"
    if not env.get("BROKERLINK_ENCRYPTION_KEYS", "").strip() and key.is_file():
        out["BROKERLINK_ENCRYPTION_KEYS"] = key.read_text().strip()
    if not env.get("NATS_URL", "").strip() and (port := _nats_port(data_dir)):
        out["NATS_URL"] = f"nats://127.0.0.1:{port}"
    return out


def _nats_port(data_dir: Path) -> int | None:
    """The embedded NATS server's port, as the supervisor remembered it."""
    try:
        port = json.loads((data_dir / "ports.json").read_text()).get("nats")
    except (OSError, ValueError, AttributeError):
        return None
    return port if isinstance(port, int) and 0 < port < 65536 else None


def _database_url(data_dir: Path) -> str:
    pid_file = data_dir / "pg" / "postmaster.pid"
    hint = f"no running `make run` stack in {data_dir} (start `make run`, or set DATABASE_URL)"
    try:
        lines = pid_file.read_text().splitlines()
        pid, port, socket_dir = int(lines[0]), int(lines[3]), lines[4].strip()
    except (OSError, ValueError, IndexError):
        raise StackNotFound(hint) from None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        raise StackNotFound(hint) from None
    except PermissionError:
        pass  # alive, owned by someone else
    return f"postgresql+psycopg://postgres:@/{DATABASE}?host={quote(socket_dir)}&port={port}"
