"""Read-path benchmark of account-api (not a test): 1,000 users x 20 accounts.

Starts embedded PostgreSQL and NATS, migrates, bulk-loads the data, serves account-api with
`ACCOUNT_API_WORKERS` uvicorn workers (default 2) and drives it with wrk (installed with apt when
missing and possible), 64 connections for 30 s per route, each request as a random user.
Prints requests/s and p50/p99 latency per route, with the core count.

    uv run python bench/api_bench.py [--users 1000] [--accounts 20] [--duration 30] [--connections 64]
"""

from __future__ import annotations

import argparse
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import psycopg
from account_api.auth.tokens import TokenIssuer
from account_api.migrate import upgrade
from brokerlink_devkit.devstack.embedded import (
    EmbeddedNats,
    EmbeddedPostgres,
    free_port,
    sqlalchemy_url,
)
from brokerlink_shared.crypto import generate_key

LUA = """
local tokens = {}
local paths = {}
%(entries)s
local n = #tokens
request = function()
  local i = math.random(1, n)
  return wrk.format("GET", paths[i], {["Authorization"] = "Bearer " .. tokens[i]})
end
done = function(summary, latency, requests)
  io.write(string.format("RESULT %%d %%d %%.3f %%.3f %%d\\n", summary.requests, summary.duration,
    latency:percentile(50) / 1000, latency:percentile(99) / 1000, summary.errors.status))
end
"""


def ensure_wrk() -> str:
    found = shutil.which("wrk")
    if found:
        return found
    if os.geteuid() == 0 and shutil.which("apt-get"):
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", "wrk"], check=False, capture_output=True
        )
    found = shutil.which("wrk")
    if not found:
        sys.exit("wrk is needed (apt-get install wrk)")
    return found


def load(uri: str, users: int, per_user: int) -> None:
    with psycopg.connect(uri) as conn, conn.cursor() as cur:
        with cur.copy("COPY users (email, name, password_hash) FROM STDIN") as copy:
            for u in range(users):
                copy.write_row((f"bench{u}@example.com", f"User {u}", "x"))
        cur.execute("SELECT id FROM users ORDER BY id")
        ids = [r[0] for r in cur.fetchall()]
        with cur.copy(
            "COPY accounts (user_id, name, currency, account_type, account_number, original_capital, current_balance) FROM STDIN"
        ) as copy:
            for uid in ids:
                for a in range(per_user):
                    copy.write_row(
                        (
                            uid,
                            f"Account {a}",
                            "USD",
                            "INVESTMENT",
                            f"U{uid:04d}{a:03d}",
                            "1000.00",
                            "1234.56",
                        )
                    )
        conn.commit()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--accounts", type=int, default=20)
    parser.add_argument("--duration", type=int, default=30)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument(
        "--workers", type=int, default=int(os.environ.get("ACCOUNT_API_WORKERS", "2"))
    )
    args = parser.parse_args()
    wrk = ensure_wrk()
    work = Path(tempfile.mkdtemp(prefix="api-bench-"))
    pg = EmbeddedPostgres(work / "pg")
    pg.start()
    nats = EmbeddedNats(work / "nats")
    nats.start()
    uri = pg.ensure_database("bench")
    upgrade(sqlalchemy_url(uri))
    t0 = time.perf_counter()
    load(uri, args.users, args.accounts)
    print(
        f"loaded {args.users} users x {args.accounts} accounts in {time.perf_counter() - t0:.1f}s"
    )
    secret = generate_key() + generate_key()
    port = free_port()
    env = {
        **os.environ,
        "DATABASE_URL": sqlalchemy_url(uri),
        "NATS_URL": nats.url,
        "BROKERLINK_ENCRYPTION_KEYS": generate_key(),
        "ACCOUNT_API_JWT_SECRET": secret,
        "API_PORT": str(port),
        "ACCOUNT_API_WORKERS": str(args.workers),
        "ACCOUNT_API_SCHEDULED_REFRESH_INTERVAL_S": "0",
        "BROKERLINK_LOG_LEVEL": "WARNING",
    }
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "account-api")], env=env
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if (
                    httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code
                    == 200
                ):
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        issuer = TokenIssuer(secret, 60, 1)
        with psycopg.connect(uri) as conn:
            rows = conn.execute(
                "SELECT user_id, id FROM accounts ORDER BY id"
            ).fetchall()
        by_user: dict[int, list[int]] = {}
        for uid, aid in rows:
            by_user.setdefault(uid, []).append(aid)
        sample = random.sample(sorted(by_user), min(500, len(by_user)))
        tokens = {uid: issuer.access_token(uid, uuid.uuid4()) for uid in sample}
        print(
            f"machine: {os.cpu_count()} cores; account-api: {args.workers} uvicorn workers; wrk 2 threads, {args.connections} connections, {args.duration}s per route"
        )
        for label, make_path in (
            ("GET /api/accounts", lambda uid: "/api/accounts"),
            (
                "GET /api/accounts/{id}",
                lambda uid: f"/api/accounts/{random.choice(by_user[uid])}",
            ),
        ):
            entries = "\n".join(
                f'tokens[{i + 1}] = "{tokens[uid]}"; paths[{i + 1}] = "{make_path(uid)}"'
                for i, uid in enumerate(sample)
            )
            script = work / "bench.lua"
            script.write_text(LUA % {"entries": entries})
            subprocess.run(
                [
                    wrk,
                    "-t2",
                    f"-c{args.connections}",
                    "-d2s",
                    "-s",
                    str(script),
                    f"http://127.0.0.1:{port}",
                ],
                capture_output=True,
                check=False,
            )
            out = subprocess.run(
                [
                    wrk,
                    "-t2",
                    f"-c{args.connections}",
                    f"-d{args.duration}s",
                    "-s",
                    str(script),
                    f"http://127.0.0.1:{port}",
                ],
                capture_output=True,
                text=True,
                check=False,
            ).stdout
            match = re.search(r"RESULT (\d+) (\d+) ([\d.]+) ([\d.]+) (\d+)", out)
            if not match:
                print(out)
                continue
            requests, duration_us, p50, p99, errors = match.groups()
            rps = int(requests) / (int(duration_us) / 1e6)
            print(
                f"{label:28s} {rps:8.0f} req/s   p50 {float(p50):6.2f} ms   p99 {float(p99):6.2f} ms   non-2xx {errors}"
            )
    finally:
        server.terminate()
        server.wait(15)
        nats.stop()
        pg.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
