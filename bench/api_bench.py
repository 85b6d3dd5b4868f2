"""Read-path benchmark of account-api (not a test), on the legacy app's perf data shape.

Loads 1,000 users x 20 accounts x 5 balance-history rows (the shape of the legacy app's perf
data: every 5th account a BANK account, monthly history whose last row equals the balance),
serves account-api with its production settings (`ACCOUNT_API_WORKERS` uvicorn workers,
default 2) on embedded PostgreSQL and NATS, and drives it with wrk: 2 threads, 64 connections,
a warm-up and then `--duration` seconds per route, walking round-robin over the tokens of 200
users spread over all users (as the legacy app's bench does). Routes:

- `GET /api/accounts?include=history` — the same content as the legacy app's list;
- `GET /api/accounts/{id}` — one of that user's own accounts;
- `GET /api/accounts` — accounts without their history.

Prints requests/s, p50/p99 and non-2xx per route, the core count, the server's CPU time per
request and wrk's own CPU use. `--target URL --tokens F --ids F` drives another server (the
legacy app) with the same load instead; `--serve DIR` loads and serves ours and writes the
tokens/ids files there until interrupted (for `bench/vs_legacy.sh`).

    uv run python bench/api_bench.py [--duration 30] [--json out.json]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import httpx
import psutil  # type: ignore[import-untyped]
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

# Round-robin over users like the legacy app's rotate.lua; `detail` walks each user's own ids.
LUA = r"""
local tokens, ids = {}, {}
local counter = 0
local path_base = "%(path)s"
local mode = "%(mode)s"
function setup(thread) thread:set("tid", counter); counter = counter + 1 end
function init(args)
  for line in io.lines("%(tokens)s") do if #line > 0 then tokens[#tokens + 1] = line end end
  for line in io.lines("%(ids)s") do
    local t = {}
    for w in line:gmatch("%%S+") do t[#t + 1] = w end
    ids[#ids + 1] = t
  end
  idx = (tid or 0) * 97
end
function request()
  idx = idx + 1
  local n = #tokens
  local i = (idx %% n) + 1
  local path = path_base
  if mode == "detail" then
    local list = ids[i]
    path = path_base .. list[(math.floor(idx / n) %% #list) + 1]
  end
  return wrk.format("GET", path, {["Authorization"] = "Bearer " .. tokens[i]})
end
done = function(summary, latency, requests)
  io.write(string.format("RESULT %%d %%d %%.3f %%.3f %%d %%d\n", summary.requests,
    summary.duration, latency:percentile(50) / 1000, latency:percentile(99) / 1000,
    summary.errors.status, summary.errors.connect + summary.errors.read +
    summary.errors.write + summary.errors.timeout))
end
"""

OURS = {
    "list+history": ("/api/accounts?include=history", "list"),
    "detail": ("/api/accounts/", "detail"),
    "list": ("/api/accounts", "list"),
}
LEGACY = {
    "list+history": (
        "/api/accounts",
        "list",
    ),  # the legacy list always includes history
    "detail": ("/api/accounts/", "detail"),
}


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


def load(uri: str, users: int, per_user: int, history: int) -> None:
    """The legacy perf data shape, written with COPY."""
    today = dt.date.today()
    with psycopg.connect(uri) as conn, conn.cursor() as cur:
        with cur.copy("COPY users (email, name, password_hash) FROM STDIN") as copy:
            for u in range(users):
                copy.write_row((f"perf{u}@example.com", f"Perf User {u}", "x"))
        cur.execute("SELECT id FROM users ORDER BY id")
        ids = [r[0] for r in cur.fetchall()]
        with cur.copy(
            "COPY accounts (user_id, name, currency, account_type, account_number,"
            " original_capital, current_balance) FROM STDIN"
        ) as copy:
            for uid in ids:
                for a in range(per_user):
                    number = (
                        f"{10_000_000 + uid * 100 + a}",
                        f"U{1_000_000 + uid * 100 + a}",
                        None,
                    )[a % 3]
                    copy.write_row(
                        (
                            uid,
                            f"Account {a + 1}",
                            "HKD",
                            "BANK" if a % 5 == 4 else "INVESTMENT",
                            number,
                            f"{10_000 + a * 100}.00",
                            f"{10_000 + a * 100 + history * 50}.00",
                        )
                    )
        cur.execute("SELECT id, original_capital FROM accounts ORDER BY id")
        accounts = cur.fetchall()
        with cur.copy(
            "COPY account_balance_history (account_id, date, balance, note, source)"
            " FROM STDIN"
        ) as copy:
            for aid, capital in accounts:
                for h in range(history):
                    copy.write_row(
                        (
                            aid,
                            today - dt.timedelta(days=30 * (history - 1 - h)),
                            capital + 50 * (h + 1),
                            "Initial balance" if h == 0 else "Balance updated",
                            "MANUAL",
                        )
                    )
        conn.commit()


def write_rotation(
    uri: str, secret: str, bench_users: int, out: Path
) -> tuple[Path, Path]:
    """tokens.txt (one bearer token per line) and ids.txt (that user's account ids), for
    `bench_users` users spread evenly over all users: the legacy bench's formats."""
    with psycopg.connect(uri) as conn:
        rows = conn.execute("SELECT user_id, id FROM accounts ORDER BY id").fetchall()
    by_user: dict[int, list[int]] = {}
    for uid, aid in rows:
        by_user.setdefault(uid, []).append(aid)
    users = sorted(by_user)
    step = max(1, len(users) // bench_users)
    chosen = users[::step][:bench_users]
    issuer = TokenIssuer(secret, 24 * 60, 1)
    tokens, ids = out / "tokens.txt", out / "ids.txt"
    tokens.write_text(
        "".join(f"{issuer.access_token(u, uuid.uuid4())}\n" for u in chosen)
    )
    ids.write_text("".join(" ".join(map(str, by_user[u])) + "\n" for u in chosen))
    return tokens, ids


def run_wrk(
    wrk: str,
    base: str,
    path: str,
    mode: str,
    tokens: Path,
    ids: Path,
    *,
    duration: int,
    warmup: int,
    connections: int,
    server_pids: list[int],
    work: Path,
) -> dict[str, Any]:
    script = work / f"{mode}-{abs(hash(path))}.lua"
    script.write_text(LUA % {"path": path, "mode": mode, "tokens": tokens, "ids": ids})
    cmd = [wrk, "-t2", f"-c{connections}", "--timeout", "10s", "-s", str(script), base]
    if warmup:
        subprocess.run(
            [*cmd[:1], f"-d{warmup}s", *cmd[1:]], capture_output=True, check=False
        )
    servers = _tree(server_pids)
    server_cpu = _cpu(servers)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = subprocess.run(
        [*cmd[:1], f"-d{duration}s", *cmd[1:]],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    server_cpu = _cpu(servers) - server_cpu
    match = re.search(r"RESULT (\d+) (\d+) ([\d.]+) ([\d.]+) (\d+) (\d+)", out)
    if not match:
        raise SystemExit(f"wrk printed no result:\n{out}")
    requests, duration_us, p50, p99, non2xx, socket_errors = match.groups()
    rps = int(requests) / (int(duration_us) / 1e6)
    return {
        "req_per_s": round(rps, 1),
        "p50_ms": float(p50),
        "p99_ms": float(p99),
        "non_2xx": int(non2xx),
        "socket_errors": int(socket_errors),
        "requests": int(requests),
        "server_cpu_ms_per_request": round(1000 * server_cpu / max(1, int(requests)), 3)
        if servers
        else None,
        "wrk_cpu_s": round(
            (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), 1
        ),
    }


def _tree(pids: list[int]) -> list[psutil.Process]:
    procs: list[psutil.Process] = []
    for pid in pids:
        with suppress(psutil.Error):
            root = psutil.Process(pid)
            procs += [root, *root.children(recursive=True)]
    return procs


def _cpu(procs: list[psutil.Process]) -> float:
    total = 0.0
    for p in procs:
        with suppress(psutil.Error):
            t = p.cpu_times()
            total += t.user + t.system
    return total


@contextmanager
def serve_ours(
    work: Path, users: int, per_user: int, history: int, workers: int
) -> Iterator[tuple[str, Path, Path, list[int]]]:
    """Embedded PostgreSQL + NATS, the perf data, account-api; yields (base, tokens, ids, pids)."""
    pg = EmbeddedPostgres(work / "pg")
    pg.start()
    bus = EmbeddedNats(work / "nats")
    bus.start()
    server: subprocess.Popen[bytes] | None = None
    try:
        uri = pg.ensure_database("bench")
        upgrade(sqlalchemy_url(uri))
        t0 = time.perf_counter()
        load(uri, users, per_user, history)
        with psycopg.connect(uri, autocommit=True) as conn:
            conn.execute("VACUUM ANALYZE")
        print(
            f"loaded {users} users x {per_user} accounts x {history} history rows "
            f"in {time.perf_counter() - t0:.1f} s",
            flush=True,
        )
        secret = generate_key() + generate_key()
        tokens, ids = write_rotation(uri, secret, 200, work)
        port = free_port()
        env = {
            **{k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"},
            "DATABASE_URL": sqlalchemy_url(uri),
            "NATS_URL": bus.url,
            "BROKERLINK_ENCRYPTION_KEYS": generate_key(),
            "ACCOUNT_API_JWT_SECRET": secret,
            "API_PORT": str(port),
            "ACCOUNT_API_WORKERS": str(workers),
            "ACCOUNT_API_SCHEDULED_REFRESH_INTERVAL_S": "0",
            "BROKERLINK_LOG_LEVEL": "WARNING",
        }
        server = subprocess.Popen(
            [str(Path(sys.executable).parent / "account-api")], env=env
        )
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            with suppress(httpx.HTTPError):
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise SystemExit("account-api did not come up")
            time.sleep(0.2)
        yield base, tokens, ids, [server.pid]
    finally:
        if server is not None:
            server.terminate()
            server.wait(15)
        bus.stop()
        pg.stop()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--accounts", type=int, default=20)
    parser.add_argument("--history", type=int, default=5)
    parser.add_argument("--duration", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument(
        "--workers", type=int, default=int(os.environ.get("ACCOUNT_API_WORKERS", "2"))
    )
    parser.add_argument(
        "--routes", default=",".join(OURS), help=f"comma-separated of {', '.join(OURS)}"
    )
    parser.add_argument("--target", help="drive this server instead of ours")
    parser.add_argument("--tokens", type=Path, help="with --target")
    parser.add_argument("--ids", type=Path, help="with --target")
    parser.add_argument(
        "--server-pid", type=int, action="append", default=[], help="with --target"
    )
    parser.add_argument("--label", default="brokerlink")
    parser.add_argument("--serve", type=Path, help="serve ours until interrupted")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    if not set(args.routes.split(",")) <= set(OURS):
        parser.error(f"--routes: each one of {', '.join(OURS)}")
    wrk = ensure_wrk()
    work = Path(tempfile.mkdtemp(prefix="api-bench-"))
    try:
        if args.serve:
            with serve_ours(
                work, args.users, args.accounts, args.history, args.workers
            ) as (base, tokens, ids, pids):
                args.serve.mkdir(parents=True, exist_ok=True)
                shutil.copy(tokens, args.serve / "tokens.txt")
                shutil.copy(ids, args.serve / "ids.txt")
                (args.serve / "server.json").write_text(
                    json.dumps({"base": base, "pids": pids})
                )
                stop = False

                def _stop(*_: Any) -> None:
                    nonlocal stop
                    stop = True

                signal.signal(signal.SIGTERM, _stop)
                signal.signal(signal.SIGINT, _stop)
                print(f"serving {base}", flush=True)
                while not stop:
                    time.sleep(0.5)
            return
        if args.target:
            if not (args.tokens and args.ids):
                sys.exit("--target needs --tokens and --ids")
            routes = {
                k: v
                for k, v in (LEGACY if args.label == "legacy" else OURS).items()
                if k in args.routes.split(",")
            }
            results = drive(
                wrk,
                args,
                args.target,
                args.tokens,
                args.ids,
                args.server_pid,
                routes,
                work,
            )
        else:
            with serve_ours(
                work, args.users, args.accounts, args.history, args.workers
            ) as (base, tokens, ids, pids):
                routes = {k: v for k, v in OURS.items() if k in args.routes.split(",")}
                results = drive(wrk, args, base, tokens, ids, pids, routes, work)
        if args.json:
            args.json.write_text(json.dumps(results, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)


def drive(
    wrk: str,
    args: argparse.Namespace,
    base: str,
    tokens: Path,
    ids: Path,
    pids: list[int],
    routes: dict[str, tuple[str, str]],
    work: Path,
) -> dict[str, Any]:
    print(
        f"{args.label}: machine {os.cpu_count()} cores; wrk 2 threads, {args.connections} "
        f"connections, {args.warmup} s warm-up + {args.duration} s per route; tokens of "
        f"{sum(1 for _ in tokens.open())} users rotated",
        flush=True,
    )
    results: dict[str, Any] = {
        "label": args.label,
        "cores": os.cpu_count(),
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "routes": {},
    }
    for name, (path, mode) in routes.items():
        r = run_wrk(
            wrk,
            base,
            path,
            mode,
            tokens,
            ids,
            duration=args.duration,
            warmup=args.warmup,
            connections=args.connections,
            server_pids=pids,
            work=work,
        )
        results["routes"][name] = r
        shown = path + ("{id}" if mode == "detail" else "")
        cpu = (
            f"   server CPU {r['server_cpu_ms_per_request']:.2f} ms/req"
            if r["server_cpu_ms_per_request"] is not None
            else ""
        )
        print(
            f"{args.label:10s} GET {shown:32s} {r['req_per_s']:8.0f} req/s   "
            f"p50 {r['p50_ms']:7.2f} ms   p99 {r['p99_ms']:7.2f} ms   non-2xx "
            f"{r['non_2xx']}  socket errors {r['socket_errors']}{cpu}   wrk CPU "
            f"{r['wrk_cpu_s']:.1f} s",
            flush=True,
        )
    return results


if __name__ == "__main__":
    main()
