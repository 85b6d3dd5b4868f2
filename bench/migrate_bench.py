"""Benchmark (not a timed test): generate a legacy database and migrate it with brokerlink-migrate.

Default size is the issue's goal: 100,000 users, 300,000 accounts, 1,000,000 history rows,
100,000 ib_connections and 50,000 schwab_settings (goal on 2 cores: <= 40 s including verification, <= 400 MB peak RSS; the rerun <= 10 s).
`--scale 0.1` runs a tenth of that. The migrator runs as its own process (so its peak RSS —
with its planning process's, summed — is measured apart from the bench's) against
DATABASE_URL when set, else an embedded PostgreSQL 16 (pgserver).
A second run (idempotent: changes nothing) is timed too.

    uv run python bench/migrate_bench.py [--scale 1.0] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from brokerlink_shared.crypto import generate_key
from migrator.legacy_schema import create

HASH = "$2a$10$abcdefghijklmnopqrstuuM9b3Xh8d7Yq9Yb2j0Q6x1m3fQe5xW0a"


def generate(path: Path, scale: float, seed: int = 7) -> dict[str, int]:
    # seeded synthetic data, the same on every run: not a secret
    rnd = random.Random(seed)  # noqa: S311
    n_users = int(100_000 * scale)
    n_accounts = int(300_000 * scale)
    n_history = int(1_000_000 * scale)
    n_ib = int(100_000 * scale)
    n_schwab = int(50_000 * scale)
    conn = create(path, newer=True)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = OFF")
    conn.executemany(
        "INSERT INTO users (id, email, password_hash, name, base_currency, two_factor_secret, two_factor_enabled, created_at, updated_at)"
        " VALUES (?, ?, ?, ?, 'HKD', ?, ?, '2024-01-01 00:00:00', '2024-01-01 00:00:00')",
        (
            (
                u,
                f"user{u}@example.com",
                HASH,
                f"User {u}",
                "JBSWY3DPEHPK3PXP" if u % 5 == 0 else None,
                u % 5 == 0,
            )
            for u in range(1, n_users + 1)
        ),
    )
    per_user = max(1, n_accounts // n_users)

    def accounts():  # type: ignore[no-untyped-def]
        for a in range(1, n_accounts + 1):
            user = (a - 1) // per_user + 1
            slot = (a - 1) % per_user
            if user > n_users:
                user = rnd.randint(1, n_users)
            if slot == 0:
                name, number = "IB Main", f"U{1000000 + a}"
            elif slot == 1:
                name, number = "Schwab Brokerage", f"{10000000 + a}"[-8:]
            else:
                name, number = "Bank", None if a % 2 else ""
            kind = cfg = None
            # a few accounts carry per-account values already, as the legacy app writes them
            # (JSON.stringify: camelCase, the redundant type, optional keys absent)
            if a % 97 == 0 and slot == 0:
                kind, cfg = (
                    "IB",
                    json.dumps(
                        {
                            "type": "IB",
                            "host": "127.0.0.1",
                            "port": 4001,
                            "clientId": 99,
                        },
                        separators=(",", ":"),
                    ),
                )
            elif a % 89 == 0 and slot == 1:
                kind, cfg = (
                    "SCHWAB",
                    json.dumps(
                        {
                            "type": "SCHWAB",
                            "appKey": f"APP{a}",
                            "appSecret": f"secret-{a}",
                            "refreshToken": f"r-{a}",
                            "tokenExpiresAt": 1_800_000_000,
                            "accountHash": f"H{a}",
                        },
                        separators=(",", ":"),
                    ),
                )
            yield (
                a,
                user,
                name,
                "USD",
                "INVESTMENT" if slot < 2 else "BANK",
                number,
                1000.0,
                round(rnd.uniform(0, 1e6), 2),
                kind,
                cfg,
            )

    conn.executemany(
        "INSERT INTO accounts (id, user_id, name, currency, account_type, account_number, original_capital, current_balance,"
        " integration_type, integration_config, last_updated, created_at, updated_at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, '2024-06-01 00:00:00', '2024-01-01 00:00:00', '2024-06-01 00:00:00')",
        accounts(),
    )
    days = max(1, n_history // n_accounts + 1)

    def history():  # type: ignore[no-untyped-def]
        hid = 0
        for a in range(1, n_accounts + 1):
            for d in range(days):
                hid += 1
                if hid > n_history:
                    return
                yield (
                    hid,
                    a,
                    round(rnd.uniform(0, 1e6), 2),
                    None,
                    f"2024-{1 + d // 28:02d}-{1 + d % 28:02d} 12:00:00",
                )

    conn.executemany(
        "INSERT INTO account_balance_history (id, account_id, balance, note, date) VALUES (?, ?, ?, ?, ?)",
        history(),
    )

    def ibs():  # type: ignore[no-untyped-def]
        for i in range(1, n_ib + 1):
            user = (i - 1) % n_users + 1
            target = (user - 1) * per_user + 1
            if i % 50 == 0:
                target = None  # NULL target
            elif i % 51 == 0:
                target = n_accounts + 10 + i  # dangling
            yield (i, user, f"conn {i}", "127.0.0.1", 4001, i, target)

    conn.executemany(
        "INSERT INTO ib_connections (id, user_id, name, host, port, client_id, target_account_id, last_connected)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, '2024-06-01 00:00:00')",
        ibs(),
    )
    now = int(time.time())
    conn.executemany(
        "INSERT INTO schwab_settings (id, user_id, app_key, app_secret, access_token, refresh_token, token_expires_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
        (
            (
                s,
                s * 2 - 1 if s * 2 - 1 <= n_users else s,
                f"KEY{s}",
                secrets.token_hex(8),
                "acc",
                "ref",
                now + (900 if s % 2 else -86400 * 30),
            )
            for s in range(1, n_schwab + 1)
        ),
    )
    conn.commit()
    conn.close()
    return {
        "users": n_users,
        "accounts": n_accounts,
        "history": n_history,
        "ib_connections": n_ib,
        "schwab_settings": n_schwab,
    }


def _rss_mb(pid: int) -> float:
    """Resident memory of `pid` and its children now (Linux /proc), in MB; 0 when gone."""
    pids = {pid}
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            pids.update(int(p) for p in task.read_text().split())
        except OSError:
            continue
    total = 0.0
    for p in pids:
        try:
            status = Path(f"/proc/{p}/status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1]) / 1024
    return total


def run_migrator(
    source: Path, env: dict[str, str], report: Path
) -> tuple[float, float, int, str]:
    """(seconds, peak RSS in MB, exit code, output). The migrator reads and plans the users
    in a process of its own: the peak is the larger of the summed RSS of the migrator and
    its children, sampled every 100 ms, and the largest single process's own peak (`wait4`):
    what the import holds in all, not one process's share."""
    start = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "migrator.cli",
                "--source",
                str(source),
                "--report",
                str(report),
            ],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
        )
        sampled = [0.0]
        done = threading.Event()

        def sample() -> None:
            while not done.is_set():
                sampled[0] = max(sampled[0], _rss_mb(proc.pid))
                done.wait(0.1)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        # wait4: this child's own peak (and its children's), not the maximum over every
        # child this bench ever waited for (RUSAGE_CHILDREN, which also holds the embedded
        # PostgreSQL's initdb)
        _pid, status, usage = os.wait4(proc.pid, 0)
        done.set()
        sampler.join()
        proc.returncode = os.waitstatus_to_exitcode(status)
        seconds = time.perf_counter() - start
        out.seek(0)
        text = out.read().strip()
    return seconds, max(usage.ru_maxrss / 1024, sampled[0]), proc.returncode, text


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument(
        "--keep", type=Path, help="work directory to keep (default: a temporary one)"
    )
    parser.add_argument(
        "--source",
        type=Path,
        help="migrate this legacy database instead of generating one",
    )
    args = parser.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="migrate-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    if args.source:
        source = args.source.resolve()
        print(f"source {source} ({source.stat().st_size / 1e6:.0f} MB)")
    else:
        source = work / "investment_tracker.db"
        source.unlink(missing_ok=True)
        t0 = time.perf_counter()
        sizes = generate(source, args.scale)
        print(
            f"generated {sizes} in {time.perf_counter() - t0:.1f} s ({source.stat().st_size / 1e6:.0f} MB)"
        )

    embedded = None
    url = os.environ.get("DATABASE_URL")
    if url:
        import psycopg

        name = f"migrate_bench_{secrets.token_hex(4)}"
        admin = url.replace("postgresql+psycopg://", "postgresql://")
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        base, _, query = admin.partition("?")
        url = base.rsplit("/", 1)[0] + f"/{name}" + (f"?{query}" if query else "")
    else:
        from brokerlink_devkit.devstack.embedded import EmbeddedPostgres

        embedded = EmbeddedPostgres(work / "pg")
        embedded.start()
        url = embedded.ensure_database(f"migrate_bench_{secrets.token_hex(4)}")
    env = {
        **os.environ,
        "DATABASE_URL": url,
        "BROKERLINK_ENCRYPTION_KEYS": generate_key(),
        "BROKERLINK_NAMESPACE": "bench",
    }
    try:
        seconds, peak, code, out = run_migrator(source, env, work / "report.json")
        print(out.splitlines()[-1] if out else "")
        print(
            f"first run:  exit {code}, {seconds:.1f} s, peak RSS {peak:.0f} MB, cores {os.cpu_count()}, "
            f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
        )
        seconds2, peak2, code2, out2 = run_migrator(source, env, work / "report2.json")
        print(out2.splitlines()[-1] if out2 else "")
        print(
            f"second run: exit {code2}, {seconds2:.1f} s, peak RSS {peak2:.0f} MB, "
            f"{seconds2 / seconds:.2f}x the first run"
        )
    finally:
        if embedded is not None:
            embedded.stop()
        if args.keep is None:
            # ~1.7 GB at full size (the generated file, PostgreSQL's data): left behind, a
            # few runs filled this machine's disk
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
