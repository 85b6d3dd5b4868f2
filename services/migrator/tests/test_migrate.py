"""The migrator against real PostgreSQL, on legacy databases built from the schema facts."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import bcrypt
import psycopg
import pytest
from account_api.auth.passwords import verify_password
from migrator.target import libpq_url

from .conftest import HASH, NOW, PASSWORD, dump, logical_dump


def q(url: str, sql: str, *params: object) -> list[tuple]:
    with psycopg.connect(libpq_url(url)) as conn:
        return conn.execute(sql, params).fetchall()


def accounts_by_legacy(url: str) -> dict[int, tuple]:
    rows = q(
        url,
        "SELECT legacy_id, integration_type, integration_config, integration_status, integration_version, id, last_connected_at FROM accounts",
    )
    return {r[0]: r[1:] for r in rows}


@pytest.mark.parametrize("newer", [False, True], ids=["older-schema", "newer-schema"])
def test_apply_converts_everything(
    legacy, target_url, migrate, box, tmp_path, newer
) -> None:
    src = legacy(newer=newer)
    before = src.read_bytes()
    code, _out, err = migrate(
        target_url, "--source", str(src), "--report", str(tmp_path / "report.json")
    )
    assert code == 0, err
    assert src.read_bytes() == before  # the source is never modified
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["verification"]["ok"] is True

    # users: bcrypt hash kept (old password works), 2FA secret encrypted; the case-insensitive duplicate is reported
    users = {
        r[0]: r[1:]
        for r in q(
            target_url,
            "SELECT legacy_id, email, password_hash, two_factor_secret_enc, two_factor_enabled FROM users",
        )
    }
    assert set(users) == {1, 2, 3, 4}
    assert users[1][1] == HASH and verify_password(users[1][1], PASSWORD)[0]
    assert (
        users[1][2] != "JBSWY3DPEHPK3PXP"
        and box.decrypt(users[1][2]) == "JBSWY3DPEHPK3PXP"
        and users[1][3] is True
    )
    assert {
        "table": "users",
        "legacy_id": 5,
        "reason": "duplicate email (case-insensitive) of legacy user #1",
    } in report["skipped_rows"]

    acc = accounts_by_legacy(target_url)
    # several IB rows of one user -> several integrated accounts
    assert acc[10][0] == acc[11][0] == "IB"
    assert acc[10][1] == {
        "host": "127.0.0.1",
        "port": 4001,
        "client_id": 1,
        "account_code": "U1234567",
        "read_only": True,
        "backups": [],
    }
    assert acc[11][1]["client_id"] == 2 and acc[11][1]["account_code"] == "DU7654321"
    assert acc[10][5] is not None  # last_connected kept
    # Schwab: 8-digit numbers (also written 8765-4321), unverified, with the legacy login
    for legacy_id, number in ((12, "12345678"), (14, "87654321")):
        kind, config, status = acc[legacy_id][:3]
        assert (
            kind == "SCHWAB"
            and config["unverified"] is True
            and config["account_number"] == number
        )
        assert box.decrypt(config["app_secret_enc"]) == "alice-secret"
        token = json.loads(box.decrypt(config["token_enc"]))
        assert (
            token["token"]["refresh_token"] == "ref-a"
            and token["token"]["expires_at"] == NOW + 900
        )
        assert (
            token["token"]["token_type"] == "Bearer"
            and token["creation_timestamp"] == NOW + 900 - 1800
        )
        assert status == "pending"
    # blank / NULL numbers are never matched; nor the bank or the IB-looking account
    assert (
        acc[13][0] is None
        and acc[15][0] is None
        and acc[30][0] is None
        and acc[21][0] is None
    )
    # expired beyond the refresh window: kept, but re-authentication required
    assert acc[20][0] == "SCHWAB" and acc[20][2] == "reauth_required"
    # pending links: NULL and dangling IB targets (with the IB-looking account suggested), Schwab without a match
    pending = {
        (r[0], r[1]): r[2:]
        for r in q(
            target_url,
            "SELECT legacy_table, legacy_id, integration_type, reason, suggestions, config FROM pending_links",
        )
    }
    assert set(pending) >= {
        ("ib_connections", 102),
        ("ib_connections", 103),
        ("schwab_settings", 202),
    }
    assert pending[("ib_connections", 102)][2] == [acc[15][4]]
    assert "#999" in pending[("ib_connections", 103)][1]
    assert (
        box.decrypt(pending[("schwab_settings", 202)][3]["app_secret_enc"])
        == "carol-secret"
    )
    assert {
        (p["legacy_table"], p["legacy_id"]) for p in report["pending_links"]
    } == set(pending)
    # legacy tables copied, secrets encrypted
    copies = {
        r[0]: r[1:]
        for r in q(
            target_url,
            "SELECT id, outcome, app_secret_enc, access_token_enc FROM legacy_schwab_settings",
        )
    }
    assert (
        copies[201][0] == "linked"
        and box.decrypt(copies[201][1]) == "bob-secret"
        and box.decrypt(copies[201][2]) == "acc-b"
    )
    assert copies[202][0] == "pending" and copies[202][2] is None
    assert len(q(target_url, "SELECT 1 FROM legacy_ib_connections")) == 5
    # history: one row per account per day, money as NUMERIC(20,4)
    hist = dict(q(target_url, "SELECT legacy_id, balance FROM account_balance_history"))
    assert (
        set(hist) == {1000, 1001, 1002, 1003, 1004} and str(hist[1001]) == "1100.1235"
    )
    # one integration.configured event per integrated account, in the outbox
    events = q(target_url, "SELECT subject, body FROM outbox")
    integrated = {v[4] for v in acc.values() if v[0]}
    assert {json.loads(b)["account_id"] for _s, b in events} == integrated and len(
        events
    ) == len(integrated)
    assert all(json.loads(b)["payload"]["version"] == 1 for _s, b in events)

    if (
        newer
    ):  # per-account values win over the legacy tables, and the conflicts are reported
        assert (
            acc[40][0] == "IB"
            and acc[40][1]["host"] == "gw.example"
            and acc[40][1]["client_id"] == 7
        )
        assert (
            acc[41][0] == "SCHWAB"
            and acc[41][1]["app_key"] == "PERACCT"
            and acc[41][1]["account_hash"] == "HASH41"
        )
        assert "unverified" not in acc[41][1]
        assert acc[42][1]["app_key"] == "LEGACYKEY"
        kinds = {
            (c["account_legacy_id"], c.get("legacy_table")) for c in report["conflicts"]
        }
        assert kinds == {(40, "ib_connections"), (41, "schwab_settings")}
    else:
        assert acc[40][0] == "IB" and acc[40][1]["host"] == "other.example"
        assert acc[41][1]["app_key"] == acc[42][1]["app_key"] == "LEGACYKEY"
        assert report["conflicts"] == []


def test_second_run_changes_nothing(legacy, target_url, migrate) -> None:
    src = legacy()
    assert migrate(target_url, "--source", str(src))[0] == 0
    state = dump(target_url)
    code, out, _err = migrate(target_url, "--source", str(src))
    assert code == 0 and "nothing to change" in out
    assert dump(target_url) == state


def test_dry_run_writes_nothing(legacy, target_url, migrate, tmp_path) -> None:
    src = legacy()
    code, out, err = migrate(
        target_url,
        "--source",
        str(src),
        "--dry-run",
        "--report",
        str(tmp_path / "plan.json"),
    )
    assert code == 0, err
    assert "dry run" in out
    plan = json.loads((tmp_path / "plan.json").read_text())
    assert plan["tables"]["users"]["inserted"] == 4 and plan["verification"]["ok"]
    assert dump(target_url) == {}  # not even account-api's migrations were committed


def test_rollback_restores_the_state_before_the_last_apply(
    legacy, target_url, migrate, box
) -> None:
    src = legacy()
    assert migrate(target_url, "--source", str(src))[0] == 0
    # someone registered natively; the legacy app kept running and changed things
    with psycopg.connect(libpq_url(target_url)) as conn:
        conn.execute(
            "INSERT INTO users (email, name, password_hash) VALUES ('native@example.com', 'N', 'x')"
        )
    conn2 = sqlite3.connect(src)
    conn2.execute(
        "UPDATE accounts SET current_balance = 999.5, name = 'IB Main renamed' WHERE id = 10"
    )
    conn2.execute("UPDATE account_balance_history SET balance = 7 WHERE id = 1000")
    conn2.execute("UPDATE ib_connections SET port = 4999 WHERE id = 100")
    conn2.execute(
        "INSERT INTO users (id, email, password_hash, name) VALUES (6, 'erin@example.com', 'h', 'Erin')"
    )
    conn2.execute(
        "INSERT INTO accounts (id, user_id, name, currency, original_capital, current_balance, account_number) VALUES (60, 6, 'E', 'USD', 1, 1, '44445555')"
    )
    conn2.execute(
        "INSERT INTO schwab_settings (id, user_id, app_key, app_secret) VALUES (206, 6, 'ERINKEY', 'e')"
    )
    conn2.commit()
    conn2.close()
    before = dump(target_url)
    code, _out, err = migrate(target_url, "--source", str(src))
    assert code == 0, err
    acc = accounts_by_legacy(target_url)
    assert acc[10][1]["port"] == 4999 and acc[10][3] == 2 and acc[60][0] == "SCHWAB"
    assert dump(target_url) != before
    code, out, err = migrate(target_url, "--rollback")
    assert code == 0, err
    assert "rolled back run" in out
    assert dump(target_url) == before
    # and the first run can be rolled back too, down to the bare schema plus the native user
    assert migrate(target_url, "--rollback")[0] == 0
    assert q(target_url, "SELECT email FROM users") == [("native@example.com",)]
    assert q(target_url, "SELECT count(*) FROM outbox") == [(0,)]
    assert migrate(target_url, "--rollback")[1].startswith("nothing to roll back")


def test_crash_mid_run_then_rerun_equals_one_clean_run(
    infra, legacy, target_url, migrate, box
) -> None:
    src = legacy()
    env = {
        **os.environ,
        **infra.service_env(),
        "DATABASE_URL": target_url,
        "BROKERLINK_MIGRATE_CRASH_AFTER_BATCHES": "3",
    }
    crashed = subprocess.run(
        [
            sys.executable,
            "-m",
            "migrator.cli",
            "--source",
            str(src),
            "--batch-users",
            "1",
            "--batch-history",
            "2",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert crashed.returncode == 137, crashed.stderr
    assert q(target_url, "SELECT status FROM migration_runs") == [("running",)]
    assert 0 < q(target_url, "SELECT count(*) FROM users")[0][0] < 4
    code, _out, err = migrate(
        target_url, "--source", str(src), "--batch-users", "1", "--batch-history", "2"
    )
    assert code == 0, err
    clean_url = infra.new_database("clean")
    assert migrate(clean_url, "--source", str(src))[0] == 0
    assert logical_dump(target_url, box) == logical_dump(clean_url, box)
    # the resumed run is one run: rolling it back empties the target again
    assert migrate(target_url, "--rollback")[0] == 0
    assert q(target_url, "SELECT count(*) FROM users") == [(0,)]


@pytest.mark.parametrize(
    "case", ["missing", "not-sqlite", "no-legacy-tables", "unreachable"]
)
def test_bad_input_exit_2_one_line_nothing_written(
    infra, tmp_path: Path, target_url, case
) -> None:
    source = tmp_path / "legacy.db"
    url = target_url
    if case == "not-sqlite":
        source.write_text("id,email\n1,a@example.com\n")
    elif case == "no-legacy-tables":
        conn = sqlite3.connect(source)
        conn.execute("CREATE TABLE currency_pairs (id INTEGER PRIMARY KEY)")
        conn.close()
    elif case == "unreachable":
        conn = sqlite3.connect(source)
        conn.executescript(
            "CREATE TABLE users (id INTEGER PRIMARY KEY, email TEXT); CREATE TABLE accounts (id INTEGER PRIMARY KEY, user_id INTEGER);"
        )
        conn.close()
        url = "postgresql+psycopg://nobody@127.0.0.1:1/nowhere"
    env = {**os.environ, **infra.service_env(), "DATABASE_URL": url}
    result = subprocess.run(
        [sys.executable, "-m", "migrator.cli", "--source", str(source)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("brokerlink-migrate: ")
    expected = {
        "missing": "not found",
        "not-sqlite": "not a SQLite",
        "no-legacy-tables": "no legacy tables",
        "unreachable": "unreachable",
    }[case]
    assert expected in lines[0]
    assert dump(target_url) == {}


def test_progress_lines_when_not_a_terminal(infra, legacy, target_url) -> None:
    env = {**os.environ, **infra.service_env(), "DATABASE_URL": target_url}
    result = subprocess.run(
        [sys.executable, "-m", "migrator.cli", "--source", str(legacy())],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert (
        "users and accounts: 4/" in result.stderr
        or "users and accounts:" in result.stderr
    )
    assert "\r" not in result.stderr


def test_bcrypt_2a_hash_still_verifies() -> None:
    assert bcrypt.checkpw(PASSWORD.encode(), HASH.encode())


def test_email_registered_in_target_is_skipped_across_batches(
    legacy, target_url, migrate, tmp_path
) -> None:
    """The target's users are checked per batch by the writer (the batch was planned without
    the database): a legacy user whose email is registered natively is skipped, with its rows."""
    from account_api.migrate import upgrade

    upgrade(target_url)
    with psycopg.connect(libpq_url(target_url)) as conn:
        native = conn.execute(
            "INSERT INTO users (email, name, password_hash) VALUES ('BOB@example.com', 'B', 'x') RETURNING id"
        ).fetchone()[0]
    src = legacy()
    report_path = tmp_path / "report.json"
    code, _out, err = migrate(
        target_url,
        "--source",
        str(src),
        "--batch-users",
        "2",
        "--report",
        str(report_path),
    )
    assert code == 0, err
    report = json.loads(report_path.read_text())
    assert report["verification"]["ok"] is True
    assert {
        "table": "users",
        "legacy_id": 2,
        "reason": f"email already registered in the target (user #{native})",
    } in report["skipped_rows"]
    assert {
        "table": "accounts",
        "legacy_id": 20,
        "reason": "its user was not migrated",
    } in report["skipped_rows"]
    assert {r[0] for r in q(target_url, "SELECT legacy_id FROM users")} == {
        None,
        1,
        3,
        4,
    }
    assert not q(target_url, "SELECT 1 FROM accounts WHERE legacy_id IN (20, 21)")
