"""Apply account-api's Alembic migrations (used by `account-api migrate`, tests and the migrator)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

ALEMBIC_INI = Path(__file__).resolve().parents[2] / "alembic.ini"


def alembic_config(url: str | None = None) -> Config:
    """Alembic config for this service; `url` overrides DATABASE_URL."""
    config = Config(str(ALEMBIC_INI))
    if url is not None:
        config.attributes["url"] = url
    return config


def upgrade(url: str | None = None, revision: str = "head") -> None:
    """Bring the database to `revision` (default: the latest)."""
    command.upgrade(alembic_config(url), revision)
