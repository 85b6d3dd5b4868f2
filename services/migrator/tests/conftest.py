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


def build_legacy(path: Path, *, newer: bool) -> Path:
    """A legacy database with every case the migrator must handle (see test_migrate.py)."""
    conn = create(path, newer=newer)
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
        ),  # case-insensitive duplicate
    ]
    conn.executemany(
        "INSERT INTO users (id, email, password_hash, name, base_currency, two_factor_secret, two_factor_enabled, created_at, updated_at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, '2024-01-02 03:04:05', '2024-01-02 03:04:05')",
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
    ]
    conn.executemany(
        "INSERT INTO accounts (id, user_id, name, currency, account_type, account_number, original_capital, current_balance, last_updated)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, '2024-03-01 00:00:00')",
        accounts,
    )
    if newer:
        conn.executemany(
            "INSERT INTO accounts (id, user_id, name, currency, account_type, account_number, original_capital, current_balance, integration_type, integration_config)"
            " VALUES (?, 4, ?, 'USD', 'INVESTMENT', ?, 1.0, 1.0, ?, ?)",
            [
                (
                    40,
                    "IB Gateway acct",
                    "U5555555",
                    "IB",
                    json.dumps(
                        {
                            "type": "IB",
                            "host": "gw.example",
                            "port": 4002,
                            "client_id": 7,
                            "last_connected": "2024-01-01T00:00:00Z",
                        }
                    ),
                ),
                (
                    41,
                    "Schwab per account",
                    "33334444",
                    "SCHWAB",
                    json.dumps(
                        {
                            "type": "SCHWAB",
                            "app_key": "PERACCT",
                            "app_secret": "s1",
                            "access_token": "a",
                            "refresh_token": "r",
                            "token_expires_at": NOW + 600,
                            "account_hash": "HASH41",
                        }
                    ),
                ),
                (42, "Schwab other", "11112222", None, None),
            ],
        )
    else:
        conn.executemany(
            "INSERT INTO accounts (id, user_id, name, currency, account_type, account_number, original_capital, current_balance)"
            " VALUES (?, 4, ?, 'USD', 'INVESTMENT', ?, 1.0, 1.0)",
            [
                (40, "IB Gateway acct", "U5555555"),
                (41, "Schwab per account", "33334444"),
                (42, "Schwab other", "11112222"),
            ],
        )
    conn.executemany(
        "INSERT INTO account_balance_history (id, account_id, balance, note, date) VALUES (?, ?, ?, ?, ?)",
        [
            (1000, 10, 1000.0, "start", "2024-01-01 10:00:00"),
            (1001, 10, 1100.12345, None, "2024-01-02 10:00:00"),
            (1002, 10, 1234.5, None, "2024-01-03 23:59:59"),
            (1003, 12, 2000.0, None, "2024-01-01 00:00:00"),
            (1004, 20, 100.0, "x", "2024-02-01 00:00:00"),
            (
                1005,
                50,
                1.0,
                None,
                "2024-02-01 00:00:00",
            ),  # account of the skipped duplicate user
        ],
    )
    conn.executemany(
        "INSERT INTO ib_connections (id, user_id, name, host, port, client_id, target_account_id, is_connected, last_connected, account_balance, account_currency)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, 1, '2024-02-02 02:02:02', 1.5, 'USD')",
        [
            (100, 1, "main", "127.0.0.1", 4001, 1, 10),
            (101, 1, "second", "localhost", 4002, 2, 11),
            (102, 1, "no target", "127.0.0.1", 4001, 3, None),
            (103, 1, "dangling", "127.0.0.1", 4001, 4, 999),
            (104, 4, "dave", "other.example", 4001, 9, 40),
        ],
    )
    conn.executemany(
        "INSERT INTO schwab_settings (id, user_id, app_key, app_secret, access_token, refresh_token, token_expires_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
        [
            (200, 1, "ALICEKEY", "alice-secret", "acc-a", "ref-a", NOW + 900),  # valid
            (
                201,
                2,
                "BOBKEY",
                "bob-secret",
                "acc-b",
                "ref-b",
                NOW - 30 * 86400,
            ),  # expired beyond refresh
            (
                202,
                3,
                "CAROLKEY",
                "carol-secret",
                None,
                None,
                None,
            ),  # missing tokens, no Schwab account
            (203, 4, "LEGACYKEY", "dave-secret", "acc-d", "ref-d", NOW + 900),
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
