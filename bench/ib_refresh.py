"""Benchmark of the refresh pipeline on the goal's whole path (not a test):

    POST /api/accounts/{id}/integration/refresh  (account-api: refresh + outbox row, committed)
    -> outbox relay -> NATS JetStream (file storage, `sync_interval: always`)
    -> ib-connector -> TWS protocol over TCP -> IB Gateway simulator
    -> balance.updated -> account-api consumer -> balance, snapshots, history, refresh committed

Every part runs as its own OS process, as in production: embedded PostgreSQL (fsync on),
nats-server, the simulator, one ib-connector and account-api (its uvicorn workers). Each
account has its own gateway session (N accounts over M simulated gateways), and the connector
re-reads the account from the simulator on every refresh (`subscription_max_age_s=0`: nothing
is answered from ib_async's cache).

How refreshes are requested (`--via`): `bulk` (default) is how many refreshes arrive in
production, a user's "refresh all" (`POST /api/integrations/refresh`, 20 accounts per user, the
same use case the scheduler runs); `single` is one `POST /api/accounts/{id}/integration/refresh`
per refresh.

Paced phase: refresh i is due at t0 + i/rate and is requested then (in bulk mode, a user's 20
refreshes are due together), whatever is still in flight; its latency runs from that due time to the NOTIFY that account-api's consumer sends in
the transaction storing the balance (delivered on commit), so a slow system cannot hide its
queue (no coordinated omission). At the end every refresh must have ended: the bench counts
the refreshes table by status. Prints the core count and every process's CPU seconds and peak
RSS, the bench's own included, and where a refresh's time goes from the API transaction's start
(the relay's ack, the connector's read, the consumer's transaction). `--lazy-fsync` shows the lighter NATS setting, labelled.

    uv run python bench/ib_refresh.py --accounts 1000 --gateways 50 --rate 500 --duration 20
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import psutil  # type: ignore[import-untyped]
import psycopg
from account_api.auth.tokens import TokenIssuer
from account_api.integrations.waiter import CHANNEL as REFRESH_CHANNEL
from account_api.migrate import upgrade
from brokerlink_devkit.devstack.embedded import (
    EmbeddedNats,
    EmbeddedPostgres,
    free_port,
    sqlalchemy_url,
)
from brokerlink_shared.crypto import generate_key

ACCOUNTS_PER_USER = 20


class ProcessTree:
    """CPU seconds and peak memory of one process (and its children), sampled in the
    background. `shared_memory` trees (PostgreSQL) count proportional set size, so shared
    buffers are not counted once per backend."""

    def __init__(
        self, pid: int, *, children: bool = True, shared_memory: bool = False
    ) -> None:
        self.root = psutil.Process(pid)
        self.children = children
        self.shared_memory = shared_memory
        self.peak_rss = 0
        self._cpu_at_mark = 0.0
        self._seen: dict[int, psutil.Process] = {}

    def _procs(self) -> list[psutil.Process]:
        with contextlib.suppress(psutil.Error):
            found = [self.root]
            if self.children:
                found += self.root.children(recursive=True)
            for proc in found:
                self._seen.setdefault(proc.pid, proc)
        return list(self._seen.values())

    def cpu_s(self) -> float:
        total = 0.0
        for proc in self._procs():
            with contextlib.suppress(psutil.Error):
                t = proc.cpu_times()
                total += t.user + t.system + t.children_user + t.children_system
        return total

    def rss(self) -> int:
        total = 0
        for proc in self._procs():
            with contextlib.suppress(psutil.Error):
                total += (
                    proc.memory_full_info().pss
                    if self.shared_memory
                    else proc.memory_info().rss
                )
        return total

    def sample(self) -> None:
        self.peak_rss = max(self.peak_rss, self.rss())

    def mark(self) -> None:
        self._cpu_at_mark = self.cpu_s()

    def since_mark(self) -> float:
        return self.cpu_s() - self._cpu_at_mark


def _scenario(
    accounts: int, gateways: int
) -> tuple[dict[str, Any], list[tuple[str, str, int]]]:
    """M gateways, each managing its share of the accounts; returns (scenario, [(gateway, code, client_id)])."""
    per_gateway = -(-accounts // gateways)
    specs, plan = [], []
    for g in range(gateways):
        codes = [
            f"U{7_000_000 + g * 1000 + i}"
            for i in range(per_gateway)
            if g * per_gateway + i < accounts
        ]
        if not codes:
            break
        specs.append(
            {
                "name": f"gw{g}",
                "port": 0,
                "max_clients": len(codes) + 8,
                "accounts": [
                    {
                        "code": code,
                        "cash": {"USD": str(10_000 + i), "HKD": "5000"},
                        "fx_rates": {"HKD": "0.128"},
                        "positions": [
                            {
                                "symbol": "AAPL",
                                "quantity": "10",
                                "average_cost": "150",
                                "market_price": "190",
                            },
                            {
                                "symbol": "MSFT",
                                "quantity": "5",
                                "average_cost": "300",
                                "market_price": "410",
                            },
                            {
                                "symbol": "700",
                                "currency": "HKD",
                                "quantity": "100",
                                "average_cost": "320",
                                "market_price": "380",
                            },
                        ],
                    }
                    for i, code in enumerate(codes)
                ],
            }
        )
        plan += [(f"gw{g}", code, i + 1) for i, code in enumerate(codes)]
    return {"gateways": specs}, plan


def _load_accounts(uri: str, count: int) -> list[tuple[int, int]]:
    """Users with 20 manual accounts each; returns [(user_id, account_id)]."""
    users = -(-count // ACCOUNTS_PER_USER)
    with psycopg.connect(uri) as conn, conn.cursor() as cur:
        with cur.copy("COPY users (email, name, password_hash) FROM STDIN") as copy:
            for u in range(users):
                copy.write_row((f"ibbench{u}@example.com", f"User {u}", "x"))
        cur.execute("SELECT id FROM users ORDER BY id")
        user_ids = [r[0] for r in cur.fetchall()]
        with cur.copy(
            "COPY accounts (user_id, name, currency, original_capital, current_balance) FROM STDIN"
        ) as copy:
            for i in range(count):
                copy.write_row(
                    (user_ids[i // ACCOUNTS_PER_USER], f"IB {i}", "USD", "0", "0")
                )
        cur.execute("SELECT user_id, id FROM accounts ORDER BY id")
        return [(r[0], r[1]) for r in cur.fetchall()]


def _percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, int(len(sorted_values) * q))]


async def _wait_healthy(base: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    async with httpx.AsyncClient(base_url=base, timeout=2) as client:
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if (await client.get("/healthz")).status_code == 200:
                    return
            await asyncio.sleep(0.2)
    raise SystemExit("account-api did not come up")


async def _wait_connected(uri: str, total: int, timeout_s: float) -> float:
    started = time.perf_counter()
    async with await psycopg.AsyncConnection.connect(uri, autocommit=True) as conn:
        while True:
            row = await (
                await conn.execute(
                    "SELECT count(*) FROM accounts WHERE integration_status = 'connected'"
                )
            ).fetchone()
            connected = int(row[0]) if row else 0
            if connected >= total:
                return time.perf_counter() - started
            if time.perf_counter() - started > timeout_s:
                raise SystemExit(f"only {connected} of {total} sessions connected")
            await asyncio.sleep(0.5)


def _spawn(cmd: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
    return subprocess.Popen(cmd, **kwargs)


def _start_profilers(
    out: Path | None, pids: dict[str, int], duration_s: float
) -> list[subprocess.Popen[bytes]]:
    if out is None:
        return []
    spy = shutil.which("py-spy")
    if spy is None:
        raise SystemExit("--profile needs py-spy on PATH (uv tool install py-spy)")
    out.mkdir(parents=True, exist_ok=True)
    return [
        _spawn(
            [
                spy,
                "record",
                "--subprocesses",
                "--nonblocking",
                "--format",
                "raw",
                "--duration",
                str(int(duration_s)),
                "--pid",
                str(pid),
                "--output",
                str(out / f"{name}.txt"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for name, pid in pids.items()
    ]


# Where a refresh's time goes, from the API transaction's start (`requested_at`, also the
# outbox row's `created_at`): the relay recording JetStream's ack (the outbox row's
# `published_at`, committed after the batch's acks, so under load it can follow the connector's
# read of the message it published), the connector's read of the account (`balance_as_of`, which
# an account keeps for its last refresh only) and the consumer's transaction (`completed_at`).
# Percentiles in ms over the same refreshes: each account's last one of the paced phase (under
# overload, the slowest).
_STAGES_SQL = """
WITH last AS (
    SELECT DISTINCT ON (account_id) id, account_id, requested_at, completed_at
    FROM refreshes WHERE requested_at >= %(since)s AND status = 'succeeded'
    ORDER BY account_id, requested_at DESC
), staged AS (
    SELECT l.*, a.balance_as_of, o.published_at FROM last l
    JOIN accounts a ON a.id = l.account_id
    JOIN outbox o ON o.family = 'refresh.requested' AND o.created_at >= %(since)s
        AND (convert_from(o.body, 'UTF8')::jsonb -> 'payload' ->> 'refresh_id')::uuid = l.id
)
SELECT stage, percentile_cont(0.5) WITHIN GROUP (ORDER BY ms),
       percentile_cont(0.99) WITHIN GROUP (ORDER BY ms)
FROM staged, LATERAL (VALUES
    (1, 'relay recorded its ack', 1000 * extract(epoch FROM published_at - requested_at)),
    (2, 'connector read the account', 1000 * extract(epoch FROM balance_as_of - requested_at)),
    (3, 'consumer''s transaction began', 1000 * extract(epoch FROM completed_at - requested_at))
) AS s(n, stage, ms)
GROUP BY n, stage ORDER BY n
"""


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--accounts", type=int, default=1000)
    parser.add_argument("--gateways", type=int, default=50)
    parser.add_argument("--rate", type=float, default=500.0, help="refreshes/s")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds")
    parser.add_argument(
        "--drain", type=float, default=60.0, help="seconds to wait for stragglers"
    )
    parser.add_argument("--api-workers", type=int, default=2)
    parser.add_argument(
        "--via",
        choices=("bulk", "single"),
        default="bulk",
        help="request refreshes per user (refresh all) or one account at a time",
    )
    parser.add_argument(
        "--lazy-fsync",
        action="store_true",
        help="NATS without sync_interval: always (the lighter, non-production path)",
    )
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument(
        "--profile",
        type=Path,
        help="record py-spy profiles (collapsed stacks) of account-api and ib-connector "
        "during the paced phase into this directory (py-spy must be on PATH)",
    )
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="ib-bench-"))
    pg = EmbeddedPostgres(work / "pg")
    pg.start()
    bus = EmbeddedNats(work / "nats", sync_always=not args.lazy_fsync)
    nats_url = bus.start()
    children: list[subprocess.Popen[bytes]] = []
    try:
        uri = pg.ensure_database("ibbench")
        upgrade(sqlalchemy_url(uri))
        owners = _load_accounts(uri, args.accounts)
        scenario, plan = _scenario(args.accounts, args.gateways)
        (work / "scenario.json").write_text(json.dumps(scenario))
        namespace = f"ibb{uuid.uuid4().hex[:6]}"
        env = {
            # Children write their bytecode once instead of compiling every import again.
            **{k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"},
            "NATS_URL": nats_url,
            "BROKERLINK_NAMESPACE": namespace,
            "BROKERLINK_LOG_LEVEL": "WARNING",
            # the simulated gateways are on loopback (account-api checks the same reach)
            "IB_CONNECTOR_ALLOWED_NETWORKS": "127.0.0.0/8",
        }
        logs = work / "logs"
        logs.mkdir()
        sim = _spawn(
            [
                sys.executable,
                "-m",
                "brokerlink_simulators.ib_gateway",
                "--scenario",
                str(work / "scenario.json"),
                "--admin-port",
                "0",
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=(logs / "sim.log").open("wb"),
        )
        children.append(sim)
        assert sim.stdout is not None
        ports: dict[str, int] = json.loads(
            await asyncio.to_thread(sim.stdout.readline)
        )["gateways"]
        secret = generate_key() + generate_key()
        port = free_port()
        api = _spawn(
            [str(Path(sys.executable).parent / "account-api")],
            env={
                **env,
                "DATABASE_URL": sqlalchemy_url(uri),
                "BROKERLINK_ENCRYPTION_KEYS": generate_key(),
                "ACCOUNT_API_JWT_SECRET": secret,
                "API_PORT": str(port),
                "ACCOUNT_API_WORKERS": str(args.api_workers),
                "ACCOUNT_API_SCHEDULED_REFRESH_INTERVAL_S": "0",
                # 500/s from 50 users is far past the per-user limits on purpose: lifted here,
                # as in production that rate comes from many more users and the scheduler.
                "ACCOUNT_API_BULK_REFRESHES_PER_USER_PER_MINUTE": "1000000",
                "ACCOUNT_API_REFRESHES_PER_ACCOUNT_PER_MINUTE": "1000000",
            },
            stdout=(logs / "account-api.out").open("wb"),
            stderr=(logs / "account-api.log").open("wb"),
        )
        children.append(api)
        connector = _spawn(
            [sys.executable, "-m", "ib_connector.main"],
            env={
                **env,
                "IB_CONNECTOR_HEALTH_PORT": "0",
                "IB_CONNECTOR_IDLE_CLOSE_S": "3600",
                "IB_CONNECTOR_SUBSCRIPTION_MAX_AGE_S": "0",
                "IB_CONNECTOR_REPLICA_ID": "bench-connector",
            },
            stderr=(logs / "connector.log").open("wb"),
        )
        children.append(connector)
        base = f"http://127.0.0.1:{port}"
        await _wait_healthy(base, 120)

        assert bus.process is not None
        postmaster = pg._server.get_postmaster_info() if pg._server else None
        trees = {
            "account-api": ProcessTree(api.pid),
            "ib-connector": ProcessTree(connector.pid),
            "ib-gateway-sim": ProcessTree(sim.pid),
            "nats-server": ProcessTree(bus.process.pid),
            "postgres": ProcessTree(postmaster.pid, shared_memory=True)
            if postmaster
            else None,
            "bench (load generator)": ProcessTree(os.getpid(), children=False),
        }
        tree_list = {k: v for k, v in trees.items() if v is not None}

        async def sample_forever() -> None:
            while True:
                for tree in tree_list.values():
                    tree.sample()
                await asyncio.sleep(0.5)

        sampler = asyncio.create_task(sample_forever())

        issuer = TokenIssuer(secret, 120, 1)
        tokens = {
            uid: {"Authorization": f"Bearer {issuer.access_token(uid, uuid.uuid4())}"}
            for uid in {u for u, _ in owners}
        }
        # Idle connections are dropped before the server's 5 s keep-alive can close them under us.
        limits = httpx.Limits(
            max_connections=64, max_keepalive_connections=64, keepalive_expiry=2.0
        )
        async with httpx.AsyncClient(
            base_url=base, timeout=30, limits=limits
        ) as client:
            # 1) configure every integration through the API: sessions open from the outbox.
            started = time.perf_counter()
            gate = asyncio.Semaphore(32)

            async def configure(
                owner: tuple[int, int], spec: tuple[str, str, int]
            ) -> None:
                (uid, aid), (gw, code, cid) = owner, spec
                async with gate:
                    r = await client.put(
                        f"/api/accounts/{aid}/integration",
                        headers=tokens[uid],
                        json={
                            "type": "IB",
                            "config": {
                                "host": "127.0.0.1",
                                "port": ports[gw],
                                "client_id": cid,
                                "account_code": code,
                            },
                        },
                    )
                    r.raise_for_status()

            await asyncio.gather(
                *(configure(o, s) for o, s in zip(owners, plan, strict=True))
            )
            connect_s = await _wait_connected(uri, len(owners), 180)
            open_s = time.perf_counter() - started
            rss_open = trees["ib-connector"].rss()

            # 2) paced phase
            listener = await psycopg.AsyncConnection.connect(uri, autocommit=True)
            await listener.execute(f"LISTEN {REFRESH_CHANNEL}")
            ended_at: dict[str, float] = {}
            due_at: dict[str, float] = {}
            latencies: list[float] = []
            request_errors: list[str] = []
            all_ended = asyncio.Event()
            total = int(args.rate * args.duration)

            def settle(refresh_id: str) -> None:
                if refresh_id in due_at and refresh_id in ended_at:
                    latencies.append(ended_at[refresh_id] - due_at.pop(refresh_id))
                    if len(latencies) + len(request_errors) >= total:
                        all_ended.set()

            async def listen() -> None:
                async for note in listener.notifies():
                    ended_at[note.payload] = time.perf_counter()
                    settle(note.payload)

            listening = asyncio.create_task(listen())
            profilers = _start_profilers(
                args.profile,
                {"account-api": api.pid, "ib-connector": connector.pid},
                args.duration,
            )
            for tree in tree_list.values():
                tree.mark()
            t0 = time.perf_counter() + 0.1
            paced_since = dt.datetime.now(dt.UTC)

            by_user: dict[int, list[int]] = {}
            for uid, aid in owners:
                by_user.setdefault(uid, []).append(aid)
            users = list(by_user)
            lookup = await psycopg.AsyncConnection.connect(uri, autocommit=True)

            def failed(exc: Exception, count: int) -> None:
                request_errors.extend([repr(exc)] * count)
                if len(latencies) + len(request_errors) >= total:
                    all_ended.set()

            async def request_one(i: int, due: float) -> None:
                uid, aid = owners[i % len(owners)]
                try:
                    r = await client.post(
                        f"/api/accounts/{aid}/integration/refresh",
                        params={"wait": 0},
                        headers=tokens[uid],
                    )
                    r.raise_for_status()
                except httpx.HTTPError as exc:
                    failed(exc, 1)
                    return
                refresh_id = r.json()["refresh_id"]
                due_at[refresh_id] = due
                settle(refresh_id)

            async def request_user(uid: int, due: float) -> None:
                try:
                    r = await client.post(
                        "/api/integrations/refresh", headers=tokens[uid]
                    )
                    r.raise_for_status()
                except httpx.HTTPError as exc:
                    failed(exc, len(by_user[uid]))
                    return
                rows = await (
                    await lookup.execute(
                        "SELECT id::text FROM refreshes WHERE job_id = %s",
                        (r.json()["job_id"],),
                    )
                ).fetchall()
                for (refresh_id,) in rows:
                    due_at[refresh_id] = due
                    settle(refresh_id)

            plan_: list[tuple[float, Any]] = []
            if args.via == "single":
                plan_ = [
                    (
                        t0 + i / args.rate,
                        lambda i=i, d=t0 + i / args.rate: request_one(i, d),
                    )
                    for i in range(total)
                ]
            else:
                due, k, requested = t0, 0, 0
                while requested < total:
                    uid = users[k % len(users)]
                    plan_.append((due, lambda uid=uid, d=due: request_user(uid, d)))
                    requested += len(by_user[uid])
                    due = t0 + requested / args.rate
                    k += 1
                total = requested

            tasks: set[asyncio.Task[None]] = set()
            for due, start in plan_:
                delay = due - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                task = asyncio.create_task(start())
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            offered_s = time.perf_counter() - t0
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(all_ended.wait(), args.drain)
            last = max(ended_at.values(), default=t0)
            cpu = {k: t.since_mark() for k, t in tree_list.items()}
            listening.cancel()
            await listener.close()
            await lookup.close()
            for profiler in profilers:
                await asyncio.to_thread(profiler.wait)

        async with await psycopg.AsyncConnection.connect(uri) as conn:
            statuses = dict(
                await (
                    await conn.execute(
                        "SELECT status, count(*) FROM refreshes GROUP BY status"
                    )
                ).fetchall()
            )
            failures = dict(
                await (
                    await conn.execute(
                        "SELECT message, count(*) FROM refreshes WHERE status = 'failed'"
                        " GROUP BY message ORDER BY count(*) DESC LIMIT 5"
                    )
                ).fetchall()
            )
            stages = [
                (label, round(p50 or 0, 1), round(p99 or 0, 1))
                for label, p50, p99 in await (
                    await conn.execute(_STAGES_SQL, {"since": paced_since})
                ).fetchall()
            ]
        sampler.cancel()
        for tree in tree_list.values():
            tree.sample()

        lat_ms = sorted(x * 1000 for x in latencies)
        answered = len(lat_ms)
        achieved = answered / max(1e-9, last - t0)
        wall_s = max(1e-9, last - t0)
        figures = {
            "cores": os.cpu_count(),
            "accounts": len(owners),
            "gateways": len(ports),
            "nats_sync_always": not args.lazy_fsync,
            "rate_offered": args.rate,
            "via": args.via,
            "duration_s": args.duration,
            "requested": total,
            "answered": answered,
            "unanswered": total - answered,
            "request_errors": len(request_errors),
            "achieved_per_s": round(achieved, 1),
            "p50_ms": round(_percentile(lat_ms, 0.50), 1),
            "p99_ms": round(_percentile(lat_ms, 0.99), 1),
            "max_ms": round(lat_ms[-1], 1) if lat_ms else None,
            "refreshes_by_status": statuses,
            "failures_by_message": failures,
            "cpu_s": {k: round(v, 1) for k, v in cpu.items()},
            "cpu_ms_per_refresh": round(1000 * sum(cpu.values()) / max(1, answered), 2),
            "peak_rss_mib": {
                k: round(t.peak_rss / 2**20) for k, t in tree_list.items()
            },
            "connector_rss_sessions_open_mib": round(rss_open / 2**20),
            "stages_from_api_transaction_ms": {
                label: {"p50": p50, "p99": p99} for label, p50, p99 in stages
            },
        }
        print(
            f"machine: {os.cpu_count()} cores ({psutil.cpu_count(logical=False)} physical)"
        )
        print(
            f"path: POST {'/api/integrations/refresh (a user: 20 accounts)' if args.via == 'bulk' else 'one account refresh'} -> outbox -> relay -> NATS (sync_interval: "
            f"{'default, lazy' if args.lazy_fsync else 'always'}) -> ib-connector -> TWS over TCP -> "
            f"simulator -> balance.updated -> account-api consumer -> committed (fsync on)"
        )
        print(
            f"accounts: {len(owners)} on {len(ports)} simulated gateways, one session each; "
            f"account-api {args.api_workers} workers"
        )
        print(
            f"open {len(owners)} sessions through the API: {open_s:.1f} s "
            f"(connected {connect_s:.1f} s after the last PUT); connector RSS with them open: "
            f"{rss_open / 2**20:.0f} MiB"
        )
        print(
            f"paced @ {args.rate:.0f}/s for {args.duration:.0f} s (offered in {offered_s:.1f} s): "
            f"{answered} of {total} ended, {achieved:.0f}/s; latency from due time "
            f"p50 {figures['p50_ms']} ms, p99 {figures['p99_ms']} ms, max {figures['max_ms']} ms"
        )
        print(
            "from the API transaction's start (each account's last refresh): "
            + "; ".join(
                f"{label} p50 {p50} ms, p99 {p99} ms" for label, p50, p99 in stages
            )
        )
        print(
            f"unanswered: {total - answered} (request errors {len(request_errors)}); "
            f"refreshes table: {statuses}"
            + (f"; why they failed: {failures}" if failures else "")
        )
        print(
            "CPU seconds during the paced phase (of "
            f"{wall_s * (os.cpu_count() or 1):.0f} core-seconds): "
            + ", ".join(f"{k} {v:.1f}" for k, v in cpu.items())
        )
        print(
            "peak RSS: "
            + ", ".join(
                f"{k} {t.peak_rss / 2**20:.0f} MiB" for k, t in tree_list.items()
            )
        )
        print(
            "CPU ms per refresh (machine-independent-ish; the goal's 500/s on 2 cores leaves "
            "4 ms for all of them together): "
            + ", ".join(
                f"{k} {1000 * v / max(1, answered):.2f}" for k, v in cpu.items()
            )
            + f"; total {1000 * sum(cpu.values()) / max(1, answered):.2f}"
        )
        if request_errors:
            print(f"first request error: {request_errors[0]}")
        if args.json:
            args.json.write_text(json.dumps(figures, indent=2))
    finally:
        for child in reversed(children):
            child.terminate()
            try:
                child.wait(15)
            except subprocess.TimeoutExpired:
                child.kill()
        bus.stop()
        pg.stop()
        if os.environ.get("BENCH_KEEP"):
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(main())
