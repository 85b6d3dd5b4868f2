"""Migrator fixtures: legacy SQLite files built from the schema facts, a fresh target database
per test, and helpers to run the CLI and dump the target."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import bcrypt
import psycopg
import pytest
from brokerlink_shared.crypto import SecretBox
from migrator.cli import run_cli
from migrator.legacy_schema import create
from migrator.target import libpq_url

NOW = int(time.time())
PASSWORD = "old password"
HASH = (
    bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=4))
    .decode()
    .replace("$2b$", "$2a$", 1)
)


def ts(offset_days: float = 0) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(NOW + offset_days * 86400))


def js(value: dict[str, Any]) -> str:
    """`JSON.stringify`: compact, keys in the order given (the legacy app's schema order)."""
    return json.dumps(value, separators=(",", ":"))


CREATED = "2024-01-02 03:04:05"  # CURRENT_TIMESTAMP: UTC
UPDATED_LOCAL = "2024-01-02 11:04:05"  # datetime('now','localtime') on a UTC+8 server


def build_legacy(path: Path, *, newer: bool) -> Path:
    """A legacy database as the legacy app writes it (see LEGACY_SCHEMA.md, "What the legacy
    app really writes"): WAL mode, camelCase per-account configs with the redundant `type` and
    absent optional keys, local-time `updated_at` next to UTC `created_at`, mixed history date
    formats, account numbers as typed. Every case the migrator must handle is here (the tests
    say which row is which)."""
    conn = create(path, newer=newer)
    conn.execute("PRAGMA journal_mode = WAL")
    users = [
        (1, "alice@example.com", HASH, "Alice", "HKD", "JBSWY3DPEHPK3PXP", 1),
        (2, "bob@example.com", HASH, "Bob", "USD", None, 0),
        (3, "carol@example.com", HASH, "Carol", None, None, 0),
        (4, "dave@example.com", HASH, "Dave", "EUR", None, 0),
        (
            5,
            "ALICE@example.com",
            HASH,
            "Alice again",
            "HKD",
            None,
            0,
        ),  # duplicate email
        (6, "erin@example.com", HASH, "Erin", "USD", None, 0),
        (7, "x" * 300 + "@example.com", HASH, "Too long", "USD", None, 0),
        (8, "frank@example.com", HASH, "Frank", "USD", None, 0),
    ]
    conn.executemany(
        "INSERT INTO users (id, email, password_hash, name, base_currency, two_factor_secret, two_factor_enabled, created_at, updated_at)"
        f" VALUES (?, ?, ?, ?, ?, ?, ?, '{CREATED}', '{UPDATED_LOCAL}')",
        users,
    )
    accounts = [
        (10, 1, "IB Main", "USD", "INVESTMENT", "U1234567", 1000.0, 1234.56789),
        (11, 1, "IB Second", "USD", "INVESTMENT", "DU7654321", 500.0, 510.0),
        (12, 1, "Schwab Brokerage", "USD", "INVESTMENT", "12345678", 2000.0, 2100.5),
        (13, 1, "Bank", "HKD", "BANK", "", 10.0, 10.0),
        (14, 1, "Schwab IRA", "USD", "INVESTMENT", "8765-4321", 0.0, 0.0),
        (15, 1, "Interactive Brokers old", "USD", "INVESTMENT", None, 0.0, 0.0),
        (20, 2, "Brokerage", "USD", "INVESTMENT", "23456789", 100.0, 100.0),
        (21, 2, "Cash", "USD", "BANK", None, 1.0, 1.0),
        (30, 3, "Savings", "HKD", "INVESTMENT", "  ", 5.0, 5.0),
        (50, 5, "Dup", "HKD", "INVESTMENT", None, 1.0, 1.0),
        (60, 6, "Erin IB", "USD", "INVESTMENT", "u7777777", 1.0, 1.0),
        (80, 8, "Frank odd number", "USD", "INVESTMENT", "9" * 70, 1.0, 1.0),
        (81, 8, "Frank typed", "USD", "INVESTMENT", "n/a", 1.0, 1.0),
    ]
    conn.executemany(
        "INSERT INTO accounts (id, user_id, name, currency, account_type, account_number, original_capital, current_balance, last_updated, created_at, updated_at)"
        f" VALUES (?, ?, ?, ?, ?, ?, ?, ?, '2024-03-01 08:00:00', '{CREATED}', '{UPDATED_LOCAL}')",
        accounts,
    )
    ib = lambda host, port, client, **extra: js(  # noqa: E731
        {"type": "IB", "host": host, "port": port, "clientId": client, **extra}
    )
    schwab = lambda **keys: js({"type": "SCHWAB", **keys})  # noqa: E731
    per_account = [
        # 40: camelCase IB; a user-level row (104) disagrees
        (
            40,
            "IB Gateway acct",
            "U5555555",
            "IB",
            ib("gw.example", 4002, 7, lastConnected="2025-06-01T09:30:00.000Z"),
        ),
        # 41: camelCase Schwab with fresh tokens; the user-level row (203) has older ones
        (
            41,
            "Schwab per account",
            "33334444",
            "SCHWAB",
            schwab(
                appKey="PERACCT",
                appSecret="s1",
                accessToken="fresh-a",
                refreshToken="fresh-r",
                tokenExpiresAt=NOW + 600,
                accountHash="HASH41",
            ),
        ),
        (42, "Schwab other", "11112222", None, None),
        # 43: camelCase IB, optional lastConnected absent, no user-level row
        (43, "IB no history", "U4343434", "IB", ib("ib.local", 4001, 3)),
        # 44: the seed's snake_case (hand-edited); a user-level row (105) agrees
        (
            44,
            "IB seed spelling",
            "U4444444",
            "IB",
            json.dumps(
                {"type": "IB", "host": "gw2.example", "port": 4003, "client_id": 5}
            ),
        ),
        # 45: Schwab credentials and account hash, no tokens at all
        (
            45,
            "Schwab no tokens",
            "45454545",
            "SCHWAB",
            schwab(appKey="NOTOKENS", appSecret="s45", accountHash="HASH45"),
        ),
        # 46: per-account Schwab targeted by a user-level IB row (106): a type conflict
        (
            46,
            "Schwab targeted by IB",
            "46464646",
            "SCHWAB",
            schwab(
                appKey="TYPEKEY",
                appSecret="s46",
                accessToken="a46",
                refreshToken="r46",
                tokenExpiresAt=NOW - 3600,
            ),
        ),
        # 47..49: malformed per-account configs (broken JSON, an unknown key, a type mismatch)
        (47, "Broken JSON", "U4747474", "IB", '{"type":"IB","host":'),
        (48, "Unknown key", "U4848484", "IB", ib("h.example", 4001, 1, password="x")),
        (49, "Type mismatch", "49494949", "SCHWAB", ib("h.example", 4001, 2)),
    ]
    cols = "id, user_id, name, currency, account_type, account_number, original_capital, current_balance, created_at, updated_at"
    if newer:
        conn.executemany(
            f"INSERT INTO accounts ({cols}, integration_type, integration_config)"
            f" VALUES (?, 4, ?, 'USD', 'INVESTMENT', ?, 1.0, 1.0, '{CREATED}', '{UPDATED_LOCAL}', ?, ?)",
            per_account,
        )
    else:
        conn.executemany(
            f"INSERT INTO accounts ({cols}) VALUES (?, 4, ?, 'USD', 'INVESTMENT', ?, 1.0, 1.0, '{CREATED}', '{UPDATED_LOCAL}')",
            [r[:3] for r in per_account],
        )
    conn.executemany(
        "INSERT INTO account_balance_history (id, account_id, balance, note, date, created_at) VALUES (?, ?, ?, ?, ?, ?)",
        [
            (1000, 10, 1000.0, "start", "2024-01-01", "2024-01-01 10:00:00"),
            (
                1001,
                10,
                1100.12345,
                None,
                "2024-01-02T10:00:00.000Z",
                "2024-01-02 10:00:00",
            ),
            (1002, 10, 1234.5, None, "2024-01-03 23:59:59", "2024-01-03 23:59:59"),
            (1003, 12, 2000.0, None, "2024-01-01T00:00:00Z", "2024-01-01 00:00:00"),
            (1004, 20, 100.0, "x", "2024-02-01", "2024-02-01 00:00:00"),
            (
                1005,
                50,
                1.0,
                None,
                "2024-02-01",
                "2024-02-01 00:00:00",
            ),  # skipped user's
            (1006, "zz", 1.0, None, "2024-02-01", "2024-02-01 00:00:00"),  # not an id
            (
                1007,
                10,
                "lots",
                None,
                "2024-02-05",
                "2024-02-05 00:00:00",
            ),  # not a number
        ],
    )
    conn.executemany(
        "INSERT INTO ib_connections (id, user_id, name, host, port, client_id, target_account_id, is_connected, last_connected, account_balance, account_currency, created_at, updated_at)"
        f" VALUES (?, ?, ?, ?, ?, ?, ?, 1, '2024-02-02 02:02:02', 1.5, 'USD', '{CREATED}', '{UPDATED_LOCAL}')",
        [
            (100, 1, "main", "127.0.0.1", 4001, 1, 10),
            (101, 1, "second", "localhost", 4002, 2, 11),
            (102, 1, "no target", "127.0.0.1", 4001, 3, None),
            (103, 1, "dangling", "127.0.0.1", 4001, 4, 999),
            (104, 4, "dave", "other.example", 4001, 9, 40),  # disagrees with 40's own
            (105, 4, "dave agrees", "gw2.example", 4003, 5, 44),  # agrees with 44's own
            (106, 4, "dave on schwab", "ib.example", 4001, 11, 46),  # type conflict
            (
                107,
                6,
                "erin on bob's",
                "127.0.0.1",
                4001,
                1,
                20,
            ),  # another user's account
            (108, 8, "bad port", "127.0.0.1", "abc", 1, 81),  # wrong type
            (109, "x8", "bad user", "127.0.0.1", 4001, 2, 81),  # user id not a number
            (110, 8, "long host", "h" * 300, 4001, 3, 81),  # over-long value
        ],
    )
    conn.executemany(
        "INSERT INTO schwab_settings (id, user_id, app_key, app_secret, access_token, refresh_token, token_expires_at, created_at, updated_at)"
        f" VALUES (?, ?, ?, ?, ?, ?, ?, '{CREATED}', '{UPDATED_LOCAL}')",
        [
            (200, 1, "ALICEKEY", "alice-secret", "acc-a", "ref-a", NOW + 900),  # live
            (
                201,
                2,
                "BOBKEY",
                "bob-secret",
                "acc-b",
                "ref-b",
                NOW - 30 * 86400,
            ),  # expired
            (202, 3, "CAROLKEY", "carol-secret", None, None, None),  # no tokens
            (
                203,
                4,
                "PERACCT",
                "s1",
                "old-a",
                "old-r",
                NOW - 600,
            ),  # older than 41's own
            (204, 8, "K" * 200, "frank-secret", None, None, None),  # over-long app key
        ],
    )
    conn.commit()
    conn.close()
    return path


@pytest.fixture
def legacy(tmp_path: Path) -> Callable[..., Path]:
    def make(newer: bool = True, name: str = "investment_tracker.db") -> Path:
        return build_legacy(tmp_path / name, newer=newer)

    return make


@pytest.fixture
def target_url(infra) -> str:  # type: ignore[no-untyped-def]
    return str(infra.new_database("mig"))


@pytest.fixture
def box(infra) -> SecretBox:  # type: ignore[no-untyped-def]
    return SecretBox.from_setting(infra.encryption_keys)


@pytest.fixture
def migrate(infra, monkeypatch, capsys) -> Callable[..., tuple[int, str, str]]:  # type: ignore[no-untyped-def]
    """`migrate(url, *args)` runs the CLI in-process; returns (exit code, stdout, stderr)."""

    def run(url: str, *args: str) -> tuple[int, str, str]:
        monkeypatch.setenv("DATABASE_URL", url)
        monkeypatch.setenv("BROKERLINK_ENCRYPTION_KEYS", infra.encryption_keys)
        monkeypatch.setenv("BROKERLINK_NAMESPACE", infra.namespace)
        capsys.readouterr()
        code = run_cli([*args, "--quiet"])
        out = capsys.readouterr()
        return code, out.out, out.err

    return run


# Deleting a user records its revocation (so its tokens stop working): a log, not state.
NOT_STATE = {"auth_revocations"}


def dump(url: str) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table, ordered: the exact state of the target."""
    with psycopg.connect(libpq_url(url)) as conn:
        tables = [
            r[0]
            for r in conn.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = current_schema() ORDER BY tablename"
            ).fetchall()
        ]
        return {
            t: sorted(conn.execute(f'SELECT * FROM "{t}"').fetchall(), key=repr)
            for t in tables
            if t not in NOT_STATE
        }


def _dec(box: SecretBox, value: Any) -> Any:
    return box.decrypt(value) if isinstance(value, str) else value


def _plain_config(
    box: SecretBox, config: dict[str, Any] | None
) -> dict[str, Any] | None:
    if config is None:
        return None
    return {k: (_dec(box, v) if k.endswith("_enc") else v) for k, v in config.items()}


def logical_dump(url: str, box: SecretBox) -> dict[str, Any]:
    """The target's content with surrogate ids replaced by legacy ids and secrets decrypted,
    so two databases filled by different sequences of runs can be compared."""
    with psycopg.connect(libpq_url(url)) as conn:
        q = lambda sql: conn.execute(sql).fetchall()  # noqa: E731
        users = {r[0]: r[1] for r in q("SELECT id, legacy_id FROM users")}
        accounts = {r[0]: r[1] for r in q("SELECT id, legacy_id FROM accounts")}
        out: dict[str, Any] = {
            "users": sorted(
                (r[0], r[1], r[2], r[3], r[4], _dec(box, r[5]), r[6])
                for r in q(
                    "SELECT legacy_id, email, name, password_hash, base_currency, two_factor_secret_enc, two_factor_enabled FROM users"
                )
            ),
            "accounts": sorted(
                (
                    r[0],
                    users[r[1]],
                    r[2],
                    r[3],
                    r[4],
                    r[5],
                    str(r[6]),
                    str(r[7]),
                    r[8],
                    json.dumps(_plain_config(box, r[9]), sort_keys=True),
                    r[10],
                    r[11],
                )
                for r in q("""SELECT legacy_id, user_id, name, currency, account_type, account_number, original_capital,
                                     current_balance, integration_type, integration_config, integration_version, integration_status FROM accounts""")
            ),
            "history": sorted(
                (r[0], accounts[r[1]], r[2], str(r[3]), r[4])
                for r in q(
                    "SELECT legacy_id, account_id, date, balance, note FROM account_balance_history"
                )
            ),
            "pending": sorted(
                (
                    r[0],
                    r[1],
                    users[r[2]],
                    r[3],
                    json.dumps(_plain_config(box, r[4]), sort_keys=True),
                    r[5],
                    sorted(accounts[s] for s in r[6]),
                )
                for r in q(
                    "SELECT legacy_table, legacy_id, user_id, integration_type, config, reason, suggestions FROM pending_links"
                )
            ),
            "legacy_ib": sorted(
                tuple(r)
                for r in q(
                    "SELECT id, user_legacy_id, name, host, port, client_id, target_account_legacy_id, outcome FROM legacy_ib_connections"
                )
            ),
            "legacy_schwab": sorted(
                (
                    r[0],
                    r[1],
                    r[2],
                    _dec(box, r[3]),
                    _dec(box, r[4]),
                    _dec(box, r[5]),
                    r[6],
                    r[7],
                )
                for r in q(
                    "SELECT id, user_legacy_id, app_key, app_secret_enc, access_token_enc, refresh_token_enc, token_expires_at, outcome FROM legacy_schwab_settings"
                )
            ),
            "migration_rows": sorted(
                (r[0], r[1], r[2])
                for r in q("SELECT entity, legacy_id, checksum FROM migration_rows")
            ),
            "runs": sorted(r[0] for r in q("SELECT status FROM migration_runs")),
        }
        events = []
        for subject, body in q("SELECT subject, body FROM outbox"):
            event = json.loads(body)
            payload = event["payload"]
            events.append(
                (
                    subject,
                    users[event["user_id"]],
                    accounts[event["account_id"]],
                    payload["broker"],
                    payload["version"],
                    json.dumps(_plain_config(box, payload["config"]), sort_keys=True),
                )
            )
        out["outbox"] = sorted(events)
        return out


def sqlite_rows(path: Path, sql: str) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()
