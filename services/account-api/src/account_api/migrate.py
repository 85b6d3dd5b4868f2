"""Apply account-api's Alembic migrations (used by `account-api migrate`, tests and the migrator).
The migration scripts ship inside the package, so an installed service can migrate itself."""

from __future__ import annotations

from alembic import command
from alembic.config import Config

SCRIPT_LOCATION = "account_api:migrations"


def alembic_config(url: str | None = None) -> Config:
    """Alembic config for this service; `url` overrides DATABASE_URL."""
    config = Config()
    config.set_main_option("script_location", SCRIPT_LOCATION)
    config.set_main_option("path_separator", "os")
    if url is not None:
        config.attributes["url"] = url
    return config


def upgrade(url: str | None = None, revision: str = "head") -> None:
    """Bring the database to `revision` (default: the latest)."""
    command.upgrade(alembic_config(url), revision)


def downgrade(url: str | None, revision: str) -> None:
    """Take the database back to `revision` (each later revision's downgrade, newest first)."""
    command.downgrade(alembic_config(url), revision)
