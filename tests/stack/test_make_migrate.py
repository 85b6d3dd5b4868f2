"""`make migrate` against the running `make run` stack: account-api keeps running (the migrator's
lock is its own), the import is visible through the REST API to the migrated users, and
`make migrate ARGS=--rollback` takes it back out."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import bcrypt
import httpx
import psutil
import pyotp
import pytest
from brokerlink_devkit.devstack.embedded import free_port
from migrator.legacy_schema import create

ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "legacy password 1"
TOTP_SECRET = (
    "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP"  # 160 bits, as authenticator apps issue
)
STACK_VARS = (
    "NATS_URL",
    "DATABASE_URL",
    "BROKERLINK_NAMESPACE",
    "BROKERLINK_ENCRYPTION_KEYS",
)


def _env(data_dir: Path, port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in STACK_VARS}
    env.update(
        {
            "BROKERLINK_DATA_DIR": str(data_dir),
            "BROKERLINK_ROOT": str(ROOT),
            "API_PORT": str(port),
        }
    )
    return env


def _legacy(path: Path) -> Path:
    """A small legacy file as the legacy app writes it (WAL, camelCase per-account configs)."""
    pw = (
        bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=4))
        .decode()
        .replace("$2b$", "$2a$")
    )
    conn = create(path, newer=True)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute(
        "INSERT INTO users (id, email, password_hash, name, created_at, updated_at) VALUES "
        "(1, 'mig-one@example.com', ?, 'One', '2024-01-02 03:04:05', '2024-01-02 11:04:05'), "
        "(2, 'mig-two@example.com', ?, 'Two', '2024-01-02 03:04:05', '2024-01-02 11:04:05')",
        (pw, pw),
    )
    conn.execute(  # two-factor on, secret as another authenticator app stored it
        "INSERT INTO users (id, email, password_hash, name, two_factor_secret, two_factor_enabled)"
        " VALUES (3, 'mig-2fa@example.com', ?, 'Three', ?, 1)",
        (pw, TOTP_SECRET),
    )
    ib = json.dumps(
        {"type": "IB", "host": "127.0.0.1", "port": 4001, "clientId": 7},
        separators=(",", ":"),
    )
    conn.executemany(
        "INSERT INTO accounts (id, user_id, name, currency, account_number, original_capital, current_balance,"
        " integration_type, integration_config) VALUES (?, ?, ?, 'USD', ?, 100, 150, ?, ?)",
        [
            (10, 1, "IB per account", "U1010101", "IB", ib),
            (11, 1, "Schwab", "12345678", None, None),
            (20, 2, "Two's IB", "U2020202", None, None),
        ],
    )
    conn.executemany(
        "INSERT INTO account_balance_history (id, account_id, balance, date) VALUES (?, ?, ?, ?)",
        [(100, 10, 120.0, "2024-01-01"), (101, 10, 150.0, "2024-01-02T10:00:00.000Z")],
    )
    conn.executemany(
        "INSERT INTO ib_connections (id, user_id, name, host, port, client_id, target_account_id) VALUES (?, ?, ?, ?, ?, ?, ?)",
        [
            (1, 1, "old", "10.0.0.9", 4002, 9, 10),
            (2, 2, "two", "127.0.0.1", 4001, 8, 20),
        ],
    )
    conn.execute(
        "INSERT INTO schwab_settings (id, user_id, app_key, app_secret, refresh_token, token_expires_at)"
        " VALUES (1, 1, 'ONEKEY', 'one-secret', 'r1', ?)",
        (int(time.time()) + 900,),
    )
    conn.commit()
    conn.close()
    return path


def _wait_up(proc: subprocess.Popen[bytes], base: str, timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, "supervisor exited during start-up"
        try:
            login = httpx.post(
                f"{base}/api/auth/login",
                json={"email": "demo@example.com", "password": "demo-password-2026"},
                timeout=5,
            )
            if (
                login.status_code == 200
                and httpx.get(f"{base}/healthz", timeout=5).status_code == 200
            ):
                return  # the demo user is seeded last
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    raise AssertionError("stack did not come up")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    descendants = psutil.Process(proc.pid).children(recursive=True)
    os.killpg(proc.pid, signal.SIGINT)
    proc.wait(60)
    psutil.wait_procs(descendants, timeout=10)


def _make_migrate(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["make", "--no-print-directory", "migrate", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def _as(base: str, email: str) -> dict[str, str] | None:
    r = httpx.post(
        f"{base}/api/auth/login",
        json={"email": email, "password": PASSWORD},
        timeout=10,
    )
    return (
        {"Authorization": f"Bearer {r.json()['access_token']}"}
        if r.status_code == 200
        else None
    )


def _get(base: str, path: str, headers: dict[str, str]) -> Any:
    r = httpx.get(f"{base}{path}", headers=headers, timeout=10)
    assert r.status_code == 200, r.text
    return r.json()


@pytest.mark.slow
def test_make_migrate_into_the_running_stack(tmp_path: Path) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = _env(tmp_path / "data", port)
    legacy = _legacy(tmp_path / "investment_tracker.db")
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "brokerlink-run")],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=ROOT,
        start_new_session=True,
    )
    try:
        _wait_up(proc, base)
        dry = _make_migrate(env, f"LEGACY={legacy}", "ARGS=--dry-run")
        assert dry.returncode == 0, dry.stderr
        assert "dry run" in dry.stdout and _as(base, "mig-one@example.com") is None

        done = _make_migrate(
            env, f"LEGACY={legacy}", f"ARGS=--report {tmp_path / 'report.json'}"
        )
        assert done.returncode == 0, done.stderr
        assert proc.poll() is None  # account-api and the rest kept running

        one = _as(base, "mig-one@example.com")
        assert one is not None
        accounts = {a["account_number"]: a for a in _get(base, "/api/accounts", one)}
        assert set(accounts) == {"U1010101", "12345678"}
        ib = accounts["U1010101"]
        # the per-account config (camelCase) won over the older user-level row
        assert ib["integration_type"] == "IB"
        assert (
            ib["integration_config"]["host"],
            ib["integration_config"]["client_id"],
        ) == ("127.0.0.1", 7)
        assert (
            accounts["12345678"]["integration_type"] is None
        )  # Schwab: not verified, pending
        history = _get(base, f"/api/accounts/{ib['id']}/history", one)
        assert len(history) == 2
        pending = _get(base, "/api/integrations/pending-links", one)
        assert {(p["legacy_table"], p["type"]) for p in pending} == {
            ("ib_connections", "IB"),
            ("schwab_settings", "SCHWAB"),
        }
        # a two-factor user keeps the same authenticator: the password alone is not enough
        assert _as(base, "mig-2fa@example.com") is None
        code = pyotp.TOTP(TOTP_SECRET).now()
        r = httpx.post(
            f"{base}/api/auth/login",
            json={"email": "mig-2fa@example.com", "password": PASSWORD, "code": code},
            timeout=10,
        )
        assert r.status_code == 200, r.text

        two = _as(base, "mig-two@example.com")
        assert two is not None
        (acc,) = _get(base, "/api/accounts", two)
        assert (
            acc["integration_type"] == "IB"
            and acc["integration_config"]["client_id"] == 8
        )
        assert _get(base, "/api/integrations/pending-links", two) == []

        again = _make_migrate(env, f"LEGACY={legacy}")
        assert again.returncode == 0 and "nothing to change" in again.stdout, (
            again.stderr
        )

        back = _make_migrate(env, "ARGS=--rollback")
        assert back.returncode == 0, back.stderr
        assert (
            _as(base, "mig-one@example.com") is None
            and _as(base, "mig-two@example.com") is None
        )
        assert proc.poll() is None
    finally:
        if proc.poll() is None:
            _stop(proc)


def test_make_migrate_without_a_running_stack_is_one_line_exit_2(
    tmp_path: Path,
) -> None:
    env = _env(tmp_path / "nothing-here", free_port())
    result = _make_migrate(env, f"LEGACY={_legacy(tmp_path / 'l.db')}")
    assert result.returncode != 0
    lines = [
        line
        for line in result.stderr.splitlines()
        if line.startswith("brokerlink-migrate:")
    ]
    assert lines == [
        f"brokerlink-migrate: no running `make run` stack in {tmp_path / 'nothing-here'} "
        "(start `make run`, or set DATABASE_URL)"
    ]
