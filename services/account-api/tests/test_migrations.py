"""Every Alembic revision downgrades cleanly, one step at a time, and upgrades again (the
rollback plan in docs/rollback.md relies on it)."""

from __future__ import annotations

from typing import Any

import psycopg
from account_api.migrate import alembic_config, upgrade
from alembic import command
from alembic.script import ScriptDirectory


def _revision(url: str) -> str | None:
    with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://")) as conn:
        row = conn.execute("SELECT version_num FROM alembic_version").fetchone()
    return row[0] if row else None


def test_each_revision_downgrades_and_upgrades_again(infra: Any) -> None:
    url = infra.new_database("alembic")
    upgrade(url)
    script = ScriptDirectory.from_config(alembic_config(url))
    chain = [r.revision for r in script.walk_revisions()]  # head first
    assert _revision(url) == chain[0]
    for expected in [*chain[1:], None]:
        command.downgrade(alembic_config(url), "-1")
        assert _revision(url) == expected
    upgrade(url)
    assert _revision(url) == chain[0]
