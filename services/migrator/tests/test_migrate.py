"""The migrator against real PostgreSQL, on legacy databases built from the schema facts."""

from __future__ import annotations

import json
import os
import secrets
import sqlite3
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import bcrypt
import psycopg
import pytest
from account_api.auth.passwords import verify_password
from migrator.target import HISTORY_FRESH_INSERT, Target, libpq_url
from sqlalchemy.engine import make_url

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
    assert set(users) == {1, 2, 3, 4, 6, 8}
    # ...and each was compared with its source row (the source side the planner takes)
    checked = report["verification"]["tables"]["users"]
    assert checked["rows"] == len(users) and checked["extra"] == 0
    assert users[1][1] == HASH and verify_password(users[1][1], PASSWORD)[0]
    assert (
        users[1][2] != "JBSWY3DPEHPK3PXP"
        and box.decrypt(users[1][2]) == "JBSWY3DPEHPK3PXP"
        and users[1][3] is True
    )
    skipped = {
        (r["table"], r["legacy_id"]): r["reason"] for r in report["skipped_rows"]
    }
    assert (
        skipped[("users", 5)] == "duplicate email (case-insensitive) of legacy user #1"
    )
    # hostile rows are quarantined with their reason; the rest imported
    assert skipped[("users", 7)] == "email longer than 254 characters"
    assert skipped[("accounts", 80)] == "account_number longer than 64 characters"
    assert skipped[("ib_connections", 109)] == "user_id is not a whole number"
    assert (
        skipped[("account_balance_history", 1006)] == "account_id is not a whole number"
    )
    assert (
        skipped[("account_balance_history", 1007)] == "balance is not a number in range"
    )

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
    # user-level Schwab settings name no account: without Schwab's word, nothing is linked
    for legacy_id in (12, 13, 14, 15, 20, 21, 30, 42):
        assert acc[legacy_id][0] is None, legacy_id
    pending = {
        (r[0], r[1]): r[2:]
        for r in q(
            target_url,
            "SELECT legacy_table, legacy_id, integration_type, reason, suggestions, config, kind, verified_suggestions FROM pending_links",
        )
    }
    # ranked suggestions: Schwab-shaped numbers first (also written 8765-4321), then the rest
    assert pending[("schwab_settings", 200)][2] == [acc[12][4], acc[14][4], acc[15][4]]
    assert pending[("schwab_settings", 200)][5] == []  # nothing verified
    alice = pending[("schwab_settings", 200)][3]
    assert box.decrypt(alice["app_secret_enc"]) == "alice-secret"
    token = json.loads(box.decrypt(alice["token_enc"]))
    assert token["token"]["refresh_token"] == "ref-a"
    assert token["token"]["expires_at"] == NOW + 900
    # expired and missing tokens: pending too, keeping what there is
    assert json.loads(box.decrypt(pending[("schwab_settings", 201)][3]["token_enc"]))
    assert pending[("schwab_settings", 202)][3]["token_enc"] is None
    assert (
        box.decrypt(pending[("schwab_settings", 202)][3]["app_secret_enc"])
        == "carol-secret"
    )
    # IB: NULL target and dangling target, with the IB-looking account suggested
    assert pending[("ib_connections", 102)][2] == [acc[15][4]]
    assert "#999" in pending[("ib_connections", 103)][1]
    # a user-level row naming another user's account: never linked across users
    assert acc[20][0] is None and acc[60][0] is None
    assert "never linked across users" in pending[("ib_connections", 107)][1]
    assert pending[("ib_connections", 107)][2] == [acc[60][4]]
    # hostile integration rows: quarantined as pending items a person can discard
    assert pending[("ib_connections", 108)][4] == "quarantine"
    assert pending[("ib_connections", 110)][4] == "quarantine"
    assert pending[("schwab_settings", 204)][4] == "quarantine"
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
        copies[201][0] == "pending"
        and box.decrypt(copies[201][1]) == "bob-secret"
        and box.decrypt(copies[201][2]) == "acc-b"
    )
    assert copies[202][0] == "pending" and copies[202][2] is None
    assert len(q(target_url, "SELECT 1 FROM legacy_ib_connections")) == 10
    # history: one row per account per day (both date spellings), money as NUMERIC(20,4)
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
    # every legacy integration row is accounted for
    assert report["verification"]["tables"]["ib_connections"]["rows"] == 10

    conflicts = {
        (c["account_legacy_id"], c.get("legacy_id")): c for c in report["conflicts"]
    }
    if newer:
        # per-account values (camelCase, as the legacy app writes them) win over the tables
        assert acc[40][0] == "IB" and acc[40][1] == {
            "host": "gw.example",
            "port": 4002,
            "client_id": 7,
            "account_code": "U5555555",
            "read_only": True,
            "backups": [],
        }
        assert acc[40][5].isoformat() == "2025-06-01T09:30:00+00:00"
        assert pending[("ib_connections", 104)][4] == "conflict"
        assert pending[("ib_connections", 104)][2][0] == acc[40][4]
        assert conflicts[(40, 104)]["kind"] == "account_integration_differs"
        kind, config, status = acc[41][:3]
        assert kind == "SCHWAB" and config["app_key"] == "PERACCT"
        assert config["account_hash"] == "HASH41" and "unverified" not in config
        token = json.loads(box.decrypt(config["token_enc"]))
        assert (
            token["token"]["access_token"] == "fresh-a"
        )  # not the older user-level one
        assert token["token"]["refresh_token"] == "fresh-r" and status == "pending"
        assert conflicts[(41, 203)]["kind"] == "account_integration_differs"
        assert pending[("schwab_settings", 203)][4] == "conflict"
        assert acc[43][0] == "IB" and acc[43][1]["host"] == "ib.local"
        assert acc[43][5] is None  # lastConnected absent
        assert (
            acc[44][0] == "IB" and acc[44][1]["client_id"] == 5
        )  # snake_case spelling
        assert ("ib_connections", 105) not in pending  # it agrees: linked
        kind, config, status = acc[45][:3]
        assert kind == "SCHWAB" and config["token_enc"] is None
        assert status == "reauth_required" and config["account_hash"] == "HASH45"
        # a user-level IB row targeting a per-account Schwab account: a type conflict
        assert acc[46][0] == "SCHWAB" and acc[46][1]["app_key"] == "TYPEKEY"
        assert conflicts[(46, 106)]["kind"] == "type_conflict"
        assert pending[("ib_connections", 106)][4] == "conflict"
        # malformed per-account configs: quarantined, never the base for an overwrite
        for legacy_id in (47, 48, 49):
            assert acc[legacy_id][0] is None
            assert pending[("accounts", legacy_id)][4] == "quarantine"
        assert "not a JSON object" in pending[("accounts", 47)][1]
        assert (
            "unknown keys in integration_config: password"
            in pending[("accounts", 48)][1]
        )
        assert "says type 'IB'" in pending[("accounts", 49)][1]
        assert pending[("accounts", 48)][3] == {
            "host": "h.example",
            "port": 4001,
            "client_id": 1,
        }
    else:
        assert acc[40][0] == "IB" and acc[40][1]["host"] == "other.example"
        assert acc[46][0] == "IB" and acc[46][1]["host"] == "ib.example"
        assert acc[41][0] is None and acc[42][0] is None
        assert report["conflicts"] == []


def test_second_run_changes_nothing(legacy, target_url, migrate) -> None:
    src = legacy()
    assert migrate(target_url, "--source", str(src))[0] == 0
    state = dump(target_url)
    code, out, _err = migrate(target_url, "--source", str(src))
    assert code == 0 and "nothing to change" in out
    assert dump(target_url) == state


def test_a_rerun_after_a_change_in_the_target_verifies_again(
    legacy, target_url, migrate, tmp_path
) -> None:
    """A rerun of the same file takes the short way only while the target is as the verified
    run left it: after a change there (an account renamed in brokerlink) the rerun reads and
    verifies everything again (and reports the drift); the one after that is short again."""
    src = legacy()
    assert migrate(target_url, "--source", str(src))[0] == 0
    report = tmp_path / "report.json"

    def rerun() -> dict:  # type: ignore[type-arg]
        code, out, err = migrate(
            target_url, "--source", str(src), "--report", str(report)
        )
        assert code == 0 and "nothing to change" in out, err
        return json.loads(report.read_text())["verification"]

    assert "unchanged_since_run" in rerun()
    ((first,),) = q(target_url, "SELECT min(legacy_id) FROM accounts")
    with psycopg.connect(libpq_url(target_url)) as conn:
        conn.execute(
            "UPDATE accounts SET name = 'renamed' WHERE legacy_id = %s", (first,)
        )
    full = rerun()
    assert "unchanged_since_run" not in full
    assert full["ok"] and full["tables"]["accounts"]["drifted_legacy_ids"] == [first]
    short = rerun()
    assert short["unchanged_since_run"] and short["tables"]["accounts"]["drifted"] == 1
    # a write of the same values is a write too: the state names row versions, not contents
    with psycopg.connect(libpq_url(target_url)) as conn:
        conn.execute("UPDATE accounts SET name = name WHERE legacy_id = %s", (first,))
    assert "unchanged_since_run" not in rerun()
    assert rerun()["unchanged_since_run"]


def test_a_new_history_row_that_collides_with_a_balance_entered_since_is_named(
    legacy, target_url, migrate, tmp_path
) -> None:
    """A history batch none of which is in the target yet goes in with one plain INSERT; a row
    of it that collides with a balance someone entered in brokerlink since (same account, same
    day) sends the batch down the row-by-row path: the other rows land, that one is named."""
    src = legacy()
    assert migrate(target_url, "--source", str(src))[0] == 0
    with psycopg.connect(libpq_url(target_url)) as conn:
        conn.execute(
            """INSERT INTO account_balance_history (account_id, date, balance, source, as_of)
               SELECT id, '2024-06-01', 5, 'MANUAL', now() FROM accounts WHERE legacy_id = 10"""
        )
    conn2 = sqlite3.connect(src)
    conn2.executemany(
        "INSERT INTO account_balance_history (id, account_id, balance, note, date, created_at) VALUES (?, ?, ?, NULL, ?, ?)",
        [
            (5000, 10, 1.5, "2024-06-01", "2024-06-01 10:00:00"),
            (5001, 11, 2.5, "2024-06-01", "2024-06-01 10:00:00"),
        ],
    )
    conn2.commit()
    conn2.close()
    report = tmp_path / "report.json"
    code, _out, err = migrate(
        target_url,
        "--source",
        str(src),
        "--batch-history",
        "1",
        "--report",
        str(report),
    )
    assert code == 0, err
    rows = q(
        target_url,
        """SELECT h.legacy_id, h.balance FROM account_balance_history h JOIN accounts a ON a.id = h.account_id
            WHERE a.legacy_id IN (10, 11) AND h.date = '2024-06-01' ORDER BY 1""",
    )
    assert rows == [(5001, Decimal("2.5000")), (None, Decimal("5.0000"))]
    skipped = {
        (r["table"], r["legacy_id"]): r["reason"]
        for r in json.loads(report.read_text())["skipped_rows"]
    }
    assert (
        skipped[("account_balance_history", 5000)]
        == "another balance exists for the same account and day"
    )
    # The source side of the history's verification leaves out the row that did not land
    # (its chunk is taken from the source again): both sides agree without a drill-down.
    history = json.loads(report.read_text())["checksums"]["account_balance_history"]
    assert history["source_checksum"] == history["target_checksum"]


def test_history_without_row_checks_lands_as_with_them(
    legacy, target_url, migrate, box, infra, tmp_path
) -> None:
    """Where the migrator's role may turn per-row triggers off (a superuser, as here), a first
    import's history batch goes in with the foreign key's per-row check off: the batch's
    accounts are locked and joined in the statement instead (`Target._history_fresh`). A role
    that may not takes the per-row path. Both land the same rows and name the same skipped
    ones, and the plain role's session is left as it was. A trigger someone added to a table
    a batch writes keeps every trigger on."""
    src = legacy()
    assert (
        migrate(target_url, "--source", str(src), "--report", str(tmp_path / "a"))[0]
        == 0
    )

    role, password = f"plain_{secrets.token_hex(4)}", secrets.token_hex(8)
    plain_url = infra.new_database("mig")
    name = make_url(plain_url).database
    with psycopg.connect(libpq_url(target_url), autocommit=True) as admin:
        admin.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{password}'")
        admin.execute(f'ALTER DATABASE "{name}" OWNER TO {role}')
    plain_url = (
        make_url(plain_url)
        .set(username=role, password=password)
        .render_as_string(hide_password=False)
    )
    code, _out, err = migrate(
        plain_url, "--source", str(src), "--report", str(tmp_path / "b")
    )
    assert code == 0, err
    assert logical_dump(plain_url, box) == logical_dump(target_url, box)
    reports = [json.loads((tmp_path / n).read_text()) for n in ("a", "b")]
    assert reports[0]["skipped_rows"] == reports[1]["skipped_rows"]
    assert reports[0]["verification"]["ok"] and reports[1]["verification"]["ok"]

    with psycopg.connect(libpq_url(target_url)) as conn:
        assert Target(conn)._skip_row_checks() is True
    with psycopg.connect(libpq_url(plain_url)) as conn:
        assert Target(conn)._skip_row_checks() is False
        assert conn.execute("SHOW session_replication_role").fetchone() == ("origin",)

    with psycopg.connect(libpq_url(target_url)) as conn:
        conn.execute(
            """CREATE FUNCTION audit_history() RETURNS trigger LANGUAGE plpgsql
               AS $$ BEGIN RETURN NEW; END $$"""
        )
        conn.execute(
            """CREATE TRIGGER audit_history AFTER INSERT ON account_balance_history
               FOR EACH ROW EXECUTE FUNCTION audit_history()"""
        )
        assert Target(conn)._skip_row_checks() is False
        assert conn.execute("SHOW session_replication_role").fetchone() == ("origin",)


def test_a_history_batch_reaches_accounts_by_legacy_id_only(
    legacy, target_url, migrate
) -> None:
    """A first import's history batch finds its accounts through their legacy ids whatever
    the statistics say: with many accounts analysed and the staging table not, the planner
    once walked every account in id order and scanned the staging table for each (a batch
    that never ended at full size). Every scan of `accounts` in the statement's plan is by
    legacy id."""
    assert migrate(target_url, "--source", str(legacy()))[0] == 0
    with psycopg.connect(libpq_url(target_url)) as conn:
        conn.execute(
            """INSERT INTO accounts (user_id, name, currency, account_type, original_capital,
                                     current_balance, legacy_id)
               SELECT (SELECT min(id) FROM users), 'bulk ' || g, 'USD', 'INVESTMENT', 0, 0,
                      1000000 + g
                 FROM generate_series(1, 20000) g"""
        )
        conn.commit()
        conn.execute("ANALYZE accounts")
        target = Target(conn)
        target.prepare()
        conn.execute(
            """INSERT INTO stg_history (legacy_id, account_legacy_id, date, balance)
               SELECT g, 1000000 + g % 5000, date '2020-01-01' + g / 5000, 1
                 FROM generate_series(1, 50000) g"""
        )
        plan = [
            r[0]
            for r in conn.execute(
                "EXPLAIN " + HISTORY_FRESH_INSERT, {"run": 1}
            ).fetchall()
        ]
        conn.rollback()
    scans = [line for line in plan if " on accounts" in line]
    assert scans, plan
    assert all("uq_accounts_legacy_id" in line for line in scans), "\n".join(plan)


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
    assert plan["tables"]["users"]["inserted"] == 6 and plan["verification"]["ok"]
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
        "INSERT INTO users (id, email, password_hash, name) VALUES (9, 'gina@example.com', 'h', 'Gina')"
    )
    conn2.execute(
        "INSERT INTO accounts (id, user_id, name, currency, original_capital, current_balance, account_number) VALUES (90, 9, 'G', 'USD', 1, 1, '44445555')"
    )
    conn2.execute(
        "INSERT INTO schwab_settings (id, user_id, app_key, app_secret) VALUES (206, 9, 'GINAKEY', 'e')"
    )
    conn2.commit()
    conn2.close()
    before = dump(target_url)
    code, _out, err = migrate(target_url, "--source", str(src))
    assert code == 0, err
    acc = accounts_by_legacy(target_url)
    assert acc[10][1]["port"] == 4999 and acc[10][3] == 2 and acc[90][0] is None
    assert q(
        target_url, "SELECT count(*) FROM pending_links WHERE legacy_id = 206"
    ) == [(1,)]
    assert dump(target_url) != before
    code, out, err = migrate(target_url, "--rollback")
    assert code == 0, err
    assert "rolled back run" in out
    after = dump(target_url)
    # every table as before, except: account 10's integration is back, at the next version
    # (never backwards), and connectors are told through the outbox
    for table in set(before) - {"accounts", "outbox", "migration_journal"}:
        assert after[table] == before[table], table
    acc = accounts_by_legacy(target_url)
    assert acc[10][1]["port"] == 4001 and acc[10][3] == 3 and 90 not in acc
    restored = [
        json.loads(b)
        for (b,) in q(
            target_url,
            "SELECT body FROM outbox WHERE correlation_id = 'migration-2-rollback'",
        )
    ]
    assert [
        (e["type"], e["account_id"], e["payload"]["version"]) for e in restored
    ] == [("integration.configured", acc[10][4], 3)]
    assert restored[0]["payload"]["config"]["port"] == 4001
    # and the first run can be rolled back too, down to the bare schema plus the native user
    code, out, err = migrate(target_url, "--rollback")
    assert code == 0, err
    assert "kept" not in out, out
    assert q(target_url, "SELECT email FROM users") == [("native@example.com",)]
    assert q(target_url, "SELECT count(*) FROM accounts") == [(0,)]
    # its own unpublished events withdrawn; the removals of what it had configured go out,
    # saying the users go too (connectors let go of what they kept for them)
    assert q(target_url, "SELECT DISTINCT correlation_id FROM outbox ORDER BY 1") == [
        ("migration-1-rollback",),
        ("migration-2-rollback",),
    ]
    first = [
        json.loads(b)
        for (b,) in q(
            target_url,
            "SELECT body FROM outbox WHERE correlation_id = 'migration-1-rollback'",
        )
    ]
    assert first and all(
        e["type"] == "integration.removed" and e["payload"]["owner_deleted"]
        for e in first
    )
    assert migrate(target_url, "--rollback")[1].startswith("nothing to roll back")


def test_rollback_after_use_keeps_what_people_changed(
    legacy, target_url, migrate, tmp_path
) -> None:
    """After the import people use the system: rollback removes only what is unchanged since,
    keeps (and lists) what they changed, and a connector's balance refresh is not a change."""
    src = legacy()
    assert migrate(target_url, "--source", str(src))[0] == 0
    acc = accounts_by_legacy(target_url)
    ids = {legacy_id: row[4] for legacy_id, row in acc.items()}
    with psycopg.connect(libpq_url(target_url)) as conn:
        # the owner renames account 12 and configures an integration on 13 (the API bumps the version)
        conn.execute("UPDATE accounts SET name = 'Renamed' WHERE id = %s", (ids[12],))
        conn.execute(
            """UPDATE accounts SET integration_type = 'IB', integration_version = integration_version + 1,
                      integration_config = '{"host": "h.example", "port": 4001, "client_id": 3}'
                WHERE id = %s""",
            (ids[13],),
        )
        # a connector refreshes account 10's balance and status
        conn.execute(
            "UPDATE accounts SET current_balance = 5, integration_status = 'connected' WHERE id = %s",
            (ids[10],),
        )
        # a history row of account 20 is corrected by hand; account 21 gets a new one
        conn.execute(
            "UPDATE account_balance_history SET balance = 101 WHERE legacy_id = 1004"
        )
        conn.execute(
            "INSERT INTO account_balance_history (account_id, date, balance, source) VALUES (%s, '2025-01-01', 3, 'MANUAL')",
            (ids[21],),
        )
    code, out, err = migrate(
        target_url, "--rollback", "--report", str(tmp_path / "rb.json")
    )
    assert code == 0, err
    assert "kept (changed since the import): 2 users" in out
    report = json.loads((tmp_path / "rb.json").read_text())
    left = accounts_by_legacy(target_url)
    assert set(left) == {12, 13, 20, 21}  # 10 went although its balance was refreshed
    assert left[13][0] == "IB" and left[12][0] is None
    users = {r[0] for r in q(target_url, "SELECT legacy_id FROM users")}
    assert users == {1, 2}  # the owners of what stays
    kept = report["kept_changed_since_import"]
    assert set(kept["accounts"]["ids"]) == {ids[12], ids[13], ids[20], ids[21]}
    assert kept["accounts"]["count"] == 4
    # the kept accounts keep their migrated history; the edited row is listed
    assert {
        r[0]
        for r in q(
            target_url,
            "SELECT legacy_id FROM account_balance_history WHERE legacy_id IS NOT NULL",
        )
    } == {1003, 1004}
    removed = [
        json.loads(b)
        for (b,) in q(
            target_url,
            "SELECT body FROM outbox WHERE correlation_id = 'migration-1-rollback'",
        )
    ]
    assert ids[10] in {e["account_id"] for e in removed}
    assert all(e["type"] == "integration.removed" for e in removed)
    # a removal says whether the account's user went too: account 10's owner stays
    kept_users = {r[0] for r in q(target_url, "SELECT id FROM users")}
    assert all(
        e["payload"].get("owner_deleted", False) == (e["user_id"] not in kept_users)
        for e in removed
    )
    # (left out when false, so a connector of the release before still takes it)
    account_10 = next(e for e in removed if e["account_id"] == ids[10])
    assert "owner_deleted" not in account_10["payload"]
    # a new import does not overwrite what was kept
    assert migrate(target_url, "--source", str(src))[0] == 0
    assert accounts_by_legacy(target_url)[12][0] is None
    assert q(target_url, "SELECT name FROM accounts WHERE id = %s", ids[12]) == [
        ("Renamed",)
    ]


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
        6,
        8,
    }
    assert not q(target_url, "SELECT 1 FROM accounts WHERE legacy_id IN (20, 21)")


def test_wal_content_of_a_live_copy_is_read_and_nothing_is_written_next_to_it(
    legacy, target_url, migrate, tmp_path
) -> None:
    """A copy taken from a live legacy server: the last writes are only in the -wal file (the
    legacy app never closes its connections). They are imported; the three files are left
    byte for byte as they were, and nothing new appears next to them."""
    src = legacy()
    writer = sqlite3.connect(src)
    writer.execute("PRAGMA wal_autocheckpoint = 0")
    writer.execute(
        "INSERT INTO users (id, email, password_hash, name) VALUES (9, 'wal@example.com', ?, 'Wal')",
        (HASH,),
    )
    writer.commit()
    live = tmp_path / "live"
    live.mkdir()
    for suffix in ("", "-wal", "-shm"):
        (live / f"investment_tracker.db{suffix}").write_bytes(
            Path(f"{src}{suffix}").read_bytes()
        )
    writer.close()
    copy = live / "investment_tracker.db"
    assert copy.read_bytes()[18:20] == b"\x02\x02"  # the header says WAL
    assert Path(f"{copy}-wal").stat().st_size > 0
    before = {p.name: p.read_bytes() for p in live.iterdir()}
    code, _out, err = migrate(target_url, "--source", str(copy))
    assert code == 0, err
    assert {p.name: p.read_bytes() for p in live.iterdir()} == before
    assert q(target_url, "SELECT name FROM users WHERE legacy_id = 9") == [("Wal",)]


def test_checkpointed_wal_header_is_opened_without_writing(
    legacy, target_url, migrate, tmp_path
) -> None:
    src = legacy()  # closed cleanly: checkpointed, header still WAL, no -wal left
    assert src.read_bytes()[18:20] == b"\x02\x02"
    assert not Path(f"{src}-wal").exists()
    listing = sorted(p.name for p in src.parent.iterdir())
    assert migrate(target_url, "--source", str(src))[0] == 0
    assert sorted(p.name for p in src.parent.iterdir()) == listing


def test_runs_next_to_a_running_account_api_but_not_next_to_another_migrator(
    legacy, target_url, migrate
) -> None:
    """account-api's outbox relay holds its advisory lock for as long as it runs (and Alembic
    takes another): the migrator's lock is its own, so it works against a running stack, and
    a second migrator is refused with one line."""
    from account_api.migrate import upgrade
    from account_api.outbox.relay import RELAY_LOCK_ID
    from migrator.target import LOCK_KEY

    upgrade(target_url)
    src = legacy()
    with psycopg.connect(libpq_url(target_url), autocommit=True) as relay:
        relay.execute("SELECT pg_advisory_lock(%s)", (RELAY_LOCK_ID,))
        code, _out, err = migrate(target_url, "--source", str(src))
        assert code == 0, err
        relay.execute("SELECT pg_advisory_lock(%s)", (LOCK_KEY,))
        code, _out, err = migrate(target_url, "--rollback")
        assert code == 1
        assert err.strip().splitlines() == [
            "brokerlink-migrate: another brokerlink-migrate is running against this database"
        ]


def _every_ciphertext(url: str) -> list[str]:
    """Every stored ciphertext: `*_enc` columns and `*_enc` keys at any depth of JSON values."""
    from account_api.rekey import rotate_json

    found: list[str] = []

    def collect(value: str) -> str:
        found.append(value)
        return value

    with psycopg.connect(libpq_url(url)) as conn:
        cols = conn.execute(
            """SELECT table_name, column_name, data_type FROM information_schema.columns
                WHERE table_schema = current_schema() AND (column_name LIKE '%%\\_enc' OR data_type IN ('jsonb', 'bytea'))"""
        ).fetchall()
        for table, column, kind in cols:
            for (value,) in conn.execute(
                f'SELECT "{column}" FROM "{table}" WHERE "{column}" IS NOT NULL'
            ).fetchall():
                if kind == "text":
                    found.append(value)
                elif kind == "jsonb":
                    rotate_json(value, collect)
                elif table == "outbox":
                    rotate_json(json.loads(bytes(value)), collect)
    return found


def test_rekey_then_dropping_the_old_key_keeps_rollback_and_integrations_working(
    infra, legacy, target_url, migrate, monkeypatch
) -> None:
    """`rekey` re-encrypts every stored secret, wherever it lives (legacy copies, journal
    before-images, pending items, outbox, configs, TOTP secrets): afterwards the old key can
    go, and verification, rollback and every integration still read their secrets."""
    from account_api.rekey import rekey
    from brokerlink_shared.crypto import SecretBox, generate_key

    src = legacy()
    assert migrate(target_url, "--source", str(src))[0] == 0
    conn2 = sqlite3.connect(src)  # a second run journals before-images holding secrets
    conn2.execute(
        "UPDATE schwab_settings SET app_secret = 'alice-secret-2' WHERE id = 200"
    )
    conn2.execute(
        "UPDATE users SET two_factor_secret = 'KRSXG5CTMVRXEZLU' WHERE id = 1"
    )
    conn2.execute(
        """UPDATE accounts SET integration_config = json_set(integration_config, '$.appSecret', 's1-new')
            WHERE id = 41"""
    )
    conn2.commit()
    conn2.close()
    assert migrate(target_url, "--source", str(src))[0] == 0
    old = infra.encryption_keys
    assert len(_every_ciphertext(target_url)) > 20

    new = generate_key()
    rekey(target_url, SecretBox([new, old]))
    only_new = SecretBox([new])
    for ciphertext in _every_ciphertext(target_url):
        only_new.decrypt(ciphertext)  # raises if anything was left under the old key

    monkeypatch.setattr(infra, "encryption_keys", new)  # the old key is gone
    code, out, err = migrate(target_url, "--source", str(src))
    assert code == 0 and "nothing to change" in out, (
        err
    )  # verification decrypts the copies
    code, out, err = migrate(target_url, "--rollback")
    assert code == 0, err
    acc = accounts_by_legacy(target_url)
    assert (
        only_new.decrypt(acc[41][1]["app_secret_enc"]) == "s1"
    )  # the before-image, readable
    (secret,) = q(
        target_url, "SELECT two_factor_secret_enc FROM users WHERE legacy_id = 1"
    )[0]
    assert only_new.decrypt(secret) == "JBSWY3DPEHPK3PXP"
    for ciphertext in _every_ciphertext(target_url):
        only_new.decrypt(ciphertext)
    assert migrate(target_url, "--rollback")[0] == 0


def test_local_time_updated_at_is_read_in_the_legacy_servers_zone(
    legacy, target_url, migrate
) -> None:
    """created_at is UTC (CURRENT_TIMESTAMP); updated_at is the server's local time without a
    zone (datetime('now','localtime')): on a UTC+8 server the fixture's two are the same moment."""
    src = legacy()
    code, _out, err = migrate(
        target_url, "--source", str(src), "--legacy-timezone", "Asia/Hong_Kong"
    )
    assert code == 0, err
    [(created, updated)] = q(
        target_url, "SELECT created_at, updated_at FROM users WHERE legacy_id = 1"
    )
    assert created == updated
    assert created.isoformat().startswith("2024-01-02T03:04:05")
