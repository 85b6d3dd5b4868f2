"""Alembic environment: the URL comes from account-api's Settings (DATABASE_URL), or from
`config.attributes["url"]` when a caller (tests, the migrator) passes one."""

from __future__ import annotations

import account_api.legacy_tables
from account_api.tables import Base
from alembic import context
from sqlalchemy import URL, create_engine, pool

config = context.config


def database_url() -> str | URL:
    url: str | URL | None = config.attributes.get("url")
    if url is None:
        from account_api.config import Settings

        url = Settings().database_url
    return url


def run_migrations_online() -> None:
    engine = create_engine(database_url(), poolclass=pool.NullPool)
    with engine.connect() as connection:
        context.configure(
            connection=connection, target_metadata=Base.metadata, compare_type=True
        )
        with context.begin_transaction():
            # One migrator at a time, even with several replicas starting together.
            connection.exec_driver_sql("SELECT pg_advisory_xact_lock(727274)")
            context.run_migrations()
    engine.dispose()


run_migrations_online()
