"""The legacy tracker's schema (from the schema facts in shared/legacy/LEGACY_SCHEMA.md), for
building legacy databases in tests and in the bench. `newer=True` adds the per-account
`integration_type` / `integration_config` columns that newer legacy databases carry."""

from __future__ import annotations

import sqlite3
from pathlib import Path


def ddl(newer: bool = True) -> str:
    integration = (
        ",\n    integration_type TEXT,\n    integration_config TEXT" if newer else ""
    )
    return f"""
CREATE TABLE users (
    id INTEGER PRIMARY KEY, email TEXT UNIQUE NOT NULL, password_hash TEXT NOT NULL, name TEXT NOT NULL,
    base_currency TEXT DEFAULT 'HKD', two_factor_secret TEXT, two_factor_enabled BOOLEAN DEFAULT 0,
    created_at DATETIME DEFAULT CURRENT_TIMESTAMP, updated_at DATETIME DEFAULT CURRENT_TIMESTAMP
);
CREATE TABLE accounts (
    id INTEGER PRIMARY KEY, user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    name TEXT NOT NULL, currency TEXT NOT NULL, account_type TEXT DEFAULT 'INVESTMENT', account_number TEXT,
    original_capital REAL NOT NULL, current_balance REAL NOT NULL, last_updated DATETIME,
    created_at DATETIME DEFAULT CURRENT_TIMESTAMP, updated_at DATETIME DEFAULT CURRENT_TIMESTAMP{integration}
);
CREATE TABLE account_balance_history (
    id INTEGER PRIMARY KEY, account_id INTEGER REFERENCES accounts(id) ON DELETE CASCADE,
    balance REAL NOT NULL, note TEXT, date DATETIME, created_at DATETIME DEFAULT CURRENT_TIMESTAMP
);
CREATE UNIQUE INDEX idx_history_account_day ON account_balance_history(account_id, DATE(date));
CREATE TABLE ib_connections (
    id INTEGER PRIMARY KEY, user_id INTEGER REFERENCES users(id), name TEXT NOT NULL, host TEXT NOT NULL,
    port INTEGER NOT NULL, client_id INTEGER NOT NULL,
    target_account_id INTEGER REFERENCES accounts(id) ON DELETE SET NULL,
    is_connected BOOLEAN DEFAULT 0, last_connected DATETIME, account_balance REAL, account_currency TEXT,
    error TEXT, created_at DATETIME DEFAULT CURRENT_TIMESTAMP, updated_at DATETIME DEFAULT CURRENT_TIMESTAMP,
    UNIQUE(user_id, client_id)
);
CREATE TABLE schwab_settings (
    id INTEGER PRIMARY KEY, user_id INTEGER UNIQUE REFERENCES users(id), app_key TEXT NOT NULL,
    app_secret TEXT NOT NULL, access_token TEXT, refresh_token TEXT, token_expires_at INTEGER,
    created_at DATETIME DEFAULT CURRENT_TIMESTAMP, updated_at DATETIME DEFAULT CURRENT_TIMESTAMP
);
CREATE TABLE currency_pairs (id INTEGER PRIMARY KEY, base TEXT, quote TEXT);
CREATE TABLE portfolios (id INTEGER PRIMARY KEY, user_id INTEGER, symbol TEXT, source TEXT, main_account_id INTEGER);
"""


def create(path: Path, newer: bool = True) -> sqlite3.Connection:
    """Create an empty legacy database at `path`; returns an open connection."""
    conn = sqlite3.connect(path)
    conn.executescript(ddl(newer))
    return conn
