"""docs/rollback.md's rollback plan, run as written: dry run, import, data rollback, schema
downgrade, import again, against a fresh database, checking the state after each step."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import psycopg
import pytest
from account_api.migrate import upgrade
from migrator.legacy_schema import create

ROOT = Path(__file__).resolve().parents[2]


def _plan() -> list[str]:
    text = (ROOT / "docs" / "rollback.md").read_text()
    block = re.search(r"```sh rollback-plan\n(.*?)```", text, re.S)
    assert block, "docs/rollback.md has no `sh rollback-plan` block"
    return [line for line in block.group(1).splitlines() if line.strip()]


def _legacy(path: Path) -> Path:
    conn = create(path)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute(
        "INSERT INTO users (id, email, password_hash, name) VALUES (1, 'plan@example.com', '$2a$10$x', 'Plan')"
    )
    conn.execute(
        "INSERT INTO accounts (id, user_id, name, currency, account_number, original_capital, current_balance,"
        " integration_type, integration_config) VALUES (1, 1, 'IB', 'USD', 'U1212121', 1, 2, 'IB',"
        ' \'{"type":"IB","host":"127.0.0.1","port":4001,"clientId":4}\')'
    )
    conn.execute(
        "INSERT INTO account_balance_history (id, account_id, balance, date) VALUES (1, 1, 2, '2024-05-01')"
    )
    conn.commit()
    conn.close()
    return path


def _state(url: str) -> dict[str, Any]:
    libpq = url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(libpq) as conn:
        tables = {
            r[0]
            for r in conn.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()"
            )
        }
        if "alembic_version" not in tables:
            return {"revision": None}
        revision = conn.execute("SELECT version_num FROM alembic_version").fetchone()
        users = conn.execute(
            "SELECT count(*) FROM users WHERE legacy_id IS NOT NULL"
        ).fetchone()
        columns = {
            r[0]
            for r in conn.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_name = 'pending_links'"
            )
        }
    return {
        "revision": revision[0] if revision else None,
        "migrated_users": users[0] if users else 0,
        "pending_kind_column": "kind" in columns,
    }


@pytest.mark.slow
def test_the_documented_rollback_plan_runs_as_written(
    infra: Any, tmp_path: Path
) -> None:
    url = infra.new_database("plan")
    env = {
        **{k: v for k, v in os.environ.items() if k not in ("NATS_URL",)},
        "DATABASE_URL": url,
        "BROKERLINK_ENCRYPTION_KEYS": infra.encryption_keys,
        "BROKERLINK_DATA_DIR": str(tmp_path / "no-stack"),
        "LEGACY": str(_legacy(tmp_path / "investment_tracker.db")),
    }
    states = []
    for line in _plan():
        done = subprocess.run(
            ["bash", "-c", line],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert done.returncode == 0, f"{line}\n{done.stdout}\n{done.stderr}"
        states.append(_state(url))
    dry, imported, rolled_back, downgraded, reimported = states
    assert dry == {
        "revision": None
    }  # the dry run committed nothing, not even the schema
    assert imported["migrated_users"] == 1
    assert (
        rolled_back["migrated_users"] == 0
        and rolled_back["revision"] == imported["revision"]
    )
    assert downgraded["revision"] == "0003"  # the previous release's head
    assert downgraded["pending_kind_column"] is False  # this release's columns are gone
    assert (
        reimported["revision"] == imported["revision"]
        and reimported["migrated_users"] == 1
    )


@pytest.mark.slow
def test_a_schema_downgrade_to_no_such_revision_is_one_line_and_changes_nothing(
    infra: Any,
) -> None:
    url = infra.new_database("nosuch")
    upgrade(url)
    before = _state(url)
    done = subprocess.run(
        [sys.executable, "-m", "migrator.cli", "--schema-downgrade", "9999"],
        cwd=ROOT,
        env={**os.environ, "DATABASE_URL": url},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("brokerlink-migrate: ")
    assert "9999" not in lines[0]
    assert _state(url) == before
